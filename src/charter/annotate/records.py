"""The files of the human-labelling loop: the queue ``route`` writes and ``annotate`` serves,
and the append-only log of human judgements ``annotate`` writes.

The log is never rewritten: a label is one line, an undo is another line naming the label it
takes back, so a kill -9 can at worst cut the last line (dropped on reading). ``fold`` turns
the events into the labels that stand: one per (pair, annotator). Within a log the order of
its lines decides (a later label replaces an earlier one); across logs, each event's ``time``
(``read_annotation_logs``).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError

from charter.errors import InputError
from charter.types import Message
from charter.validation import describe_validation

HumanChoice = Literal["a", "b", "tie", "skip"]
"""What an annotator said, in the pair's own A/B terms (never in screen terms)."""
Side = Literal["a", "b"]
RoutedBy = Literal["uncertainty", "inconsistent", "random", "control"]
"""Why ``route`` sent a pair to people: one of its ``--by`` rules, or ``control``, a random
pair from the rest, so AI-vs-human agreement can be measured outside the doubtful pairs."""
CHOICE_P: dict[str, float] = {"a": 1.0, "b": 0.0, "tie": 0.5}
"""A judgement as P(A better); a skip is no judgement."""


def event_time(value: str) -> datetime:
    """An event's ``time`` as a moment: ISO 8601 with its zone (``Z`` read on Python 3.10 too)."""
    text = value[:-1] + "+00:00" if value.endswith(("Z", "z")) else value
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"not an ISO 8601 time: {value!r}") from None
    if moment.tzinfo is None:
        raise ValueError(f"give the time's zone (e.g. 2026-11-29T17:02:03.120Z): {value!r}")
    return moment


def _checked_time(value: str) -> str:
    event_time(value)
    return value


class QueueItem(BaseModel):
    """One pair for people to judge: a line of ``charter route``'s queue. The AI label is not
    in it, so nothing the annotator is shown can anchor them on the AI's verdict."""

    model_config = ConfigDict(extra="forbid")

    id: str
    """The pair's id in the label file."""
    messages: list[Message]
    """The conversation the two answers reply to."""
    response_a: str
    response_b: str
    question: str | None = None
    """What to judge by (a principle's comparison question), when there is one."""
    routed_by: RoutedBy
    """The rule that picked the pair."""
    rank: int | None = Field(default=None, ge=1)
    """The pair's place in the rule's order (1: trusted least); None for a control pair."""
    doubt: float | None = None
    """The doubt score the ``uncertainty`` and ``inconsistent`` rules sort by (0 trusted ..
    3 least trusted); None for ``random`` and ``control`` pairs."""


class AnnotationEvent(BaseModel):
    """A line of ``charter annotate``'s output: a label, or an undo of the annotator's last."""

    model_config = ConfigDict(extra="forbid")

    event: Literal["label", "undo"]
    id: str
    """The pair labelled (for an undo: the pair whose label is taken back)."""
    annotator: str
    choice: HumanChoice | None = None
    """The judgement in the pair's A/B terms (None for an undo)."""
    left: Side | None = None
    """Which answer the page showed on the left (None when labelled through the API alone)."""
    routed_by: RoutedBy | None = None
    """Copied from the queue, so the log alone tells routed pairs from control pairs."""
    time: Annotated[str, AfterValidator(_checked_time)]
    """When it was written (UTC, ISO 8601 with its zone); what ``merge`` orders one
    annotator's labels of a pair in several logs by."""
    seconds: float | None = Field(default=None, ge=0, allow_inf_nan=False)
    """Seconds from the pair being shown to this annotator to the label (None when unknown)."""


@dataclass(frozen=True)
class Annotation:
    """A label that stands after undos: one per (pair, annotator)."""

    id: str
    annotator: str
    choice: HumanChoice
    left: Side | None
    routed_by: RoutedBy | None
    seconds: float | None
    time: str
    """When the label was given (the event's ``time``)."""

    @property
    def p_a(self) -> float | None:
        """The judgement as P(A better); None for a skip."""
        return CHOICE_P.get(self.choice)


def read_events(path: Path) -> Iterator[AnnotationEvent]:
    """The events of an annotation log; a torn last line (a killed server) is dropped, any
    other bad line stops with its file and line."""
    if not path.is_file():
        raise InputError(f"annotations not found: {path}")
    with path.open("rb") as f:
        lines = f.read().split(b"\n")
    for lineno, raw in enumerate(lines, start=1):
        if not raw.strip():
            continue
        try:
            yield AnnotationEvent.model_validate_json(raw)
        except ValidationError as e:
            if lineno == len(lines):  # no newline after it: cut off mid-write
                return
            raise InputError(f"{path}:{lineno}: {describe_validation(e)}") from e


def fold(events: Iterable[AnnotationEvent]) -> list[Annotation]:
    """The labels that stand, in the order they were given. An undo takes back that
    annotator's latest standing label of its pair; a second label of the same pair by the
    same annotator replaces the first."""
    standing: dict[tuple[str, str], Annotation] = {}
    for e in events:
        key = (e.id, e.annotator)
        if e.event == "undo":
            standing.pop(key, None)
        elif e.choice is not None:
            standing.pop(key, None)  # re-insert: order is that of the label that stands
            standing[key] = Annotation(
                e.id, e.annotator, e.choice, e.left, e.routed_by, e.seconds, e.time
            )
    return list(standing.values())


def read_annotations(path: Path) -> list[Annotation]:
    """The standing labels of an annotation log."""
    return fold(read_events(path))


def is_annotation_log(path: Path) -> bool:
    """Whether the file's first record is shaped as an annotation event (``event`` and
    ``annotator``: not a label or id/choice row). Only its shape: a log's bad line is
    ``read_events``' to report, with its line and field."""
    try:
        with path.open("rb") as f:
            for raw in f:
                if raw.strip():
                    record = json.loads(raw)
                    return isinstance(record, dict) and {"event", "annotator"} <= record.keys()
    except (OSError, ValueError, RecursionError):
        return False
    return False


def human_decision(p_a: float) -> Side | None:
    """The answer people prefer on the whole: the side of their mean P(A); None for a tie."""
    return "a" if p_a > 0.5 else "b" if p_a < 0.5 else None


def flipped(human_p: float, ai_p: float) -> bool:
    """People and the AI prefer different answers (neither a tie)."""
    return (human_p - 0.5) * (ai_p - 0.5) < 0


def human_p_by_id(annotations: Iterable[Annotation]) -> dict[str, float]:
    """Each pair's mean human P(A better) over its non-skip labels (pairs with only skips
    have none)."""
    by_id: dict[str, list[float]] = {}
    for a in annotations:
        if a.p_a is not None:
            by_id.setdefault(a.id, []).append(a.p_a)
    return {i: sum(ps) / len(ps) for i, ps in by_id.items()}


def read_annotation_logs(paths: Iterable[Path]) -> list[Annotation]:
    """The standing labels of one or more annotation logs. Each log is folded on its own (in
    a log, line order decides, and an undo takes back a label of its own log: the server that
    wrote it knew no other). Where one annotator labelled the same pair in several logs, the
    label given latest stands, by its ``time`` (each server's clock); at the very same time,
    the one in the log named later. A file that is not an annotation log is refused; an empty
    one holds no labels yet."""
    standing: dict[tuple[str, str], tuple[tuple[datetime, int], Annotation]] = {}
    for index, path in enumerate(paths):
        if not path.is_file():
            raise InputError(f"annotations not found: {path}")
        if path.read_bytes().strip() and not is_annotation_log(path):
            raise InputError(
                f"{path}: not an annotation log (charter annotate output): its first line has "
                "no 'event' and 'annotator'"
            )
        for a in fold(read_events(path)):
            key, rank = (a.id, a.annotator), (event_time(a.time), index)
            held = standing.get(key)
            if held is None or rank > held[0]:
                standing.pop(key, None)  # re-insert: order is that of the label that stands
                standing[key] = (rank, a)
    return [a for _, a in standing.values()]
