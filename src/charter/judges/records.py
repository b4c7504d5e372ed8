"""What judges return and the records built from it: a pair's verdict (``PairVerdict``) and
an answer's grade (``Grade``), the label and score records made of them (``LabelRecord``,
``ScoreRecord``), their TRL columns, and the summary of a label file.

Apart from the judging machinery, so readers of label files (``evaluate``, ``route``,
``merge``, training) need not load it to know the records.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from charter.io import read_output
from charter.types import Message, Usage

if TYPE_CHECKING:
    from charter.constitution import Constitution
    from charter.pairs import PairRecord
    from charter.records import AnswerRecord
    from charter.rubric import Rubric

log = logging.getLogger("charter")

Order = Literal["ab", "ba"]
Source = Literal[
    "logprobs",
    "wide_logprobs",
    "topk_bound",
    "answer_logprobs",
    "votes",
    "parsed",
    "reward_model",
]
"""``logprobs``: both options in the server's top log-probabilities; ``wide_logprobs``: one was
missing and was found in a wider top list (exact all the same); ``topk_bound``: one was in
neither and got the list's floor, an upper bound; ``answer_logprobs``: the judge reasoned
before answering (``<think>...</think> A``, "The answer is (B)"), so the options were scored
at the token where its answer states the verdict, from that position's top list;
``votes``/``parsed``: the judge's answers were read (no log-probabilities, or a reasoning
judge whose answer position's top list did not hold both options); ``reward_model``: a
reward model scored each answer alone and p_a = sigmoid(r_a - r_b) (no principle, no
presentation order)."""
REWARD_MODEL: Literal["reward_model"] = "reward_model"
"""The principle id of a reward model's one judgement: it asks no principle's question."""
ExcludedReason = Literal["tie", "inconsistent", "low_confidence"]
"""Why a pair has no TRL columns: ``tie`` (p_a is 0.5, neither answer is better),
``inconsistent`` (the two presentation orders prefer different answers), ``low_confidence``
(|p_a - 0.5| below --min-confidence). Checked in that order."""
LOW_MASS = 0.5
"""Below this raw probability on the options (or score levels), a judgement read from
log-probabilities is flagged (``low_option_mass``): the judge meant to say something else,
and the renormalised p rests on little."""
TIE_TOLERANCE = 1e-9
"""|p_a - 0.5| under this is a tie: float noise of an average that is 0.5 by construction."""


class Judgement(BaseModel):
    """One question to the judge: one principle, one presentation order."""

    model_config = ConfigDict(extra="forbid")

    principle_id: str
    """The principle asked; with --principles-in-prompt, the ids shown together joined by
    ``+`` in the order shown (``p1+p2``)."""
    order: Order
    """``ab``: A shown first; ``ba``: B shown first."""
    p_first: float
    """Probability that the answer shown first is better (after any clamp)."""
    p_a: float
    """The same, expressed as the probability that A is better."""
    source: Source
    """How the probability was obtained."""
    reasoning: str | None = None
    """The judge's reasoning: in CoT mode, and for a judge that reasoned before answering
    (what it returned apart from the answer, else its whole reply)."""
    cot_truncated: bool = False
    """The CoT reasoning hit max_tokens: the answer was scored after unfinished reasoning."""
    option_mass: float | None = None
    """Raw probability of the options among the returned candidates (None unless logprobs)."""
    missing_options: list[str] = Field(default_factory=list)
    """Options absent from the widest top list the server gave: each was given its floor."""


class PrincipleLabel(BaseModel):
    """The verdict under one principle (or one group of principles shown together)."""

    model_config = ConfigDict(extra="forbid")

    principle_id: str
    """The principle's id; with --principles-in-prompt, the group's ids joined by ``+`` in
    the order shown (``p1+p2``)."""
    p_a: float
    """Mean over the orders asked."""
    p_a_when_first: float | None
    """P(A better) with A shown first."""
    p_a_when_second: float | None
    """P(A better) with A shown second."""
    position_consistent: bool | None
    """Both orders prefer the same answer (None when one order was asked)."""
    weight: float = 1.0
    """Its weight in the record's p_a (a weighted mean of the verdicts): 1 with --weights
    equal; 1/priority with inverse-priority; with priority, its share of the level that
    decided (1 / the principles in that level), 0 for the other levels (when no level was
    clear, each level counts once, shared among its principles)."""
    priority: int | None = None
    """The priority level it was weighed at with --weights priority or inverse-priority (a
    principle without one ranks as the constitution's lowest stated); None otherwise."""


class PairFields(BaseModel):
    """The pair a record is about, as the input gave it: the fields every record of one pair
    carries (``label``'s, ``merge``'s), declared once."""

    model_config = ConfigDict(extra="forbid")

    id: str
    """The pair's id."""
    prompt: list[Message]
    """The conversation (TRL conversational ``prompt``)."""
    response_a: str
    """Answer A."""
    response_b: str
    """Answer B."""
    a_source: str
    """Where A came from (``response_a``, ``responses[0] (MODEL)``, ``initial``...)."""
    b_source: str
    """Where B came from."""


class PairVerdict(BaseModel):
    """What a judge said about a pair: P(A better), how it got there, and what it cost. The
    judgement half of a ``LabelRecord``; ``LabelRecord.from_verdict`` adds the pair and the
    TRL columns. (Its fields are declared again in ``LabelRecord``, where files keep their
    order; tests/test_architecture.py keeps the two in step.)"""

    model_config = ConfigDict(extra="forbid")

    p_a: float
    """Soft label: probability that A is the better answer."""
    p_a_when_first: float | None
    """Mean over principles of P(A) with A shown first, weighted as p_a is (None when that
    order was not asked, and for a reward model, which is shown no order)."""
    p_a_when_second: float | None
    """Mean over principles of P(A) with A shown second, weighted likewise (None likewise)."""
    position_consistent: bool | None
    """Both orders, averaged over principles, prefer the same answer. None when one order was
    asked, and for a reward model: it scores each answer alone, so both orders are the same
    by construction and there is no order to be inconsistent in."""
    label_source: Source | Literal["mixed"]
    principles: list[str]
    """Principles asked (empty for a reward model); with --principles-in-prompt, those
    shown together, in the order shown."""
    per_principle: list[PrincipleLabel]
    """The verdict under each principle (empty for a reward model)."""
    deciding_priority: int | None = None
    """With --weights priority: the priority level whose verdict set p_a (the highest one
    further than --priority-margin from 0.5). None when no level was that clear (p_a is then
    the mean of the levels' verdicts), and with other --weights."""
    judgements: list[Judgement]
    judge: str
    """The judge's model spec."""
    usage: Usage = Field(default_factory=Usage)
    """What the judge's answers cost (gathered by the model layer)."""
    low_option_mass: bool = False
    """True when a judgement had options missing from the top list or under LOW_MASS."""
    topk_truncated: bool = False
    """True when an option missing from a server's top list could only be bounded (source
    ``topk_bound``): p_a is then nearer 0.5 than the judge may be."""
    cot_truncated: bool = False
    """True when a judgement's CoT reasoning hit max_tokens (raise --max-tokens)."""
    rewards: dict[str, float] | None = None
    """A reward model's raw rewards, ``{"a": r_a, "b": r_b}`` (None for other judges)."""


class LabelRecord(PairFields):
    """Output of ``charter label``: one judged pair."""

    human_choice: Literal["a", "b"] | None
    """Carried through for evaluation; never shown to the judge."""
    p_a: float
    """Soft label: probability that A is the better answer."""
    p_a_when_first: float | None
    """Mean over principles of P(A) with A shown first, weighted as p_a is (None when that
    order was not asked, and for a reward model, which is shown no order)."""
    p_a_when_second: float | None
    """Mean over principles of P(A) with A shown second, weighted likewise (None likewise)."""
    position_consistent: bool | None
    """Both orders, averaged over principles, prefer the same answer. None when one order was
    asked, and for a reward model: it scores each answer alone, so both orders are the same
    by construction and there is no order to be inconsistent in."""
    label_source: Source | Literal["mixed"]
    principles: list[str]
    """Principles asked (empty for a reward model); with --principles-in-prompt, those
    shown together, in the order shown."""
    per_principle: list[PrincipleLabel]
    """The verdict under each principle (empty for a reward model)."""
    deciding_priority: int | None = None
    """With --weights priority: the priority level whose verdict set p_a (the highest one
    further than --priority-margin from 0.5). None when no level was that clear (p_a is then
    the mean of the levels' verdicts), and with other --weights."""
    judgements: list[Judgement]
    judge: str
    constitution: str
    constitution_hash: str
    usage: Usage = Field(default_factory=Usage)
    chosen: list[Message] | None
    """TRL column: the preferred answer (None when left out: see ``excluded_reason``)."""
    rejected: list[Message] | None
    """TRL column: the other answer."""
    p_chosen: float | None
    """Probability of ``chosen`` (>= 0.5)."""
    low_confidence: bool
    """True when |p_a - 0.5| < --min-confidence: left out of the TRL columns."""
    excluded_reason: ExcludedReason | None = None
    """Why chosen/rejected/p_chosen are None: ``tie`` (p_a = 0.5), ``inconsistent`` (the
    orders disagree; --keep-inconsistent keeps such pairs), ``low_confidence`` (below
    --min-confidence). None when the pair has TRL columns. p_a is kept either way, for soft
    labels."""
    low_option_mass: bool = False
    """True when a judgement had options missing from the top list or under LOW_MASS."""
    topk_truncated: bool = False
    """True when an option missing from a server's top list could only be bounded (source
    ``topk_bound``): p_a is then nearer 0.5 than the judge may be."""
    cot_truncated: bool = False
    """True when a judgement's CoT reasoning hit max_tokens (raise --max-tokens)."""
    rewards: dict[str, float] | None = None
    """A reward model's raw rewards, ``{"a": r_a, "b": r_b}`` (None for other judges)."""

    @classmethod
    def from_verdict(
        cls,
        pair: PairRecord,
        verdict: PairVerdict,
        *,
        constitution: Constitution,
        min_confidence: float,
        keep_inconsistent: bool,
    ) -> LabelRecord:
        """The record of a judged pair: the pair, the verdict, the constitution it was judged
        under, and the TRL columns (left empty for a tie, a position-inconsistent pair unless
        ``keep_inconsistent``, and below ``min_confidence``)."""
        how: dict[str, Any] = {
            "min_confidence": min_confidence,
            "position_consistent": verdict.position_consistent,
            "keep_inconsistent": keep_inconsistent,
        }
        return cls(
            **pair_fields(pair),
            human_choice=pair.human_choice,
            **{name: getattr(verdict, name) for name in PairVerdict.model_fields},
            constitution=constitution.name,
            constitution_hash=constitution.hash,
            **trl_columns(pair, verdict.p_a, **how),
            excluded_reason=excluded_reason(verdict.p_a, **how),
        )


def pair_fields(pair: PairRecord) -> dict[str, Any]:
    """A record's ``PairFields`` from the pair it is about."""
    return {
        "id": pair.id,
        "prompt": pair.messages,
        "response_a": pair.response_a,
        "response_b": pair.response_b,
        "a_source": pair.a_source,
        "b_source": pair.b_source,
    }


def orders_agree(first: float | None, second: float | None) -> bool | None:
    """``position_consistent``: P(A better) with A shown first and with A shown second fall
    on the same side of 0.5; None when one order was not asked."""
    if first is None or second is None:
        return None
    return (first - 0.5) * (second - 0.5) > 0


def excluded_reason(
    p_a: float,
    min_confidence: float,
    position_consistent: bool | None = None,
    keep_inconsistent: bool = False,
) -> ExcludedReason | None:
    """Why a label gets no TRL columns (see ``ExcludedReason``), or None when it gets them.
    A tie names no better answer, so it never becomes a pair, whatever the flags."""
    if abs(p_a - 0.5) < TIE_TOLERANCE:
        return "tie"
    if position_consistent is False and not keep_inconsistent:
        return "inconsistent"
    if abs(p_a - 0.5) < min_confidence:
        return "low_confidence"
    return None


def trl_columns(
    pair: PairRecord | PairFields,
    p_a: float,
    min_confidence: float,
    *,
    position_consistent: bool | None = None,
    keep_inconsistent: bool = False,
) -> dict[str, Any]:
    """TRL's chosen/rejected/p_chosen for a label, left empty for a tie, a
    position-inconsistent pair (unless ``keep_inconsistent``) and below ``min_confidence``."""
    out = excluded_reason(p_a, min_confidence, position_consistent, keep_inconsistent)
    a_wins = p_a >= 0.5
    answer_a = [Message(role="assistant", content=pair.response_a)]
    answer_b = [Message(role="assistant", content=pair.response_b)]
    return {
        "chosen": None if out else (answer_a if a_wins else answer_b),
        "rejected": None if out else (answer_b if a_wins else answer_a),
        "p_chosen": None if out else max(p_a, 1.0 - p_a),
        "low_confidence": abs(p_a - 0.5) < min_confidence,
    }


JudgeFormat = Literal["charter", "prometheus"]
"""The judge's prompt and answer format: charter's own (feedback, then ``Score: N``; A/B
questions from the pairwise machinery), or Prometheus 2's (feedback, then ``[RESULT] ...``)."""
ProbsSource = Literal["logprobs", "wide_logprobs", "topk_bound"]
"""How a grade's score probabilities were obtained (see ``Source``)."""


class Grade(BaseModel):
    """What a judge said of one answer under a rubric, and what it cost. The grade half of a
    ``ScoreRecord``; ``ScoreRecord.from_grade`` adds the answer and the rubric. (Its fields
    are declared again in ``ScoreRecord``; tests/test_architecture.py keeps them in step.)"""

    model_config = ConfigDict(extra="forbid")

    score: int | None
    """The score parsed from the judge's answer (None for a reward-model judge: see
    ``reward``)."""
    expected_score: float | None
    """sum(s * P(s)) over the score tokens, where log-probabilities are available."""
    score_probs: dict[str, float] | None
    """P(s) for each score, normalised over the scores."""
    feedback: str | None
    """The judge's feedback (None without CoT)."""
    attempts: int
    """Tries needed to get a parseable answer."""
    judge: str
    """The judge's model spec."""
    usage: Usage = Field(default_factory=Usage)
    """What the judge's answers cost (gathered by the model layer)."""
    option_mass: float | None = None
    """Raw probability of the score tokens among the returned candidates (None unless logprobs)."""
    low_option_mass: bool = False
    """True when score levels were missing from the top list or held under LOW_MASS."""
    probs_source: ProbsSource | None = None
    """How ``score_probs`` was obtained (see ``LabelRecord.label_source``); None without."""
    topk_truncated: bool = False
    """True when levels missing from the top list could only be bounded (``topk_bound``)."""
    reward: float | None = None
    """A reward-model judge's raw reward for the answer, on its own unbounded scale (None
    for other judges)."""
    format: JudgeFormat = "charter"
    """The format the judge was asked in (``prometheus``: read from its ``[RESULT]``)."""


class ScoreRecord(BaseModel):
    """Output of ``charter score --mode absolute``."""

    model_config = ConfigDict(extra="forbid")

    id: str
    prompt: list[Message]
    response: str
    score: int | None
    """The score parsed from the judge's answer (None for a reward-model judge: see
    ``reward``)."""
    expected_score: float | None
    """sum(s * P(s)) over the score tokens, where log-probabilities are available."""
    score_probs: dict[str, float] | None
    """P(s) for each score, normalised over the scores."""
    feedback: str | None
    """The judge's feedback (None without CoT)."""
    attempts: int
    """Tries needed to get a parseable answer."""
    rubric: str
    rubric_hash: str
    judge: str
    usage: Usage = Field(default_factory=Usage)
    option_mass: float | None = None
    """Raw probability of the score tokens among the returned candidates (None unless logprobs)."""
    low_option_mass: bool = False
    """True when score levels were missing from the top list or held under LOW_MASS."""
    probs_source: ProbsSource | None = None
    """How ``score_probs`` was obtained (see ``LabelRecord.label_source``); None without."""
    topk_truncated: bool = False
    """True when levels missing from the top list could only be bounded (``topk_bound``)."""
    reward: float | None = None
    """A reward-model judge's raw reward for the answer, on its own unbounded scale (None
    for other judges)."""
    format: JudgeFormat = "charter"
    """The format the judge was asked in (``prometheus``: read from its ``[RESULT]``)."""

    @classmethod
    def from_grade(cls, item: AnswerRecord, grade: Grade, rubric: Rubric) -> ScoreRecord:
        """The record of a graded answer: the answer, the grade and the rubric it was graded
        under."""
        return cls(
            id=item.id,
            prompt=item.messages,
            response=item.response,
            rubric=rubric.name,
            rubric_hash=rubric.hash,
            **{name: getattr(grade, name) for name in Grade.model_fields},
        )


def label_summary(path: Path) -> None:
    """One line a practitioner wants before trusting the labels."""
    n = inconsistent = ordered = 0
    left_out = {"tie": 0, "inconsistent": 0, "low_confidence": 0}
    confidence = 0.0
    by_sources: dict[tuple[str, str], list[float]] = {}
    """P(first-named source better), by the pair of answer sources (initial/final, models)."""
    for rec in read_output(path, LabelRecord):
        n += 1
        inconsistent += rec.position_consistent is False
        ordered += rec.label_source != REWARD_MODEL
        reason = rec.excluded_reason or ("low_confidence" if rec.chosen is None else None)
        if reason is not None:  # an older record names no reason: it was --min-confidence
            left_out[reason] += 1
        confidence += abs(rec.p_a - 0.5)
        a, b = _answer_source(rec.a_source), _answer_source(rec.b_source)
        if a != b:  # two samples of one model say nothing about which model is better
            first, second = sorted((a, b))
            p_first = rec.p_a if a == first else 1.0 - rec.p_a
            by_sources.setdefault((first, second), []).append(p_first)
    if n:
        position = (
            f"{inconsistent} position-inconsistent ({100 * inconsistent / n:.0f}%)"
            if ordered
            else "no presentation order"
        )
        log.info(
            "labels: %d pairs, %s, mean |p_a - 0.5| = %.3f; %s",
            n,
            position,
            confidence / n,
            _left_out(left_out),
        )
    if len(by_sources) == 1:  # every pair sets the same two sources against each other
        sources, chances = next(iter(by_sources.items()))
        if not all(re.fullmatch(r"responses\[\d+\]", s) for s in sources):  # not 2 samples
            log.info(win_rate(sources, chances))


def _left_out(counts: dict[str, int]) -> str:
    """How many pairs have no TRL columns, and why (they keep p_a for soft labels)."""
    total = sum(counts.values())
    if not total:
        return "all pairs in the TRL columns"
    why = {
        "tie": "tie" if counts["tie"] == 1 else "ties",
        "inconsistent": "position-inconsistent",
        "low_confidence": "below --min-confidence",
    }
    parts = ", ".join(f"{counts[k]} {text}" for k, text in why.items() if counts[k])
    hint = "; --keep-inconsistent keeps the inconsistent" if counts["inconsistent"] else ""
    return f"{total} left out of the TRL columns ({parts}{hint})"


def _answer_source(source: str) -> str:
    """Where an answer came from, for win rates: the model of ``responses[i] (MODEL)``."""
    named = re.fullmatch(r"responses\[\d+\] \((.+)\)", source)
    return named.group(1) if named else source


def win_rate(sources: tuple[str, str], p_first: Sequence[float]) -> str:
    """One line: which of two answer sources the judge preferred, how often (a tie, p = 0.5,
    counts half) and with what mean probability."""
    wins = sum(1.0 if p > 0.5 else 0.5 if p == 0.5 else 0.0 for p in p_first) / len(p_first)
    mean = _mean(p_first)
    won, lost = sources
    if wins < 0.5:
        won, lost, wins, mean = lost, won, 1.0 - wins, 1.0 - mean
    return (
        f"win rate: {won} preferred over {lost} in {100 * wins:.0f}% of {len(p_first)} pairs "
        f"(mean P = {mean:.3f})"
    )


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values)
