"""``score``: rubric grading (LLM-as-judge).

Absolute mode grades each answer with ``charter.judges.grade``: feedback, then a score read
from the judge's own answer, and the expected score sum(s * P(s)) where log-probabilities are
available; an unreadable answer is asked again, then the record fails with the raw text.
Relative mode grades A vs B under the rubric, both orders, with ``charter.judges.compare``
(the rubric standing as the one principle). ``--format prometheus`` asks in the structure
Prometheus 2 judges were trained on (``charter.judges.prometheus``). A reward-model judge
(``rm/DIR``) knows no rubric: absolute mode records its raw reward instead of a score,
relative mode labels pairs by sigmoid(r_a - r_b).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field

from charter.config import Clamp, ModelSpec, OrderChoice, PairMode, Sampling, StageOptions
from charter.engines.base import ModelFactory, OutputPaths, Prepared, RunSummary, Work
from charter.errors import ConfigError
from charter.fingerprint import settings_of
from charter.io import OnInvalid, read_answers, read_output
from charter.judges.api import grade, label_pair
from charter.judges.grading import ScoreConfig
from charter.judges.pairwise import LabelConfig, check_reward_judge
from charter.judges.prometheus import PROMETHEUS_MAX_TOKENS, PROMETHEUS_SCALE
from charter.judges.records import JudgeFormat, ScoreRecord, label_summary
from charter.model import Model
from charter.pairs import PairReader
from charter.records import AnswerRecord
from charter.rubric import Rubric, load_rubric
from charter.stages.spec import StageSpec

log = logging.getLogger("charter")


async def score(
    item: AnswerRecord, *, judge: Model, rubric: Rubric, config: ScoreConfig
) -> ScoreRecord:
    """The score record of one answer: the judge's grade (``charter.judges.grade``) with the
    answer and the rubric."""
    return ScoreRecord.from_grade(
        item, await grade(item, judge=judge, rubric=rubric, config=config), rubric
    )


class ScoreChoices(BaseModel):
    """What ``charter score`` asks, in either mode."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)

    judge: ModelSpec
    """Judge model spec."""
    rubric: str
    """Built-in rubric (harmlessness, helpfulness, honesty) or a rubric file."""
    mode: Literal["absolute", "relative"] = "absolute"
    """Grade each answer 1-5, or compare A vs B under the rubric."""
    format: JudgeFormat = "charter"
    """The judge's prompt and answer format: charter (feedback, then Score: N; A/B questions
    as in label) or prometheus (the input structure Prometheus 2 judges were trained on;
    feedback, then [RESULT] N or [RESULT] A|B; a 1-5 rubric)."""
    cot: bool | None = None
    """Feedback before the verdict; default on for absolute mode and --format prometheus,
    off for relative mode."""


class AbsoluteChoices(BaseModel):
    """Options of ``score --mode absolute`` alone: given in the other mode, refused."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)

    reference: str | None = None
    """Absolute mode: input field holding a reference answer."""
    attempts: int = Field(default=3, ge=1)
    """Absolute mode: tries before an unparseable answer is recorded as failed."""


class RelativeChoices(BaseModel):
    """Options of ``score --mode relative`` alone: given in the other mode, refused."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)

    pairs: PairMode = "all"
    """Relative mode: which pairs to judge when a row has several answers."""
    orders: OrderChoice = "both"
    """Relative mode: ask in both orders (default), one random order, or the given order
    only."""
    clamp: Clamp = None
    """Relative mode: clamp each probability to [lo, hi] (LO,HI); default 0.4,0.6 when the
    judge writes feedback first (--cot, --format prometheus), none otherwise."""
    votes: int = Field(default=1, ge=1)
    """Relative mode: samples per judgement when the verdict is read from text (no
    log-probabilities, or --format prometheus)."""


MODE_GROUPS: dict[str, type[BaseModel]] = {
    "absolute": AbsoluteChoices,
    "relative": RelativeChoices,
}
"""The options each mode alone takes."""


class ScoreOptions(StageOptions, Sampling, RelativeChoices, AbsoluteChoices, ScoreChoices):
    """``charter score``: what it asks, the options of each mode, how the judge samples, and
    the stage's. Where the judge's sampling defaults by mode and format, an option not given
    takes that default (``model_fields_set``: a flag, key or keyword given)."""

    flag_help: ClassVar[dict[str, str]] = {
        "temperature": "Sampling temperature of the judge's answer (default: 0 in absolute "
        "mode, 0.7 for relative votes/feedback); a re-try after an unreadable answer samples at "
        "least 0.7.",
        "max_tokens": "Cap on the judge's feedback (default 256; 1024 with --format prometheus).",
    }
    """Help of the shared flags whose default differs here."""

    def _sampling(self, temperature: float) -> dict[str, object]:
        given = self.model_fields_set
        default = PROMETHEUS_MAX_TOKENS if self.format == "prometheus" else 256
        return {
            **self.sampling(),
            "temperature": self.temperature if "temperature" in given else temperature,
            "max_tokens": self.max_tokens if "max_tokens" in given else default,
        }

    def stage_config(self) -> ScoreConfig:
        return ScoreConfig(
            cot=True if self.cot is None else self.cot,
            attempts=self.attempts,
            format=self.format,
            **self._sampling(0.0),
        )

    def relative_config(self) -> LabelConfig:
        cot = self.format == "prometheus" if self.cot is None else self.cot
        return LabelConfig(
            cot=cot,
            format=self.format,
            orders=self.orders,
            clamp=self.clamp,
            votes=self.votes,
            **self._sampling(0.7),
        )

    def recorded_choices(self) -> dict[str, object]:
        """The relative options as score's settings have always recorded them: as given, and
        null when not (so outputs made before they had defaults resume)."""
        return {
            name: getattr(self, name) if name in self.model_fields_set else None
            for name in ("orders", "clamp", "votes")
        }


def check_modes(opts: ScoreOptions, rubric: Rubric) -> None:
    """Refuse, in one line, a flag that would reach nothing in this mode and format, or a
    rubric the format cannot show; checked when the run (or recipe) is prepared."""
    other = "relative" if opts.mode == "absolute" else "absolute"
    wrong = [
        "--" + name.replace("_", "-")
        for name in MODE_GROUPS[other].model_fields
        if name in opts.model_fields_set
    ]
    if wrong:
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
    if judge.capabilities.principles:
        log.info(
            "%s is a principle-conditioned reward model: it scores under the rubric's "
            "criterion, %r",
            judge.name,
            opts.rubric,
        )
    else:
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
        **opts.recorded_choices(),
    )
    if opts.mode == "relative":
        constitution = rubric.as_constitution()
        reader = PairReader(opts.input, opts.pairs, opts.seed)

        def build_relative(models: ModelFactory) -> Work:
            judge = models(opts.judge)
            if judge.capabilities.reward:
                _reward_judge(judge, opts)
                check_reward_judge(judge.name, relative, judge.capabilities.principles)
            return partial(  # the rubric stands as a one-principle constitution
                label_pair,
                judge=judge,
                rubric=rubric,
                constitution=constitution,
                config=relative,
            )

        def finish_relative(summary: RunSummary, paths: OutputPaths) -> None:
            reader.report(summary)
            label_summary(paths.work)

        return Prepared(
            settings=settings, read=reader, build=build_relative, finish=finish_relative
        )

    def read(on_invalid: OnInvalid | None) -> Iterator[AnswerRecord]:
        return read_answers(opts.input, opts.reference, on_invalid)

    given = opts.model_fields_set

    def build(models: ModelFactory) -> Work:
        judge = models(opts.judge)
        if judge.capabilities.reward:
            _reward_judge(judge, opts)
        elif not config.cot and "temperature" in given and judge.capabilities.option_logprobs:
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
