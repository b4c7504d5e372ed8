"""A reward model as a judge (``rm/DIR``): it scores each answer alone, after the conversation.

A pair's verdict is P(A) = sigmoid(r_a - r_b), with no judge prompt or presentation order
(``reward_model``); an answer's grade is its raw reward. An ordinary reward model follows no
principle: the constitution or rubric a run names is recorded but not used. A
principle-conditioned one (``charter.principled``) scores under principles: a pair's under
the constitution's principles sampled for it (``--principles K``, seeded by the pair as an
LLM judge's are), each answer's reward the mean of its rewards under them; an answer's grade
under the rubric's criterion.
"""

from __future__ import annotations

import asyncio
import math

from charter.constitution import Constitution
from charter.errors import ConfigError
from charter.judges.pairwise import LabelConfig, check_choices, check_reward_judge, clamp
from charter.judges.records import REWARD_MODEL, Grade, Judgement, PairVerdict, PrincipleLabel
from charter.model import Model, with_usage
from charter.pairs import PairRecord
from charter.records import AnswerRecord
from charter.rubric import Rubric
from charter.seeds import derive_rng
from charter.types import Reward


def sigmoid(x: float) -> float:
    """1 / (1 + e^-x), without overflow for rewards far apart."""
    if x >= 0:
        return 1.0 / (1.0 + math.exp(-x))
    z = math.exp(x)
    return z / (1.0 + z)


@with_usage
async def compare_by_reward(
    pair: PairRecord,
    *,
    judge: Model,
    config: LabelConfig,
    constitution: Constitution | None = None,
) -> PairVerdict:
    """P(A) = sigmoid(r_a - r_b), each answer scored once after the conversation (clamped as
    any verdict); by a principle-conditioned reward model, under ``constitution``."""
    principled = judge.capabilities.principles
    check_reward_judge(judge.name, config, principled)
    if principled:
        if constitution is None:
            raise ConfigError(f"{judge.name} is principle-conditioned: give it a constitution")
        return await _compare_under(pair, judge, config, constitution)
    a, b = await asyncio.gather(
        judge.reward(pair.messages, pair.response_a), judge.reward(pair.messages, pair.response_b)
    )
    p_a = clamp(sigmoid(a.value - b.value), config.clamp)
    return PairVerdict(
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
        rewards={"a": a.value, "b": b.value},
    )


async def _compare_under(
    pair: PairRecord, judge: Model, config: LabelConfig, constitution: Constitution
) -> PairVerdict:
    """The principles an LLM judge would be asked for this pair (the same seed and draw),
    both answers rewarded under each; p_a from the answers' mean rewards, and each
    principle's own verdict in ``per_principle``."""
    check_choices(config, constitution)
    rng = derive_rng(config.seed, pair.id, "label")
    principles = constitution.sample(config.principles, rng)

    async def both(rule: str) -> tuple[Reward, Reward]:
        a, b = await asyncio.gather(
            judge.reward(pair.messages, pair.response_a, principle=rule),
            judge.reward(pair.messages, pair.response_b, principle=rule),
        )
        return a, b

    rewards = await asyncio.gather(*(both(p.rule) for p in principles))
    per_principle, judgements = [], []
    for p, (a, b) in zip(principles, rewards, strict=True):
        p_a = clamp(sigmoid(a.value - b.value), config.clamp)
        per_principle.append(
            PrincipleLabel(
                principle_id=p.id,
                p_a=p_a,
                p_a_when_first=None,
                p_a_when_second=None,
                position_consistent=None,
            )
        )
        judgements.append(
            Judgement(principle_id=p.id, order="ab", p_first=p_a, p_a=p_a, source=REWARD_MODEL)
        )
    r_a = sum(a.value for a, _ in rewards) / len(rewards)
    r_b = sum(b.value for _, b in rewards) / len(rewards)
    return PairVerdict(
        p_a=clamp(sigmoid(r_a - r_b), config.clamp),
        p_a_when_first=None,
        p_a_when_second=None,
        position_consistent=None,
        label_source=REWARD_MODEL,
        principles=[p.id for p in principles],
        per_principle=per_principle,
        judgements=judgements,
        judge=judge.name,
        rewards={"a": r_a, "b": r_b},
    )


@with_usage
async def grade_by_reward(
    item: AnswerRecord, *, judge: Model, rubric: Rubric | None = None
) -> Grade:
    """The reward model's raw reward for the answer after the conversation; a
    principle-conditioned model's under ``rubric``'s criterion (the rubric's one principle,
    as relative grading shows it)."""
    if judge.capabilities.principles:
        if rubric is None:
            raise ConfigError(f"{judge.name} is principle-conditioned: give it a rubric")
        rule = rubric.as_constitution().principles[0].rule
        r = await judge.reward(item.messages, item.response, principle=rule)
    else:
        r = await judge.reward(item.messages, item.response)
    return Grade(
        score=None,
        expected_score=None,
        score_probs=None,
        feedback=None,
        attempts=1,
        judge=judge.name,
        reward=r.value,
    )
