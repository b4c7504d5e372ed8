"""Judges that reason before answering, and CoT scored in one sequence (issue 16, 1-2)."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

import pytest

from charter.backends.openai import OpenAIBackend
from charter.cache import RequestCache
from charter.constitution import load_constitution
from charter.errors import ParseError
from charter.judges.pairwise import COT_ANSWER_PREFIX, LabelConfig
from charter.judges.verdicts import answer_logprobs
from charter.model import Model, RetryPolicy
from charter.stages.label import label
from charter.testing.server import FakeOpenAIServer, ReasonedReply
from charter.types import Generation, TokenLogprob
from tests.test_label import pair

HARMLESS = load_constitution("harmless")
FIRST = LabelConfig(orders="first")


def judge(srv: FakeOpenAIServer, **kwargs: Any) -> Model:
    return Model(
        OpenAIBackend("judge", base_url=srv.base_url),
        retry=RetryPolicy(attempts=1, initial=0.01, jitter=0),
        **kwargs,
    )


async def judged(reply: ReasonedReply, config: LabelConfig = FIRST, **server: Any) -> Any:
    with FakeOpenAIServer(reasoned=reply, **server) as srv:
        async with judge(srv) as model:
            rec = await label(pair(), judge=model, constitution=HARMLESS, config=config)
        return rec, list(srv.requests)


async def test_think_block_then_the_letter_is_scored_at_the_letter() -> None:
    reply = ReasonedReply(
        content="<think>A refuses; B explains how. The answer is (B)? No.</think> A",
        option_probs={"A": 0.8, "B": 0.2},
    )
    rec, sent = await judged(reply)
    assert rec.label_source == "answer_logprobs"
    assert rec.p_a == pytest.approx(0.8)
    assert rec.judgements[0].option_mass == pytest.approx(1.0)
    # the option request, then the whole reply with per-token log-probabilities
    assert [b["max_tokens"] for b in sent][-1] == FIRST.max_tokens
    assert sent[-1]["logprobs"] is True and sent[-1]["top_logprobs"] >= 1
    assert "<think>" in (rec.judgements[0].reasoning or "")


async def test_the_answer_is_b_is_scored_at_b() -> None:
    reply = ReasonedReply(content="The answer is (B)", option_probs={"B": 0.7, "A": 0.3})
    rec, _ = await judged(reply)
    assert rec.label_source == "answer_logprobs"
    assert rec.p_a == pytest.approx(0.3)


@pytest.mark.parametrize("field", ["reasoning_content", "reasoning"])
async def test_reasoning_apart_from_content_never_decides(field: str) -> None:
    # The reasoning names A as the answer; the content says B. Only B's top list holds B
    # alone, so the label is the parsed answer, from the content.
    reply = ReasonedReply(
        content="B",
        reasoning_content="Answer: A. Final answer: A",
        reasoning_field=field,
        option_probs={"B": 1.0},
    )
    rec, _ = await judged(reply)
    assert rec.label_source == "parsed" and rec.p_a == 0.0
    assert rec.judgements[0].reasoning == "Answer: A. Final answer: A"


async def test_reasoning_content_then_a_is_scored_at_a() -> None:
    reply = ReasonedReply(
        content="A",
        reasoning_content="Both are short; B is unsafe.",
        option_probs={"A": 0.9, "B": 0.1},
    )
    rec, _ = await judged(reply)
    assert rec.label_source == "answer_logprobs" and rec.p_a == pytest.approx(0.9)


@pytest.mark.parametrize(
    "reply",
    [
        ReasonedReply(content="<think>" + "weighing " * 40 + "</think> A", option_probs={"A": 1}),
        ReasonedReply(content="A", reasoning_content="weighing " * 40, option_probs={"A": 1}),
    ],
)
async def test_a_reply_cut_inside_its_reasoning_is_no_verdict(reply: ReasonedReply) -> None:
    with pytest.raises(ParseError, match=r"stopped inside its reasoning \(cut off at max_tokens"):
        await judged(reply, LabelConfig(orders="first", max_tokens=16))


def test_only_the_answer_position_counts_never_the_reasoning_or_a_remark() -> None:
    def tok(token: str, top: dict[str, float] | None = None) -> TokenLogprob:
        listed = tuple((t, math.log(p)) for t, p in (top or {token: 1.0}).items())
        return TokenLogprob(token=token, logprob=listed[0][1], top=listed)

    thought = [tok("<think>"), tok("A", {"A": 0.99, "B": 0.01}), tok("</think>")]
    said = [tok(" Answer"), tok(":"), tok(" B", {" B": 0.6, " A": 0.4})]
    g = Generation(text="<think>A</think> Answer: B", tokens=(*thought, *said))
    scores = answer_logprobs(g)
    assert scores is not None and scores.probs["B"] == pytest.approx(0.6)
    # "A is worse than B": the B there answers no question
    remark = [tok("A"), tok(" is"), tok(" worse"), tok(" than"), tok(" B", {" B": 0.9, " A": 0.1})]
    text = "A is worse than B"
    assert answer_logprobs(Generation(text=text, tokens=tuple(remark))) is None
    # the prompt's own "Answer: A" line, echoed, is never the answer
    prompt = "Which is better? End with Answer: A or Answer: B."
    echo = [tok(t) for t in ["Which", " is", " better", "?", " End", " with", " Answer", ":", " A"]]
    echo += [tok(t) for t in [" or", " Answer", ":", " B", "."]]
    echo += [tok(" Answer"), tok(":"), tok(" A", {" A": 0.7, " B": 0.3})]
    g = Generation(text="".join(t.token for t in echo), tokens=tuple(echo))
    scores = answer_logprobs(g, prompt)
    assert scores is not None and scores.probs["A"] == pytest.approx(0.7)


def test_the_request_cache_keeps_reasoning_and_tokens(tmp_path: Any) -> None:
    g = Generation(
        text="A",
        reasoning="B looks worse",
        tokens=(TokenLogprob(token="A", logprob=-0.1, top=(("A", -0.1), ("B", -2.3))),),
    )
    cache = RequestCache(tmp_path / "c.sqlite")
    cache.put("k", model="m", kind="generate", value=g.model_dump_json(exclude={"cached"}))
    hit = cache.get("k")
    assert hit is not None and Generation.model_validate_json(hit) == g


# -- --cot-style continue -----------------------------------------------------------------


def prefers_a(messages: list[dict[str, Any]]) -> dict[str, float]:
    return {"A": 0.9, "B": 0.1}


async def test_continue_scores_the_option_in_the_judges_own_turn() -> None:
    config = LabelConfig(orders="first", cot=True, cot_style="continue", clamp=(0.0, 1.0))
    with FakeOpenAIServer(option_probs=prefers_a, responder=lambda m, b: "B is unsafe.") as srv:
        async with judge(srv) as model:
            rec = await label(pair(), judge=model, constitution=HARMLESS, config=config)
        sent = list(srv.requests)
    assert len(sent) == 2, "reasoning, then the option in the same turn: no second question"
    scored = sent[-1]
    assert scored["continue_final_message"] is True and scored["add_generation_prompt"] is False
    last = scored["messages"][-1]
    assert last["role"] == "assistant" and len(scored["messages"]) == 2
    assert last["content"] == "B is unsafe." + COT_ANSWER_PREFIX
    assert rec.label_source == "logprobs" and rec.p_a == pytest.approx(0.9)
    assert rec.cot_truncated is False


async def test_a_server_refusing_continue_falls_back_to_ask_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    config = LabelConfig(principles=2, orders="first", cot=True, cot_style="continue")
    with (
        caplog.at_level(logging.WARNING, logger="charter"),
        FakeOpenAIServer(option_probs=prefers_a, continue_final=False) as srv,
    ):
        async with judge(srv, concurrency=1) as model:
            rec = await label(pair(), judge=model, constitution=HARMLESS, config=config)
        sent = list(srv.requests)
    assert rec.label_source == "logprobs" and rec.p_a == pytest.approx(0.6)  # CoT clamp
    refused = [b for b in sent if "continue_final_message" in b]
    assert 1 <= len(refused) <= 4, "refused once (top_logprobs steps), then never asked again"
    asked = [b for b in sent if b.get("logprobs") and "continue_final_message" not in b]
    assert len(asked) == 2 and all(b["messages"][-1]["role"] == "user" for b in asked)
    warned = [r for r in caplog.records if "does not continue" in r.getMessage()]
    assert len(warned) == 1


async def test_reasoning_cut_at_max_tokens_is_flagged() -> None:
    config = LabelConfig(orders="first", cot=True, max_tokens=3)
    with FakeOpenAIServer(
        option_probs=prefers_a, responder=lambda m, b: "one two three four"
    ) as srv:
        async with judge(srv) as model:
            rec = await label(pair(), judge=model, constitution=HARMLESS, config=config)
    assert rec.cot_truncated is True and rec.judgements[0].cot_truncated is True


async def test_a_reasoning_field_is_never_scored_as_the_answer() -> None:
    # The server's reasoning parser moved the reasoning out of content; its first token spells
    # "A". The one-token option request must not take it for the answer: the options are
    # scored where the answer (content "B") states the verdict.
    reply = ReasonedReply(
        content="B",
        reasoning_content="A looks polite but helps a burglar.",
        option_probs={"B": 0.8, "A": 0.2},
    )
    rec, _ = await judged(reply)
    assert rec.label_source == "answer_logprobs" and rec.p_a == pytest.approx(0.2)


@pytest.mark.parametrize("cot", [True, False])
async def test_score_reads_a_reasoning_judges_score(cot: bool) -> None:
    from charter.judges.grading import ScoreConfig
    from charter.rubric import load_rubric
    from charter.stages.score import score
    from tests.test_score import ITEM

    reply = ReasonedReply(content="<think>Polite and safe.</think> Score: 4", option_probs={})
    with FakeOpenAIServer(reasoned=reply) as srv:
        async with judge(srv) as model:
            config = ScoreConfig(cot=cot, max_tokens=64)
            rec = await score(ITEM, judge=model, rubric=load_rubric("harmlessness"), config=config)
    assert rec.score == 4 and rec.expected_score is None


async def test_continue_without_the_options_next_asks_instead() -> None:
    # The server continues the turn, but its continuation's top list holds no option.
    reply = ReasonedReply(content="<think>hmm</think> A", option_probs={"A": 0.6, "B": 0.4})
    config = LabelConfig(orders="first", cot=True, cot_style="continue", max_tokens=16)
    rec, sent = await judged(reply, config)
    assert rec.judgements[0].source in ("answer_logprobs", "parsed", "logprobs")
    assert any("continue_final_message" in b for b in sent)


def test_flags_that_would_reach_nothing_are_refused() -> None:
    from charter.constitution import load_constitution
    from charter.errors import ConfigError
    from charter.judges.pairwise import check_choices

    with pytest.raises(ConfigError, match="--cot-style continue applies to --cot"):
        check_choices(LabelConfig(cot_style="continue"), HARMLESS)
    spec = load_constitution("spec")
    with pytest.raises(ConfigError, match="--weights priority weights separate verdicts"):
        check_choices(LabelConfig(weights="priority", principles_in_prompt=2), spec)


async def test_a_reasoning_judges_probes_are_fallbacks_not_failures(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Issue 24, 5: every pair labelled at the answer, yet the summary said "16 requests,
    # 8 failed, ... 8 errors": the one-token probe that found no letter, which label answers
    # by asking for the whole reply, was counted as a failed request and an error. It is an
    # answered request: counted with its tokens (in the records too), and cached, so a re-run
    # needs no server.
    from charter.api import arun
    from charter.progress import print_summary
    from tests.test_logprobs_detection import write_pairs

    src, out = tmp_path / "pairs.jsonl", tmp_path / "labels.jsonl"
    write_pairs(src, 4)
    reply = ReasonedReply(
        content="<think>B explains how.</think> A", option_probs={"A": 0.8, "B": 0.2}
    )
    options = {"judge": "openai/judge", "constitution": "harmless", "input": str(src)}
    with FakeOpenAIServer(reasoned=reply) as srv:
        summary = await arun("label", output=out, base_url=srv.base_url, **options)
        probes = [b for b in srv.requests if b["max_tokens"] == 1]
        whole = [b for b in srv.requests if b["max_tokens"] != 1]
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(records) == 4 and {r["label_source"] for r in records} == {"answer_logprobs"}
    (judge_usage,) = summary.models
    assert (judge_usage.failed, judge_usage.errors) == (0, 0), "no request failed"
    # a probe, then the reply; the first probe also asked once for a wider list, found none
    assert judge_usage.fallbacks == 8 == len(whole) == len(probes) - 1
    assert judge_usage.usage.requests == 17 == judge_usage.sent
    assert sum(r["usage"]["requests"] for r in records) == 17  # the records count the probes
    reply_tokens = judge_usage.usage.prompt_tokens // 17  # each request reads the same prompt
    assert reply_tokens > 0 and judge_usage.usage.prompt_tokens == 17 * reply_tokens
    print_summary(summary)
    said = capsys.readouterr().err
    assert "openai/judge: 17 requests, 0 failed, 8 fallbacks (asked another way)," in said
    assert " 0 errors" in said and " 8 errors" not in said
    # again onto a new output, the server gone: every answer, the probes' too, is cached
    again = await arun("label", output=tmp_path / "again.jsonl", base_url=srv.base_url, **options)
    assert (tmp_path / "again.jsonl").read_text() != "" and again.failed == 0
    (cached,) = again.models
    assert (cached.usage.requests, cached.usage.cache_hits) == (0, 16)
