"""``score``: rubric grading (LLM-as-judge).

Absolute mode: the judge writes short feedback, then a score; the score is parsed from the
judge's own answer (after removing any echo of the prompt, so a template that itself contains
"Score: 5" can never be read as a score), and, where log-probabilities are available, the
expected score sum(s * P(s)) over the score tokens is recorded next to it. Unparseable answers
are re-sampled, then the record fails with the raw text; there is no default score.

Relative mode grades A vs B under the rubric, both orders, with the labelling machinery.

``--format prometheus`` asks in the structure Prometheus 2 judges were trained on (sections
headed ``###Task Description``, ``###Score Rubrics``, ... ending in ``###Feedback:``) and reads
their answer, feedback then ``[RESULT] N`` (absolute) or ``[RESULT] A|B`` (relative), from the
judge's own text: the last ``[RESULT]`` after any echo of the prompt is removed, never a
placeholder such as "[RESULT] (an integer number between 1 and 5)" (prometheus-eval #58).

A reward-model judge (``rm/DIR``) knows no rubric: absolute mode records its raw reward
instead of a score, relative mode labels pairs by sigmoid(r_a - r_b) (see ``label``).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator, Sequence
from functools import partial
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from charter import verdicts
from charter.config import Sampling, StageOptions
from charter.engines.base import ModelFactory, OutputPaths, Prepared, RunSummary, Work
from charter.errors import ConfigError, LogprobsUnavailable, OptionsNotFound, ParseError
from charter.fingerprint import settings_of
from charter.io import OnInvalid, read_answers, read_output
from charter.model import Model
from charter.pairs import PairRecord
from charter.prompts import delimiter_tag, render, render_conversation
from charter.records import AnswerRecord
from charter.rubric import Rubric, load_rubric
from charter.seeds import derive_rng, sample_seed
from charter.stages.label import (
    ATTEMPTS,
    LOW_MASS,
    OPTIONS,
    RETRY_TEMPERATURE,
    JudgingChoices,
    LabelConfig,
    PairReader,
    check_reward_judge,
    label,
)
from charter.stages.label_records import (
    Judgement,
    LabelRecord,
    Order,
    PrincipleLabel,
    excluded_reason,
    label_summary,
    orders_agree,
    pair_fields,
    trl_columns,
)
from charter.stages.spec import StageSpec
from charter.types import GenerateConfig, Generation, Message, Usage
from charter.verdicts import Result, read_result, read_score, strip_echo

log = logging.getLogger("charter")

JudgeFormat = Literal["charter", "prometheus"]
"""The judge's prompt and answer format: charter's own (feedback, then ``Score: N``; A/B
questions from the labelling machinery), or Prometheus 2's (feedback, then ``[RESULT] ...``)."""
PROMETHEUS_SCALE = [1, 2, 3, 4, 5]
"""The scale Prometheus 2 judges were trained to grade on."""
PROMETHEUS_MAX_TOKENS = 1024
"""Default cap on a Prometheus judge's feedback: it writes a paragraph, often more when it
compares two responses, and a reply cut before its ``[RESULT]`` is no verdict."""


class ScoreConfig(Sampling):
    """Settings of absolute scoring."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    cot: bool = True
    """Feedback before the score (the Prometheus / MT-bench style)."""
    attempts: int = Field(default=3, ge=1)
    """Tries before an unparseable answer becomes a failed record."""
    temperature: float = Field(default=0.0, ge=0.0)
    """Temperature of the first try; re-tries sample at max(this, 0.7), so they can differ."""
    format: JudgeFormat = "charter"
    """The prompt and answer format (see ``JudgeFormat``)."""


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
    probs_source: Literal["logprobs", "wide_logprobs", "topk_bound"] | None = None
    """How ``score_probs`` was obtained (see ``LabelRecord.label_source``); None without."""
    topk_truncated: bool = False
    """True when levels missing from the top list could only be bounded (``topk_bound``)."""
    reward: float | None = None
    """A reward-model judge's raw reward for the answer, on its own unbounded scale (None
    for other judges)."""
    format: JudgeFormat = "charter"
    """The format the judge was asked in (``prometheus``: read from its ``[RESULT]``)."""


def parse_score(answer: str, prompt: str, scores: list[int]) -> int | None:
    """The judge's final stated score in the answer proper (echo of the prompt and reasoning
    blocks removed), if it is on the scale; the rules live in :mod:`charter.verdicts`."""
    return verdicts.parse_score(strip_echo(answer, prompt), scores)


def score_messages(item: AnswerRecord, rubric: Rubric, cot: bool) -> list[Message]:
    conversation = render_conversation(item.messages)
    texts = [conversation, item.response, item.reference or ""]
    text = render(
        "score",
        low=rubric.scores[0],
        high=rubric.scores[-1],
        criterion=rubric.criterion,
        levels=sorted(rubric.levels.items()),
        conversation=conversation,
        reply=item.response,
        reference=item.reference,
        tag=delimiter_tag(*texts),
        cot=cot,
    )
    return [Message(role="user", content=text)]


async def score(
    item: AnswerRecord, *, judge: Model, rubric: Rubric, config: ScoreConfig
) -> ScoreRecord:
    if judge.capabilities.reward:
        return await score_by_reward(item, judge=judge, rubric=rubric)
    if config.format == "prometheus":
        return await score_prometheus(item, judge=judge, rubric=rubric, config=config)
    usage = Usage()
    msgs = score_messages(item, rubric, config.cot)
    options = [str(s) for s in rubric.scores]

    feedback: str | None = None
    parsed: int | None = None
    attempt = 0
    last_raw = ""
    cut = ""

    async def read_text(long: bool) -> int:
        """The score read from generated replies (``long``: room to reason first), asked
        again up to --attempts times; never a guess."""
        nonlocal attempt, last_raw, cut
        found: int | None = None
        while found is None and attempt < config.attempts:
            attempt += 1
            temperature = config.temperature if attempt == 1 else max(config.temperature, 0.7)
            g = await judge.generate(
                msgs,
                GenerateConfig(
                    max_tokens=config.max_tokens if long else 8,
                    temperature=temperature,
                    top_p=config.top_p,
                    seed=sample_seed(config.seed, item.id, attempt),
                ),
            )
            usage.count(g)
            last_raw = g.text
            cut = " (cut off at max_tokens)" if g.finish_reason == "length" else ""
            # A reply cut off at max_tokens is no score, except a short answer (8 tokens)
            # that is just the number: some servers report `length` for it when the cap is
            # tiny.
            found = read_score(g, msgs[0].content, rubric.scores, short=not long)
        if found is None:
            raise ParseError(
                f"no score on the {rubric.scores[0]}-{rubric.scores[-1]} scale in "
                f"{attempt} answers; last raw answer: {last_raw[-300:]!r}{cut}"
            )
        return found

    if config.cot or not judge.capabilities.option_logprobs:
        parsed = await read_text(long=config.cot)
    if config.cot:
        feedback = strip_echo(last_raw, msgs[0].content).strip()
    probs: dict[str, float] | None = None
    expected: float | None = None
    mass: float | None = None
    low_mass = False
    source: Literal["logprobs", "wide_logprobs", "topk_bound"] | None = None
    if judge.capabilities.option_logprobs:
        scoring = msgs
        if config.cot:
            follow = render("score_answer", low=rubric.scores[0], high=rubric.scores[-1])
            scoring = [
                *msgs,
                Message(role="assistant", content=last_raw),
                Message(role="user", content=follow),
            ]
        try:
            s = await judge.option_logprobs(scoring, options, GenerateConfig(seed=config.seed))
        except LogprobsUnavailable:
            if parsed is None:  # no-CoT path had planned on logprobs: parse a generation
                return await score(item, judge=judge, rubric=rubric, config=config)
        except OptionsNotFound:
            # A reasoning judge does not answer with the number at once: the score it wrote
            # stands (CoT), or is read from a whole reply (no CoT); no expected score.
            if parsed is None:
                parsed = await read_text(long=True)
        else:
            usage.count(s)
            probs = s.probs
            mass = s.mass
            low_mass = bool(s.missing) or mass < LOW_MASS
            source = s.method
            expected = sum(int(k) * p for k, p in probs.items())
            if parsed is None:
                parsed = int(max(probs, key=probs.__getitem__))
                attempt = max(attempt, 1)
    assert parsed is not None
    return ScoreRecord(
        id=item.id,
        prompt=item.messages,
        response=item.response,
        score=parsed,
        expected_score=expected,
        score_probs=probs,
        feedback=feedback,
        attempts=attempt,
        rubric=rubric.name,
        rubric_hash=rubric.hash,
        judge=judge.name,
        usage=usage,
        option_mass=mass,
        low_option_mass=low_mass,
        probs_source=source,
        topk_truncated=source == "topk_bound",
    )


async def score_by_reward(item: AnswerRecord, *, judge: Model, rubric: Rubric) -> ScoreRecord:
    """A reward model's grade: its reward for the answer after the conversation. The rubric
    is recorded (the run names one) but not used; there is nothing to parse."""
    r = await judge.reward(item.messages, item.response)
    usage = Usage()
    usage.count(r)
    return ScoreRecord(
        id=item.id,
        prompt=item.messages,
        response=item.response,
        score=None,
        expected_score=None,
        score_probs=None,
        feedback=None,
        attempts=1,
        rubric=rubric.name,
        rubric_hash=rubric.hash,
        judge=judge.name,
        usage=usage,
        reward=r.value,
    )


# -- Prometheus 2 ------------------------------------------------------------------------------


def prometheus_instruction(messages: Sequence[Message]) -> str:
    """The instruction as Prometheus reads it: a lone user turn as it is, a longer
    conversation written out turn by turn."""
    if len(messages) == 1 and messages[0].role == "user":
        return messages[0].content
    return render_conversation(messages)


def prometheus_messages(item: AnswerRecord, rubric: Rubric) -> list[Message]:
    """Prometheus 2's direct-assessment input: instruction, response, the reference answer
    when the input has one (the section is left out otherwise, as in Prometheus' own
    no-reference form), and the rubric's 1-5 descriptions."""
    text = render(
        "prometheus_absolute",
        instruction=prometheus_instruction(item.messages),
        response=item.response,
        reference=item.reference,
        criterion=rubric.criterion,
        levels=sorted(rubric.levels.items()),
    )
    return [Message(role="user", content=text)]


def prometheus_pair_messages(pair: PairRecord, rubric: Rubric, order: Order) -> list[Message]:
    """Prometheus 2's pairwise input: the instruction, the two responses in ``order`` and
    the rubric's criterion."""
    first, second = (
        (pair.response_a, pair.response_b) if order == "ab" else (pair.response_b, pair.response_a)
    )
    text = render(
        "prometheus_relative",
        instruction=prometheus_instruction(pair.messages),
        first=first,
        second=second,
        criterion=rubric.criterion,
    )
    return [Message(role="user", content=text)]


def _cut(g: Generation) -> str:
    return " (cut off at max_tokens)" if g.finish_reason == "length" else ""


async def score_prometheus(
    item: AnswerRecord, *, judge: Model, rubric: Rubric, config: ScoreConfig
) -> ScoreRecord:
    """A Prometheus judge's grade: its feedback, then the score after its last ``[RESULT]``.
    An answer without one is asked again (new seed, temperature at least 0.7), then the
    record fails with the raw text."""
    msgs = prometheus_messages(item, rubric)
    options = [str(s) for s in rubric.scores]
    usage = Usage()
    result: Result | None = None
    attempt = 0
    while result is None and attempt < config.attempts:
        attempt += 1
        temperature = config.temperature
        if attempt > 1:
            temperature = max(temperature, RETRY_TEMPERATURE)
        g = await judge.generate(
            msgs,
            GenerateConfig(
                max_tokens=config.max_tokens,
                temperature=temperature,
                top_p=config.top_p,
                seed=sample_seed(config.seed, item.id, attempt),
            ),
        )
        usage.count(g)
        result = read_result(g, msgs[0].content, options)
    if result is None:
        raise ParseError(
            f"no [RESULT] on the {options[0]}-{options[-1]} scale after the judge's feedback "
            f"in {attempt} answers; last raw answer: {g.text[-300:]!r}{_cut(g)}"
        )
    return ScoreRecord(
        id=item.id,
        prompt=item.messages,
        response=item.response,
        score=int(result.value),
        expected_score=None,
        score_probs=None,
        feedback=result.feedback,
        attempts=attempt,
        rubric=rubric.name,
        rubric_hash=rubric.hash,
        judge=judge.name,
        usage=usage,
        format="prometheus",
    )


_RETRY_SEEDS = 1_000_000
"""Seed-index stride between tries at a pairwise verdict; the first try keeps its seeds."""


async def _prometheus_judgement(
    index: int,
    pair: PairRecord,
    order: Order,
    *,
    judge: Model,
    rubric: Rubric,
    config: LabelConfig,
    usage: Usage,
) -> Judgement:
    """One order's verdict: ``votes`` feedbacks, each ending in ``[RESULT] A|B``; the
    readable ones decide (P(first) = the share naming Response A), unreadable ones are
    dropped, and when none is readable all are asked again, up to ATTEMPTS times."""
    msgs = prometheus_pair_messages(pair, rubric, order)
    temperature = config.temperature
    for attempt in range(ATTEMPTS):
        gens = await asyncio.gather(
            *(
                judge.generate(
                    msgs,
                    GenerateConfig(
                        max_tokens=config.max_tokens,
                        temperature=temperature,
                        top_p=config.top_p,
                        seed=sample_seed(
                            config.seed, pair.id, index * 100 + v + attempt * _RETRY_SEEDS
                        ),
                    ),
                )
                for v in range(config.votes)
            )
        )
        results = []
        for g in gens:
            usage.count(g)
            r = read_result(g, msgs[0].content, OPTIONS)
            if r is not None:
                results.append(r)
        if results:
            p_first = sum(r.value == "A" for r in results) / len(results)
            bounds = config.effective_clamp
            if bounds is not None:
                p_first = min(max(p_first, bounds[0]), bounds[1])
            return Judgement(
                principle_id=rubric.name,
                order=order,
                p_first=p_first,
                p_a=p_first if order == "ab" else 1.0 - p_first,
                source="votes" if config.votes > 1 else "parsed",
                reasoning=results[0].feedback,
            )
        temperature = max(temperature, RETRY_TEMPERATURE)
    raise ParseError(
        f"no [RESULT] A or B after the judge's feedback in {ATTEMPTS} tries{_cut(gens[0])}; "
        f"last raw answer: {gens[0].text[-300:]!r}"
    )


async def label_prometheus(
    pair: PairRecord, *, judge: Model, rubric: Rubric, config: LabelConfig
) -> LabelRecord:
    """A Prometheus judge's pairwise label, written as ``charter label`` writes one: the
    orders asked (--orders), each read from the judge's ``[RESULT]`` (--votes samples per
    order), clamped (--clamp), averaged over the orders. The verdict is read from text, never
    from log-probabilities: Prometheus gives it after its feedback, in its own format."""
    constitution = rubric.as_constitution()
    rng = derive_rng(config.seed, pair.id, "label")
    orders: list[Order] = ["ab", "ba"]
    if config.orders == "first":
        orders = ["ab"]
    elif config.orders == "random":
        orders = [rng.choice(orders)]
    usage = Usage()
    judgements = await asyncio.gather(
        *(
            _prometheus_judgement(
                i, pair, o, judge=judge, rubric=rubric, config=config, usage=usage
            )
            for i, o in enumerate(orders, start=1)
        )
    )
    by_order = {j.order: j.p_a for j in judgements}
    p_a = sum(by_order.values()) / len(by_order)
    first, second = by_order.get("ab"), by_order.get("ba")
    consistent = orders_agree(first, second)
    principle = constitution.principles[0].id
    keep = config.keep_inconsistent
    return LabelRecord(
        **pair_fields(pair),
        p_a=p_a,
        p_a_when_first=first,
        p_a_when_second=second,
        position_consistent=consistent,
        label_source="votes" if config.votes > 1 else "parsed",
        principles=[principle],
        per_principle=[
            PrincipleLabel(
                principle_id=principle,
                p_a=p_a,
                p_a_when_first=first,
                p_a_when_second=second,
                position_consistent=consistent,
            )
        ],
        judgements=list(judgements),
        judge=judge.name,
        constitution=constitution.name,
        constitution_hash=constitution.hash,
        usage=usage,
        **trl_columns(
            pair, p_a, config.min_confidence, position_consistent=consistent, keep_inconsistent=keep
        ),
        excluded_reason=excluded_reason(p_a, config.min_confidence, consistent, keep),
    )


class ScoreOptions(StageOptions):
    """``charter score``. Options that mean something in one mode only default to None, so
    that one given in the other mode is refused (``check_modes``) instead of ignored."""

    judge: str
    """Judge model spec."""
    rubric: str
    """Built-in rubric (harmlessness, helpfulness, honesty) or a rubric file."""
    mode: Literal["absolute", "relative"] = "absolute"
    """Grade each answer 1-5, or compare A vs B under the rubric."""
    format: JudgeFormat = "charter"
    """The judge's prompt and answer format: charter (feedback, then Score: N; A/B questions
    as in label) or prometheus (the input structure Prometheus 2 judges were trained on;
    feedback, then [RESULT] N or [RESULT] A|B; a 1-5 rubric)."""
    reference: str | None = None
    """Absolute mode: input field holding a reference answer."""
    cot: bool | None = None
    """Feedback before the verdict; default on for absolute mode and --format prometheus,
    off for relative mode."""
    attempts: int | None = Field(default=None, ge=1)
    """Absolute mode: tries before an unparseable answer is recorded as failed (default 3)."""
    pairs: Literal["all", "adjacent", "random"] = "all"
    """Relative mode: which pairs to judge when a row has several answers."""
    orders: Literal["both", "random", "first"] | None = None
    """Relative mode: ask in both orders (default), one random order, or the given order
    only."""
    clamp: tuple[float, float] | None = None
    """Relative mode: clamp each probability to [lo, hi] (LO,HI); default 0.4,0.6 when the
    judge writes feedback first (--cot, --format prometheus), none otherwise."""
    votes: int | None = Field(default=None, ge=1)
    """Relative mode: samples per judgement when the verdict is read from text (no
    log-probabilities, or --format prometheus); default 1."""
    max_tokens: int | None = Field(default=None, ge=1)  # type: ignore[assignment]
    """Cap on the judge's feedback (default 256; 1024 with --format prometheus)."""
    temperature: float | None = Field(default=None, ge=0.0)  # type: ignore[assignment]
    """Sampling temperature of the judge's answer (default: 0 in absolute mode, 0.7 for
    relative votes/feedback); a re-try after an unreadable answer samples at least 0.7."""

    @field_validator("clamp", mode="before")
    @classmethod
    def _parse_clamp(cls, value: object) -> object:
        return JudgingChoices._parse_clamp(value)

    @field_validator("clamp", mode="after")
    @classmethod
    def _check_clamp(cls, value: tuple[float, float] | None) -> tuple[float, float] | None:
        return JudgingChoices._check_clamp(value)

    def _sampling(self, temperature: float) -> dict[str, object]:
        default = PROMETHEUS_MAX_TOKENS if self.format == "prometheus" else 256
        tokens = default if self.max_tokens is None else self.max_tokens
        return {**self.sampling(), "temperature": temperature, "max_tokens": tokens}

    def stage_config(self) -> ScoreConfig:
        first = 0.0 if self.temperature is None else self.temperature
        return ScoreConfig(
            cot=True if self.cot is None else self.cot,
            attempts=3 if self.attempts is None else self.attempts,
            format=self.format,
            **self._sampling(first),
        )

    def relative_config(self) -> LabelConfig:
        votes = 0.7 if self.temperature is None else self.temperature
        cot = self.format == "prometheus" if self.cot is None else self.cot
        given = {"orders": self.orders, "clamp": self.clamp, "votes": self.votes}
        return LabelConfig(
            cot=cot, **{k: v for k, v in given.items() if v is not None}, **self._sampling(votes)
        )


MODE_ONLY: dict[str, Literal["absolute", "relative"]] = {
    "reference": "absolute",
    "attempts": "absolute",
    "orders": "relative",
    "clamp": "relative",
    "votes": "relative",
}
"""Options that mean something in one mode only: given in the other, they are refused."""


def check_modes(opts: ScoreOptions, rubric: Rubric) -> None:
    """Refuse, in one line, a flag that would reach nothing in this mode and format, or a
    rubric the format cannot show; checked when the run (or recipe) is prepared."""
    wrong = [
        "--" + name.replace("_", "-")
        for name, mode in MODE_ONLY.items()
        if mode != opts.mode and getattr(opts, name) is not None
    ]
    if opts.mode == "absolute" and opts.pairs != "all":  # typed without None: label's
        wrong.append("--pairs")  # PairReader reads it as it is
    if wrong:
        other = "relative" if opts.mode == "absolute" else "absolute"
        one = len(wrong) == 1
        raise ConfigError(
            f"score --mode {opts.mode}: {', '.join(wrong)} only {'applies' if one else 'apply'} "
            f"to --mode {other}; drop {'it' if one else 'them'}"
        )
    if opts.format != "prometheus":
        return
    if opts.cot is False:
        raise ConfigError(
            "--format prometheus: a Prometheus judge always writes feedback before its "
            "[RESULT]; drop --no-cot"
        )
    if opts.mode == "absolute" and rubric.scores != PROMETHEUS_SCALE:
        raise ConfigError(
            f"--format prometheus grades on a 1-5 scale; rubric {rubric.name!r} is scored "
            f"{rubric.scores[0]}-{rubric.scores[-1]}"
        )


def score_summary(path: Path) -> None:
    counts: dict[int, int] = {}
    rewards: list[float] = []
    for rec in read_output(path, ScoreRecord):
        if rec.score is not None:
            counts[rec.score] = counts.get(rec.score, 0) + 1
        if rec.reward is not None:
            rewards.append(rec.reward)
    n = sum(counts.values())
    if n:
        mean = sum(k * v for k, v in counts.items()) / n
        spread = ", ".join(f"{k}: {counts[k]}" for k in sorted(counts))
        log.info("scores: %d answers, mean %.2f (%s)", n, mean, spread)
    if rewards:
        log.info(
            "rewards: %d answers, mean %.3f (min %.3f, max %.3f)",
            len(rewards),
            sum(rewards) / len(rewards),
            min(rewards),
            max(rewards),
        )


def _reward_judge(judge: Model, opts: ScoreOptions) -> None:
    """Say what a reward model ignores; refuse what it cannot do."""
    if opts.format == "prometheus":
        raise ConfigError(
            f"{judge.name} is a reward model: it is shown no prompt, so --format prometheus "
            "means nothing to it; drop it"
        )
    if opts.mode == "absolute" and opts.cot:
        raise ConfigError(f"{judge.name} is a reward model: it writes no feedback; drop --cot")
    log.info("%s is a reward model: it ignores the rubric %r", judge.name, opts.rubric)
    if opts.mode == "absolute" and opts.reference is not None:
        log.warning("%s is a reward model: it does not see the --reference answer", judge.name)


def prepare(opts: ScoreOptions) -> Prepared:
    rubric = load_rubric(opts.rubric)
    check_modes(opts, rubric)
    relative = opts.relative_config()
    config = opts.stage_config()
    used = relative if opts.mode == "relative" else config
    # The values used, not the options as typed (cot, temperature and max_tokens default by
    # mode and format); --attempts decides how hard to try, not what a written record says.
    settings = settings_of(
        "score",
        opts,
        exclude=["attempts"],
        rubric=rubric.hash,
        cot=used.cot,
        temperature=used.temperature,
        max_tokens=used.max_tokens,
    )
    if opts.mode == "relative":
        constitution = rubric.as_constitution()
        reader = PairReader(opts)

        def build_relative(models: ModelFactory) -> Work:
            judge = models(opts.judge)
            if judge.capabilities.reward:
                _reward_judge(judge, opts)
                check_reward_judge(judge.name, relative)
            if opts.format == "prometheus":
                return partial(label_prometheus, judge=judge, rubric=rubric, config=relative)
            return partial(label, judge=judge, constitution=constitution, config=relative)

        def finish_relative(summary: RunSummary, paths: OutputPaths) -> None:
            reader.report(summary)
            label_summary(paths.work)

        return Prepared(
            settings=settings, read=reader, build=build_relative, finish=finish_relative
        )

    def read(on_invalid: OnInvalid | None) -> Iterator[AnswerRecord]:
        return read_answers(opts.input, opts.reference, on_invalid)

    def build(models: ModelFactory) -> Work:
        judge = models(opts.judge)
        if judge.capabilities.reward:
            _reward_judge(judge, opts)
        elif not config.cot and opts.temperature is not None and judge.capabilities.option_logprobs:
            log.warning(
                "--temperature %g: with --no-cot, %s is scored from its log-probabilities, "
                "not sampled; the temperature only reaches a re-asked answer if those fail",
                opts.temperature,
                judge.name,
            )
        if opts.format == "prometheus" and opts.reference is None:
            log.info(
                "--format prometheus without --reference: the judge grades on the rubric alone "
                "(no ###Reference Answer section)"
            )
        return partial(score, judge=judge, rubric=rubric, config=config)

    return Prepared(
        settings=settings,
        read=read,
        build=build,
        finish=lambda summary, paths: score_summary(paths.work),
    )


SPEC = StageSpec(
    name="score",
    options=ScoreOptions,
    prepare=prepare,
    help="Rubric grading: an absolute 1-5 score per answer, or A vs B under a rubric.",
)
