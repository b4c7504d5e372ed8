from __future__ import annotations

import multiprocessing
import threading
from pathlib import Path

from charter.cache import RequestCache, cache_key


def test_key_depends_only_on_payload() -> None:
    base = {"model": "m", "messages": [{"role": "user", "content": "x"}], "config": {"seed": 1}}
    assert cache_key(base) == cache_key(dict(reversed(list(base.items()))))
    assert cache_key(base) != cache_key({**base, "config": {"seed": 2}})
    assert cache_key(base) != cache_key({**base, "model": "n"})


def test_put_get_stats_clear(tmp_path: Path) -> None:
    c = RequestCache(tmp_path / "c.sqlite")
    assert c.get("k") is None
    c.put("k", model="m1", kind="generate", value="v1")
    c.put("j", model="m2", kind="options", value="v2")
    assert c.get("k") == "v1"
    stats = c.stats()
    assert stats["entries"] == 2
    assert {r["model"] for r in stats["by_model"]} == {"m1", "m2"}
    assert c.clear("m1") == 1
    assert c.get("k") is None and c.get("j") == "v2"
    assert c.clear() == 1
    c.close()


def test_many_threads_share_one_cache(tmp_path: Path) -> None:
    c = RequestCache(tmp_path / "c.sqlite")

    def work(t: int) -> None:
        for i in range(200):
            c.put(f"{t}-{i}", model="m", kind="generate", value=str(i))
            assert c.get(f"{t}-{i}") == str(i)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert c.stats()["entries"] == 1600
    c.close()


def _writer(path: str, prefix: str, n: int) -> None:
    c = RequestCache(path)
    for i in range(n):
        c.put(f"{prefix}-{i}", model="m", kind="generate", value=prefix)
    c.close()


def test_two_processes_write_one_file(tmp_path: Path) -> None:
    path = str(tmp_path / "shared.sqlite")
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(path, p, 300)) for p in ("a", "b")]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    c = RequestCache(path)
    assert c.stats()["entries"] == 600
    assert c.get("a-299") == "a" and c.get("b-0") == "b"
    c.close()
