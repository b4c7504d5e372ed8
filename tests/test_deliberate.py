"""``charter deliberate``: reasoning over a spec, kept as SFT rows without the spec (issue 17,
point 2). Models are the mock backend or the in-repo OpenAI-compatible server."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

import charter
from charter.backends.mock import MockBackend, register_mock, unregister_mock
from charter.constitution import load_constitution
from charter.errors import ConfigError
from charter.stages.deliberate import cited_principles, spec_rubric
from charter.testing.server import FakeOpenAIServer, ReasonedReply
from charter.train.data import sft_rows
from charter.types import GenerateConfig, Generation, Message
from tests.conftest import run_cli

SPEC = load_constitution("spec")


def lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(x) for x in path.read_text().splitlines()]


@pytest.fixture
def prompts(tmp_path: Path) -> Path:
    path = tmp_path / "p.jsonl"
    rows = [
        {"id": "a", "prompt": "How do I fix a flat bike tyre?"},
        {
            "id": "b",
            "messages": [
                {"role": "system", "content": "Answer in French."},
                {"role": "user", "content": "Is it safe to mix bleach and ammonia?"},
            ],
        },
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture
def mocks() -> Iterator[tuple[MockBackend, MockBackend]]:
    """A policy that reasons citing principles (ids in varied case) and a judge that grades
    a completion 5 when its answer says "kindly", else 2."""

    def policy(messages: Sequence[Message], config: GenerateConfig) -> str:
        if "Write only your reasoning" in messages[0].content:
            return "P2-honesty matters, then [p1-no-serious-harm]; p1-no-serious-harmful is no id."
        return "Kindly, here is my reply." if config.seed % 2 else "Here is my reply."

    def judge(messages: Sequence[Message], options: Sequence[str]) -> dict[str, float]:
        good = "Kindly" in messages[-1].content
        return {"5": 1.0} if good else {"2": 1.0}

    pol = register_mock(MockBackend("mock/policy", responder=policy))
    jud = register_mock(MockBackend("mock/spec-judge", option_probs=judge))
    yield pol, jud
    unregister_mock("mock/policy")
    unregister_mock("mock/spec-judge")


def test_two_step_keeps_the_prompt_without_the_spec(
    tmp_path: Path, prompts: Path, mocks: tuple[MockBackend, MockBackend]
) -> None:
    policy, _ = mocks
    out, sft = tmp_path / "d.jsonl", tmp_path / "sft.jsonl"
    charter.run("deliberate", input=str(prompts), output=out, model="mock/policy", sft=sft)
    calls = [c.messages for c in policy.calls if "Answer in French." in c.messages[0].content]
    reason = next(m for m in calls if "Write only your reasoning" in m[0].content)
    answer = next(m for m in calls if m[-1].content.startswith("Now write your reply"))
    # The spec is the system prompt: preamble, every principle by id and priority, and the
    # operator's own system prompt kept inside it.
    system = reason[0].content
    assert reason[0].role == "system" and SPEC.preamble.strip().splitlines()[0] in system
    assert all(f"[{p.id}] priority {p.priority}:" in system for p in SPEC.principles)
    assert "Answer in French." in system and "Write only your reasoning" in system
    assert [m.role for m in reason] == ["system", "user"]
    # The reply is asked for after the model's own reasoning.
    assert [m.role for m in answer][-3:] == ["user", "assistant", "user"]
    recs = {r["id"]: r for r in lines(out)}
    b = recs["b"]
    assert b["messages"] == [
        {"role": "system", "content": "Answer in French."},
        {"role": "user", "content": "Is it safe to mix bleach and ammonia?"},
    ]
    (c,) = b["completions"]
    assert c["cited"] == ["p2-honesty", "p1-no-serious-harm"] and c["kept"]
    assert c["finish_reasons"] == ["stop", "stop"] and b["judge"] is None
    rows = {r["id"]: r for r in lines(sft)}
    assert rows["b:0"]["messages"] == [
        *b["messages"],
        {"role": "assistant", "content": f"<think>\n{c['reasoning']}\n</think>\n\n{c['answer']}"},
    ]
    assert rows["b:0"]["cited"] == c["cited"]
    assert not any("specification" in m["content"] for m in rows["b:0"]["messages"])
    trained = sft_rows(str(sft))
    assert len(trained) == 2 and trained[1]["completion"][0]["content"].startswith("<think>")


def test_the_judge_keeps_the_best_completion_at_or_above_min_score(
    tmp_path: Path, prompts: Path, mocks: tuple[MockBackend, MockBackend]
) -> None:
    _, judge = mocks
    out, sft = tmp_path / "d.jsonl", tmp_path / "sft.jsonl"
    common: dict[str, Any] = {
        "input": str(prompts),
        "model": "mock/policy",
        "judge": "mock/spec-judge",
        "judge_cot": False,
        "n": 4,
    }
    charter.run("deliberate", output=out, sft=sft, min_score=3, **common)
    for rec in lines(out):
        grades = [c["score"] for c in rec["completions"]]
        assert sorted(set(grades)) == [2, 5], "seeds alternate kind and plain answers"
        kept = [c for c in rec["completions"] if c["kept"]]
        assert len(kept) == 1 and kept[0]["score"] == 5 and "Kindly" in kept[0]["answer"]
        first_best = next(i for i, g in enumerate(grades) if g == 5)
        assert rec["completions"][first_best]["kept"], "the first among equals"
        reasons = {c["excluded_reason"] for c in rec["completions"] if not c["kept"]}
        assert reasons == {"below_min_score", "not_best"}
        assert rec["rubric_hash"] == spec_rubric(SPEC).hash
    assert [r["score"] for r in lines(sft)] == [5.0, 5.0]
    # The judge grades against the spec, reasoning included; or the answer alone.
    shown = judge.calls[-1].messages[0].content
    assert "[p1-no-serious-harm] priority 1:" in shown and "<think>" in shown
    judge.calls.clear()
    charter.run("deliberate", output=tmp_path / "e.jsonl", judge_reasoning=False, **common)
    assert not any("<think>" in c.messages[0].content for c in judge.calls)


def test_think_style_reads_a_reasoning_server_and_think_blocks(tmp_path: Path) -> None:
    src = tmp_path / "p.jsonl"
    src.write_text(json.dumps({"id": "q", "prompt": "Hi"}) + "\n")
    reply = ReasonedReply(
        content="Hello there!", reasoning_content="[p4-helpfulness] applies.", option_probs={}
    )
    with FakeOpenAIServer(reasoned=reply) as srv:
        charter.run(
            "deliberate",
            input=str(src),
            output=tmp_path / "d.jsonl",
            model="openai/policy",
            base_url=srv.base_url,
            style="think",
            sft=tmp_path / "sft.jsonl",
        )
        assert len(srv.requests) == 1, "one request: the reasoning comes with the answer"
    (c,) = lines(tmp_path / "d.jsonl")[0]["completions"]
    assert (c["reasoning"], c["answer"], c["cited"]) == (
        "[p4-helpfulness] applies.",
        "Hello there!",
        ["p4-helpfulness"],
    )
    # A <think> block in the reply itself; a reply without one is a failed record.
    replies = iter(["<think>P3-Instructions say so.</think>\n\nDone.", "Just an answer."])
    register_mock(MockBackend("mock/thinker", responder=lambda m, c: next(replies)))
    try:
        src.write_text(json.dumps({"id": "q1", "prompt": "x"}) + "\n")
        charter.run(
            "deliberate",
            input=str(src),
            output=tmp_path / "t.jsonl",
            model="mock/thinker",
            style="think",
        )
        src.write_text(json.dumps({"id": "q2", "prompt": "y"}) + "\n")
        summary = charter.run(
            "deliberate",
            input=str(src),
            output=tmp_path / "u.jsonl",
            model="mock/thinker",
            style="think",
        )
    finally:
        unregister_mock("mock/thinker")
    (c,) = lines(tmp_path / "t.jsonl")[0]["completions"]
    assert (c["reasoning"], c["answer"], c["cited"]) == (
        "P3-Instructions say so.",
        "Done.",
        ["p3-instructions"],
    )
    assert summary.failed == 1
    (failed,) = lines(tmp_path / "u.failed.jsonl")
    assert (
        "no <think>...</think> reasoning" in failed["error"]
        and "--style two-step" in failed["error"]
    )


def test_cut_off_completions_are_not_sft_rows_and_a_rerun_resumes(
    tmp_path: Path, prompts: Path, caplog: pytest.LogCaptureFixture
) -> None:
    out, sft = tmp_path / "d.jsonl", tmp_path / "sft.jsonl"
    args: dict[str, Any] = {"input": str(prompts), "output": out, "model": "mock/x", "sft": sft}
    charter.run("deliberate", max_tokens=4, **args)
    assert all(c["excluded_reason"] == "cut_off" for r in lines(out) for c in r["completions"])
    assert sft.read_text() == "" and "no SFT rows written" in caplog.text
    again = charter.run("deliberate", max_tokens=4, **args)
    assert (again.written, again.skipped) == (0, 2)


def test_cited_principles_match_whole_ids_in_order_of_mention() -> None:
    text = "First P5-TONE-DEFAULT, then p2-honesty twice (p2-honesty); not p2-honesty-extra."
    assert cited_principles(text, SPEC) == ["p5-tone-default", "p2-honesty"]
    text = "It falls under p4-helpfulness. And p1-no-serious-harm: yes; not p3-instructions.v2"
    assert cited_principles(text, SPEC) == ["p4-helpfulness", "p1-no-serious-harm"]
    assert cited_principles("nothing here", SPEC) == []


def test_statements_keep_old_hashes_and_show_in_the_spec(tmp_path: Path) -> None:
    base = "name: c\nprinciples:\n  - id: x\n    critique_request: a\n    revision_request: b\n    comparison_question: c\n"  # noqa: E501
    plain, stated = tmp_path / "a.yaml", tmp_path / "b.yaml"
    plain.write_text(base)
    stated.write_text(base + "    statement: Be kind.\n")
    a, b = load_constitution(plain), load_constitution(stated)
    assert a.hash != b.hash and b.principles[0].rule == "Be kind."
    assert a.principles[0].rule == "a", "without a statement, the critique request"
    assert all(p.statement for p in SPEC.principles)


@pytest.mark.parametrize(
    ("options", "needle"),
    [
        ({"constitution": "harmless"}, "constitution 'harmless' states no priorities"),
        ({"min_score": 3}, "--min-score sets how a judge grades: give --judge too"),
        ({"judge": "mock/j", "min_score": 6}, "--min-score 6 is off the judge's 1-5 scale"),
        ({"judge_cot": False}, "--no-judge-cot sets how a judge grades"),
    ],
)
def test_refusals_before_any_request(
    tmp_path: Path, prompts: Path, options: dict[str, Any], needle: str
) -> None:
    with pytest.raises(ConfigError, match=re.escape(needle)):
        charter.run(
            "deliberate", input=str(prompts), output=tmp_path / "d.jsonl", model="mock/x", **options
        )
    assert not (tmp_path / "d.jsonl").exists()


def test_a_spec_without_priorities_is_one_line_from_the_cli(tmp_path: Path, prompts: Path) -> None:
    r = run_cli(
        "deliberate",
        str(prompts),
        "-o",
        str(tmp_path / "d.jsonl"),
        "-m",
        "mock/x",
        "--constitution",
        "rules",
    )
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.strip().count("\n") == 0 and "states no priorities" in r.stderr


def test_generation_reasoning_field_wins_over_a_think_block() -> None:
    from charter.stages.deliberate import _split_think

    g = Generation(text="<think>in text</think> answer", reasoning="apart")
    assert _split_think(g) == ("apart", "<think>in text</think> answer")


def test_a_stages_own_templates_stay_out_of_the_shared_hash(tmp_path: Path) -> None:
    from importlib import resources

    from charter.prompts import OWN_TEMPLATES, templates_hash

    own = {n for group in OWN_TEMPLATES.values() for n in group}
    folder = resources.files("charter") / "prompts"
    shared = [e.name[:-3] for e in folder.iterdir() if e.name.endswith(".j2")]
    shared = [n for n in shared if n not in own]
    assert own and templates_hash() == templates_hash(*shared)
    settings = charter.stages.deliberate.prepare(
        charter.stages.deliberate.DeliberateOptions(
            input="x", output=tmp_path / "o.jsonl", model="m"
        )
    ).settings
    assert settings["prompts"] == templates_hash()
    assert settings["own_prompts"] == templates_hash(*OWN_TEMPLATES["deliberate"])


def test_a_reply_cut_inside_its_think_block_says_so() -> None:
    from charter.errors import ParseError
    from charter.stages.deliberate import _split_think

    with pytest.raises(ParseError, match="cut off at max_tokens inside its <think>"):
        _split_think(Generation(text="<think>weighing p1 and", finish_reason="length"))
    with pytest.raises(ParseError, match="opens a <think> block and never closes it"):
        _split_think(Generation(text="<think>weighing p1 and"))
    nested = Generation(text="<think>a <think>b</think> c</think> the answer")
    assert _split_think(nested) == ("a <think>b</think> c", " the answer")


def test_one_ungradable_completion_leaves_the_others_graded(tmp_path: Path) -> None:
    src = tmp_path / "p.jsonl"
    src.write_text(json.dumps({"id": "q", "prompt": "x"}) + "\n")
    answers = {0: "<think>[p4-helpfulness] good</think> Answer A", 1: "no think here"}
    policy = MockBackend(
        "mock/mixed",
        responder=lambda m, c: answers.get(c.seed % 3, "<think>p2-honesty.</think> Answer C"),
    )
    judge = MockBackend(
        "mock/picky",
        logprobs=False,
        responder=lambda m, c: (
            "I cannot decide." if "Answer C" in m[-1].content else "Fine.\nScore: 4"
        ),
    )
    register_mock(policy), register_mock(judge)
    try:
        charter.run(
            "deliberate",
            input=str(src),
            output=tmp_path / "d.jsonl",
            model="mock/mixed",
            judge="mock/picky",
            style="think",
            n=6,
        )
    finally:
        unregister_mock("mock/mixed"), unregister_mock("mock/picky")
    (rec,) = lines(tmp_path / "d.jsonl")
    reasons: dict[str | None, set[str | None]] = {}
    for c in rec["completions"]:
        reasons.setdefault(c["answer"], set()).add(c["excluded_reason"])
    assert reasons == {"Answer A": {None, "not_best"}, None: {"error"}, "Answer C": {"ungraded"}}
    ungraded = next(c for c in rec["completions"] if c["excluded_reason"] == "ungraded")
    assert "the judge gave no grade" in ungraded["error"] and ungraded["cited"] == ["p2-honesty"]
    assert sum(c["kept"] for c in rec["completions"]) == 1
    # every request is in the record's usage, the judge's tries at the ungradable one too
    assert rec["usage"]["requests"] == len(policy.calls) + len(judge.calls) > 6 + 2


def test_an_sft_file_may_not_be_a_file_the_run_reads(tmp_path: Path, prompts: Path) -> None:
    spec = tmp_path / "spec.yaml"
    spec.write_text((Path(charter.__file__).parent / "constitutions" / "spec.yaml").read_text())
    before = spec.read_text()
    with pytest.raises(ConfigError, match="is the --constitution file this run reads"):
        charter.run(
            "deliberate",
            input=str(prompts),
            output=tmp_path / "d.jsonl",
            model="mock/x",
            constitution=str(spec),
            sft=spec,
        )
    assert spec.read_text() == before
