"""A reward model as a judge (``rm/DIR``): it scores each answer alone, after the conversation.

A pair's verdict is P(A) = sigmoid(r_a - r_b), with no principle, judge prompt or presentation
order (``reward_model``); an answer's grade is its raw reward. The constitution or rubric a
run names is recorded but not used: there is nothing to ask or parse.
"""

from __future__ import annotations

import asyncio
import math

from charter.judges.pairwise import LabelConfig, check_reward_judge, clamp
from charter.judges.records import REWARD_MODEL, Grade, Judgement, PairVerdict
from charter.model import Model, with_usage
from charter.pairs import PairRecord
from charter.records import AnswerRecord


def sigmoid(x: float) -> float:
    """1 / (1 + e^-x), without overflow for rewards far apart."""
    if x >= 0:
        return 1.0 / (1.0 + math.exp(-x))
    z = math.exp(x)
    return z / (1.0 + z)


@with_usage
async def compare_by_reward(pair: PairRecord, *, judge: Model, config: LabelConfig) -> PairVerdict:
    """P(A) = sigmoid(r_a - r_b), each answer scored once after the conversation (clamped as
    any verdict)."""
    check_reward_judge(judge.name, config)
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


@with_usage
async def grade_by_reward(item: AnswerRecord, *, judge: Model) -> Grade:
    """The reward model's raw reward for the answer after the conversation."""
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
