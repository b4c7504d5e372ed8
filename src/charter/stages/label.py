"""``label``: RL-CAI / RLAIF preference labels as calibrated soft probabilities.

A feedback model sees the conversation, a principle's comparison question and two candidate
answers shown as (A) and (B), and is asked for the letter. The label is its probability,
from the log-probabilities of the option tokens, averaged over both presentation orders
(P(A) = (p1 + 1 - p2) / 2) to cancel position bias, and over K sampled principles
(``--principles K``, weighted by priority with ``--weights priority``), or with K principles
shown together in one question (``--principles-in-prompt K``).
Judges without log-probabilities fall back to voting (``votes``) or one parsed answer
(``parsed``), and say so in ``label_source``. A reward model (``rm/DIR``) scores each answer
alone: P(A) = sigmoid(r_a - r_b), with no principle, judge prompt or presentation order
(``reward_model``).
"""

from __future__ import annotations

import asyncio
import logging
import math
import re
from collections.abc import Iterator, Sequence
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from charter.config import Sampling, StageOptions
from charter.constitution import Constitution, Principle, load_constitution
from charter.engines.base import ModelFactory, OutputPaths, Prepared, RunSummary, Work
from charter.errors import ConfigError, InputError, LogprobsUnavailable, ParseError
from charter.fingerprint import settings_of
from charter.io import OnInvalid, read_output
from charter.model import Model
from charter.pairs import PairRecord, read_pairs
from charter.prompts import delimiter_tag, render, render_conversation
from charter.seeds import derive_rng, sample_seed
from charter.stages.spec import StageSpec
from charter.types import GenerateConfig, Generation, Message, OptionScores, Usage
from charter.verdicts import parse_choice as parse_choice
from charter.verdicts import read_choice

if TYPE_CHECKING:
    from charter.stages.score import ScoreOptions

log = logging.getLogger("charter")

Order = Literal["ab", "ba"]
Source = Literal["logprobs", "wide_logprobs", "topk_bound", "votes", "parsed", "reward_model"]
"""``logprobs``: both options in the server's top log-probabilities; ``wide_logprobs``: one was
missing and was found in a wider top list (exact all the same); ``topk_bound``: one was in
neither and got the list's floor, an upper bound; ``votes``/``parsed``: no log-probabilities,
the judge's answers were read; ``reward_model``: a reward model scored each answer alone and
p_a = sigmoid(r_a - r_b) (no principle, no presentation order)."""
OPTIONS = ("A", "B")
REWARD_MODEL: Literal["reward_model"] = "reward_model"
"""The principle id of a reward model's one judgement: it asks no principle's question."""
LOW_MASS = 0.5
"""Below this raw probability on the options, a logprobs judgement is flagged: the judge
meant to say something else, and the renormalised p rests on little."""
ExcludedReason = Literal["tie", "inconsistent", "low_confidence"]
"""Why a pair has no TRL columns: ``tie`` (p_a is 0.5, neither answer is better),
``inconsistent`` (the two presentation orders prefer different answers), ``low_confidence``
(|p_a - 0.5| below --min-confidence). Checked in that order."""
TIE_TOLERANCE = 1e-9
"""|p_a - 0.5| under this is a tie: float noise of an average that is 0.5 by construction."""
GROUP_JOIN = "+"
"""Joins the ids of principles shown together (``p1+p2``); ids cannot contain it."""


class JudgingChoices(BaseModel):
    """How a pair is judged: shared by the stage's config and the ``charter label`` options,
    so the CLI flag, the recipe key and the stage setting are one declaration."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)

    principles: int = Field(default=1, ge=1)
    """Principles sampled per pair, each asked on its own; their probabilities are averaged
    (see --weights)."""
    principles_in_prompt: int = Field(default=1, ge=1)
    """Principles sampled per pair and shown together in one question (listed by priority,
    with the order stated, when the constitution has priorities); excludes --principles."""
    weights: Literal["equal", "priority"] = "equal"
    """How the --principles verdicts are averaged: equal, or priority (weight 1/priority;
    a principle without one weighs as the lowest stated priority)."""
    orders: Literal["both", "random", "first"] = "both"
    """Ask in both orders (default), one random order, or the given order only."""
    cot: bool = False
    """Let the judge reason first, then score its answer."""
    clamp: tuple[float, float] | None = None
    """Clamp each probability to [lo, hi] (``LO,HI``); default 0.4,0.6 with CoT, none otherwise."""
    votes: int = Field(default=1, ge=1)
    """Samples per judgement when the judge returns no log-probabilities."""
    min_confidence: float = Field(default=0.0, ge=0.0, le=0.5)
    """Pairs with |p_a - 0.5| below this get no TRL columns (kept and flagged)."""
    keep_inconsistent: bool = False
    """Give position-inconsistent pairs TRL columns too; by default they keep p_a only, like
    ties, and are flagged excluded_reason: inconsistent."""

    @field_validator("clamp", mode="before")
    @classmethod
    def _parse_clamp(cls, value: object) -> object:
        if isinstance(value, str):
            parts = [p.strip() for p in value.split(",")]
            if len(parts) != 2:
                raise ValueError("write LO,HI, e.g. 0.4,0.6")
            return tuple(parts)
        return value

    @field_validator("clamp", mode="after")
    @classmethod
    def _check_clamp(cls, value: tuple[float, float] | None) -> tuple[float, float] | None:
        if value is not None and not 0.0 <= value[0] <= value[1] <= 1.0:
            raise ValueError("write LO,HI with 0 <= LO <= HI <= 1, e.g. 0.4,0.6")
        return value

    @property
    def effective_clamp(self) -> tuple[float, float] | None:
        return self.clamp if self.clamp is not None else ((0.4, 0.6) if self.cot else None)


class LabelConfig(JudgingChoices, Sampling):
    """Settings of the label stage."""

    max_tokens: int = Field(default=512, ge=1)
    """Length cap for CoT reasoning."""


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
    """The judge's reasoning, in CoT mode."""
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
    """Its weight in the record's p_a: 1, or 1/priority with --weights priority."""


class LabelRecord(BaseModel):
    """Output of ``charter label``: one judged pair."""

    model_config = ConfigDict(extra="forbid")

    id: str
    prompt: list[Message]
    """The conversation (TRL conversational ``prompt``)."""
    response_a: str
    response_b: str
    a_source: str
    b_source: str
    human_choice: Literal["a", "b"] | None
    """Carried through for evaluation; never shown to the judge."""
    p_a: float
    """Soft label: probability that A is the better answer."""
    p_a_when_first: float | None
    """Mean over principles of P(A) with A shown first (None when that order was not asked,
    and for a reward model, which is shown no order)."""
    p_a_when_second: float | None
    """Mean over principles of P(A) with A shown second (None likewise)."""
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
    rewards: dict[str, float] | None = None
    """A reward model's raw rewards, ``{"a": r_a, "b": r_b}`` (None for other judges)."""


def judge_messages(
    pair: PairRecord,
    principle: Principle | Sequence[Principle],
    order: Order,
    constitution: Constitution,
    cot: bool,
) -> list[Message]:
    """The question to the judge: one principle's comparison question, or several asked
    together (in the order given, with their priorities stated when they differ)."""
    shown = [principle] if isinstance(principle, Principle) else list(principle)
    first, second = (
        (pair.response_a, pair.response_b) if order == "ab" else (pair.response_b, pair.response_a)
    )
    ranks = [constitution.rank(p) for p in shown]
    conversation = render_conversation(pair.messages)
    text = render(
        "compare",
        preamble=constitution.preamble,
        conversation=conversation,
        first=first,
        second=second,
        questions=[p.comparison_question for p in shown],
        ranks=ranks if len(shown) > 1 and len(set(ranks)) > 1 else None,
        tag=delimiter_tag(conversation, first, second),
        cot=cot,
    )
    return [Message(role="user", content=text)]


def group_id(principles: Sequence[Principle]) -> str:
    """The id a verdict is recorded under: the principle's, or the ids of principles shown
    together joined by ``+``."""
    return GROUP_JOIN.join(p.id for p in principles)


def _clamp(p: float, bounds: tuple[float, float] | None) -> float:
    return p if bounds is None else min(max(p, bounds[0]), bounds[1])


ATTEMPTS = 3
"""Tries at a judgement read from text (no log-probabilities) before the record fails with
the raw answer: an unreadable or cut-off verdict is asked again, never guessed."""
RETRY_TEMPERATURE = 0.7
"""Lowest sampling temperature of a re-try, so it can come out differently."""
_RETRY_SEEDS = 1_000_000
"""Seed-index stride between tries; the first try keeps its seeds (and cache entries)."""


def _cut(g: Generation) -> str:
    return " (cut off at max_tokens)" if g.finish_reason == "length" else ""


class _Questions:
    """Asks one judgement, choosing the logprobs path or a fallback."""

    def __init__(self, judge: Model, config: LabelConfig, pair: PairRecord, usage: Usage) -> None:
        self.model = judge
        self.config = config
        self.pair = pair
        self.usage = usage
        self.scores: dict[int, OptionScores] = {}
        """The option scores behind each logprobs judgement, by index."""

    def _gen(self, index: int, **overrides: object) -> GenerateConfig:
        cfg = GenerateConfig(
            max_tokens=self.config.max_tokens,
            temperature=self.config.temperature,
            top_p=self.config.top_p,
            seed=sample_seed(self.config.seed, self.pair.id, index),
        )
        return cfg.model_copy(update=overrides)

    async def ask(
        self, index: int, group: Sequence[Principle], order: Order, constitution: Constitution
    ) -> Judgement:
        msgs = judge_messages(self.pair, group, order, constitution, self.config.cot)
        reasoning: Generation | None = None
        if self.config.cot:
            reasoning = await self.model.generate(msgs, self._gen(index * 100))
            self.usage.count(reasoning)
            msgs = [
                *msgs,
                Message(role="assistant", content=reasoning.text),
                Message(role="user", content=render("cot_answer")),
            ]
        p_first, source, said = await self._probability(index, msgs, reasoning)
        p_first = _clamp(p_first, self.config.effective_clamp)
        return Judgement(
            principle_id=group_id(group),
            order=order,
            p_first=p_first,
            p_a=p_first if order == "ab" else 1.0 - p_first,
            source=source,
            reasoning=said,
        )

    async def _probability(
        self, index: int, msgs: list[Message], reasoning: Generation | None
    ) -> tuple[float, Source, str | None]:
        """P(first is better), how it was obtained, and the reasoning it rests on (CoT)."""
        said = reasoning.text if reasoning is not None else None
        if self.model.capabilities.option_logprobs:
            try:
                scores = await self.model.option_logprobs(
                    msgs, OPTIONS, self._gen(index, temperature=0.0)
                )
            except LogprobsUnavailable:
                pass  # the server has no logprobs after all: fall back below
            else:
                self.usage.count(scores)
                self.scores[index] = scores
                return scores.probs["A"], scores.method, said
        if reasoning is not None and self.config.votes == 1:
            p, said = await self._parsed_reasoning(index, msgs[:-2], reasoning)
            return p, "parsed", said
        # Short answers (max_tokens=8). A server may report `length` for a reply that is just
        # the letter when the cap is tiny, so there a bare "A" / "(B)." still counts; anything
        # longer that was cut off does not.
        n = self.config.votes
        temperature = self.config.temperature if n > 1 else 0.0
        for attempt in range(ATTEMPTS):
            gens = await asyncio.gather(
                *(
                    self.model.generate(
                        msgs,
                        self._gen(
                            index * 100 + 1 + v + attempt * _RETRY_SEEDS,
                            temperature=temperature,
                            max_tokens=8,
                        ),
                    )
                    for v in range(n)
                )
            )
            valid = []
            for g in gens:
                self.usage.count(g)
                choice = read_choice(g, msgs[-1].content, OPTIONS, short=True)
                if choice is not None:
                    valid.append(choice)
            if valid:  # unreadable votes are dropped; the readable ones decide
                p = sum(c == "A" for c in valid) / len(valid)
                return p, ("votes" if n > 1 else "parsed"), said
            temperature = max(temperature, RETRY_TEMPERATURE)
        raise ParseError(
            f"the judge answered neither A nor B in {ATTEMPTS} tries{_cut(gens[0])}; "
            f"last raw answer: {gens[0].text[-300:]!r}"
        )

    async def _parsed_reasoning(
        self, index: int, question: list[Message], first: Generation
    ) -> tuple[float, str]:
        """The verdict at the end of the judge's reasoning; unreadable or cut-off reasoning is
        written afresh (new seed) before the judgement fails."""
        g = first
        for attempt in range(1, ATTEMPTS + 1):
            if attempt > 1:
                retry = max(self.config.temperature, RETRY_TEMPERATURE)
                g = await self.model.generate(
                    question, self._gen(index * 100 + attempt * _RETRY_SEEDS, temperature=retry)
                )
                self.usage.count(g)
            choice = read_choice(g, question[-1].content, OPTIONS)
            if choice is not None:
                return (1.0 if choice == "A" else 0.0), g.text
        raise ParseError(
            f"no verdict (A or B) in {ATTEMPTS} tries at the judge's reasoning{_cut(g)}; "
            f"last raw answer: {g.text[-300:]!r}"
        )


def _mean(values: Sequence[float], weights: Sequence[float] | None = None) -> float:
    if weights is None:
        return sum(values) / len(values)
    return sum(v * w for v, w in zip(values, weights, strict=True)) / sum(weights)


def _order_mean(labels: Sequence[PrincipleLabel], *, first: bool) -> float | None:
    """Weighted mean over principles of P(A) with A shown first (or second); None unless
    every principle was asked in that order."""
    values = [x.p_a_when_first if first else x.p_a_when_second for x in labels]
    present = [v for v in values if v is not None]
    if len(present) != len(values):
        return None
    return _mean(present, [x.weight for x in labels])


def _consistent(first: float | None, second: float | None) -> bool | None:
    if first is None or second is None:
        return None
    return (first - 0.5) * (second - 0.5) > 0


def sigmoid(x: float) -> float:
    """1 / (1 + e^-x), without overflow for rewards far apart."""
    if x >= 0:
        return 1.0 / (1.0 + math.exp(-x))
    z = math.exp(x)
    return z / (1.0 + z)


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
    pair: PairRecord,
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


def _label_columns(
    pair: PairRecord, p_a: float, consistent: bool | None, config: JudgingChoices
) -> dict[str, Any]:
    """A LabelRecord's TRL columns, flags and the reason any were left empty."""
    how: dict[str, Any] = {
        "min_confidence": config.min_confidence,
        "position_consistent": consistent,
        "keep_inconsistent": config.keep_inconsistent,
    }
    return {**trl_columns(pair, p_a, **how), "excluded_reason": excluded_reason(p_a, **how)}


def check_choices(config: JudgingChoices, constitution: Constitution) -> None:
    """Refuse judging choices the constitution cannot meet or that contradict each other."""
    if config.principles > 1 and config.principles_in_prompt > 1:
        raise ConfigError(
            "--principles (separate questions, averaged) and --principles-in-prompt (one "
            "question showing several) exclude each other: set one of them to 1"
        )
    asked = max(config.principles, config.principles_in_prompt)
    if asked > len(constitution.principles):
        flag = "--principles" if config.principles > 1 else "--principles-in-prompt"
        raise ConfigError(
            f"{flag} {asked} exceeds the {len(constitution.principles)} "
            f"principles of {constitution.name!r}"
        )
    if config.weights == "priority" and not constitution.has_priorities:
        raise ConfigError(
            f"--weights priority: constitution {constitution.name!r} gives no principle a "
            "priority; use --weights equal or add priorities"
        )


def check_reward_judge(judge: str, config: JudgingChoices) -> None:
    """A reward model answers no principle's question, writes no reasoning and has nothing
    to vote over: asking for those is a ConfigError, not a silent no-op."""
    asked = [
        flag
        for flag, on in (
            ("--principles", config.principles > 1),
            ("--principles-in-prompt", config.principles_in_prompt > 1),
            ("--weights priority", config.weights == "priority"),
            ("--cot", config.cot),
            ("--votes", config.votes > 1),
        )
        if on
    ]
    if asked:
        raise ConfigError(
            f"{judge} is a reward model: it scores each answer once, with no principles, "
            f"reasoning or votes; drop {', '.join(asked)}"
        )


async def label(
    pair: PairRecord, *, judge: Model, constitution: Constitution, config: LabelConfig
) -> LabelRecord:
    if judge.capabilities.reward:
        return await label_by_reward(pair, judge=judge, constitution=constitution, config=config)
    check_choices(config, constitution)
    rng = derive_rng(config.seed, pair.id, "label")
    principles = constitution.sample(max(config.principles, config.principles_in_prompt), rng)
    groups: list[tuple[Principle, ...]] = [(p,) for p in principles]
    if config.principles_in_prompt > 1:
        principles = constitution.by_priority(principles)
        groups = [tuple(principles)]
    orders: list[Order] = ["ab", "ba"]
    if config.orders == "first":
        orders = ["ab"]
    elif config.orders == "random":
        orders = [rng.choice(orders)]
    usage = Usage()
    asker = _Questions(judge, config, pair, usage)
    plan = [(g, o) for g in groups for o in orders]
    judgements = list(
        await asyncio.gather(
            *(asker.ask(i, g, o, constitution) for i, (g, o) in enumerate(plan, start=1))
        )
    )
    per_principle = []
    for g in groups:
        mine = {j.order: j.p_a for j in judgements if j.principle_id == group_id(g)}
        weighted = config.weights == "priority" and len(g) == 1
        per_principle.append(
            PrincipleLabel(
                principle_id=group_id(g),
                p_a=_mean(list(mine.values())),
                p_a_when_first=mine.get("ab"),
                p_a_when_second=mine.get("ba"),
                position_consistent=_consistent(mine.get("ab"), mine.get("ba")),
                weight=constitution.priority_weight(g[0]) if weighted else 1.0,
            )
        )
    weights = [x.weight for x in per_principle]
    p_a = _mean([x.p_a for x in per_principle], weights)
    when_first = _order_mean(per_principle, first=True)
    when_second = _order_mean(per_principle, first=False)
    consistent = _consistent(when_first, when_second)
    sources = {j.source for j in judgements}
    sources_seen = set(sources)
    return LabelRecord(
        id=pair.id,
        prompt=pair.messages,
        response_a=pair.response_a,
        response_b=pair.response_b,
        a_source=pair.a_source,
        b_source=pair.b_source,
        human_choice=pair.human_choice,
        p_a=p_a,
        p_a_when_first=when_first,
        p_a_when_second=when_second,
        position_consistent=consistent,
        label_source=sources.pop() if len(sources) == 1 else "mixed",
        principles=[p.id for p in principles],
        per_principle=per_principle,
        judgements=[_with_mass(j, asker.scores.get(i)) for i, j in enumerate(judgements, 1)],
        judge=judge.name,
        constitution=constitution.name,
        constitution_hash=constitution.hash,
        usage=usage,
        **_label_columns(pair, p_a, consistent, config),
        low_option_mass=any(s.missing or s.mass < LOW_MASS for s in asker.scores.values()),
        topk_truncated="topk_bound" in sources_seen,
    )


async def label_by_reward(
    pair: PairRecord, *, judge: Model, constitution: Constitution, config: LabelConfig
) -> LabelRecord:
    """A reward model's label: P(A) = sigmoid(r_a - r_b), each answer scored once after the
    conversation. The constitution is recorded (the run names one) but not used."""
    check_reward_judge(judge.name, config)
    usage = Usage()
    a, b = await asyncio.gather(
        judge.reward(pair.messages, pair.response_a), judge.reward(pair.messages, pair.response_b)
    )
    usage.count(a)
    usage.count(b)
    r_a, r_b = a.value, b.value
    p_a = _clamp(sigmoid(r_a - r_b), config.clamp)
    return LabelRecord(
        id=pair.id,
        prompt=pair.messages,
        response_a=pair.response_a,
        response_b=pair.response_b,
        a_source=pair.a_source,
        b_source=pair.b_source,
        human_choice=pair.human_choice,
        p_a=p_a,
        p_a_when_first=None,
        p_a_when_second=None,
        position_consistent=None,
        label_source=REWARD_MODEL,
        principles=[],
        per_principle=[],
        judgements=[
            Judgement(
                principle_id=REWARD_MODEL, order="ab", p_first=p_a, p_a=p_a, source=REWARD_MODEL
            )
        ],
        judge=judge.name,
        constitution=constitution.name,
        constitution_hash=constitution.hash,
        usage=usage,
        **_label_columns(pair, p_a, None, config),
        low_option_mass=False,
        topk_truncated=False,
        rewards={"a": r_a, "b": r_b},
    )


def _with_mass(j: Judgement, scores: OptionScores | None) -> Judgement:
    if scores is None:
        return j
    return j.model_copy(update={"option_mass": scores.mass, "missing_options": scores.missing})


class LabelOptions(StageOptions, JudgingChoices):
    """``charter label``: the stage options plus how pairs are judged (JudgingChoices)."""

    judge: str
    """Feedback model spec."""
    constitution: str
    """Built-in name or constitution file (its comparison questions are asked)."""
    pairs: Literal["all", "adjacent", "random"] = "all"
    """Which pairs to judge when a row has several answers."""

    max_tokens: int = Field(default=512, ge=1)
    """Cap on CoT reasoning length."""

    def stage_config(self) -> LabelConfig:
        choices = self.model_dump(include=set(JudgingChoices.model_fields))
        return LabelConfig(**choices, **self.sampling())


class PairReader:
    """Reads the pairs of a label/score/probe input and counts the rows that gave none."""

    def __init__(self, opts: LabelOptions | ScoreOptions) -> None:
        self.opts = opts
        self.no_pair: list[str] = []

    def __call__(self, on_invalid: OnInvalid | None) -> Iterator[PairRecord]:
        self.no_pair.clear()
        return read_pairs(
            self.opts.input,
            mode=self.opts.pairs or "all",  # score's is None outside relative mode
            seed=self.opts.seed,
            on_invalid=on_invalid,
            on_no_pair=self.no_pair.append,
        )

    def report(self, summary: RunSummary) -> None:
        """Say how many rows had nothing to compare; fail when no row had anything."""
        if not self.no_pair:
            return
        n = len(self.no_pair)
        first = self.no_pair[0]
        if summary.written + summary.skipped + summary.failed == 0:
            raise InputError(
                f"{self.opts.input}: no pair to judge: all {n:,} row(s) have fewer than two "
                f"distinct answers (first: {first})"
            )
        log.warning(
            "%d input row(s) have fewer than two distinct answers and gave no pair (first: %s)",
            n,
            first,
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


def setup(opts: LabelOptions) -> Constitution:
    constitution = load_constitution(opts.constitution)
    check_choices(opts, constitution)
    return constitution


def prepare(opts: LabelOptions) -> Prepared:
    constitution = setup(opts)
    config = opts.stage_config()
    reader = PairReader(opts)

    def build(models: ModelFactory) -> Work:
        judge = models(opts.judge)
        if judge.capabilities.reward:
            check_reward_judge(judge.name, config)
            log.info(
                "%s is a reward model: labels are sigmoid(r_a - r_b); it ignores the "
                "constitution %r",
                judge.name,
                constitution.name,
            )
        elif not judge.capabilities.option_logprobs:
            how = f"{config.votes} votes" if config.votes > 1 else "one parsed answer"
            log.warning(
                "%s gives no log-probabilities: labels come from %s per judgement", judge.name, how
            )
        return partial(label, judge=judge, constitution=constitution, config=config)

    def finish(summary: RunSummary, paths: OutputPaths) -> None:
        reader.report(summary)
        label_summary(paths.work)

    return Prepared(
        settings=settings_of("label", opts, constitution=constitution.hash),
        read=reader,
        build=build,
        finish=finish,
    )


SPEC = StageSpec(
    name="label",
    options=LabelOptions,
    prepare=prepare,
    help="RLAIF: AI preference labels as soft probabilities, both orders averaged.",
)
