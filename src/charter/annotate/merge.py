"""``merge``: people's labels back into the dataset, one row per pair of the label file.

A pair with at least one human judgement (not a skip) takes the humans' mean P(A better);
every other pair keeps the AI's soft label. The TRL columns are those ``charter label``
writes, so the merged file trains like a label file (``charter train reward|dpo``).

One annotator counts once per pair. Within a log the later line stands; where the same
annotator labelled a pair in several logs, the label given latest (the events' ``time``)
stands whatever the order of the logs, and only at the very same time the log named later
(``records.read_annotation_logs``).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import combinations
from pathlib import Path
from typing import Any, Literal

from charter.annotate.options import MergeOptions
from charter.annotate.records import (
    Annotation,
    HumanChoice,
    flipped,
    human_decision,
    human_p_by_id,
    read_annotation_logs,
)
from charter.annotate.route import refuse_overwrite
from charter.evaluate import load_labels
from charter.io import write_jsonl_atomic
from charter.judges.records import LabelRecord, PairFields, trl_columns
from charter.types import Message

log = logging.getLogger("charter")


class MergedRecord(PairFields):
    """A line of ``charter merge``'s output: one pair (as in the label file), labelled by
    people or by the AI."""

    p_a: float
    """The label trained on: the human mean where a human judged the pair, else the AI's."""
    label_source: Literal["human", "ai"]
    """Whose label ``p_a`` is."""
    ai_p_a: float
    """The AI judge's soft label, kept either way."""
    human_p_a: float | None
    """Mean human P(A better) over the non-skip labels (a = 1, b = 0, tie = 0.5); None when
    nobody judged the pair."""
    annotators: int
    """Annotators whose label counts (a skip does not)."""
    human_choices: dict[str, HumanChoice]
    """Each annotator's standing label, skips included, by annotator name."""
    human_agreement: float | None
    """Share of pairs of (non-skip) annotators that gave the same label; None with fewer
    than two."""
    human_choice: Literal["a", "b"] | None
    """The human decision: the side of ``human_p_a`` (None for a human tie); for a pair
    nobody judged, the label file's own ``human_choice`` (carried from the input), so
    ``--labels human`` can train."""
    judge: str
    """The AI judge of the label file."""
    constitution: str
    """The constitution the AI judged by."""
    chosen: list[Message] | None
    """TRL column: the preferred answer (None for a human tie, or an AI label below
    --min-confidence)."""
    rejected: list[Message] | None
    """TRL column: the other answer."""
    p_chosen: float | None
    """Probability of ``chosen`` (>= 0.5)."""
    low_confidence: bool
    """True when an AI label fell below --min-confidence (as ``charter label`` writes it)."""
    excluded_reason: Literal["tie", "inconsistent", "low_confidence"] | None = None
    """Why the pair has no TRL columns: a tie (human or AI), a position-inconsistent AI label,
    or below --min-confidence; None when it has them."""


@dataclass(frozen=True)
class MergeSummary:
    """What a merge did."""

    output: Path
    pairs: int
    human: int
    """Pairs labelled by people."""
    flipped: int
    """Of those, pairs where people preferred the other answer than the AI."""
    ties: int
    """Of those, human ties (no TRL columns)."""

    @property
    def ai(self) -> int:
        return self.pairs - self.human

    def __str__(self) -> str:
        ties = f", {self.ties} human tie{'s' if self.ties != 1 else ''} dropped from TRL columns"
        return (
            f"merged {self.pairs} pairs: {self.human} human-labelled ({self.flipped} flipped "
            f"the AI's preference{ties}), {self.ai} AI -> {self.output}"
        )


def agreement(choices: Sequence[str]) -> float | None:
    """Share of pairs of labels that are the same; None with fewer than two labels."""
    pairs = list(combinations(choices, 2))
    return sum(x == y for x, y in pairs) / len(pairs) if pairs else None


def merged_record(
    rec: LabelRecord, labels: list[Annotation], human_p: float | None
) -> MergedRecord:
    """One pair's merged row, from its AI label and its standing human labels."""
    counted = [a.choice for a in labels if a.p_a is not None]
    columns: dict[str, Any]
    if human_p is None:
        p_a = rec.p_a
        columns = rec.model_dump(
            include={"chosen", "rejected", "p_chosen", "low_confidence", "excluded_reason"}
        )
        human_choice = rec.human_choice
    else:
        p_a = human_p
        # People judged it: their tie names no better answer, whatever the input carried.
        human_choice = human_decision(human_p)
        if human_choice is None:
            columns = {
                "chosen": None,
                "rejected": None,
                "p_chosen": None,
                "low_confidence": False,
                "excluded_reason": "tie",
            }
        else:
            columns = trl_columns(rec, human_p, 0.0)
    return MergedRecord.model_validate(
        {
            **rec.model_dump(include=set(PairFields.model_fields)),
            "p_a": p_a,
            "label_source": "ai" if human_p is None else "human",
            "ai_p_a": rec.p_a,
            "human_p_a": human_p,
            "annotators": len(counted),
            "human_choices": {a.annotator: a.choice for a in labels},
            "human_agreement": agreement(counted),
            "human_choice": human_choice,
            "judge": rec.judge,
            "constitution": rec.constitution,
            **columns,
        }
    )


def merge(labels: str | Path, human: Sequence[str | Path], output: str | Path) -> MergeSummary:
    """Write one merged row per pair of ``labels`` (see ``MergedRecord``), the human labels
    read from the annotation logs ``human``: one per annotator and pair, across logs the
    latest by ``time`` (at the same time, the log named later). Annotations on pairs not in
    ``labels`` are counted and ignored."""
    labels, output = Path(labels), Path(output)
    logs = [Path(h) for h in human]
    refuse_overwrite(output, [labels, *logs])
    records = load_labels(labels, None).rows
    annotations = read_annotation_logs(logs)
    by_id: dict[str, list[Annotation]] = {}
    for a in annotations:
        by_id.setdefault(a.id, []).append(a)
    human_p = human_p_by_id(annotations)
    rows = [merged_record(r, by_id.get(r.id, []), human_p.get(r.id)) for r in records]
    unknown = set(by_id) - {r.id for r in records}
    if unknown:
        log.warning(
            "%d annotated pair id(s) are not in %s and were ignored (first: %s)",
            len(unknown),
            labels,
            sorted(unknown)[0],
        )
    write_jsonl_atomic(output, [r.model_dump_json() for r in rows])
    human_rows = [r for r in rows if r.human_p_a is not None]
    return MergeSummary(
        output=output,
        pairs=len(rows),
        human=len(human_rows),
        flipped=sum(flipped(r.human_p_a, r.ai_p_a) for r in human_rows if r.human_p_a is not None),
        ties=sum(r.human_p_a == 0.5 for r in human_rows),
    )


def run_merge(opts: MergeOptions) -> MergeSummary:
    """``charter merge`` from its options (the command, a recipe stage, ``charter.run``)."""
    return merge(opts.input, opts.human, opts.output)
