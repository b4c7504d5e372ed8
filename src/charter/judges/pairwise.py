"""Pairwise judging: which of two answers is better, as a calibrated probability.

A feedback model sees the conversation, a principle's comparison question and two candidate
answers shown as (A) and (B), and is asked for the letter. The verdict is its probability,
from the log-probabilities of the option tokens, averaged over both presentation orders
(P(A) = (p1 + 1 - p2) / 2) to cancel position bias, and over K sampled principles
(``--principles K``; with ``--weights priority`` the highest priority level with a clear verdict
decides), or with K principles shown together in one question (``--principles-in-prompt K``).
Judges without log-probabilities fall back to voting (``votes``) or one parsed answer
(``parsed``), and say so in ``label_source``. A judge that reasons before it answers is scored
where its answer states the verdict (``answer_logprobs``), else read (``parsed``). With
``--cot``, ``--cot-style continue`` scores the option in the judge's own turn after its
reasoning (the CAI paper's form), ``ask`` in a second turn. A reward model (``rm/DIR``)
scores each answer alone (``charter.judges.reward``).
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Sequence

from pydantic import Field

from charter.config import JudgingChoices, OrderChoice, Sampling
from charter.constitution import Constitution, LabelExample, Principle
from charter.errors import (
    ConfigError,
    ContinueRefused,
    LogprobsUnavailable,
    OptionsNotFound,
    ParseError,
)
from charter.judges.records import (
    LOW_MASS,
    TIE_TOLERANCE,
    JudgeFormat,
    Judgement,
    Order,
    PairVerdict,
    PrincipleLabel,
    Source,
    orders_agree,
)
from charter.judges.retry import ATTEMPTS, RETRY_SEEDS, cut_note, retry_temperature, unread
from charter.judges.verdicts import answer_logprobs, read_choice, strip_reasoning
from charter.judges.weights import combine, weigh, weighted_mean
from charter.model import Model, with_usage
from charter.pairs import PairRecord
from charter.prompts import delimiter_tag, render, render_conversation
from charter.seeds import derive_rng, sample_seed
from charter.types import GenerateConfig, Generation, Message, OptionScores

OPTIONS = ("A", "B")
GROUP_JOIN = "+"
"""Joins the ids of principles shown together (``p1+p2``); ids cannot contain it."""
COT_ANSWER_PREFIX = "\nSo the answer is ("
"""Appended to the judge's reasoning with --cot-style continue: the option is scored next."""


class LabelConfig(JudgingChoices, Sampling):
    """Settings of a pairwise judge."""

    max_tokens: int = Field(default=512, ge=1)
    """Length cap for reasoning: CoT reasoning, or a reasoning judge's whole reply."""
    examples: tuple[LabelExample, ...] = ()
    """Worked comparisons shown before each question (few-shot labelling)."""
    format: JudgeFormat = "charter"
    """How the judge is asked: charter's A/B questions under the constitution's principles,
    or Prometheus 2's pairwise format under a rubric (``charter.judges.prometheus``)."""

    @classmethod
    def of(cls, opts: JudgingChoices, sampling: dict[str, object]) -> LabelConfig:
        """The judge's config from a stage's judging choices and sampling settings."""
        return cls(**opts.model_dump(include=set(JudgingChoices.model_fields)), **sampling)


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
    first, second = in_order(pair, order)
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


def in_order(pair: PairRecord, order: Order) -> tuple[str, str]:
    """The two answers as shown: A first (``ab``) or B first (``ba``)."""
    return (
        (pair.response_a, pair.response_b) if order == "ab" else (pair.response_b, pair.response_a)
    )


def group_id(principles: Sequence[Principle]) -> str:
    """The id a verdict is recorded under: the principle's, or the ids of principles shown
    together joined by ``+``."""
    return GROUP_JOIN.join(p.id for p in principles)


def clamp(p: float, bounds: tuple[float, float] | None) -> float:
    """``p`` inside ``bounds`` (unchanged without)."""
    return p if bounds is None else min(max(p, bounds[0]), bounds[1])


def plan_orders(orders: OrderChoice, rng: random.Random) -> list[Order]:
    """The presentation orders to ask: both, the given one, or one drawn from ``rng``."""
    if orders == "first":
        return ["ab"]
    if orders == "random":
        return [rng.choice(["ab", "ba"])]
    return ["ab", "ba"]


def judgement(
    principle_id: str,
    order: Order,
    p_first: float,
    source: Source,
    bounds: tuple[float, float] | None,
    **more: object,
) -> Judgement:
    """One order's judgement: P(first better) clamped to ``bounds``, and as P(A better)."""
    p_first = clamp(p_first, bounds)
    return Judgement.model_validate(
        {
            "principle_id": principle_id,
            "order": order,
            "p_first": p_first,
            "p_a": p_first if order == "ab" else 1.0 - p_first,
            "source": source,
            **more,
        }
    )


class _Questions:
    """Asks one judgement, choosing the logprobs path or a fallback."""

    def __init__(self, judge: Model, config: LabelConfig, pair: PairRecord) -> None:
        self.model = judge
        self.config = config
        self.pair = pair
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
            result = await self._continued(index, msgs, reasoning)
            msgs = [
                *msgs,
                Message(role="assistant", content=reasoning.text),
                Message(role="user", content=render("cot_answer")),
            ]
        p_first, source, said = result or await self._probability(index, msgs, reasoning)
        return judgement(
            group_id(group),
            order,
            p_first,
            source,
            self.config.effective_clamp,
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
                self.scores[index] = scores
                return scores.probs["A"], scores.method, said
        if reasoning is not None and self.config.votes == 1:
            p, said = await self._parsed_reasoning(index, msgs[:-2], reasoning)
            return p, "parsed", said
        # Short answers (max_tokens=8). A server may report `length` for a reply that is just
        # the letter when the cap is tiny, so there a bare "A" / "(B)." still counts; anything
        # longer that was cut off does not.
        n = self.config.votes
        first = self.config.temperature if n > 1 else 0.0
        for attempt in range(ATTEMPTS):
            gens = await asyncio.gather(
                *(
                    self.model.generate(
                        msgs,
                        self._gen(
                            index * 100 + 1 + v + attempt * RETRY_SEEDS,
                            temperature=retry_temperature(first, attempt),
                            max_tokens=8,
                        ),
                    )
                    for v in range(n)
                )
            )
            read = (read_choice(g, msgs[-1].content, OPTIONS, short=True) for g in gens)
            valid = [c for c in read if c is not None]
            if valid:  # unreadable votes are dropped; the readable ones decide
                p = sum(c == "A" for c in valid) / len(valid)
                return p, ("votes" if n > 1 else "parsed"), said
        raise unread("the judge answered neither A nor B", ATTEMPTS, gens[0])

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
        said = g.reasoning or g.text
        answer = strip_reasoning(g.text)
        if answer is None or (g.finish_reason == "length" and not answer.strip()):
            raise ParseError(
                f"the judge's reply stopped inside its reasoning{cut_note(g)}, before any "
                f"verdict (raise --max-tokens, now {self.config.max_tokens}); last raw answer: "
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
        for attempt in range(ATTEMPTS):
            if attempt:
                g = await self.model.generate(
                    question,
                    self._gen(
                        index * 100 + (attempt + 1) * RETRY_SEEDS,
                        temperature=retry_temperature(self.config.temperature, attempt),
                    ),
                )
            choice = read_choice(g, question[-1].content, OPTIONS)
            if choice is not None:
                return (1.0 if choice == "A" else 0.0), g.text
        raise unread("no verdict (A or B) at the end of the judge's reasoning", ATTEMPTS, g)


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
        # how far from 0.5 a principle's verdict can get: in one order the clamp's far end,
        # over both orders the mean of a clamped P(first) and one minus another
        lo, hi = clamp
        reach = (hi - lo) / 2 if config.orders == "both" else max(0.5 - lo, hi - 0.5)
        if reach <= margin + TIE_TOLERANCE:
            raise ConfigError(
                f"--weights priority: with the clamp {lo:g},{hi:g} no verdict can "
                f"be further than {reach:g} from 0.5, so none would be clear by the priority "
                f"margin {margin:g}: lower --priority-margin or widen --clamp"
            )


def check_reward_judge(judge: str, config: JudgingChoices, principled: bool = False) -> None:
    """A reward model answers no principle's question, writes no reasoning and has nothing
    to vote over: asking for those is a ConfigError, not a silent no-op. A
    principle-conditioned one (``principled``) scores under sampled principles, each on its
    own: --principles K is its to take, the rest is refused alike."""
    asked = [
        flag
        for flag, on in (
            ("--principles", config.principles > 1 and not principled),
            ("--principles-in-prompt", config.principles_in_prompt > 1),
            (f"--weights {config.weights}", config.weights != "equal"),
            ("--cot", config.cot),
            ("--cot-style continue", config.cot_style == "continue"),
            ("--votes", config.votes > 1),
            ("--few-shot", bool(getattr(config, "examples", ()))),
        )
        if on
    ]
    if asked and principled:
        raise ConfigError(
            f"{judge} is a principle-conditioned reward model: it scores each answer under "
            f"each sampled principle alone (--principles K), with no reasoning or votes; drop "
            f"{', '.join(asked)}"
        )
    if asked:
        raise ConfigError(
            f"{judge} is a reward model: it scores each answer once, with no principles, "
            f"reasoning or votes; drop {', '.join(asked)}"
        )


@with_usage
async def compare_by_principles(
    pair: PairRecord, *, judge: Model, constitution: Constitution, config: LabelConfig
) -> PairVerdict:
    """An LLM judge's verdict on ``pair`` under ``constitution``'s principles: P(A better) in
    each order asked and under each principle sampled, combined, with what it cost."""
    check_choices(config, constitution)
    rng = derive_rng(config.seed, pair.id, "label")
    principles = constitution.sample(max(config.principles, config.principles_in_prompt), rng)
    groups: list[tuple[Principle, ...]] = [(p,) for p in principles]
    if config.principles_in_prompt > 1:
        principles = constitution.by_priority(principles)
        groups = [tuple(principles)]
    orders = plan_orders(config.orders, rng)
    asker = _Questions(judge, config, pair)
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
    sources = {j.source for j in judgements}
    return PairVerdict(
        p_a=p_a,
        p_a_when_first=when_first,
        p_a_when_second=when_second,
        position_consistent=orders_agree(when_first, when_second),
        label_source=next(iter(sources)) if len(sources) == 1 else "mixed",
        principles=[p.id for p in principles],
        per_principle=per_principle,
        deciding_priority=deciding,
        judgements=[_with_mass(j, asker.scores.get(i)) for i, j in enumerate(judgements, 1)],
        judge=judge.name,
        low_option_mass=any(s.missing or s.mass < LOW_MASS for s in asker.scores.values()),
        topk_truncated="topk_bound" in sources,
        cot_truncated=any(j.cot_truncated for j in judgements),
    )


def _with_mass(j: Judgement, scores: OptionScores | None) -> Judgement:
    if scores is None:
        return j
    return j.model_copy(update={"option_mass": scores.mass, "missing_options": scores.missing})
