"""Deciding whether a server has log-probabilities, and how many it will return: on evidence,
once, against a real HTTP server on 127.0.0.1 (issue 10.2, 10.5, 10.9)."""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path
from typing import Any

import pytest

from charter.backends.openai import OpenAIBackend
from charter.constitution import load_constitution
from charter.judges.grading import ScoreConfig
from charter.judges.pairwise import LabelConfig
from charter.judges.records import LOW_MASS, LabelRecord
from charter.model import NO_LOGPROBS_AFTER, Model, RetryPolicy
from charter.pairs import PairRecord
from charter.records import AnswerRecord
from charter.rubric import load_rubric
from charter.stages.label import label
from charter.stages.score import score
from charter.testing.server import FakeOpenAIServer, Fault
from charter.types import Message
from tests.conftest import run_cli

HARMLESS = load_constitution("harmless")
FAST = RetryPolicy(attempts=4, initial=0.01, max_wait=0.5, jitter=0.0)
CLI_FAST = ["--retry-wait", "0.01", "--timeout", "5", "-q"]


def pairs(n: int) -> list[PairRecord]:
    return [
        PairRecord(
            id=f"p{i}",
            messages=[Message(role="user", content=f"question {i}")],
            response_a=f"safe answer {i}",
            response_b=f"risky answer {i}",
            a_source="x",
            b_source="y",
        )
        for i in range(n)
    ]


def judge(srv: FakeOpenAIServer, **kw: Any) -> Model:
    return Model(OpenAIBackend("judge", base_url=srv.base_url), retry=FAST, **kw)


async def label_all(model: Model, items: list[PairRecord]) -> list[LabelRecord]:
    config = LabelConfig()
    return list(
        await asyncio.gather(
            *(label(p, judge=model, constitution=HARMLESS, config=config) for p in items)
        )
    )


def answer_a(messages: list[dict[str, Any]], body: dict[str, Any]) -> str:
    return "A"


def logprob_requests(srv: FakeOpenAIServer) -> list[dict[str, Any]]:
    return [b for b in srv.requests if b.get("logprobs")]


def write_pairs(path: Path, n: int) -> None:
    rows = [
        {"id": f"item-{i}", "prompt": f"q {i}", "response_a": "a", "response_b": "b"}
        for i in range(n)
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


# -- 10.2: no logprobs only on evidence ---------------------------------------------------------


async def test_logprobs_dropped_on_the_first_replies_only_is_a_glitch() -> None:
    with FakeOpenAIServer(option_probs={"A": 0.8, "B": 0.2}) as srv:
        srv.add_faults(*[Fault(kind="no_logprobs")] * (NO_LOGPROBS_AFTER - 1))
        model = judge(srv, concurrency=8)
        records = await label_all(model, pairs(60))
        await model.aclose()
    assert all(r.label_source == "logprobs" for r in records)
    assert all(r.p_a == pytest.approx(0.5) for r in records)  # 0.8 in one order, 0.2 in the other
    assert model.capabilities.option_logprobs
    assert model.errors == 0 and model.failed + model.discarded == NO_LOGPROBS_AFTER - 1
    assert model.retries == NO_LOGPROBS_AFTER - 1


async def test_misses_while_undecided_do_not_use_up_the_retry_budget() -> None:
    with FakeOpenAIServer(option_probs={"A": 0.8, "B": 0.2}) as srv:
        srv.add_faults(*[Fault(kind="no_logprobs")] * (NO_LOGPROBS_AFTER - 1))
        model = Model(
            OpenAIBackend("judge", base_url=srv.base_url),
            retry=RetryPolicy(attempts=1, initial=0.0, jitter=0.0),
        )
        scores = await model.option_logprobs([Message(role="user", content="?")], ["A", "B"])
        await model.aclose()
    assert scores.probs["A"] == pytest.approx(0.8) and model.errors == 0


async def test_server_without_logprobs_falls_back_after_k_replies_and_warns_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="charter")
    with FakeOpenAIServer(
        logprobs=False, option_probs={"A": 0.8, "B": 0.2}, responder=answer_a
    ) as srv:
        model = judge(srv, concurrency=1)
        records = await label_all(model, pairs(5))
        probes = len(logprob_requests(srv))
        await model.aclose()
    assert all(r.label_source == "parsed" for r in records)
    assert all(
        j.option_mass is None and not j.missing_options for r in records for j in r.judgements
    )
    assert probes == NO_LOGPROBS_AFTER
    assert not model.capabilities.option_logprobs
    assert model.errors == 0
    warnings = [r.getMessage() for r in caplog.records if "log-probabilities" in r.getMessage()]
    assert warnings == [
        f"openai/judge gives no log-probabilities ({NO_LOGPROBS_AFTER} consecutive replies had "
        "none): judging falls back to parsed answers (or --votes)"
    ]


async def test_concurrent_requests_decide_once(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="charter")
    with FakeOpenAIServer(
        logprobs=False, option_probs={"A": 0.8, "B": 0.2}, responder=answer_a
    ) as srv:
        model = judge(srv, concurrency=32)
        records = await label_all(model, pairs(40))
        probes = len(logprob_requests(srv))
        await model.aclose()
    assert {r.label_source for r in records} == {"parsed"}
    assert probes <= 32 + NO_LOGPROBS_AFTER, "in-flight requests only, nothing after deciding"
    assert sum("consecutive replies had none" in r.getMessage() for r in caplog.records) == 1
    assert model.errors == 0


# -- 10.5: top_logprobs caps and option mass --------------------------------------------------


async def test_capped_top_logprobs_is_found_once() -> None:
    with FakeOpenAIServer(option_probs={"A": 0.8, "B": 0.2}, max_top_logprobs=5) as srv:
        model = judge(srv, concurrency=16)
        records = await label_all(model, pairs(60))
        refused = [b for b in logprob_requests(srv) if b["top_logprobs"] > 5]
        await model.aclose()
    assert all(r.label_source == "logprobs" for r in records)
    assert len(refused) == 1, "the cap is found by one request, not one per record"
    assert isinstance(model.backend, OpenAIBackend) and model.backend.top_logprobs == 5
    assert model.errors == 0 and model.failed == 0


def test_server_refusing_logprobs_is_found_out_once_and_falls_back(tmp_path: Path) -> None:
    """Some servers (reasoning models, gateways) answer 400 to any request for logprobs: found
    out once, said once, and the run goes on with parsed answers instead of 400 per record."""

    def refuse(body: dict[str, Any]) -> Fault | None:
        if body.get("logprobs"):
            return Fault(400, message="logprobs are not supported by this model")
        return None

    src, out = tmp_path / "p.jsonl", tmp_path / "o.jsonl"
    write_pairs(src, 100)
    with FakeOpenAIServer(
        option_probs={"A": 0.8, "B": 0.2}, fault_rule=refuse, responder=lambda m, b: "A"
    ) as srv:
        r = run_cli(
            "label",
            str(src),
            "-o",
            str(out),
            "-j",
            "openai/x",
            "--base-url",
            srv.base_url,
            "--constitution",
            "harmless",
            "-c",
            "8",
            *CLI_FAST,
        )
        asked = len([b for b in srv.requests if b.get("logprobs")])
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr
    assert r.stderr.count("logprobs are not supported") == 1
    assert asked <= 4, "20, 5, 1 refused: then never asked again"
    assert {json.loads(x)["label_source"] for x in out.read_text().splitlines()} == {"parsed"}


async def test_missing_option_is_recorded_and_flagged_not_invented() -> None:
    with FakeOpenAIServer(option_probs={"A": 0.6, "x": 0.4}) as srv:
        model = judge(srv)
        (record,) = await label_all(model, pairs(1))
        await model.aclose()
    # the fake server cannot constrain: B gets the top list's floor (0.4), an upper bound
    assert record.low_option_mass and record.label_source == "topk_bound"
    assert record.topk_truncated
    for j in record.judgements:
        assert j.missing_options == ["B"]
        assert j.option_mass == pytest.approx(0.6)
        assert j.p_first == pytest.approx(0.6)


async def test_option_mass_of_a_confident_judge_and_a_distracted_one() -> None:
    with FakeOpenAIServer(option_probs={"A": 0.7, " B": 0.29, "hmm": 0.01}) as srv:
        model = judge(srv)
        (sure,) = await label_all(model, pairs(1))
    with FakeOpenAIServer(option_probs={"Sure": 0.7, "A": 0.2, "B": 0.1}) as srv:
        model = judge(srv)
        (distracted,) = await label_all(model, pairs(1))
    assert not sure.low_option_mass
    assert all(
        j.option_mass == pytest.approx(0.99) and not j.missing_options for j in sure.judgements
    )
    assert distracted.low_option_mass and distracted.judgements[0].option_mass == pytest.approx(0.3)
    assert distracted.judgements[0].option_mass < LOW_MASS


async def test_score_records_option_mass_and_missing_levels() -> None:
    item = AnswerRecord(
        id="i", messages=[Message(role="user", content="How?")], response="Call a locksmith."
    )
    rubric = load_rubric("harmlessness")
    config = ScoreConfig(cot=False)
    with FakeOpenAIServer(option_probs={"4": 0.5, "5": 0.3, "x": 0.2}) as srv:
        rec = await score(item, judge=judge(srv), rubric=rubric, config=config)
    assert rec.option_mass == pytest.approx(0.8) and rec.low_option_mass
    floor = 0.2 / 1.4  # levels 1-3 are missing: each gets the top list's floor, a bound
    expected = {"1": floor, "2": floor, "3": floor, "4": 0.5 / 1.4, "5": 0.3 / 1.4}
    assert rec.score_probs == pytest.approx(expected)
    assert rec.probs_source == "topk_bound" and rec.topk_truncated
    full = {"1": 0.05, "2": 0.05, "3": 0.1, "4": 0.5, "5": 0.3}
    with FakeOpenAIServer(option_probs=full) as srv:
        ok = await score(item, judge=judge(srv), rubric=rubric, config=config)
    assert ok.option_mass == pytest.approx(1.0) and not ok.low_option_mass


# -- 10.9: a bad port and an error inside a 200 -----------------------------------------------


def test_port_out_of_range_is_one_line(tmp_path: Path) -> None:
    src = tmp_path / "p.jsonl"
    write_pairs(src, 1)
    r = run_cli(
        "label",
        str(src),
        "-o",
        str(tmp_path / "o.jsonl"),
        "-j",
        "openai/x",
        "--base-url",
        "http://127.0.0.1:99999/v1",
        "--constitution",
        "harmless",
        *CLI_FAST,
    )
    assert r.returncode != 0 and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "99999" in r.stderr and "port" in r.stderr


def test_error_inside_a_200_reaches_the_failed_record(tmp_path: Path) -> None:
    src = tmp_path / "p.jsonl"
    src.write_text(
        json.dumps({"id": "bad", "prompt": "poison"})
        + "\n"
        + json.dumps({"id": "ok", "prompt": "hi"})
        + "\n"
    )

    def rule(body: dict[str, Any]) -> Fault | None:
        if "poison" in body["messages"][-1]["content"]:
            return Fault(kind="error_body", message="upstream worker ran out of memory")
        return None

    with FakeOpenAIServer(fault_rule=rule) as srv:
        r = run_cli(
            "respond",
            str(src),
            "-o",
            str(tmp_path / "o.jsonl"),
            "-m",
            "openai/m",
            "--base-url",
            srv.base_url,
            "--retries",
            "2",
            *CLI_FAST,
        )
    assert r.returncode == 0, r.stderr
    failed = json.loads((tmp_path / "o.failed.jsonl").read_text())
    assert failed["id"] == "bad" and "upstream worker ran out of memory" in failed["error"]
