"""``label``: RL-CAI / RLAIF preference labels as calibrated soft probabilities.

A feedback model sees the conversation, a principle's comparison question and two candidate
answers shown as (A) and (B), and is asked for the letter. The label is its probability,
from the log-probabilities of the option tokens, averaged over both presentation orders
(P(A) = (p1 + 1 - p2) / 2) to cancel position bias, and over K sampled principles
(``--principles K``; with ``--weights priority`` the highest priority level with a clear verdict
decides), or with K principles shown together in one question (``--principles-in-prompt K``).
Judges without log-probabilities fall back to voting (``votes``) or one parsed answer
(``parsed``), and say so in ``label_source``. A judge that reasons before it answers is scored
where its answer states the verdict (``answer_logprobs``), else read (``parsed``). With
``--cot``, ``--cot-style continue`` scores the option in the judge's own turn after its
reasoning (the CAI paper's form), ``ask`` in a second turn. A reward model (``rm/DIR``)
scores each answer alone: P(A) = sigmoid(r_a - r_b), with no principle, judge prompt or
presentation order (``reward_model``).
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Iterator, Sequence
from functools import partial
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from charter.config import Sampling, StageOptions
from charter.constitution import (
    Constitution,
    LabelExample,
    Principle,
    load_constitution,
    load_label_examples,
)
from charter.engines.base import ModelFactory, OutputPaths, Prepared, RunSummary, Work
from charter.errors import (
    ConfigError,
    ContinueRefused,
    InputError,
    LogprobsUnavailable,
    OptionsNotFound,
    ParseError,
)
from charter.fingerprint import content_hash, settings_of
from charter.io import OnInvalid
from charter.model import Model
from charter.pairs import PairRecord, read_pairs
from charter.prompts import delimiter_tag, render, render_conversation
from charter.seeds import derive_rng, sample_seed
from charter.stages.label_records import (
    REWARD_MODEL,
    TIE_TOLERANCE,
    Judgement,
    LabelRecord,
    Order,
    PrincipleLabel,
    Source,
    excluded_reason,
    label_summary,
    orders_agree,
    pair_fields,
    trl_columns,
)
from charter.stages.label_weights import PRIORITY_MARGIN, Weights, combine, weigh, weighted_mean
from charter.stages.spec import StageSpec
from charter.types import GenerateConfig, Generation, Message, OptionScores, Usage
from charter.verdicts import answer_logprobs, read_choice, strip_reasoning
from charter.verdicts import parse_choice as parse_choice

if TYPE_CHECKING:
    from charter.stages.score import ScoreOptions

log = logging.getLogger("charter")

OPTIONS = ("A", "B")
LOW_MASS = 0.5
"""Below this raw probability on the options, a logprobs judgement is flagged: the judge
meant to say something else, and the renormalised p rests on little."""
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
    weights: Weights = "equal"
    """How the --principles verdicts make p_a: equal (their mean); priority (the spec's rule:
    the verdicts of each priority level are averaged, and the highest level whose verdict is
    clear, see --priority-margin, decides alone; lower levels only break ties); or
    inverse-priority (a mean weighted by 1/priority, so lower levels together can outvote a
    higher one). A principle without a priority ranks as the lowest stated one."""
    priority_margin: float | None = Field(default=None, ge=0.0, lt=0.5)
    """With --weights priority: a level's verdict is clear, and decides, when its p_a is
    further than this from 0.5; nearer, it gives way to the next level down. When no level is
    clear, p_a is the mean of the levels' verdicts. Default 0.05."""
    orders: Literal["both", "random", "first"] = "both"
    """Ask in both orders (default), one random order, or the given order only."""
    cot: bool = False
    """Let the judge reason first, then score its answer."""
    cot_style: Literal["ask", "continue"] = "ask"
    """With --cot, how the answer is scored: ``ask`` (default, works with every judge): the
    letter is asked in a second user turn after the reasoning; ``continue`` (the CAI paper's
    form): the reasoning and the answer in one sequence, the assistant turn continued with
    "So the answer is (" and the option scored there (hf/, smollm2, openai-completions/,
    vLLM's continue_final_message; a judge that cannot falls back to ``ask``, with a
    warning)."""
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

    @property
    def effective_margin(self) -> float:
        """--priority-margin, or its default."""
        return PRIORITY_MARGIN if self.priority_margin is None else self.priority_margin


class LabelConfig(JudgingChoices, Sampling):
    """Settings of the label stage."""

    max_tokens: int = Field(default=512, ge=1)
    """Length cap for reasoning: CoT reasoning, or a reasoning judge's whole reply."""
    examples: tuple[LabelExample, ...] = ()
    """Worked comparisons shown before each question (few-shot labelling)."""


def judge_messages(
    pair: PairRecord,
    principle: Principle | Sequence[Principle],
    order: Order,
    constitution: Constitution,
    cot: bool,
    examples: Sequence[LabelExample] = (),
) -> list[Message]:
    """The question to the judge: one principle's comparison question, or several asked
    together (in the order given, with their priorities stated when they differ), after any
    worked examples, each asked the same way and answered as the judge is asked to answer."""
    shown = [principle] if isinstance(principle, Principle) else list(principle)
    shots: list[Message] = []
    for ex in examples:
        asked = [constitution.principle(ex.principle_id)] if ex.principle_id else shown
        worked = PairRecord(
            id="example",
            messages=[Message(role="user", content=ex.prompt)],
            response_a=ex.response_a,
            response_b=ex.response_b,
            a_source="example",
            b_source="example",
        )
        answer = (
            f"{ex.reasoning.strip()}\nAnswer: {ex.answer}"
            if cot and ex.reasoning
            else (f"Answer: {ex.answer}" if cot else ex.answer)
        )
        shots += judge_messages(worked, asked, "ab", constitution, cot)
        shots.append(Message(role="assistant", content=answer))
    return shots + _question(pair, shown, order, constitution, cot)


def _question(
    pair: PairRecord,
    shown: Sequence[Principle],
    order: Order,
    constitution: Constitution,
    cot: bool,
) -> list[Message]:
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


COT_ANSWER_PREFIX = "\nSo the answer is ("
"""Appended to the judge's reasoning with --cot-style continue: the option is scored next."""


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
        msgs = judge_messages(
            self.pair, group, order, constitution, self.config.cot, self.config.examples
        )
        reasoning: Generation | None = None
        result: tuple[float, Source, str | None] | None = None
        if self.config.cot:
            reasoning = await self.model.generate(msgs, self._gen(index * 100))
            self.usage.count(reasoning)
            result = await self._continued(index, msgs, reasoning)
            msgs = [
                *msgs,
                Message(role="assistant", content=reasoning.text),
                Message(role="user", content=render("cot_answer")),
            ]
        p_first, source, said = result or await self._probability(index, msgs, reasoning)
        p_first = _clamp(p_first, self.config.effective_clamp)
        return Judgement(
            principle_id=group_id(group),
            order=order,
            p_first=p_first,
            p_a=p_first if order == "ab" else 1.0 - p_first,
            source=source,
            reasoning=said,
            cot_truncated=reasoning is not None and reasoning.finish_reason == "length",
        )

    async def _continued(
        self, index: int, question: list[Message], reasoning: Generation
    ) -> tuple[float, Source, str | None] | None:
        """--cot-style continue: the option scored in the judge's own turn, right after its
        reasoning and COT_ANSWER_PREFIX (the CAI paper's form). None when the judge cannot
        continue a turn: the caller asks in a second turn instead."""
        caps = self.model.capabilities
        if self.config.cot_style != "continue" or not caps.continue_final:
            return None
        if not caps.option_logprobs:
            return None
        turn = Message(role="assistant", content=reasoning.text.rstrip() + COT_ANSWER_PREFIX)
        try:
            scores = await self.model.option_logprobs(
                [*question, turn], OPTIONS, self._gen(index, temperature=0.0)
            )
        except (ContinueRefused, LogprobsUnavailable, OptionsNotFound):
            return None  # refused (the backend warned once) or no option next: ask instead
        self.usage.count(scores)
        self.scores[index] = scores
        return scores.probs["A"], scores.method, reasoning.text

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
            except OptionsNotFound as e:  # it does not answer at once: a reasoning judge?
                return await self._after_reasoning(index, msgs, str(e))
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

    async def _after_reasoning(
        self, index: int, msgs: list[Message], first: str
    ) -> tuple[float, Source, str | None]:
        """A judge that reasons before it answers: its whole reply, with the log-probabilities
        of its tokens, scored where the answer states the verdict (``answer_logprobs``); else
        the verdict read from the answer alone (``parsed``). The reasoning never decides."""
        config = self._gen(index * 100)
        try:
            g = await self.model.generate(msgs, config, token_logprobs=True)
        except LogprobsUnavailable:  # not for long replies, it turns out: read the verdict
            g = await self.model.generate(msgs, config)
        self.usage.count(g)
        said = g.reasoning or g.text
        answer = strip_reasoning(g.text)
        if answer is None or (g.finish_reason == "length" and not answer.strip()):
            raise ParseError(
                f"the judge's reply stopped inside its reasoning{_cut(g)}, before any verdict"
                f" (raise --max-tokens, now {self.config.max_tokens}); last raw answer: "
                f"{g.text[-300:]!r}"
            )
        scores = answer_logprobs(g, msgs[-1].content, OPTIONS)
        if scores is not None:
            self.scores[index] = scores
            return scores.probs["A"], "answer_logprobs", said
        try:
            p, _ = await self._parsed_reasoning(index, msgs, g)
        except ParseError as e:
            raise ParseError(f"{first}; and after it: {e}") from e
        return p, "parsed", said

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


def sigmoid(x: float) -> float:
    """1 / (1 + e^-x), without overflow for rewards far apart."""
    if x >= 0:
        return 1.0 / (1.0 + math.exp(-x))
    z = math.exp(x)
    return z / (1.0 + z)


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
    if config.cot_style == "continue" and not config.cot:
        raise ConfigError("--cot-style continue applies to --cot: add --cot or drop it")
    weights = f"--weights {config.weights}"
    if config.weights != "equal" and config.principles_in_prompt > 1:
        raise ConfigError(
            f"{weights} weights separate verdicts (--principles K); with "
            "--principles-in-prompt the prompt states the priorities instead: drop one"
        )
    if config.weights != "equal" and not constitution.has_priorities:
        raise ConfigError(
            f"{weights}: constitution {constitution.name!r} gives no principle a "
            "priority; use --weights equal or add priorities"
        )
    if config.priority_margin is not None and config.weights != "priority":
        raise ConfigError(
            f"--priority-margin applies to --weights priority, not {weights}: drop it"
        )
    clamp = config.effective_clamp
    margin = config.effective_margin
    if config.weights == "priority" and clamp is not None:
        reach = max(0.5 - clamp[0], clamp[1] - 0.5)
        if reach <= margin + TIE_TOLERANCE:
            raise ConfigError(
                f"--weights priority: with the clamp {clamp[0]:g},{clamp[1]:g} no verdict can "
                f"be further than {reach:g} from 0.5, so none would be clear by the priority "
                f"margin {margin:g}: lower --priority-margin or widen --clamp"
            )


def check_reward_judge(judge: str, config: JudgingChoices) -> None:
    """A reward model answers no principle's question, writes no reasoning and has nothing
    to vote over: asking for those is a ConfigError, not a silent no-op."""
    asked = [
        flag
        for flag, on in (
            ("--principles", config.principles > 1),
            ("--principles-in-prompt", config.principles_in_prompt > 1),
            (f"--weights {config.weights}", config.weights != "equal"),
            ("--cot", config.cot),
            ("--cot-style continue", config.cot_style == "continue"),
            ("--votes", config.votes > 1),
            ("--few-shot", bool(getattr(config, "examples", ()))),
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
        ranked = config.weights != "equal" and len(g) == 1
        per_principle.append(
            PrincipleLabel(
                principle_id=group_id(g),
                p_a=weighted_mean(list(mine.values())),
                p_a_when_first=mine.get("ab"),
                p_a_when_second=mine.get("ba"),
                position_consistent=orders_agree(mine.get("ab"), mine.get("ba")),
                priority=constitution.rank(g[0]) if ranked else None,
            )
        )
    per_principle, deciding = weigh(per_principle, config.weights, config.effective_margin)
    p_a, when_first, when_second = combine(per_principle)
    consistent = orders_agree(when_first, when_second)
    sources = {j.source for j in judgements}
    sources_seen = set(sources)
    return LabelRecord(
        **pair_fields(pair),
        p_a=p_a,
        p_a_when_first=when_first,
        p_a_when_second=when_second,
        position_consistent=consistent,
        label_source=sources.pop() if len(sources) == 1 else "mixed",
        principles=[p.id for p in principles],
        per_principle=per_principle,
        deciding_priority=deciding,
        judgements=[_with_mass(j, asker.scores.get(i)) for i, j in enumerate(judgements, 1)],
        judge=judge.name,
        constitution=constitution.name,
        constitution_hash=constitution.hash,
        usage=usage,
        **_label_columns(pair, p_a, consistent, config),
        low_option_mass=any(s.missing or s.mass < LOW_MASS for s in asker.scores.values()),
        topk_truncated="topk_bound" in sources_seen,
        cot_truncated=any(j.cot_truncated for j in judgements),
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
        **pair_fields(pair),
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
    few_shot: str = "none"
    """Worked comparisons shown before each question: none, auto (the constitution's
    label_examples) or a YAML/JSON file of them (as examples/label-few-shot.yaml)."""

    max_tokens: int = Field(default=512, ge=1)
    """Cap on reasoning: CoT reasoning, or the whole reply of a judge that reasons before it
    answers."""

    def stage_config(self) -> LabelConfig:
        choices = self.model_dump(include=set(JudgingChoices.model_fields))
        return LabelConfig(**choices, **self.sampling())


def resolve_examples(choice: str, constitution: Constitution) -> tuple[LabelExample, ...]:
    """The few-shot labelling examples ``--few-shot`` names; one whose principle_id is not in
    the constitution is a ConfigError."""
    if choice == "none":
        return ()
    examples = constitution.label_examples if choice == "auto" else load_label_examples(choice)
    if choice == "auto" and not examples:
        log.info("%s has no label_examples: no few-shot examples", constitution.name)
    known = {p.id for p in constitution.principles}
    for i, ex in enumerate(examples):
        if ex.principle_id is not None and ex.principle_id not in known:
            raise ConfigError(
                f"--few-shot {choice}: example {i + 1} names principle {ex.principle_id!r}, "
                f"which {constitution.name} does not have"
            )
    return examples


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


def setup(opts: LabelOptions) -> Constitution:
    constitution = load_constitution(opts.constitution)
    check_choices(opts, constitution)
    return constitution


def prepare(opts: LabelOptions) -> Prepared:
    constitution = setup(opts)
    examples = resolve_examples(opts.few_shot, constitution)
    config = opts.stage_config().model_copy(update={"examples": examples})
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
        if config.cot and config.cot_style == "continue" and not judge.capabilities.continue_final:
            log.warning(
                "%s cannot continue its own turn: --cot-style continue asks the letter in a "
                "second turn (ask)",
                judge.name,
            )
        return partial(label, judge=judge, constitution=constitution, config=config)

    def finish(summary: RunSummary, paths: OutputPaths) -> None:
        reader.report(summary)
        label_summary(paths.work)

    return Prepared(
        settings=settings_of(
            "label",
            opts,
            exclude=PRIORITY_SETTING,
            constitution=constitution.hash,
            few_shot=_examples_hash(examples) if examples else "none",
            **priority_setting(opts),
        ),
        read=reader,
        build=build,
        finish=finish,
    )


PRIORITY_SETTING = ("priority_margin",)
"""Left out of the settings as an option (``exclude``): ``priority_setting`` states it."""


def priority_setting(choices: JudgingChoices) -> dict[str, float]:
    """The margin --weights priority decides by, for the settings: stated even at its
    default, so that an output labelled under --weights priority before the highest clear
    level decided (its settings name no margin) is not resumed under the new rule. Absent
    with other weights, whose settings stay as they were before the option existed."""
    if choices.weights != "priority":
        return {}
    return {"priority_margin": choices.effective_margin}


def _examples_hash(examples: Sequence[LabelExample]) -> str:
    """The examples by content (a file named by --few-shot can change under the same name)."""
    return content_hash([ex.model_dump(mode="json") for ex in examples])


SPEC = StageSpec(
    name="label",
    options=LabelOptions,
    prepare=prepare,
    help="RLAIF: AI preference labels as soft probabilities, both orders averaged.",
)
