from __future__ import annotations

import asyncio
import json
from functools import partial
from pathlib import Path

import pytest

from charter.backends.mock import MockBackend
from charter.engines.base import OutputPaths
from charter.engines.local import Pipeline as Stage
from charter.errors import BackendError, BackendFatalError
from charter.model import Model, RetryPolicy
from charter.records import PromptRecord, ResponseRecord
from charter.seeds import sample_seed
from charter.stages.respond import RespondConfig, respond
from charter.types import Message


def prompts(n: int) -> list[PromptRecord]:
    return [
        PromptRecord(id=f"r{i}", messages=[Message(role="user", content=f"q{i}")]) for i in range(n)
    ]


def lines(path: Path) -> list[dict[str, object]]:
    return [json.loads(x) for x in path.read_text().splitlines()]


async def test_respond_writes_k_answers_with_reproducible_seeds(tmp_path: Path) -> None:
    model = Model(MockBackend())
    cfg = RespondConfig(n=3, temperature=1.0, seed=5)
    rec = await respond(prompts(1)[0], model, cfg)
    assert len(rec.responses) == 3 and len(set(rec.responses)) == 3
    assert rec.seeds == [sample_seed(5, "r0", i) for i in range(3)]
    again = await respond(prompts(1)[0], Model(MockBackend()), cfg)
    assert again.responses == rec.responses
    assert rec.usage.requests == 3


async def test_resume_skips_done_ids(tmp_path: Path) -> None:
    paths = OutputPaths.for_output(tmp_path / "out.jsonl")
    mock = MockBackend()
    stage: Stage[PromptRecord] = Stage(
        "respond", partial(respond, model=Model(mock), config=RespondConfig()), paths
    )
    first = await stage.run(prompts(5))
    assert first.written == 5
    second = await stage.run(prompts(8))
    assert (second.written, second.skipped) == (3, 5)
    ids = [r["id"] for r in lines(paths.work)]
    assert sorted(ids) == [f"r{i}" for i in range(8)]
    assert len(mock.calls) == 8


async def test_failed_records_go_aside_and_are_retried_on_rerun(tmp_path: Path) -> None:
    paths = OutputPaths.for_output(tmp_path / "out.jsonl")
    assert paths.failed.name == "out.failed.jsonl"
    bad = {"q2", "q4"}

    def responder(msgs, cfg):  # type: ignore[no-untyped-def]
        if msgs[-1].content in bad:
            raise BackendError("HTTP 400: prompt too long")
        return "fine"

    model = Model(MockBackend(responder=responder), retry=RetryPolicy(attempts=1))
    stage: Stage[PromptRecord] = Stage(
        "respond", partial(respond, model=model, config=RespondConfig()), paths
    )
    stats = await stage.run(prompts(6))
    assert (stats.written, stats.failed) == (4, 2)
    failed = lines(paths.failed)
    assert sorted(f["id"] for f in failed) == ["r2", "r4"]
    assert failed[0]["error"].startswith("HTTP 400") and failed[0]["stage"] == "respond"
    assert failed[0]["input"]["messages"]
    bad.clear()
    await stage.run(prompts(6))
    assert not paths.failed.exists(), "ids that later succeed leave the failed file"
    assert sorted(r["id"] for r in lines(paths.work)) == [f"r{i}" for i in range(6)]


async def test_fatal_error_stops_run_and_keeps_what_was_written(tmp_path: Path) -> None:
    paths = OutputPaths.for_output(tmp_path / "out.jsonl")
    outputs: list[object] = ["a", "b", BackendFatalError("HTTP 401: authentication failed")]
    model = Model(MockBackend(outputs=outputs + ["x"] * 10), concurrency=1)
    stage: Stage[PromptRecord] = Stage(
        "respond", partial(respond, model=model, config=RespondConfig()), paths, window=1
    )
    with pytest.raises(BackendFatalError):
        await stage.run(prompts(6))
    assert [r["id"] for r in lines(paths.work)] == ["r0", "r1"]


async def test_in_flight_window_is_bounded(tmp_path: Path) -> None:
    active = peak = 0

    async def work(rec: PromptRecord) -> ResponseRecord:
        nonlocal active, peak
        active += 1
        peak = max(peak, active)
        await asyncio.sleep(0.001)
        active -= 1
        return ResponseRecord(
            id=rec.id, messages=rec.messages, responses=[], finish_reasons=[], model="m", seeds=[]
        )

    pulled = 0

    def stream():  # type: ignore[no-untyped-def]
        nonlocal pulled
        for r in prompts(500):
            pulled += 1
            assert pulled - peak <= 500
            yield r

    stats = await Stage("t", work, OutputPaths.for_output(tmp_path / "o.jsonl"), window=7).run(
        stream()
    )
    assert stats.written == 500 and peak == 7


async def test_parquet_output_is_written_at_the_end(tmp_path: Path) -> None:
    import pyarrow.parquet as pq

    paths = OutputPaths.for_output(tmp_path / "out.parquet")
    stage: Stage[PromptRecord] = Stage(
        "respond", partial(respond, model=Model(MockBackend()), config=RespondConfig(n=2)), paths
    )
    await stage.run(prompts(4))
    table = pq.read_table(paths.out)
    assert table.num_rows == 4 and "responses" in table.column_names


async def test_records_finished_alongside_a_fatal_error_are_still_written(tmp_path: Path) -> None:
    paths = OutputPaths.for_output(tmp_path / "out.jsonl")
    fatal = BackendFatalError("HTTP 401: authentication failed")
    model = Model(MockBackend(outputs=["a", fatal, "b"]), concurrency=3)
    stage: Stage[PromptRecord] = Stage(
        "respond", partial(respond, model=model, config=RespondConfig()), paths, window=3
    )
    with pytest.raises(BackendFatalError):
        await stage.run(prompts(3))
    assert sorted(r["id"] for r in lines(paths.work)) == ["r0", "r2"]
