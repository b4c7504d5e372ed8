"""``charter constitution compare``: the same pairs labelled under two constitutions, set side
by side. How often the two verdicts agree, how often they flip (with an interval), which
principles the flips come with, and, where people labelled the pairs too, which constitution
agrees with them better."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import jinja2
from pydantic import BaseModel, ConfigDict, Field

from charter.compare import CompareOptions
from charter.errors import InputError
from charter.evaluate import (
    Accuracy,
    JudgeFile,
    bootstrap_interval,
    credit,
    decision,
    load_human,
    load_labels,
)
from charter.judges.records import LabelRecord


class _Block(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Side(_Block):
    """One of the two label files."""

    path: str
    constitution: str
    judge: str
    pairs: int


class Rate(_Block):
    n: int
    """Pairs counted."""
    rate: float
    ci95: tuple[float, float]
    """95 % percentile-bootstrap interval."""


class PrincipleFlips(_Block):
    """A principle of one constitution, and the flips it came with."""

    constitution: str
    principle_id: str
    asked: int
    """Common pairs on which it was asked."""
    flips: int
    """Of those, pairs whose verdict flipped."""
    flip_rate: float
    """flips / asked."""
    sided: int
    """Flips in which its own verdict pointed the way its constitution decided (against the
    other constitution's decision): the flips it drove."""
    lift: float
    """flip_rate over the flip rate of all common pairs (above 1: flips come with it)."""


class HumanComparison(_Block):
    """Agreement with people on the common pairs they labelled."""

    n: int
    first: Accuracy
    second: Accuracy
    difference: Rate
    """First's agreement minus second's, paired per pair, with its interval: an interval
    clear of 0 says which constitution agrees with people better."""
    on_flips: int
    """Flipped pairs people labelled."""
    first_right_on_flips: int
    """Of those, pairs where the first constitution's verdict was the people's."""


class Flip(_Block):
    id: str
    prompt: str
    response_a: str
    response_b: str
    p_a_first: float
    p_a_second: float
    human_choice: str | None


class Comparison(_Block):
    """What ``compare.json`` holds."""

    first: Side
    second: Side
    common_pairs: int
    only_first: int
    only_second: int
    agreement: Rate
    """Share of common pairs with the same decision (a tie is a decision of its own)."""
    flips: Rate
    """Share of common pairs where one constitution picks A and the other B."""
    flips_to_a: int
    """Flips where the first constitution picks A."""
    mean_abs_difference: float
    """Mean |p_a(first) - p_a(second)|."""
    principles: list[PrincipleFlips]
    human: HumanComparison | None
    notes: list[str] = Field(default_factory=list)
    examples: list[Flip] = Field(default_factory=list)
    seed: int = 0


@dataclass(frozen=True)
class CompareSummary:
    comparison: Comparison
    report: Path

    def __str__(self) -> str:
        c = self.comparison
        lo, hi = c.flips.ci95
        line = (
            f"compare: {c.common_pairs:,} common pairs, agreement {c.agreement.rate:.2f}, flips "
            f"{c.flips.rate:.2f} [{lo:.2f}, {hi:.2f}]"
        )
        if c.human is not None:
            line += (
                f"; agreement with people {c.human.first.accuracy:.2f} vs "
                f"{c.human.second.accuracy:.2f} (n={c.human.n})"
            )
        return f"{line}\nreport: {self.report}"


def _rate(values: Sequence[float], seed: int) -> Rate:
    n = len(values)
    return Rate(
        n=n,
        rate=sum(values) / n if n else math.nan,
        ci95=bootstrap_interval(values, seed=seed),
    )


def _side(jf: JudgeFile[LabelRecord]) -> Side:
    constitutions = sorted({r.constitution for r in jf.rows})
    judges = sorted({r.judge for r in jf.rows})
    return Side(
        path=jf.path,
        constitution=", ".join(constitutions),
        judge=", ".join(judges),
        pairs=len(jf.rows),
    )


def _flips(
    rows: list[tuple[LabelRecord, LabelRecord]], overall: float, first: bool
) -> list[PrincipleFlips]:
    """Per principle of one side: where it was asked, how often the pair flipped, and how
    often its own verdict sided with its constitution in a flip."""
    asked: dict[str, int] = {}
    flipped: dict[str, int] = {}
    sided: dict[str, int] = {}
    name = ""
    for x, y in rows:
        mine, theirs = (x, y) if first else (y, x)
        name = mine.constitution
        d_mine, d_theirs = decision(mine.p_a), decision(theirs.p_a)
        flip = {d_mine, d_theirs} == {"a", "b"}
        for label in mine.per_principle:
            pid = label.principle_id
            asked[pid] = asked.get(pid, 0) + 1
            if flip:
                flipped[pid] = flipped.get(pid, 0) + 1
                if decision(label.p_a) == d_mine:
                    sided[pid] = sided.get(pid, 0) + 1
    out = []
    for pid, n in asked.items():
        f = flipped.get(pid, 0)
        out.append(
            PrincipleFlips(
                constitution=name,
                principle_id=pid,
                asked=n,
                flips=f,
                flip_rate=f / n,
                sided=sided.get(pid, 0),
                lift=(f / n) / overall if overall > 0 else math.nan,
            )
        )
    return out


def _prompt_text(rec: LabelRecord) -> str:
    return "\n".join(f"{m.role}: {m.content}" for m in rec.prompt)


def compare(
    first: Path,
    second: Path,
    *,
    human: Path | None = None,
    examples: int = 20,
    seed: int = 0,
) -> Comparison:
    """The comparison of two label files of the same pairs."""
    mapping = load_human(human) if human is not None else None
    a, b = load_labels(first, mapping), load_labels(second, mapping)
    by_id = {r.id: r for r in b.rows}
    rows = [(r, by_id[r.id]) for r in a.rows if r.id in by_id]
    if not rows:
        raise InputError(f"{first} and {second} share no pair id: label the same pairs under each")
    notes = []
    if first.resolve() == second.resolve():
        notes.append("Both are the same file: it is compared with itself.")
    elif {r.constitution_hash for r in a.rows} & {r.constitution_hash for r in b.rows}:
        same_judge = {r.judge for r in a.rows} == {r.judge for r in b.rows}
        whose = "the judge's own variation" if same_judge else "the judges' differences"
        notes.append(
            "Both files hold labels under the same constitution (by content): the differences "
            f"below are {whose}, not the constitutions'."
        )
    same = [float(decision(x.p_a) == decision(y.p_a)) for x, y in rows]
    flip = [float({decision(x.p_a), decision(y.p_a)} == {"a", "b"}) for x, y in rows]
    flips = _rate(flip, seed)
    principles = _flips(rows, flips.rate, True) + _flips(rows, flips.rate, False)
    principles.sort(key=lambda p: (-p.sided, -p.flip_rate, p.constitution, p.principle_id))
    judged = [(x, y) for x, y in rows if x.human_choice is not None and y.human_choice is not None]
    human_block = None
    if judged:
        cx = [credit(x.p_a, str(x.human_choice)) for x, _ in judged]
        cy = [credit(y.p_a, str(y.human_choice)) for _, y in judged]
        on_flips = [(x, y) for x, y in judged if {decision(x.p_a), decision(y.p_a)} == {"a", "b"}]
        human_block = HumanComparison(
            n=len(judged),
            first=Accuracy(
                n=len(cx), accuracy=sum(cx) / len(cx), ci95=bootstrap_interval(cx, seed=seed)
            ),
            second=Accuracy(
                n=len(cy), accuracy=sum(cy) / len(cy), ci95=bootstrap_interval(cy, seed=seed)
            ),
            difference=_rate([p - q for p, q in zip(cx, cy, strict=True)], seed),
            on_flips=len(on_flips),
            first_right_on_flips=sum(decision(x.p_a) == x.human_choice for x, _ in on_flips),
        )
    else:
        notes.append("No pair has a human label in both files: agreement with people is not known.")
    ties = sum(decision(x.p_a) == "tie" or decision(y.p_a) == "tie" for x, y in rows)
    if ties:
        notes.append(
            f"{ties} pair(s) are a tie (p_a exactly 0.5) in one file or both: neither the same "
            "decision nor a flip unless both are ties, so agreement and flips need not add to 1."
        )
    only_first = len(a.rows) - len(rows)
    only_second = len(b.rows) - len(rows)
    if only_first or only_second:
        notes.append(
            f"{only_first} pair(s) only in the first file and {only_second} only in the second "
            "are left out."
        )
    shown = [
        Flip(
            id=x.id,
            prompt=_prompt_text(x),
            response_a=x.response_a,
            response_b=x.response_b,
            p_a_first=x.p_a,
            p_a_second=y.p_a,
            human_choice=x.human_choice,
        )
        for (x, y), f in zip(rows, flip, strict=True)
        if f
    ][:examples]
    return Comparison(
        first=_side(a),
        second=_side(b),
        common_pairs=len(rows),
        only_first=only_first,
        only_second=only_second,
        agreement=_rate(same, seed),
        flips=flips,
        flips_to_a=sum(
            1 for (x, _), f in zip(rows, flip, strict=True) if f and decision(x.p_a) == "a"
        ),
        mean_abs_difference=sum(abs(x.p_a - y.p_a) for x, y in rows) / len(rows),
        principles=principles,
        human=human_block,
        notes=notes,
        examples=shown,
        seed=seed,
    )


def write_comparison(comparison: Comparison, out_dir: Path) -> Path:
    """``compare.json`` (NaN as null) and ``report.html`` in ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    data = json.loads(comparison.model_dump_json())
    (out_dir / "compare.json").write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    text = (resources.files("charter") / "templates" / "compare.html.j2").read_text("utf-8")
    env = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined)
    html = env.from_string(text).render(c=comparison, fmt=_fmt)
    path = out_dir / "report.html"
    path.write_text(html, encoding="utf-8")
    return path


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return "–" if math.isnan(value) else f"{value:.3f}"
    return str(value)


def run_compare(opts: CompareOptions) -> CompareSummary:
    """``charter constitution compare`` from its options (the command, a recipe stage,
    ``charter.run``)."""
    comparison = compare(
        Path(opts.input),
        Path(opts.other),
        human=opts.human,
        examples=opts.examples,
        seed=opts.seed,
    )
    return CompareSummary(comparison, write_comparison(comparison, opts.output))
