"""Reading verdicts from text: the judge's final word only, by structure, never a guess."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from charter.backends.openai import OpenAIBackend
from charter.constitution import load_constitution
from charter.errors import ParseError
from charter.judges.grading import ScoreConfig
from charter.judges.pairwise import LabelConfig
from charter.judges.records import LabelRecord
from charter.judges.retry import ATTEMPTS
from charter.judges.verdicts import (
    bare_choice,
    parse_choice,
    parse_score,
    read_choice,
    read_score,
    strip_reasoning,
)
from charter.model import Model, RetryPolicy
from charter.pairs import PairRecord
from charter.records import AnswerRecord
from charter.rubric import load_rubric
from charter.stages.label import label
from charter.stages.score import score
from charter.testing.server import FakeOpenAIServer, Fault
from charter.types import Generation, Message
from tests.conftest import run_cli

# {w}: the candidate the judge chose; {l}: the other one. Each phrasing runs with both letters.
CHOSEN = [
    "{w}",
    "{w}.",
    "  ({w}) because it declines to help.",
    "**{w}**",
    "{w} - it refuses politely.",
    "{w}, because candidate {l} gives instructions.",
    "Answer: {w}",
    "Final answer: **{w}**",
    "Verdict: ({w})",
    "My final verdict is candidate {w}.",
    "The better candidate is {w}.",
    "The better one is ({w}).",
    "Therefore, candidate {w} is better than candidate {l}.",
    "Candidate {l} is worse than candidate {w}.",
    "Final answer: {w} (candidate {l} is unsafe)",
    "Final answer: {w}. Candidate {l} gives lock-picking steps.",
    "{w} is better.",
    "I prefer {w} over {l}.",
    "I'd go with {w}.",
    "I would choose response {w}.",
    "Response {w} is preferable to response {l}.",
    "{w} is the safer choice.",
    "Candidate {w} is less harmful than candidate {l}.",
    "Candidate {l} is more harmful than candidate {w}.",
    "The worse response is {l}.",
    "The worse answer is {l}.",
    "The less helpful choice is {l}.",
    "The better answer is {w}.",
    "{w} wins.",
    "So, candidate {w}.",
    "While {l} is more detailed, {w} is better.",
    "{l} is better written, but {w} is safer.",
    "Comparing {l} and {w}, {w} is better.",
    "Both have merit.\nAnswer: {w}",
    "Although {l} is longer, the answer is: {w}",
    "{w} > {l}",
    "Answer: {l}. On reflection, candidate {w} is better.",
    "Candidate {l} explains how to pick the lock. Candidate {w} refuses.\n\nAnswer: {w}",
    "I'd say {w}.",
    "Candidate {w}'s reply is better.",
    "Answer: {w}\nCandidate {l} gives instructions, which is harmful.",
    "Option ({w}) is better than option ({l}).",
    "### Verdict\n{w}",
    "<think>{l} looks better at first.</think>\n\nFinal answer: {w}",
    "<think>Final answer: {l}... wait, actually {w}.</think> {w}",
    "<thinking>Answer: {l}</thinking>\nAnswer: {w}",
    "</think>\n\n{w}",
    "Answer: {w}\n(Note: {l} would be better if it cited sources.)",
    "If {l} were shorter, {l} would be better. Answer: {w}",
    # the last explicit answer line outranks later remarks on aspects
    "Answer: {w}\n\nNote that {l} is better in tone.",
    "Answer: {w}\n\nNote: {l} is more helpful.",
    "Answer: {w}\nExplanation: {l} is more helpful but riskier.",
    "Answer: {l}\nAnswer: {w}",
    "Final verdict: {w}\n\n{l} is better in tone, but {w} is safer.",
    # a correction replaces what came before
    "{l}. No, {w}.",
    "{l}. Actually {w}.",
    "{l} is better than {w}. Actually, {w}.",
    "{l} is better than {w}. Correction: {w}.",
    "I'd say {l} is better, no wait, {w}.",
    "Answer: {l}. Wait, {w}.",
    "{w} is better than {l}, actually.",
    "{w} is better, no doubt.",
    # hedges reach only their own clause
    "Candidate {l} may be longer, but {w} is better.",
    "Many would say {l} is better, but I think {w} is better.",
    "{w} is better because {l} could mislead users.",
    "Final answer: {w} ({l} might mislead users)",
    "The better answer is {w}, not {l}.",
    # a verdict outranks remarks on one quality, wherever they stand
    "{w} is better. {l} is more accurate, but unsafe.",
    "{w}. That said, {l} is more useful.",
    "I pick {w}. {l} is more helpful though.",
    "{l} is more helpful, but {w} is better.",
    "{w} wins. {l} is safer.",
    # what only seems so gives way to what is
    "{l} seems better but {w} is actually better.",
    "{l} looks better, but {w} is really better.",
    "{w} is in fact better.",
]

UNDECIDED = [
    "Both are good.",
    "Neither.",
    "I cannot say.",
    "Absolutely",
    "A few reasons come to mind, and both replies have merit.",
    "Neither {w} nor {l} is better.",
    "{w} is not better than {l}.",
    "Answer: {w} or {l}",
    "Candidate {w}, unlike candidate {l}, refuses.",
    "Final answer: the first one",
    "Answer: {w}\nOn reflection, both are equally good.",
    "{w} is more helpful, but {l} is safer.",
    "Candidate {w} gives instructions.",
    "Which is better, {w} or {l}?",
    "It's a tie between {w} and {l}.",
    "{w}: gives instructions.\n{l}: refuses.",
    "{w}) gives instructions\n{l}) refuses",
    "<think>Okay, candidate {w}",
    "<think>Final answer: {w}</think>",
    "<reasoning>{w} is better than {l}.</reasoning>",
    "{w} would be better if it were shorter.",
    "{w} would be better than {l} if it were accurate.",
    # a guess or someone else's view is no verdict
    "Someone might think {w} is better.",
    "Perhaps {w} is better.",
    "{w} is better, perhaps.",
    "No-one would say {w} is better.",
    "Many would say {w} is better. I disagree.",
    "At first glance {w} seems better. However, on closer inspection, it is not.",
    "{w} is better than {l} in no way.",
    # bare letters that disagree; a correction that cannot be read
    "{w}\n{l}",
    "{w} is better than {l}.\n{l}",
    "{w}. No, the other one.",
    "Answer: {w}. Wait, I meant the other one.",
    "Answer: {w}\nWait, no.",
    "Answer: {w}\nBoth are equally good.",
    # quality remarks that disagree, with no verdict; a remark does not correct a verdict
    "Both responses address the question. Response {w} is safer. "
    "Response {l} is more helpful though.",
    "{w} is better. Actually, {l} is more accurate.",
    # a denial, a guess, a question
    "It is false that {w} is better.",
    "{w} seems better.",
    "It appears that {w} is better.",
    "{w} is better than {l}?",
    "",
]

# Replies that may read as the chosen letter or as None, but never as the other letter.
NEVER_THE_OTHER = [
    "{l} is better than {w}? I disagree, {w}.",
    "I used to think {l} is better. Now {w}.",
    "I prefer {l} less than {w}.",
]

LETTERS = [("A", "B"), ("B", "A")]


@pytest.mark.parametrize(("w", "loser"), LETTERS)
@pytest.mark.parametrize("phrasing", CHOSEN)
def test_verdict_is_read_by_structure(phrasing: str, w: str, loser: str) -> None:
    assert parse_choice(phrasing.format(w=w, l=loser)) == w


@pytest.mark.parametrize(("w", "loser"), LETTERS)
@pytest.mark.parametrize("phrasing", UNDECIDED)
def test_no_plain_verdict_is_none(phrasing: str, w: str, loser: str) -> None:
    assert parse_choice(phrasing.format(w=w, l=loser)) is None


@pytest.mark.parametrize(("w", "loser"), LETTERS)
@pytest.mark.parametrize("phrasing", NEVER_THE_OTHER)
def test_never_the_other_letter(phrasing: str, w: str, loser: str) -> None:
    assert parse_choice(phrasing.format(w=w, l=loser)) in (w, None)


@pytest.mark.parametrize("letter", ["A", "B"])
def test_lowercase_letters_only_after_a_candidate_word(letter: str) -> None:
    low = letter.lower()
    assert parse_choice(f"Candidate {low} is better.") == letter
    assert parse_choice(f"The answer is ({low}).") == letter
    assert parse_choice(f"The response {low} user wants is longer.") is None


def test_reasoning_blocks() -> None:
    assert strip_reasoning("<think>A</think>B") == "\nB"
    assert strip_reasoning("<THINK>A</THINK>\n<thinking>x</thinking>B") == "\n\n\nB"
    assert strip_reasoning("<think>never closed") is None
    assert strip_reasoning("reasoning opened in the prompt</think>B") == "B"


@pytest.mark.parametrize("letter", ["A", "B"])
def test_truncated_reply_is_no_verdict(letter: str) -> None:
    cut = Generation(text=f"<think>Okay, candidate {letter}", finish_reason="length")
    assert read_choice(cut) is None
    sentence = Generation(text=f"Final answer: {letter}", finish_reason="length")
    assert read_choice(sentence) is None, "even a verdict line may have been revised"
    bare = Generation(text=f"{letter}.", finish_reason="length")
    assert read_choice(bare) is None and read_choice(bare, short=True) == letter
    longer = Generation(text=f"{letter} because it", finish_reason="length")
    assert read_choice(longer, short=True) is None
    assert bare_choice(f"**({letter})**") == letter and bare_choice(f"{letter} wins") is None
    assert read_choice(Generation(text=f"Answer: {letter}", finish_reason="stop")) == letter


def test_echoed_prompt_is_never_read() -> None:
    prompt = 'Finish with a final line of the form "Answer: A" or "Answer: B".'
    echoed = Generation(text=prompt + "\nAnswer: B")
    assert read_choice(echoed, prompt) == "B"
    assert read_choice(Generation(text=prompt.replace("A", "B", 1)), prompt) is None


SCALE = [1, 2, 3, 4, 5]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Score: 4", 4),
        ("Score: 10", None),
        ("Score: 0", None),
        ("Score: 4/5", 4),
        ("Score: 4/10", None),
        ("Rating: 4 out of 5", 4),
        ("Score: 3.5", None),
        ("Score: 3-4", None),
        ("Score: 3 or 4", None),
        ("Score: **2**", 2),
        ("Polite and safe.\n4", 4),
        ("Polite and safe.\n12", None),
        ("[RESULT] 5", 5),
        ("I would give it a score of 3.", 3),
        ("Score: 1\nOn reflection, Score: 5", 5),
        ("Score: 2\nA score of 5 would need sources.", 2),
        ("<think>Score: 2</think>\nScore: 5", 5),
        ("<think>Score: 2", None),
        ("It is fine, maybe 4 or 5 points.", None),
        # "Score: N" outranks a line that opens with "Score N"; "Score 5 answers" is no score
        ("Score: 3\nScore 5 answers cite sources.", 3),
        ("Rating 4/5", 4),
        ("Polite.\nScore 4", 4),
        # a score in a hypothetical is not given
        ("Score: 4. To get Score: 5 it would need citations.", 4),
        ("Score: 4\nIf it cited sources, Score: 5 would be fair.", 4),
        ("Score: 5\nScore: 4 would be for minor issues.", 5),
        ("Score: 4\nNeeds more sources.", 4),
        # a number that runs on is no score
        ("Score: 4 and a half", None),
        ("Score: 4 and 1/2", None),
        ("Score: 4½", None),
        ("Score: 1e0", None),
        ("Score: 3%", None),
        ("Score: 3 %", None),
        ("Score: 4+", None),
        ("Score: 4 and the tone is fine.", 4),
        # an overall or final score outranks scores for single aspects; others must agree
        ("Score: 5 for accuracy, Score: 2 for safety. Overall: 3", 3),
        ("Final score: 2. Score: 5 for tone.", 2),
        ("Score: 3. The previous version deserved Score: 2.", None),
        ("Score: 5 for accuracy, Score: 2 for safety.", None),
        ("Score: 4\nScore: 4/5", 4),
        ("Overall: 3 factual errors. Score: 2", 2),
        ("", None),
    ],
)
def test_scores(text: str, expected: int | None) -> None:
    assert parse_score(text, SCALE) == expected


def test_scores_on_a_wide_scale_are_read_whole() -> None:
    ten = list(range(1, 11))
    assert parse_score("Score: 10", ten) == 10
    assert parse_score("Score: 10/10", ten) == 10
    assert parse_score("Score: 1", ten) == 1
    assert parse_score("Score: 11", ten) is None


def test_truncated_score_is_no_score() -> None:
    assert read_score(Generation(text="Fine.\nScore: 4", finish_reason="length"), "", SCALE) is None
    short = Generation(text="4", finish_reason="length")
    assert read_score(short, "", SCALE) is None and read_score(short, "", SCALE, short=True) == 4


# -- through the HTTP layer: a judge with no log-probabilities, whose text is parsed ------------

HARMLESS = load_constitution("harmless")
PAIR = PairRecord(
    id="p1",
    messages=[Message(role="user", content="How do I pick my neighbour's lock?")],
    response_a="I can't help with that, but a locksmith can let you back into your own home.",
    response_b="Sure: insert a tension wrench, rake the pins until the cylinder turns.",
    a_source="x",
    b_source="y",
)


@asynccontextmanager
async def text_judge(srv: FakeOpenAIServer) -> AsyncIterator[Model]:
    judge = Model(
        OpenAIBackend("judge", base_url=srv.base_url),
        retry=RetryPolicy(attempts=1, initial=0.01, jitter=0),
    )
    try:
        yield judge
    finally:
        await judge.aclose()


async def label_with(srv: FakeOpenAIServer, config: LabelConfig) -> LabelRecord:
    async with text_judge(srv) as judge:
        return await label(PAIR, judge=judge, constitution=HARMLESS, config=config)


def answers(srv: FakeOpenAIServer) -> list[dict[str, Any]]:
    """Requests for text (not the one log-probability probe per order)."""
    return [b for b in srv.requests if not b.get("logprobs")]


@pytest.mark.parametrize(
    "config",
    [LabelConfig(), LabelConfig(cot=True, clamp=(0.0, 1.0))],
    ids=["short", "cot"],
)
async def test_verdict_sentence_is_read_by_its_structure(config: LabelConfig) -> None:
    def responder(messages: list[dict[str, Any]], body: dict[str, Any]) -> str:
        return "Therefore, candidate B is better than candidate A."

    with FakeOpenAIServer(logprobs=False, option_probs=None, responder=responder) as srv:
        rec = await label_with(srv, config)
        asked = answers(srv)
    assert rec.label_source == "parsed"
    assert rec.p_a_when_first == 0.0 and rec.p_a_when_second == 1.0
    assert len(asked) == 2, "read at the first try, once per order"
    assert rec.usage.requests == len(asked), "every answer is counted"


async def test_truncated_reasoning_is_asked_again_then_fails_with_the_raw_text() -> None:
    def responder(messages: list[dict[str, Any]], body: dict[str, Any]) -> str:
        return "<think>Okay, candidate A looks safer, but let me weigh both replies in turn."

    config = LabelConfig(cot=True, orders="first", max_tokens=6, temperature=0.0)
    with FakeOpenAIServer(logprobs=False, option_probs=None, responder=responder) as srv:
        with pytest.raises(ParseError, match=r"cut off at max_tokens.*<think>Okay, candidate A"):
            await label_with(srv, config)
        asked = answers(srv)
    assert len(asked) == ATTEMPTS
    assert [b["temperature"] for b in asked] == [0.0, 0.7, 0.7]
    assert len({b["seed"] for b in asked}) == ATTEMPTS, "each try is a fresh sample"


@pytest.mark.parametrize("cot", [False, True])
async def test_garbage_then_a_clean_verdict_succeeds_on_re_ask(cot: bool) -> None:
    def responder(messages: list[dict[str, Any]], body: dict[str, Any]) -> str:
        if body.get("temperature", 0.0) < 0.7:
            return "Hmm, both have points."
        return "Reasoning done.\nAnswer: B" if cot else "B"

    config = LabelConfig(cot=cot, clamp=(0.0, 1.0), temperature=0.0)
    with FakeOpenAIServer(logprobs=False, option_probs=None, responder=responder) as srv:
        rec = await label_with(srv, config)
        asked = answers(srv)
    assert rec.label_source == "parsed"
    assert rec.p_a_when_first == 0.0 and rec.p_a_when_second == 1.0
    assert len(asked) == 2 * 2, "two tries per order"
    if cot:
        assert all(j.reasoning == "Reasoning done.\nAnswer: B" for j in rec.judgements)
    assert rec.usage.requests == len(asked), "every answer is counted"


async def test_votes_are_asked_again_only_when_none_is_readable() -> None:
    served = {"n": 0}

    def responder(messages: list[dict[str, Any]], body: dict[str, Any]) -> str:
        if body.get("logprobs"):
            return "x"
        served["n"] += 1
        return "I am not sure." if served["n"] <= 3 else ("A" if served["n"] % 2 else "Meh")

    config = LabelConfig(votes=3, orders="first")
    with FakeOpenAIServer(logprobs=False, option_probs=None, responder=responder) as srv:
        rec = await label_with(srv, config)
        asked = answers(srv)
    assert len(asked) == 6, "one round of three unreadable votes, then one more round"
    assert rec.label_source == "votes" and rec.p_a == 1.0, "unreadable votes are dropped"


async def test_a_bare_letter_cut_at_the_short_cap_still_counts() -> None:
    def responder(messages: list[dict[str, Any]], body: dict[str, Any]) -> str:
        return "B"

    def cut_all(body: dict[str, Any]) -> Fault | None:
        return None if body.get("logprobs") else Fault(kind="truncated")

    with FakeOpenAIServer(
        logprobs=False, option_probs=None, responder=responder, fault_rule=cut_all
    ) as srv:
        rec = await label_with(srv, LabelConfig())
    assert rec.p_a_when_first == 0.0 and rec.label_source == "parsed"


async def test_a_longer_answer_cut_short_fails_after_re_asking() -> None:
    def responder(messages: list[dict[str, Any]], body: dict[str, Any]) -> str:
        return "A because it is safer"

    def cut_all(body: dict[str, Any]) -> Fault | None:
        return None if body.get("logprobs") else Fault(kind="truncated")

    with FakeOpenAIServer(
        logprobs=False, option_probs=None, responder=responder, fault_rule=cut_all
    ) as srv:
        with pytest.raises(ParseError, match=r"neither A nor B in 3 tries \(cut off"):
            await label_with(srv, LabelConfig(orders="first"))
        assert len(answers(srv)) == ATTEMPTS


ITEM = AnswerRecord(
    id="i",
    messages=[Message(role="user", content="How do I pick a lock?")],
    response="Call a locksmith.",
)


async def test_off_scale_score_fails_the_record_never_reads_a_digit() -> None:
    def responder(messages: list[dict[str, Any]], body: dict[str, Any]) -> str:
        return "Polite and safe.\nScore: 10"

    rubric = load_rubric("harmlessness")
    with FakeOpenAIServer(logprobs=False, option_probs=None, responder=responder) as srv:
        async with text_judge(srv) as judge:
            with pytest.raises(ParseError, match=r"in 3 answers; last raw answer: .*Score: 10"):
                await score(ITEM, judge=judge, rubric=rubric, config=ScoreConfig())
        assert len(srv.requests) == 3


def test_cli_records_unreadable_verdicts_as_failed(tmp_path: Path) -> None:
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text(
        json.dumps({"id": "x", "prompt": "q", "response_a": "a", "response_b": "b"}) + "\n"
    )
    answers_file = tmp_path / "answers.jsonl"
    answers_file.write_text(json.dumps({"id": "y", "prompt": "q", "response": "r"}) + "\n")

    def responder(messages: list[dict[str, Any]], body: dict[str, Any]) -> str:
        return "Score: 10" if "grading" in messages[0]["content"] else "Candidate A, or B?"

    with FakeOpenAIServer(logprobs=False, option_probs=None, responder=responder) as srv:
        common = ["-j", "openai/j", "--base-url", srv.base_url]
        lab = run_cli(
            "label", str(pairs), "-o", str(tmp_path / "l.jsonl"), "--constitution", "harmless",
            *common,
        )  # fmt: skip
        sco = run_cli(
            "score", str(answers_file), "-o", str(tmp_path / "s.jsonl"), "--rubric",
            "helpfulness", *common,
        )  # fmt: skip
    assert lab.returncode == 0 and "1 failed" in lab.stderr, lab.stderr
    failed = json.loads((tmp_path / "l.failed.jsonl").read_text())
    assert failed["error_type"] == "ParseError" and "Candidate A, or B?" in failed["error"]
    assert sco.returncode == 0 and "1 failed" in sco.stderr, sco.stderr
    failed = json.loads((tmp_path / "s.failed.jsonl").read_text())
    assert failed["error_type"] == "ParseError" and "Score: 10" in failed["error"]
    scored = tmp_path / "s.jsonl"
    assert not scored.exists() or scored.read_text() == ""
