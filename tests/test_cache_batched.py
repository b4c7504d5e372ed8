"""The request cache writes in batches off the caller's thread: what is queued is readable at
once, is written by close() and by a normal exit, is shared through the file with other
caches, and a writer killed with SIGKILL leaves a file that opens and reads."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from charter.cache import RequestCache, cache_key


def _rows(path: Path) -> int:
    with sqlite3.connect(path) as conn:
        return int(conn.execute("SELECT COUNT(*) FROM entries").fetchone()[0])


def test_a_queued_entry_is_read_back_before_it_is_written(tmp_path: Path) -> None:
    path = tmp_path / "c.sqlite"
    c = RequestCache(path, flush_every=3600, flush_rows=10**9)
    c.put("k", model="m", kind="generate", value="v")
    c.put("k2", model="m", kind="generate", value="w")
    c.put("k2", model="m", kind="generate", value="w2")  # the latest put wins
    assert _rows(path) == 0  # nothing written yet
    assert c.get("k") == "v" and c.get("k2") == "w2" and c.get("other") is None
    c.flush()
    assert _rows(path) == 2
    assert c.get("k") == "v" and c.get("k2") == "w2"
    c.close()


def test_close_writes_what_is_queued(tmp_path: Path) -> None:
    path = tmp_path / "c.sqlite"
    c = RequestCache(path, flush_every=3600, flush_rows=10**9)
    for i in range(100):
        c.put(f"k{i}", model="m", kind="generate", value=str(i))
    c.close()
    c.close()  # closing twice is harmless
    assert _rows(path) == 100
    with pytest.raises(sqlite3.ProgrammingError):
        c.put("late", model="m", kind="generate", value="x")


def test_the_writer_thread_writes_without_being_asked(tmp_path: Path) -> None:
    path = tmp_path / "c.sqlite"
    c = RequestCache(path, flush_every=0.05)
    c.put("k", model="m", kind="generate", value="v")
    deadline = time.monotonic() + 10
    while _rows(path) == 0 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert _rows(path) == 1
    c.close()


def test_stats_and_clear_count_queued_entries(tmp_path: Path) -> None:
    c = RequestCache(tmp_path / "c.sqlite", flush_every=3600, flush_rows=10**9)
    c.put("a", model="m1", kind="generate", value="x")
    c.put("b", model="m2", kind="options", value="y")
    assert c.stats()["entries"] == 2
    c.put("c", model="m1", kind="generate", value="z")
    assert c.clear("m1") == 2  # a queued entry is cleared, not written afterwards
    assert c.get("c") is None and c.get("b") == "y"
    c.close()


def test_two_caches_on_one_file_see_each_others_entries(tmp_path: Path) -> None:
    path = tmp_path / "shared.sqlite"
    a = RequestCache(path, flush_every=3600, flush_rows=10**9)
    b = RequestCache(path, flush_every=3600, flush_rows=10**9)
    a.put("from-a", model="m", kind="generate", value="1")
    b.put("from-b", model="m", kind="generate", value="2")
    assert b.get("from-a") is None  # still queued in a
    a.flush()
    b.flush()
    assert b.get("from-a") == "1" and a.get("from-b") == "2"
    assert a.stats()["entries"] == b.stats()["entries"] == 2
    a.close()
    b.close()


def _python(code: str, path: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", code, str(path)], stdout=subprocess.PIPE, text=True
    )


def test_a_normal_exit_writes_what_is_queued(tmp_path: Path) -> None:
    path = tmp_path / "c.sqlite"
    code = (
        "import sys\n"
        "from charter.cache import RequestCache\n"
        "c = RequestCache(sys.argv[1], flush_every=3600, flush_rows=10**9)\n"
        "for i in range(50):\n"
        "    c.put(f'k{i}', model='m', kind='generate', value=str(i))\n"
        "# no close(): the interpreter's exit writes the queue\n"
    )
    proc = _python(code, path)
    assert proc.wait(60) == 0
    assert _rows(path) == 50


def test_a_writer_killed_with_sigkill_leaves_a_readable_cache(tmp_path: Path) -> None:
    path = tmp_path / "c.sqlite"
    code = (
        "import sys, time\n"
        "from charter.cache import RequestCache\n"
        "c = RequestCache(sys.argv[1], flush_every=0.01, flush_rows=64)\n"
        "print('ready', flush=True)\n"
        "i = 0\n"
        "while True:  # as requests come: in bursts\n"
        "    c.put(f'k{i}', model='m', kind='generate', value='x' * 500)\n"
        "    i += 1\n"
        "    if i % 50 == 0:\n"
        "        time.sleep(0.005)\n"
    )
    proc = _python(code, path)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        time.sleep(0.05)
        try:
            if _rows(path) >= 1000:
                break
        except sqlite3.OperationalError:  # the table may not be visible yet
            continue
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(10)
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    c = RequestCache(path)
    entries = c.stats()["entries"]
    assert entries >= 1000
    assert c.get("k0") == "x" * 500
    c.put("after", model="m", kind="generate", value="y")  # and it takes new entries
    c.close()
    assert _rows(path) == entries + 1


def _json_key(payload: dict[str, object]) -> str:
    """The key as charter has always made it (the json module), which caches on disk hold."""
    import hashlib

    blob = json.dumps(
        {"v": 1, **payload}, sort_keys=True, ensure_ascii=False, separators=(",", ":")
    )
    return hashlib.sha256(blob.encode()).hexdigest()


@pytest.mark.parametrize(
    "config",
    [
        {"max_tokens": 1, "temperature": 0.0, "top_p": 1.0, "stop": [], "seed": 12345},
        {"max_tokens": 8, "temperature": 0.7, "top_p": 0.95, "stop": ["\n"], "seed": None},
        {"temperature": 1e-05, "top_p": 1e16, "seed": 2**70},  # exponents, a big integer
        {"temperature": float("inf"), "x": float("nan")},
        {"nested": [{"b": 1, "a": [True, None, -0.0, 0.1 + 0.2]}], "é": "ü\u2028\x00\x7f"},
    ],
)
def test_keys_are_those_caches_on_disk_already_hold(config: dict[str, object]) -> None:
    payload: dict[str, object] = {
        "kind": "options",
        "version": 2,
        "options": ["A", "B"],
        "config": config,
        "model": "openai/m",
        "messages": [{"role": "user", "content": 'Which is kinder, A or B? «ü» 😀\n\t"q"'}],
        "server": "http://127.0.0.1:8000/v1",
    }
    assert cache_key(payload) == _json_key(payload)


def test_a_key_with_a_non_string_dict_key_matches_too() -> None:
    payload: dict[str, object] = {"kind": "generate", "config": {1: "one"}}
    assert cache_key(payload) == _json_key(payload)


def test_an_option_given_probability_zero_is_cached_as_zero() -> None:
    """-inf (probability 0) must not come back from the cache as None ("not seen")."""
    import math

    from charter.model import _dump
    from charter.types import OptionScores

    scores = OptionScores(logprobs={"A": -math.inf, "B": -0.1}, floor=-math.inf)
    back = OptionScores.model_validate_json(_dump(scores))
    assert back.logprobs == {"A": -math.inf, "B": -0.1} and back.floor == -math.inf
    finite = OptionScores(logprobs={"A": -2.0, "B": -0.1})
    assert OptionScores.model_validate_json(_dump(finite)) == finite
