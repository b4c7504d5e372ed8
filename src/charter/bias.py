"""``evaluate``'s numbers that stay honest under judge bias: a length-controlled win rate for
head-to-head label files, the judge's preference for its own model's answers, and
prediction-powered estimates that combine a few human labels drawn at random with many AI
labels (``charter.stats`` does the arithmetic)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from pydantic import BaseModel, ConfigDict

from charter.errors import ConfigError
from charter.label_rows import LabelRow, model_of
from charter.stats import (
    LengthControlled,
    PredictionPowered,
    SelfPreference,
    length_controlled,
    prediction_powered,
    self_preference,
)

RANDOM_DRAWS = ("control", "random")
"""``routed_by`` of annotated pairs drawn at random (route --control, route --by random)."""
DOUBT = ("uncertainty", "inconsistent")
"""``routed_by`` of pairs sent to people because the judge was doubtful: not a random draw."""


class _Block(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class HeadToHead(_Block):
    """Two models' answers set against each other in every pair."""

    model: str
    opponent: str
    pairs: int
    judge: LengthControlled
    """The judge's win rate for ``model``, raw and with the length term at zero."""
    human: LengthControlled | None = None
    """The same from people's labels, where they labelled (None without)."""


class Estimates(_Block):
    """How often one answer (or one model) is preferred: AI only, human only, PPI."""

    rate_of: str
    """What the rate counts (``openai/a preferred over openai/b``, ``answer A preferred``)."""
    pairs: int
    """Pairs with AI labels (N)."""
    drawn: int
    """Of those, pairs drawn at random whose human labels are used (n)."""
    draw: str
    """Where the random draw comes from."""
    rates: PredictionPowered


class Bias(_Block):
    """The three blocks of one label file, each with why it is missing when it is."""

    head_to_head: HeadToHead | None = None
    head_to_head_note: str | None = None
    self_preference: list[SelfPreference] = []
    self_preference_note: str | None = None
    estimates: Estimates | None = None
    estimates_note: str | None = None


def _human_value(row: LabelRow, tie: bool) -> float | None:
    if row.human_choice == "a":
        return 1.0
    if row.human_choice == "b":
        return 0.0
    return 0.5 if tie else None


def head_to_head(rows: Sequence[LabelRow], seed: int) -> tuple[HeadToHead | None, str | None]:
    models = [(model_of(r.a_source), model_of(r.b_source)) for r in rows]
    met = {frozenset(m) for m in models}
    if any(a is None or b is None for a, b in models) or len(met) != 1:
        return (
            None,
            "not a head-to-head file: its pairs do not all set the same two models' answers "
            "against each other (respond --model A,B, then label)",
        )
    pair = next(iter(met))
    if len(pair) != 2:
        return None, "both answers of every pair come from one model"
    model, opponent = sorted(str(m) for m in pair)
    first = [a == model for a, _ in models]
    pref = [r.p_a if f else 1.0 - r.p_a for r, f in zip(rows, first, strict=True)]
    mine = [r.words_a if f else r.words_b for r, f in zip(rows, first, strict=True)]
    theirs = [r.words_b if f else r.words_a for r, f in zip(rows, first, strict=True)]
    judge = length_controlled(pref, mine, theirs, model=model, opponent=opponent, seed=seed)
    people = [
        (1.0 - v if not f else v, m, t)
        for r, f, m, t in zip(rows, first, mine, theirs, strict=True)
        if (v := _human_value(r, False)) is not None
    ]
    human = None
    if len(people) >= 10:
        human = length_controlled(
            [p for p, _, _ in people],
            [m for _, m, _ in people],
            [t for _, _, t in people],
            model=model,
            opponent=opponent,
            seed=seed,
        )
    return HeadToHead(
        model=model, opponent=opponent, pairs=len(rows), judge=judge, human=human
    ), None


def self_preferences(
    name: str,
    rows: Sequence[LabelRow],
    others: Sequence[tuple[str, Sequence[LabelRow]]],
    seed: int,
) -> tuple[list[SelfPreference], str | None]:
    """The judge's preference for its own model's answers against people's and each
    independent judge's (one that wrote neither answer) on the same pairs."""
    judges = {r.judge for r in rows}
    if len(judges) != 1:
        return [], "the file has several judges"
    judge = next(iter(judges))
    if not any(model_of(r.a_source) or model_of(r.b_source) for r in rows):
        return [], (
            "the answers' sources name no model (respond --model A,B records which model "
            "wrote each answer): who wrote them is not known"
        )
    own: dict[str, tuple[LabelRow, bool]] = {}
    for r in rows:
        a, b = model_of(r.a_source), model_of(r.b_source)
        if (a == judge) != (b == judge):
            own[r.id] = (r, a == judge)
    if not own:
        return [], f"the judge ({judge}) wrote none of the answers: nothing to measure"
    found = []
    people = [
        (r.p_a if a else 1 - r.p_a, v if a else 1 - v)
        for r, a in own.values()
        if (v := _human_value(r, False)) is not None
    ]
    if people:
        found.append(
            self_preference(
                [j for j, _ in people],
                [h for _, h in people],
                judge=judge,
                reference="people",
                seed=seed,
            )
        )
    for other_name, other_rows in others:
        other_judges = {r.judge for r in other_rows}
        if len(other_judges) != 1 or judge in other_judges:
            continue
        other = next(iter(other_judges))
        paired = [
            (mine.p_a if a else 1 - mine.p_a, r.p_a if a else 1 - r.p_a)
            for r in other_rows
            if r.id in own
            for mine, a in (own[r.id],)
            if other not in (model_of(r.a_source), model_of(r.b_source))
        ]
        if paired:
            found.append(
                self_preference(
                    [j for j, _ in paired],
                    [o for _, o in paired],
                    judge=judge,
                    reference=f"{other} ({other_name})",
                    seed=seed,
                )
            )
    if not found:
        return [], (
            f"the judge ({judge}) wrote one answer of {len(own)} pair(s), but no independent "
            "judge's labels nor people's cover them"
        )
    return found, None


def _target(rows: Sequence[LabelRow]) -> tuple[str, list[bool]]:
    """What the rate counts, and for each row whether it is answer A."""
    models = [(model_of(r.a_source), model_of(r.b_source)) for r in rows]
    met = {frozenset(m) for m in models}
    if len(met) == 1 and None not in next(iter(met)) and len(next(iter(met))) == 2:
        model, opponent = sorted(str(m) for m in next(iter(met)))
        return f"{model} preferred over {opponent}", [a == model for a, _ in models]
    sources = {frozenset((r.a_source, r.b_source)) for r in rows}
    named = sources and len(sources) == 1 and len(next(iter(sources))) == 2
    if named and not next(iter(sources)) & {"response_a", "response_b"}:
        first, second = sorted(next(iter(sources)))
        return f"{first} preferred over {second}", [r.a_source == first for r in rows]
    return "answer A preferred", [True] * len(rows)


def estimates(
    rows: Sequence[LabelRow],
    *,
    drawn: Mapping[str, float] | None,
    draw: str,
) -> tuple[Estimates | None, str | None]:
    """AI-only, human-only and prediction-powered rates. ``drawn``: the human P(A better) of
    the pairs drawn at random (1, 0, 0.5 for a tie); None when there is no such draw."""
    if drawn is None:
        return None, (
            "no human labels from a random draw: route --control M (or --by random) draws "
            "pairs for people at random; --human-random says the human labels given are such a "
            "draw. Pairs routed because the judge was doubtful are not one."
        )
    rate_of, is_a = _target(rows)
    ai_all = [r.p_a if a else 1 - r.p_a for r, a in zip(rows, is_a, strict=True)]
    ai_drawn, human = [], []
    for r, a in zip(rows, is_a, strict=True):
        if r.id in drawn:
            ai_drawn.append(r.p_a if a else 1 - r.p_a)
            human.append(drawn[r.id] if a else 1 - drawn[r.id])
    if len(human) < 2:
        return None, f"only {len(human)} pair(s) of this file were drawn at random for people"
    return (
        Estimates(
            rate_of=rate_of,
            pairs=len(rows),
            drawn=len(human),
            draw=draw,
            rates=prediction_powered(ai_all, ai_drawn, human),
        ),
        None,
    )


def random_draw_of_log(
    routed_by: Mapping[str, str | None], human_p: Mapping[str, float]
) -> dict[str, float]:
    """The human P(A) of an annotation log's pairs drawn at random (control, random)."""
    return {
        pid: 1.0 if p > 0.5 else 0.0 if p < 0.5 else 0.5
        for pid, p in human_p.items()
        if routed_by.get(pid) in RANDOM_DRAWS
    }


def refuse_doubt(routed_by: Mapping[str, str | None], where: str) -> None:
    """--human-random with a log whose labels include pairs routed for doubt: refused."""
    doubtful = [pid for pid, by in routed_by.items() if by in DOUBT]
    if doubtful:
        raise ConfigError(
            f"--human-random: {where} holds labels of {len(doubtful)} pair(s) routed because "
            "the judge was doubtful (uncertainty, inconsistent), not drawn at random; without "
            "--human-random its control and random pairs are used for the estimates"
        )
