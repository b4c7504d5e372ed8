"""Prometheus 2's formats: a grade or a pairwise verdict asked in the structure Prometheus
judges were trained on (sections headed ``###Task Description``, ``###Score Rubrics``, ...
ending in ``###Feedback:``), read from their answer, feedback then ``[RESULT] N`` (absolute) or
``[RESULT] A|B`` (relative), from the judge's own text: the last ``[RESULT]`` after any echo
of the prompt is removed, never a placeholder such as "[RESULT] (an integer number between 1
and 5)" (prometheus-eval #58). The verdict is read from text, never from log-probabilities:
Prometheus gives it after its feedback, in its own format.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from charter.judges.grading import ScoreConfig
from charter.judges.pairwise import OPTIONS, LabelConfig, in_order, judgement, plan_orders
from charter.judges.records import (
    Grade,
    Judgement,
    Order,
    PairVerdict,
    PrincipleLabel,
    orders_agree,
)
from charter.judges.retry import ATTEMPTS, RETRY_SEEDS, retry_temperature, unread
from charter.judges.verdicts import Result, read_result
from charter.model import Model, with_usage
from charter.pairs import PairRecord
from charter.prompts import render, render_conversation
from charter.records import AnswerRecord
from charter.rubric import Rubric
from charter.seeds import derive_rng, sample_seed
from charter.types import GenerateConfig, Message

PROMETHEUS_SCALE = [1, 2, 3, 4, 5]
"""The scale Prometheus 2 judges were trained to grade on."""
PROMETHEUS_MAX_TOKENS = 1024
"""Default cap on a Prometheus judge's feedback: it writes a paragraph, often more when it
compares two responses, and a reply cut before its ``[RESULT]`` is no verdict."""


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
    first, second = in_order(pair, order)
    text = render(
        "prometheus_relative",
        instruction=prometheus_instruction(pair.messages),
        first=first,
        second=second,
        criterion=rubric.criterion,
    )
    return [Message(role="user", content=text)]


@with_usage
async def grade_prometheus(
    item: AnswerRecord, *, judge: Model, rubric: Rubric, config: ScoreConfig
) -> Grade:
    """A Prometheus judge's grade: its feedback, then the score after its last ``[RESULT]``.
    An answer without one is asked again (``charter.judges.retry``), then the grade fails
    with the raw text."""
    msgs = prometheus_messages(item, rubric)
    options = [str(s) for s in rubric.scores]
    result: Result | None = None
    attempt = 0
    while result is None and attempt < config.attempts:
        g = await judge.generate(
            msgs,
            GenerateConfig(
                max_tokens=config.max_tokens,
                temperature=retry_temperature(config.temperature, attempt),
                top_p=config.top_p,
                seed=sample_seed(config.seed, item.id, attempt + 1),
            ),
        )
        attempt += 1
        result = read_result(g, msgs[0].content, options)
    if result is None:
        what = f"no [RESULT] on the {options[0]}-{options[-1]} scale after the judge's feedback"
        raise unread(what, attempt, g, unit="answers")
    return Grade(
        score=int(result.value),
        expected_score=None,
        score_probs=None,
        feedback=result.feedback,
        attempts=attempt,
        judge=judge.name,
        format="prometheus",
    )


async def _pair_judgement(
    index: int, pair: PairRecord, order: Order, *, judge: Model, rubric: Rubric, config: LabelConfig
) -> Judgement:
    """One order's verdict: ``votes`` feedbacks, each ending in ``[RESULT] A|B``; the
    readable ones decide (P(first) = the share naming Response A), unreadable ones are
    dropped, and when none is readable all are asked again (``charter.judges.retry``)."""
    msgs = prometheus_pair_messages(pair, rubric, order)
    for attempt in range(ATTEMPTS):
        gens = await asyncio.gather(
            *(
                judge.generate(
                    msgs,
                    GenerateConfig(
                        max_tokens=config.max_tokens,
                        temperature=retry_temperature(config.temperature, attempt),
                        top_p=config.top_p,
                        seed=sample_seed(
                            config.seed, pair.id, index * 100 + v + attempt * RETRY_SEEDS
                        ),
                    ),
                )
                for v in range(config.votes)
            )
        )
        results = [r for g in gens if (r := read_result(g, msgs[0].content, OPTIONS))]
        if results:
            return judgement(
                rubric.name,
                order,
                sum(r.value == "A" for r in results) / len(results),
                "votes" if config.votes > 1 else "parsed",
                config.effective_clamp,
                reasoning=results[0].feedback,
            )
    raise unread("no [RESULT] A or B after the judge's feedback", ATTEMPTS, gens[0])


@with_usage
async def compare_prometheus(
    pair: PairRecord, *, judge: Model, rubric: Rubric, config: LabelConfig
) -> PairVerdict:
    """A Prometheus judge's pairwise verdict, made as any pairwise verdict is: the orders
    asked (--orders), each read from the judge's ``[RESULT]`` (--votes samples per order),
    clamped (--clamp), averaged over the orders; the rubric stands as the one principle."""
    principle = rubric.as_constitution().principles[0].id
    orders = plan_orders(config.orders, derive_rng(config.seed, pair.id, "label"))
    judgements = await asyncio.gather(
        *(
            _pair_judgement(i, pair, o, judge=judge, rubric=rubric, config=config)
            for i, o in enumerate(orders, start=1)
        )
    )
    by_order = {j.order: j.p_a for j in judgements}
    p_a = sum(by_order.values()) / len(by_order)
    first, second = by_order.get("ab"), by_order.get("ba")
    consistent = orders_agree(first, second)
    return PairVerdict(
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
    )
