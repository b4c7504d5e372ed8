"""``route``: send the pairs where the AI label is least trustworthy to people.

The queue it writes is what ``charter annotate`` serves: the conversation, the two answers
and the question to judge by, never the AI's label, so nothing anchors the annotator. The
order is fixed by the label file's content and the seed alone (not by its line order), so
running it again writes the same queue.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from charter.annotate.records import QueueItem
from charter.config import InputPath
from charter.constitution import Constitution, load_constitution
from charter.engines.base import same_file
from charter.errors import CharterError, ConfigError, InputError
from charter.evaluate import load_labels
from charter.io import part_files, write_jsonl_atomic
from charter.judges.records import LabelRecord
from charter.validation import describe_validation

Rule = Literal["uncertainty", "inconsistent", "random"]

ROUTE_HELP = """\
Send the pairs where the AI label is least trustworthy to people: writes a queue for
charter annotate (the AI's label is never in it).

\b
Rules (--by):
  uncertainty (default): doubt = (1 - |2*p_a - 1|) + 1 if position-inconsistent
    (position_consistent is false) + principle split, where split =
    2*min(#principles with p_a > 0.5, #with p_a < 0.5) / #principles (0 with fewer than
    2 principles). Doubt runs from 0 (trusted) to 3; the highest doubt is routed first,
    ties broken by a seeded hash of the id (not by file order).
  inconsistent: position-inconsistent pairs first, then the rest by doubt.
  random: a seeded random sample.
--control M adds M pairs drawn at random (seeded) from the pairs not routed, spread
through the queue, so AI-vs-human agreement can also be measured outside the doubtful
pairs. The question shown is --question, else the comparison question of the one
principle the pair was labelled under (when its constitution loads), else none.
"""


class RouteOptions(BaseModel):
    """``charter route``: CLI flags, recipe keys (``stage: route``) and ``route`` keywords."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)

    input: InputPath
    """Label file (charter label output, or a folder of its part files)."""
    output: Path
    """Queue file to write (JSONL, for charter annotate); rewritten whole each run."""
    budget: int = Field(ge=1)
    """Pairs to route to people (all of them when the file has fewer)."""
    by: Rule = "uncertainty"
    """Which pairs to route first (see the rules above)."""
    control: int = Field(default=0, ge=0)
    """Extra pairs drawn at random from the rest, as a control group."""
    seed: int = 0
    """Seed of the tie-breaks, the random rule and the control draw."""
    question: str | None = None
    """What annotators judge by (default: the principle's comparison question, when the
    pair was labelled under one principle)."""

    @field_validator("input", mode="before")
    @classmethod
    def _path_as_text(cls, value: object) -> object:
        return str(value) if isinstance(value, Path) else value


@dataclass(frozen=True)
class RouteSummary:
    """What a route run did."""

    output: Path
    by: Rule
    pairs: int
    """Pairs in the label file."""
    budget: int
    routed: int
    """Pairs routed by the rule."""
    control: int
    """Control pairs added."""
    control_asked: int
    mean_doubt_routed: float | None
    mean_doubt_rest: float | None
    """Mean doubt of the pairs the rule did not route (None when it routed them all)."""

    def __str__(self) -> str:
        doubt = ""
        if self.mean_doubt_routed is not None:
            rest = (
                f" vs {self.mean_doubt_rest:.2f} for the rest"
                if self.mean_doubt_rest is not None
                else ""
            )
            doubt = f"; mean doubt {self.mean_doubt_routed:.2f}{rest}"
        took_all = (
            f"; budget {self.budget} exceeds the {self.pairs} pairs: took all"
            if self.budget > self.pairs
            else ""
        )
        line = f"routed {self.routed} of {self.pairs} pairs ({self.by}{doubt}{took_all})"
        if self.control_asked:
            short = (
                f" (asked {self.control_asked}; no more pairs left)"
                if self.control < self.control_asked
                else ""
            )
            line += f" + {self.control} control{short}"
        return f"{line} -> {self.output}"


def doubt(record: LabelRecord) -> float:
    """How little to trust a record's AI label, 0 .. 3: uncertainty of p_a, plus 1 for a
    position-inconsistent label, plus how evenly its principles split."""
    uncertain = 1.0 - abs(2.0 * record.p_a - 1.0)
    inconsistent = 1.0 if record.position_consistent is False else 0.0
    return round(uncertain + inconsistent + principle_split(record), 9)  # 0.7 and 0.3 tie


def principle_split(record: LabelRecord) -> float:
    """2 * min(#principles for A, #for B) / #principles: 1 for an even split, 0 when they
    agree (or with fewer than two principles); a principle at exactly 0.5 sides with neither."""
    verdicts = [p.p_a for p in record.per_principle]
    if len(verdicts) < 2:
        return 0.0
    for_a = sum(p > 0.5 for p in verdicts)
    for_b = sum(p < 0.5 for p in verdicts)
    return 2.0 * min(for_a, for_b) / len(verdicts)


def _hash(seed: int, purpose: str, pair_id: str) -> str:
    """A seeded stand-in for a random number, fixed by the id (not by file order)."""
    return hashlib.sha256(f"{seed}:{purpose}:{pair_id}".encode()).hexdigest()


def order_pairs(records: list[LabelRecord], by: Rule, seed: int) -> list[LabelRecord]:
    """All records, the ones to route first at the front."""
    if by == "random":
        return sorted(records, key=lambda r: _hash(seed, "random", r.id))
    scores = {r.id: doubt(r) for r in records}

    def key(r: LabelRecord) -> tuple[bool, float, str]:
        first = by == "uncertainty" or r.position_consistent is False
        return (not first, -scores[r.id], _hash(seed, "tie", r.id))

    return sorted(records, key=key)


class _Questions:
    """The question of a record labelled under one principle, from its constitution (each
    constitution loaded once; one that does not load gives no question)."""

    def __init__(self, fixed: str | None) -> None:
        self.fixed = fixed
        self.loaded: dict[str, Constitution | None] = {}

    def __call__(self, record: LabelRecord) -> str | None:
        if self.fixed is not None:
            return self.fixed
        if len(record.principles) != 1:
            return None
        name = record.constitution
        if name not in self.loaded:
            try:
                self.loaded[name] = load_constitution(name)
            except CharterError:
                self.loaded[name] = None
        constitution = self.loaded[name]
        if constitution is None:
            return None
        principle = {p.id: p for p in constitution.principles}.get(record.principles[0])
        return principle.comparison_question.strip() if principle is not None else None


def _interleave(routed: list[QueueItem], control: list[QueueItem]) -> list[QueueItem]:
    """Control pairs spread evenly through the routed ones (the j-th after
    ceil((j+1)*N/(M+1)) routed pairs, so a routed pair comes first), so an annotator who stops
    early has labelled some of each."""
    out: list[QueueItem] = []
    c = 0
    for i, item in enumerate(routed):
        while c < len(control) and -(-(c + 1) * len(routed) // (len(control) + 1)) <= i:
            out.append(control[c])
            c += 1
        out.append(item)
    return out + control[c:]


def refuse_overwrite(output: Path, inputs: list[Path]) -> None:
    """An output that is one of the inputs (or one of an input folder's parts) is refused."""
    for source in inputs:
        parts = part_files(source) if source.is_dir() else []
        if same_file(output, source) or any(same_file(output, p) for p in parts):
            raise ConfigError(f"{output} is the input {source}: choose another output")


def run_route(opts: RouteOptions) -> RouteSummary:
    """Write the queue the options describe; see ``ROUTE_HELP`` for the rules."""
    labels = Path(opts.input)
    refuse_overwrite(opts.output, [labels])
    records = load_labels(labels, None).rows
    seen: set[str] = set()
    for r in records:
        if r.id in seen:
            raise InputError(
                f"{labels}: pair id {r.id!r} appears more than once; route needs one record "
                "per pair"
            )
        seen.add(r.id)
    ordered = order_pairs(records, opts.by, opts.seed)
    picked, rest = ordered[: opts.budget], ordered[opts.budget :]
    controls = sorted(rest, key=lambda r: _hash(opts.seed, "control", r.id))[: opts.control]
    question = _Questions(opts.question)
    scored = opts.by != "random"

    def item(r: LabelRecord, rank: int | None, routed_by: str) -> QueueItem:
        return QueueItem.model_validate(
            {
                "id": r.id,
                "messages": r.prompt,
                "response_a": r.response_a,
                "response_b": r.response_b,
                "question": question(r),
                "routed_by": routed_by,
                "rank": rank,
                "doubt": doubt(r) if scored and routed_by != "control" else None,
            }
        )

    routed = [item(r, i, opts.by) for i, r in enumerate(picked, start=1)]
    control = [item(r, None, "control") for r in controls]
    queue = _interleave(routed, control)
    write_jsonl_atomic(opts.output, [q.model_dump_json() for q in queue])

    def mean_doubt(rs: list[LabelRecord]) -> float | None:
        return sum(doubt(r) for r in rs) / len(rs) if rs else None

    return RouteSummary(
        output=opts.output,
        by=opts.by,
        pairs=len(records),
        budget=opts.budget,
        routed=len(routed),
        control=len(control),
        control_asked=opts.control,
        mean_doubt_routed=mean_doubt(picked),
        mean_doubt_rest=mean_doubt(rest),
    )


def route(
    labels: str | Path,
    output: str | Path,
    budget: int,
    *,
    by: Rule = "uncertainty",
    control: int = 0,
    seed: int = 0,
    question: str | None = None,
) -> RouteSummary:
    """Write a queue of the ``budget`` pairs of ``labels`` to trust least (``by`` rule),
    plus ``control`` random others; a bad option is one ConfigError naming it."""
    try:
        opts = RouteOptions(
            input=str(labels),
            output=Path(output),
            budget=budget,
            by=by,
            control=control,
            seed=seed,
            question=question,
        )
    except ValidationError as e:
        raise ConfigError(f"route: {describe_validation(e)}") from e
    return run_route(opts)
