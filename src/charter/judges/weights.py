"""How ``label --principles K`` makes one p_a of K verdicts (``--weights``).

``equal``: their mean. ``priority``, the spec's rule that the higher priority decides when
principles conflict: the verdicts of one priority level are averaged into the level's verdict,
and the highest level whose verdict is clear (further than ``--priority-margin`` from 0.5)
decides alone; lower levels only break ties. ``inverse-priority``: a mean weighted by
1/priority, where lower levels together can outvote a higher one.
"""

from __future__ import annotations

from collections.abc import Sequence

from charter.config import Weights
from charter.judges.records import TIE_TOLERANCE, PrincipleLabel


def weighted_mean(values: Sequence[float], weights: Sequence[float] | None = None) -> float:
    if weights is None:
        return sum(values) / len(values)
    return sum(v * w for v, w in zip(values, weights, strict=True)) / sum(weights)


def priority_shares(
    verdicts: Sequence[tuple[int, float]], margin: float
) -> tuple[list[float], int | None]:
    """--weights priority: each verdict's share of p_a, given (priority, p_a) per principle,
    and the priority level that decided. A level's verdict is the mean of its principles'; the
    highest level whose verdict is further than ``margin`` from 0.5 decides alone (its
    principles share p_a equally, the others get 0), so lower levels only break ties. When no
    level is clear, p_a is the mean of the levels' verdicts (each level counting once) and no
    level decided."""
    levels: dict[int, list[float]] = {}
    for rank, p in verdicts:
        levels.setdefault(rank, []).append(p)
    for rank in sorted(levels):
        if abs(weighted_mean(levels[rank]) - 0.5) > margin + TIE_TOLERANCE:
            return [1.0 / len(levels[rank]) if r == rank else 0.0 for r, _ in verdicts], rank
    return [1.0 / (len(levels[r]) * len(levels)) for r, _ in verdicts], None


def weigh(
    labels: Sequence[PrincipleLabel], weights: Weights, margin: float
) -> tuple[list[PrincipleLabel], int | None]:
    """The verdicts with their ``weight`` in p_a, and the priority level that decided
    (``priority`` only); unchanged with ``equal``."""
    if weights == "equal":
        return list(labels), None
    known = [x.priority for x in labels if x.priority is not None]
    # check_choices refuses these weights where a verdict has no rank (principles asked
    # together, a constitution without priorities)
    assert len(known) == len(labels), "--weights by priority without ranks"
    deciding = None
    if weights == "priority":
        scored = [(r, x.p_a) for r, x in zip(known, labels, strict=True)]
        shares, deciding = priority_shares(scored, margin)
    else:
        shares = [1.0 / r for r in known]
    weighted = [x.model_copy(update={"weight": w}) for x, w in zip(labels, shares, strict=True)]
    return weighted, deciding


def combine(labels: Sequence[PrincipleLabel]) -> tuple[float, float | None, float | None]:
    """(p_a, p_a_when_first, p_a_when_second): the verdicts' means weighted by their
    ``weight``, the same weights for all three, so p_a is the mean of the two orders' when
    both were asked. An order's mean is None unless every verdict that counts (weight above
    0) was asked in that order."""
    counted = [x for x in labels if x.weight > 0]
    weights = [x.weight for x in counted]

    def order(first: bool) -> float | None:
        values = [x.p_a_when_first if first else x.p_a_when_second for x in counted]
        present = [v for v in values if v is not None]
        return weighted_mean(present, weights) if len(present) == len(values) else None

    return weighted_mean([x.p_a for x in counted], weights), order(True), order(False)
