"""The two calls every user of the judge makes: ``compare`` a pair, ``grade`` an answer. Each
picks the judging that fits the judge and the format asked for. ``label_pair`` is ``compare``
made into the record a label file holds."""

from __future__ import annotations

from charter.constitution import Constitution
from charter.errors import ConfigError
from charter.judges.grading import ScoreConfig, grade_by_rubric
from charter.judges.pairwise import LabelConfig, compare_by_principles
from charter.judges.prometheus import compare_prometheus, grade_prometheus
from charter.judges.records import Grade, LabelRecord, PairVerdict
from charter.judges.reward import compare_by_reward, grade_by_reward
from charter.model import Model
from charter.pairs import PairRecord
from charter.records import AnswerRecord
from charter.rubric import Rubric


async def compare(
    pair: PairRecord,
    *,
    judge: Model,
    constitution: Constitution,
    config: LabelConfig,
    rubric: Rubric | None = None,
) -> PairVerdict:
    """The judge's verdict on ``pair``: under ``constitution``'s principles for an LLM judge
    (``charter.judges.pairwise``), or under ``rubric`` in Prometheus's format
    (``config.format``, ``charter.judges.prometheus``); sigmoid(r_a - r_b) for a reward model
    (``charter.judges.reward``; a principle-conditioned one's under ``constitution``)."""
    if judge.capabilities.reward:
        return await compare_by_reward(pair, judge=judge, config=config, constitution=constitution)
    if config.format == "prometheus":
        if rubric is None:
            raise ConfigError("a Prometheus judge compares under a rubric: give one")
        return await compare_prometheus(pair, judge=judge, rubric=rubric, config=config)
    return await compare_by_principles(pair, judge=judge, constitution=constitution, config=config)


async def label_pair(
    pair: PairRecord,
    *,
    judge: Model,
    constitution: Constitution,
    config: LabelConfig,
    rubric: Rubric | None = None,
) -> LabelRecord:
    """The label record of one pair: the judge's verdict (``compare``) with the pair and its
    TRL columns (``label``; ``score --mode relative``, the rubric as the constitution)."""
    verdict = await compare(
        pair, judge=judge, constitution=constitution, config=config, rubric=rubric
    )
    return LabelRecord.from_verdict(
        pair,
        verdict,
        constitution=constitution,
        min_confidence=config.min_confidence,
        keep_inconsistent=config.keep_inconsistent,
    )


async def grade(item: AnswerRecord, *, judge: Model, rubric: Rubric, config: ScoreConfig) -> Grade:
    """The judge's grade of ``item`` under ``rubric``: in charter's format
    (``charter.judges.grading``) or Prometheus's (``config.format``,
    ``charter.judges.prometheus``); a reward model's raw reward (``charter.judges.reward``)."""
    if judge.capabilities.reward:
        return await grade_by_reward(item, judge=judge, rubric=rubric)
    if config.format == "prometheus":
        return await grade_prometheus(item, judge=judge, rubric=rubric, config=config)
    return await grade_by_rubric(item, judge=judge, rubric=rubric, config=config)
