"""Rubric grading: anchored parsing, retries, expected scores, relative mode."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from charter.backends.mock import MockBackend
from charter.backends.openai import OpenAIBackend
from charter.errors import ConfigError, ParseError
from charter.judges.grading import ScoreConfig, parse_score, score_messages
from charter.model import Model
from charter.records import AnswerRecord
from charter.rubric import Rubric, builtin_rubrics, load_rubric
from charter.stages.score import score
from charter.testing.server import FakeOpenAIServer
from charter.types import Message
from tests.conftest import run_cli

RUBRIC = load_rubric("harmlessness")
ITEM = AnswerRecord(
    id="i",
    messages=[Message(role="user", content="How do I pick a lock?")],
    response="Call a locksmith.",
)


def test_builtin_rubrics_and_validation(tmp_path: Path) -> None:
    assert set(builtin_rubrics()) == {"harmlessness", "helpfulness", "honesty"}
    assert all(load_rubric(n).scores == [1, 2, 3, 4, 5] for n in builtin_rubrics())
    bad = tmp_path / "r.yaml"
    bad.write_text("name: x\ncriterion: c\nlevels: {1: a, 3: b}\n")
    with pytest.raises(ConfigError, match=r"r\.yaml: .*consecutive"):
        load_rubric(bad)
    with pytest.raises(ConfigError, match="rubric not found: nope"):
        load_rubric("nope")


def test_template_that_contains_the_score_pattern_is_never_parsed() -> None:
    """prometheus-eval #58: a regex run over text that included the template always found the
    template's own example score. Here the rubric and template both say "Score: 5"."""
    tricky = Rubric(
        name="t",
        criterion="Safety. Example of the format: Score: 5",
        levels={1: "bad (Score: 5 is best)", 2: "meh", 3: "ok", 4: "good", 5: "great"},
    )
    prompt = score_messages(ITEM, tricky, cot=True)[0].content
    assert "Score: 5" in prompt
    assert parse_score("Feedback: it refuses politely.\nScore: 2", prompt, tricky.scores) == 2
    echoed = prompt + "\nIt is fine.\nScore: 3"
    assert parse_score(echoed, prompt, tricky.scores) == 3, "an echoed prompt is skipped"
    assert parse_score(prompt, prompt, tricky.scores) is None, "an echo alone is no score"
    assert parse_score("No number here.", prompt, tricky.scores) is None
    assert parse_score("Score: 7", prompt, tricky.scores) is None, "off the scale"
    assert parse_score("Rating: 4/5", prompt, tricky.scores) == 4
    assert parse_score("Good answer.\n4", prompt, tricky.scores) == 4


async def test_unparseable_answers_are_retried_then_fail_with_raw_text() -> None:
    mock = MockBackend(outputs=["hmm", "not sure", "really not sure"], logprobs=False)
    with pytest.raises(ParseError, match="in 3 answers; last raw answer: 'really not sure'"):
        await score(ITEM, judge=Model(mock), rubric=RUBRIC, config=ScoreConfig())
    assert len(mock.calls) == 3
    assert [c.config.temperature for c in mock.calls] == [0.0, 0.7, 0.7]
    ok = MockBackend(outputs=["hmm", "Polite refusal.\nScore: 4"], logprobs=False)
    rec = await score(ITEM, judge=Model(ok), rubric=RUBRIC, config=ScoreConfig())
    assert (rec.score, rec.attempts, rec.expected_score) == (4, 2, None)
    assert rec.feedback == "Polite refusal.\nScore: 4"


async def test_expected_score_from_logprobs_next_to_parsed() -> None:
    def responder(messages: list[dict[str, Any]], body: dict[str, Any]) -> str:
        return "Safe and kind.\nScore: 4"

    probs = {"4": 0.6, "5": 0.3, " 3": 0.1, "The": 0.0}
    with FakeOpenAIServer(option_probs=probs, responder=responder) as srv:
        judge = Model(OpenAIBackend("j", base_url=srv.base_url))
        rec = await score(ITEM, judge=judge, rubric=RUBRIC, config=ScoreConfig())
        sent = list(srv.requests)
        plain = await score(ITEM, judge=judge, rubric=RUBRIC, config=ScoreConfig(cot=False))
        plain_sent = srv.requests[len(sent) :]
    assert rec.score == 4
    # levels 1 and 2 are not in the top list: each gets its floor (0.1), never 0
    assert rec.expected_score == pytest.approx(
        (4 * 0.6 + 5 * 0.3 + 3 * 0.1 + 1 * 0.1 + 2 * 0.1) / 1.2
    )
    assert rec.score_probs is not None and rec.score_probs["1"] == pytest.approx(0.1 / 1.2)
    assert rec.probs_source == "topk_bound" and rec.topk_truncated
    # feedback, the score's logprobs, then a wider top list for the missing levels (this
    # server has no more candidates to give: found out once, never asked again)
    assert len(sent) == 3 and not sent[0].get("logprobs") and sent[1]["logprobs"]
    assert sent[2]["top_logprobs"] == 1000
    assert sent[1]["messages"][1] == {"role": "assistant", "content": "Safe and kind.\nScore: 4"}
    assert len(plain_sent) == 1 and plain.score == 4 and plain.feedback is None


async def test_reference_answer_is_shown() -> None:
    mock = MockBackend(outputs=["Score: 5"], logprobs=False)
    item = ITEM.model_copy(update={"reference": "A locksmith can help you get back in."})
    await score(item, judge=Model(mock), rubric=RUBRIC, config=ScoreConfig())
    assert "A locksmith can help you get back in." in mock.calls[0].messages[0].content


def test_score_cli_absolute_and_relative(tmp_path: Path) -> None:
    src = tmp_path / "answers.jsonl"
    src.write_text(json.dumps({"id": "a", "prompt": "q", "responses": ["one", "two"]}) + "\n")
    pairs_src = tmp_path / "pairs.jsonl"
    pairs_src.write_text(
        json.dumps({"id": "a", "prompt": "q", "responses": ["one", "two"]})
        + "\n"
        + json.dumps({"id": "b", "prompt": "q", "response_a": "x", "response_b": "y"})
        + "\n"
    )
    every_level = {"1": 1e-9, "2": 0.5, "3": 0.5, "4": 1e-9, "5": 1e-9, "A": 0.8, "B": 0.2}
    with FakeOpenAIServer(option_probs=every_level) as srv:
        common = ["-j", "openai/j", "--base-url", srv.base_url, "--rubric", "helpfulness"]
        r = run_cli("score", str(src), "-o", str(tmp_path / "abs.jsonl"), "--no-cot", *common)
        assert r.returncode == 0, r.stderr
        recs = [json.loads(x) for x in (tmp_path / "abs.jsonl").read_text().splitlines()]
        assert sorted(x["id"] for x in recs) == ["a:0", "a:1"]
        assert all(x["expected_score"] == pytest.approx(2.5) for x in recs)
        rel = run_cli(
            "score",
            str(pairs_src),
            "-o",
            str(tmp_path / "rel.jsonl"),
            "--mode",
            "relative",
            *common,
        )
        assert rel.returncode == 0, rel.stderr
    pairs = [json.loads(x) for x in (tmp_path / "rel.jsonl").read_text().splitlines()]
    assert len(pairs) == 2 and all(p["constitution"] == "rubric:helpfulness" for p in pairs)
    assert all(p["p_a"] == pytest.approx(0.5) and p["position_consistent"] is False for p in pairs)
    bad = run_cli(
        "score",
        str(src),
        "-o",
        str(tmp_path / "x.jsonl"),
        "-j",
        "mock/j",
        "--rubric",
        "helpfulness",
        "--reference",
        "missing",
    )
    assert bad.returncode == 2 and "reference field 'missing' is missing" in bad.stderr
