"""``score``: rubric grading (LLM-as-judge).

Absolute mode: the judge writes short feedback, then a score; the score is parsed from the
judge's own answer (after removing any echo of the prompt, so a template that itself contains
"Score: 5" can never be read as a score), and, where log-probabilities are available, the
expected score sum(s * P(s)) over the score tokens is recorded next to it. Unparseable answers
are re-sampled, then the record fails with the raw text; there is no default score.

Relative mode grades A vs B under the rubric, both orders, with the labelling machinery.

A reward-model judge (``rm/DIR``) knows no rubric: absolute mode records its raw reward
instead of a score, relative mode labels pairs by sigmoid(r_a - r_b) (see ``label``).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from charter import verdicts
from charter.config import Sampling, StageOptions
from charter.engines.base import ModelFactory, OutputPaths, Prepared, RunSummary, Work
from charter.errors import ConfigError, LogprobsUnavailable, ParseError
from charter.fingerprint import settings_of
from charter.io import OnInvalid, read_answers, read_output
from charter.model import Model
from charter.prompts import delimiter_tag, render, render_conversation
from charter.records import AnswerRecord
from charter.rubric import Rubric, load_rubric
from charter.seeds import sample_seed
from charter.stages.label import (
    LOW_MASS,
    LabelConfig,
    PairReader,
    check_reward_judge,
    label,
    label_summary,
)
from charter.stages.spec import StageSpec
from charter.types import GenerateConfig, Message, Usage
from charter.verdicts import read_score, strip_echo

log = logging.getLogger("charter")


class ScoreConfig(Sampling):
    """Settings of absolute scoring."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    cot: bool = True
    """Feedback before the score (the Prometheus / MT-bench style)."""
    attempts: int = Field(default=3, ge=1)
    """Tries before an unparseable answer becomes a failed record."""
    temperature: float = Field(default=0.0, ge=0.0)
    """Temperature of the first try; re-tries sample at 0.7 or more."""


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
    usage = Usage()
    msgs = score_messages(item, rubric, config.cot)
    options = [str(s) for s in rubric.scores]

    feedback: str | None = None
    parsed: int | None = None
    attempt = 0
    last_raw = ""
    cut = ""
    want_text = config.cot or not judge.capabilities.option_logprobs
    while want_text and parsed is None and attempt < config.attempts:
        attempt += 1
        temperature = config.temperature if attempt == 1 else max(config.temperature, 0.7)
        g = await judge.generate(
            msgs,
            GenerateConfig(
                max_tokens=config.max_tokens if config.cot else 8,
                temperature=temperature,
                top_p=config.top_p,
                seed=sample_seed(config.seed, item.id, attempt),
            ),
        )
        usage.count(g)
        last_raw = g.text
        cut = " (cut off at max_tokens)" if g.finish_reason == "length" else ""
        # A reply cut off at max_tokens is no score, except a no-CoT answer (8 tokens) that
        # is just the number: some servers report `length` for it when the cap is tiny.
        parsed = read_score(g, msgs[0].content, rubric.scores, short=not config.cot)
    if want_text and parsed is None:
        raise ParseError(
            f"no score on the {rubric.scores[0]}-{rubric.scores[-1]} scale in "
            f"{attempt} answers; last raw answer: {last_raw[-300:]!r}{cut}"
        )
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


class ScoreOptions(StageOptions):
    """``charter score``."""

    judge: str
    """Judge model spec."""
    rubric: str
    """Built-in rubric (harmlessness, helpfulness, honesty) or a rubric file."""
    mode: Literal["absolute", "relative"] = "absolute"
    """Grade each answer 1-5, or compare A vs B under the rubric."""
    reference: str | None = None
    """Input field holding a reference answer (absolute mode)."""
    cot: bool | None = None
    """Feedback before the verdict; default on for absolute, off for relative."""
    attempts: int = Field(default=3, ge=1)
    """Tries before an unparseable answer is recorded as failed."""
    pairs: Literal["all", "adjacent", "random"] = "all"
    """Relative mode: which pairs to judge when a row has several answers."""
    max_tokens: int = Field(default=256, ge=1)
    """Cap on the judge's feedback."""
    temperature: float | None = Field(default=None, ge=0.0)  # type: ignore[assignment]
    """First-try temperature (default: 0 in absolute mode, 0.7 for relative votes/CoT)."""

    def stage_config(self) -> ScoreConfig:
        first = 0.0 if self.temperature is None else self.temperature
        return ScoreConfig(
            cot=True if self.cot is None else self.cot,
            attempts=self.attempts,
            **{**self.sampling(), "temperature": first},
        )

    def relative_config(self) -> LabelConfig:
        votes = 0.7 if self.temperature is None else self.temperature
        return LabelConfig(cot=bool(self.cot), **{**self.sampling(), "temperature": votes})


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
    if opts.mode == "absolute" and opts.cot:
        raise ConfigError(f"{judge.name} is a reward model: it writes no feedback; drop --cot")
    log.info("%s is a reward model: it ignores the rubric %r", judge.name, opts.rubric)
    if opts.mode == "absolute" and opts.reference is not None:
        log.warning("%s is a reward model: it does not see the --reference answer", judge.name)


def prepare(opts: ScoreOptions) -> Prepared:
    rubric = load_rubric(opts.rubric)
    relative = opts.relative_config()
    config = opts.stage_config()
    used = relative if opts.mode == "relative" else config
    # The values used, not the options as typed (cot and temperature default by mode);
    # --attempts decides how hard to try, not what a written record says.
    settings = settings_of(
        "score",
        opts,
        exclude=["attempts"],
        rubric=rubric.hash,
        cot=used.cot,
        temperature=used.temperature,
    )
    if opts.mode == "relative":
        constitution = rubric.as_constitution()
        reader = PairReader(opts)

        def build_relative(models: ModelFactory) -> Work:
            judge = models(opts.judge)
            if judge.capabilities.reward:
                check_reward_judge(judge.name, relative)
                _reward_judge(judge, opts)
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
