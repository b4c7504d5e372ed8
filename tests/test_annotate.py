"""``charter annotate``'s JSON API: against the real aiohttp app on 127.0.0.1 (in-process),
and the real command in a subprocess for kill -9 and non-loopback hosts."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient, TestServer

from charter.annotate.records import QueueItem, read_annotations, read_events
from charter.annotate.server import build_app, resolve_token
from charter.annotate.store import Store, left_side, read_queue
from charter.errors import ConfigError, InputError
from charter.types import Message


def make_queue(path: Path, n: int = 4) -> Path:
    items = [
        QueueItem(
            id=f"p{i}",
            messages=[Message(role="user", content=f"question {i}")],
            response_a=f"answer A{i}",
            response_b=f"answer B{i}",
            question="Which answer is kinder?" if i % 2 else None,
            routed_by="control" if i == n - 1 else "uncertainty",
            rank=i + 1,
        )
        for i in range(n)
    ]
    path.write_text("".join(i.model_dump_json() + "\n" for i in items), encoding="utf-8")
    return path


async def client_for(
    tmp_path: Path, *, n: int = 4, per_pair: int = 1, token: str | None = None
) -> tuple[TestClient[Any, Any], Store]:
    queue = make_queue(tmp_path / "queue.jsonl", n)
    store = Store(read_queue(queue), tmp_path / "human.jsonl", per_pair=per_pair, seed=3)
    app = build_app(store, token=token, host="127.0.0.1", port=0)
    client = TestClient(TestServer(app, host="127.0.0.1"))
    await client.start_server()
    return client, store


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[tuple[TestClient[Any, Any], Store]]:
    client, store = await client_for(tmp_path)
    yield client, store
    await client.close()
    store.close()


JSON = {"Content-Type": "application/json"}
LABEL_P0 = {"id": "p0", "annotator": "ann", "choice": "a"}


async def label(client: TestClient[Any, Any], pair: str, who: str, choice: str) -> int:
    r = await client.post("/api/label", json={"id": pair, "annotator": who, "choice": choice})
    return r.status


async def test_next_label_undo_progress_in_pair_terms(
    api: tuple[TestClient[Any, Any], Store], tmp_path: Path
) -> None:
    client, _ = api
    r = await client.get("/api/next", params={"annotator": "ann"})
    first = await r.json()
    assert r.status == 200
    assert set(first) == {"id", "messages", "response_a", "response_b", "question", "left"}
    assert first["id"] == "p0" and first["left"] == left_side(3, "ann", "p0")
    # Asking again before labelling gives the same pair (a reload resumes it).
    assert (await (await client.get("/api/next", params={"annotator": "ann"})).json()) == first
    assert await label(client, "p0", "ann", "b") == 200
    nxt = await (await client.get("/api/next", params={"annotator": "ann"})).json()
    assert nxt["id"] == "p1"
    assert await label(client, "p1", "ann", "tie") == 200
    r = await client.post("/api/undo", json={"annotator": "ann"})
    assert (await r.json()) == {"ok": True, "id": "p1"}
    # The undone pair comes back next, laid out as before.
    again = await (await client.get("/api/next", params={"annotator": "ann"})).json()
    assert again["id"] == "p1" and again["left"] == nxt["left"]
    assert await label(client, "p1", "ann", "a") == 200
    for pair in ("p2", "p3"):
        assert (await (await client.get("/api/next", params={"annotator": "ann"})).json())[
            "id"
        ] == pair
        assert await label(client, pair, "ann", "skip") == 200
    assert (await client.get("/api/next", params={"annotator": "ann"})).status == 204
    progress = await (await client.get("/api/progress", params={"annotator": "ann"})).json()
    assert progress["labels"] == 2 and progress["pairs_complete"] == 2
    assert progress["annotators"] == {"ann": {"labelled": 2, "skipped": 2}}
    assert progress["you"] == {"done": 4, "left": 0}

    standing = {a.id: a for a in read_annotations(tmp_path / "human.jsonl")}
    assert {k: a.choice for k, a in standing.items()} == {
        "p0": "b",
        "p1": "a",
        "p2": "skip",
        "p3": "skip",
    }
    assert standing["p0"].left == first["left"] and standing["p0"].seconds is not None
    assert standing["p3"].routed_by == "control"
    events = list(read_events(tmp_path / "human.jsonl"))
    assert [e.event for e in events].count("undo") == 1  # append-only: the undo is a line


async def test_layout_is_random_per_annotator_and_pair() -> None:
    sides = {left_side(0, who, f"p{i}") for who in ("ann", "bob") for i in range(20)}
    assert sides == {"a", "b"}
    assert left_side(0, "ann", "p1") == left_side(0, "ann", "p1")
    assert [left_side(0, "ann", f"p{i}") for i in range(20)] != [
        left_side(0, "bob", f"p{i}") for i in range(20)
    ]


async def test_bad_requests_get_4xx_json_and_the_server_keeps_serving(
    api: tuple[TestClient[Any, Any], Store],
) -> None:
    client, _ = api
    cases = [
        (client.get("/api/next"), 400),
        (client.get("/api/next", params={"annotator": "x" * 65}), 400),
        (client.get("/api/next", params={"annotator": "a\x07b"}), 400),
        (
            client.post(
                "/api/label", data="{not json", headers={"Content-Type": "application/json"}
            ),
            400,
        ),
        (
            client.post("/api/label", data='{"id":"p0"}', headers={"Content-Type": "text/plain"}),
            415,
        ),
        (client.post("/api/label", json=["p0"]), 400),
        (client.post("/api/label", json={"id": "p0", "annotator": "ann", "choice": "c"}), 400),
        (client.post("/api/label", json={"id": 5, "annotator": "ann", "choice": "a"}), 400),
        (client.post("/api/label", json={"id": "nope", "annotator": "ann", "choice": "a"}), 404),
        (client.post("/api/label", json={"id": "p0", "choice": "a"}), 400),
        (client.post("/api/undo", json={"annotator": "ann"}), 409),
        (
            client.post(
                "/api/label", data="x" * 40_000, headers={"Content-Type": "application/json"}
            ),
            413,
        ),
        (client.get("/api/nothing"), 404),
        (client.get("/../../etc/passwd"), 404),
        (client.get("/static/"), 404),
        (client.delete("/api/label"), 405),
        (client.post("/api/label", data="[" * 5000 + "]" * 5000, headers=JSON), 400),
        (client.post("/api/label", json={**LABEL_P0, "left": "middle"}), 400),
        (client.post("/api/label", json={**LABEL_P0, "seconds": -1}), 400),
    ]
    for request, status in cases:
        r = await request
        assert r.status == status, (await r.text(), status)
        assert "error" in await r.json()
    assert await label(client, "p0", "ann", "a") == 200
    assert await label(client, "p0", "ann", "b") == 409  # a second label needs an undo first
    r = await client.get("/")
    assert r.status == 200 and "script-src 'self'" in r.headers["Content-Security-Policy"]
    assert '<script src="/app.js"' in await r.text()
    assert (await client.get("/app.js")).headers["Content-Type"].startswith("text/javascript")


def strict_json(text: str) -> Any:
    """Parse as standard JSON only: NaN, Infinity and numbers past a double's range fail."""

    def no_constant(name: str) -> float:
        raise ValueError(f"{name} is not standard JSON")

    def finite(number: str) -> float:
        value = float(number)
        if value in (float("inf"), float("-inf")):
            raise ValueError(f"{number} is out of range")
        return value

    return json.loads(text, parse_constant=no_constant, parse_float=finite)


async def test_non_finite_numbers_are_refused_and_never_written(
    api: tuple[TestClient[Any, Any], Store], tmp_path: Path
) -> None:
    client, _ = api
    body = '{"id": "p0", "annotator": "ann", "choice": "a", %s}'
    for extra, field in [
        ('"seconds": Infinity', "seconds"),
        ('"seconds": -Infinity', "seconds"),
        ('"seconds": NaN', "seconds"),
        ('"seconds": 1e999', "seconds"),  # valid syntax, but no double holds it
        ('"seconds": 1' + "0" * 400, "seconds"),  # an integer, read exactly: no double either
        ('"seconds": 3, "left": NaN', "left"),
        ('"note": {"shown": [1, Infinity]}', "note"),  # a field the API ignores: refused too
    ]:
        r = await client.post("/api/label", data=body % extra, headers=JSON)
        text = await r.text()
        assert r.status == 400, text
        assert strict_json(text)["error"].startswith(f"'{field}': not a finite number"), text
    r = await client.post("/api/undo", data='{"annotator": "ann", "n": NaN}', headers=JSON)
    assert r.status == 400 and "'n': not a finite number" in await r.text()
    log = tmp_path / "human.jsonl"
    assert not log.exists() or not log.read_text().strip(), "a refused label was written"

    r = await client.post("/api/label", data=body % '"seconds": 2.5', headers=JSON)
    assert r.status == 200
    assert strict_json(await r.text())["label"]["seconds"] == 2.5
    assert [strict_json(line)["seconds"] for line in log.read_text().splitlines()] == [2.5]


async def test_loopback_server_refuses_other_host_names(
    api: tuple[TestClient[Any, Any], Store],
) -> None:
    client, _ = api
    r = await client.get("/api/progress", headers={"Host": "evil.example:8765"})
    assert r.status == 403
    assert (await client.get("/api/progress", headers={"Host": "localhost:8765"})).status == 200


async def test_other_web_pages_cannot_take_pairs_or_read_them(
    api: tuple[TestClient[Any, Any], Store],
) -> None:
    """A page on another site can send a GET to 127.0.0.1 without a CORS preflight; the
    browser's own headers say where it came from, and it is refused."""
    client, store = api
    nxt = "/api/next?annotator=evil"
    assert (await client.get(nxt, headers={"Sec-Fetch-Site": "cross-site"})).status == 403
    assert (await client.get(nxt, headers={"Origin": "http://evil.example"})).status == 403
    assert not store.leases  # nothing was held for the intruder
    own = f"http://{client.host}:{client.port}"
    r = await client.get(nxt, headers={"Origin": own, "Sec-Fetch-Site": "same-origin"})
    assert r.status == 200


async def test_a_pair_never_gets_more_labels_than_asked(tmp_path: Path) -> None:
    """K = 1: a pair on someone's screen cannot be labelled by another; once its hold lapses
    another may take it, and then the first person's late label is refused."""
    client, store = await client_for(tmp_path, n=3, per_pair=1)
    try:
        assert (await (await client.get("/api/next?annotator=ann")).json())["id"] == "p0"
        assert await label(client, "p0", "bob", "a") == 409  # held for ann
        assert await label(client, "p1", "bob", "a") == 200  # open: scripts may label directly
        store.leases["ann"].since -= 31 * 60  # ann left for lunch
        assert (await (await client.get("/api/next?annotator=cat")).json())["id"] == "p0"
        assert await label(client, "p0", "cat", "b") == 200
        assert await label(client, "p0", "ann", "a") == 409
        assert (await (await client.get("/api/next?annotator=ann")).json())["id"] == "p2"
        assert await label(client, "p2", "ann", "tie") == 200
        assert (await client.get("/api/next?annotator=ann")).status == 204
        progress = await (await client.get("/api/progress")).json()
        assert progress["labels"] == progress["labels_wanted"] == 3
    finally:
        await client.close()
        store.close()


async def test_undoing_a_skip_does_not_take_back_a_pair_now_held_by_another(
    tmp_path: Path,
) -> None:
    client, store = await client_for(tmp_path, n=2, per_pair=1)
    try:
        assert (await (await client.get("/api/next?annotator=ann")).json())["id"] == "p0"
        assert await label(client, "p0", "ann", "skip") == 200
        assert (await (await client.get("/api/next?annotator=bob")).json())["id"] == "p0"
        r = await client.post("/api/undo", json={"annotator": "ann"})
        assert (await r.json())["id"] == "p0"
        # p0 is on bob's screen: ann goes on with p1 instead of being shown p0 too.
        assert (await (await client.get("/api/next?annotator=ann")).json())["id"] == "p1"
        assert await label(client, "p0", "ann", "a") == 409
        assert await label(client, "p0", "bob", "b") == 200
        assert await label(client, "p0", "cat", "a") == 409  # has its one label
    finally:
        await client.close()
        store.close()


async def test_token_is_required_on_every_api_request(tmp_path: Path) -> None:
    client, store = await client_for(tmp_path, token="s3cret-token")
    try:
        assert (await client.get("/api/progress")).status == 401
        for bad in ("Bearer wrong", "Basic s3cret-token", "Bearer s3cret-token\udcff"):
            headers = {"Authorization": bad.encode("utf-8", "surrogateescape").decode("latin-1")}
            assert (await client.get("/api/next?annotator=a", headers=headers)).status == 401
        ok = {"Authorization": "bearer s3cret-token"}  # the scheme is case-insensitive
        assert (await client.get("/api/progress", headers=ok)).status == 200
        r = await client.post("/api/label", json={"id": "p0", "annotator": "a", "choice": "a"})
        assert r.status == 401
        good = {"Authorization": "Bearer s3cret-token"}
        r = await client.post(
            "/api/label", json={"id": "p0", "annotator": "a", "choice": "a"}, headers=good
        )
        assert r.status == 200
        assert (await client.get("/")).status == 200  # the page itself holds no data
    finally:
        await client.close()
        store.close()
    assert not (tmp_path / "human.jsonl").read_text().count("wrong")


def test_non_loopback_needs_a_token() -> None:
    assert resolve_token("127.0.0.1", None) is None
    assert resolve_token("::1", None) is None
    made = resolve_token("0.0.0.0", None)
    assert made is not None and len(made) >= 16
    assert resolve_token("0.0.0.0", "given-token") == "given-token"
    for bad in ("short", "has a space", "nön-ascii-token"):
        with pytest.raises(ConfigError, match="at least 8 printable ASCII"):
            resolve_token("0.0.0.0", bad)


async def test_two_annotators_at_once_lose_and_duplicate_nothing(tmp_path: Path) -> None:
    """Two people, each asking for the next pair and labelling it as fast as they can, with
    every request also sent twice: each pair ends with exactly K labels, none twice."""
    n, per_pair = 12, 2
    client, store = await client_for(tmp_path, n=n, per_pair=per_pair)

    async def annotate(who: str) -> list[str]:
        done = []
        while True:
            r = await client.get("/api/next", params={"annotator": who})
            if r.status == 204:
                return done
            pair = (await r.json())["id"]
            statuses = await asyncio.gather(*(label(client, pair, who, "a") for _ in range(2)))
            assert sorted(statuses) == [200, 409]
            done.append(pair)

    try:
        ann, bob = await asyncio.gather(annotate("ann"), annotate("bob"))
    finally:
        await client.close()
        store.close()
    assert sorted(ann) == sorted(bob) == sorted(f"p{i}" for i in range(n))
    events = list(read_events(tmp_path / "human.jsonl"))
    assert len(events) == n * per_pair
    assert len({(e.id, e.annotator) for e in events}) == n * per_pair


async def test_one_label_per_pair_splits_the_queue_between_annotators(tmp_path: Path) -> None:
    client, store = await client_for(tmp_path, n=4, per_pair=1)
    try:
        first = await (await client.get("/api/next", params={"annotator": "ann"})).json()
        other = await (await client.get("/api/next", params={"annotator": "bob"})).json()
        assert first["id"] != other["id"]  # a pair on ann's screen is not asked of bob
        assert await label(client, first["id"], "ann", "skip") == 200
        # A skip is no label: the pair is still wanted, by someone else.
        nxt = await (await client.get("/api/next", params={"annotator": "cat"})).json()
        assert nxt["id"] == first["id"]
    finally:
        await client.close()
        store.close()


def test_queue_errors_name_the_line(tmp_path: Path) -> None:
    q = make_queue(tmp_path / "q.jsonl", 2)
    q.write_text(q.read_text() + q.read_text().splitlines()[0] + "\n")
    with pytest.raises(InputError, match=r"q.jsonl:3: id 'p0' is in the queue twice"):
        read_queue(q)
    (tmp_path / "bad.jsonl").write_text('{"id": "x"}\n')
    with pytest.raises(InputError, match=r"bad.jsonl:1: not a queue item: messages"):
        read_queue(tmp_path / "bad.jsonl")
    (tmp_path / "bytes.jsonl").write_bytes(q.read_bytes().splitlines()[0] + b"\n\xff\n")
    with pytest.raises(InputError, match=r"bytes.jsonl:2: "):
        read_queue(tmp_path / "bytes.jsonl")


def test_the_output_must_be_an_annotation_log(tmp_path: Path) -> None:
    items = read_queue(make_queue(tmp_path / "q.jsonl", 2))
    labels = tmp_path / "labels.jsonl"
    labels.write_text('{"id": "p0", "p_a": 0.7}\n')
    with pytest.raises(ConfigError, match="not an annotation log"):
        Store(items, labels)
    with pytest.raises(ConfigError, match="is a folder"):
        Store(items, tmp_path)


# -- the real command ---------------------------------------------------------------------
def annotate_command(queue: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "charter", "annotate", str(queue), "-o", str(out), *extra]


def start_server(queue: Path, out: Path, *extra: str) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(
        annotate_command(queue, out, "--port", "0", "-q", *extra),
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stderr is not None
    line = proc.stderr.readline().strip()
    assert line.startswith("http://"), line + proc.stderr.read()
    return proc, line


async def test_kill_9_loses_no_label_and_a_restart_resumes(tmp_path: Path) -> None:
    queue, out = make_queue(tmp_path / "queue.jsonl", 5), tmp_path / "human.jsonl"
    proc, url = start_server(queue, out)
    try:
        async with aiohttp.ClientSession(url) as s:
            for i, choice in enumerate(["a", "b", "tie"]):
                r = await s.get("/api/next", params={"annotator": "ann"})
                assert (await r.json())["id"] == f"p{i}"
                r = await s.post(
                    "/api/label", json={"id": f"p{i}", "annotator": "ann", "choice": choice}
                )
                assert r.status == 200
            await s.get("/api/next", params={"annotator": "ann"})  # p3 on screen, unlabelled
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    proc, url = start_server(queue, out)
    try:
        async with aiohttp.ClientSession(url) as s:
            progress = await (await s.get("/api/progress")).json()
            assert progress["labels"] == 3
            r = await s.get("/api/next", params={"annotator": "ann"})
            assert (await r.json())["id"] == "p3"
            r = await s.post("/api/undo", json={"annotator": "ann"})  # undo survives a restart
            assert (await r.json())["id"] == "p2"
    finally:
        proc.terminate()
        proc.wait()
    standing = {a.id: a.choice for a in read_annotations(out)}
    assert standing == {"p0": "a", "p1": "b"}


async def test_any_host_but_loopback_gets_a_token(tmp_path: Path) -> None:
    queue, out = make_queue(tmp_path / "queue.jsonl", 2), tmp_path / "human.jsonl"
    proc, url = start_server(queue, out, "--host", "0.0.0.0")
    try:
        assert "#token=" in url
        token = url.split("#token=")[1]
        port = url.split("#")[0].rstrip("/").rsplit(":", 1)[1]
        base = f"http://127.0.0.1:{port}"
        async with aiohttp.ClientSession(base) as s:
            assert (await s.get("/api/progress")).status == 401
            r = await s.post("/api/label", json={"id": "p0", "annotator": "x", "choice": "a"})
            assert r.status == 401
            auth = {"Authorization": f"Bearer {token}"}
            assert (await s.get("/api/progress", headers=auth)).status == 200
    finally:
        proc.terminate()
        proc.wait()
    assert not out.exists() or "p0" not in out.read_text()


def test_a_second_server_on_the_same_output_refuses(tmp_path: Path) -> None:
    queue, out = make_queue(tmp_path / "queue.jsonl", 2), tmp_path / "human.jsonl"
    proc, _ = start_server(queue, out)
    try:
        second = subprocess.run(
            annotate_command(queue, out, "--port", "0"),
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert second.returncode != 0
        assert "being written by another charter process" in second.stderr
        assert "Traceback" not in second.stderr
    finally:
        proc.terminate()
        proc.wait()
