"""Evidence that AI labels can be trusted: agreement with human labels (with bootstrap
intervals), calibration, position and length bias, and agreement between judges.

Metric functions are small and pure so they can be checked against hand-computed values;
``evaluate_files`` assembles them into the report's metrics.
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from itertools import combinations, pairwise
from pathlib import Path
from typing import Any, Literal

from charter.errors import InputError

Choice = Literal["a", "b"]
CONFIDENCE_EDGES = (0.0, 0.05, 0.1, 0.2, 0.3, 0.5)


# -- pure metrics ------------------------------------------------------------------------
def decision(p_a: float) -> str:
    """The judge's pick: ``a``, ``b``, or ``tie`` at exactly 0.5."""
    return "a" if p_a > 0.5 else "b" if p_a < 0.5 else "tie"


def credit(p_a: float, human: str) -> float:
    """1 for agreeing with the human, 0 for disagreeing, 0.5 for a tie."""
    d = decision(p_a)
    return 0.5 if d == "tie" else float(d == human)


def accuracy(p_as: Sequence[float], humans: Sequence[str]) -> float:
    if not p_as:
        return math.nan
    return sum(credit(p, h) for p, h in zip(p_as, humans, strict=True)) / len(p_as)


def bootstrap_interval(
    values: Sequence[float], *, resamples: int = 2000, level: float = 0.95, seed: int = 0
) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of ``values``."""
    n = len(values)
    if n == 0:
        return (math.nan, math.nan)
    rng = random.Random(seed)
    means = sorted(sum(values[rng.randrange(n)] for _ in range(n)) / n for _ in range(resamples))
    lo = means[int((1 - level) / 2 * resamples)]
    hi = means[min(resamples - 1, int((1 + level) / 2 * resamples))]
    return (lo, hi)


def brier(p_as: Sequence[float], humans: Sequence[str]) -> float:
    if not p_as:
        return math.nan
    return sum((p - (h == "a")) ** 2 for p, h in zip(p_as, humans, strict=True)) / len(p_as)


@dataclass
class Bin:
    lo: float
    hi: float
    n: int
    mean_p: float
    frac_a: float


def reliability(p_as: Sequence[float], humans: Sequence[str], bins: int = 10) -> list[Bin]:
    """Equal-width bins over p_a: mean predicted P(A) vs how often the human chose A."""
    out = []
    for b in range(bins):
        lo, hi = b / bins, (b + 1) / bins
        idx = [i for i, p in enumerate(p_as) if lo <= p < hi or (b == bins - 1 and p == 1.0)]
        if idx:
            out.append(
                Bin(
                    lo,
                    hi,
                    len(idx),
                    sum(p_as[i] for i in idx) / len(idx),
                    sum(humans[i] == "a" for i in idx) / len(idx),
                )
            )
    return out


def ece(p_as: Sequence[float], humans: Sequence[str], bins: int = 10) -> float:
    """Expected calibration error over equal-width bins of p_a."""
    if not p_as:
        return math.nan
    return sum(b.n / len(p_as) * abs(b.mean_p - b.frac_a) for b in reliability(p_as, humans, bins))


def cohen_kappa(x: Sequence[str], y: Sequence[str]) -> float:
    """Cohen's kappa of two raters over the same items (any set of categories)."""
    n = len(x)
    if n == 0:
        return math.nan
    observed = sum(a == b for a, b in zip(x, y, strict=True)) / n
    cats = set(x) | set(y)
    expected = sum((x.count(c) / n) * (y.count(c) / n) for c in cats)
    if expected == 1.0:
        return 1.0 if observed == 1.0 else math.nan
    return (observed - expected) / (1 - expected)


def rate(flags: Iterable[bool]) -> float:
    values = list(flags)
    return sum(values) / len(values) if values else math.nan


# -- label files -------------------------------------------------------------------------
@dataclass
class LabelRow:
    id: str
    p_a: float
    human: str | None
    len_a: int
    len_b: int
    position_consistent: bool | None
    judgements: list[tuple[str, float]]
    """(order, p_first) per judgement."""
    per_principle: list[tuple[str, float]]
    """(principle id, p_a) per principle."""


@dataclass
class JudgeFile:
    name: str
    path: str
    rows: list[LabelRow] = field(default_factory=list)


def load_labels(path: Path, human: dict[str, str] | None) -> JudgeFile:
    """Read a ``charter label`` (or ``score --mode relative``) output."""
    if not path.is_file():
        raise InputError(f"labels not found: {path}")
    jf = JudgeFile(name=path.stem, path=str(path))
    judges: set[str] = set()
    with path.open("r", encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
                row = LabelRow(
                    id=str(rec["id"]),
                    p_a=float(rec["p_a"]),
                    human=(
                        human.get(str(rec["id"])) if human is not None else rec.get("human_choice")
                    ),
                    len_a=len(rec["response_a"]),
                    len_b=len(rec["response_b"]),
                    position_consistent=rec.get("position_consistent"),
                    judgements=[
                        (j["order"], float(j["p_first"])) for j in rec.get("judgements", [])
                    ],
                    per_principle=[
                        (p["principle_id"], float(p["p_a"])) for p in rec.get("per_principle", [])
                    ],
                )
            except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
                raise InputError(
                    f"{path}:{lineno}: not a label record ({type(e).__name__}: {e})"
                ) from e
            judges.add(str(rec.get("judge", "")))
            jf.rows.append(row)
    if not jf.rows:
        raise InputError(f"{path}: no label records")
    if len(judges) == 1 and next(iter(judges)):
        jf.name = f"{path.stem} ({next(iter(judges))})"
    return jf


def load_human(path: Path) -> dict[str, str]:
    """``{"id": ..., "human_choice": "a"|"b"}`` rows (a label file works too)."""
    if not path.is_file():
        raise InputError(f"human labels not found: {path}")
    out: dict[str, str] = {}
    with path.open("r", encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
                choice = rec["human_choice"]
            except (json.JSONDecodeError, KeyError, TypeError) as e:
                raise InputError(f"{path}:{lineno}: need 'id' and 'human_choice'") from e
            if choice not in ("a", "b"):
                raise InputError(f"{path}:{lineno}: human_choice must be 'a' or 'b'")
            out[str(rec["id"])] = choice
    return out


def _acc_block(p_as: list[float], humans: list[str], seed: int) -> dict[str, Any]:
    credits = [credit(p, h) for p, h in zip(p_as, humans, strict=True)]
    lo, hi = bootstrap_interval(credits, seed=seed)
    return {"n": len(credits), "accuracy": accuracy(p_as, humans), "ci95": [lo, hi]}


def judge_metrics(jf: JudgeFile, seed: int = 0) -> dict[str, Any]:
    rows = jf.rows
    labelled = [r for r in rows if r.human in ("a", "b")]
    p_as = [r.p_a for r in labelled]
    humans = [str(r.human) for r in labelled]
    m: dict[str, Any] = {
        "name": jf.name,
        "path": jf.path,
        "pairs": len(rows),
        "pairs_with_human_label": len(labelled),
        "agreement": None,
        "agreement_by_principle": {},
        "agreement_by_confidence": [],
        "calibration": None,
    }
    if labelled:
        m["agreement"] = _acc_block(p_as, humans, seed)
        lo, hi = m["agreement"]["ci95"]
        m["agreement"]["distinguishable_from_chance"] = not (lo <= 0.5 <= hi)
        by_principle: dict[str, tuple[list[float], list[str]]] = {}
        for r in labelled:
            for pid, p in r.per_principle:
                by_principle.setdefault(pid, ([], []))
                by_principle[pid][0].append(p)
                by_principle[pid][1].append(str(r.human))
        m["agreement_by_principle"] = {
            pid: _acc_block(ps, hs, seed) for pid, (ps, hs) in sorted(by_principle.items())
        }
        buckets = []
        for lo_e, hi_e in pairwise(CONFIDENCE_EDGES):
            sel = [
                (r.p_a, str(r.human))
                for r in labelled
                if lo_e <= abs(r.p_a - 0.5) < hi_e or (hi_e == 0.5 and abs(r.p_a - 0.5) == 0.5)
            ]
            block = _acc_block([p for p, _ in sel], [h for _, h in sel], seed) if sel else {"n": 0}
            buckets.append({"confidence": [lo_e, hi_e], **block})
        m["agreement_by_confidence"] = buckets
        m["calibration"] = {
            "brier": brier(p_as, humans),
            "ece": ece(p_as, humans),
            "reliability": [vars(b) for b in reliability(p_as, humans)],
        }
    by_order: dict[str, list[bool]] = {"ab": [], "ba": []}
    for r in rows:
        for order, p_first in r.judgements:
            if p_first != 0.5:
                by_order.setdefault(order, []).append(p_first > 0.5)
    m["position"] = {
        "first_shown_wins_when_a_first": rate(by_order["ab"]),
        "first_shown_wins_when_b_first": rate(by_order["ba"]),
        "first_shown_wins_before_averaging": rate(by_order["ab"] + by_order["ba"]),
        "a_wins_after_averaging": rate(r.p_a > 0.5 for r in rows if r.p_a != 0.5),
        "order_consistency": rate(
            bool(r.position_consistent) for r in rows if r.position_consistent is not None
        ),
    }
    differ = [r for r in rows if r.len_a != r.len_b]
    judge_long = [(r.p_a > 0.5) == (r.len_a > r.len_b) for r in differ if r.p_a != 0.5]
    human_long = [(r.human == "a") == (r.len_a > r.len_b) for r in differ if r.human in ("a", "b")]
    m["length"] = {
        "judge_prefers_longer": rate(judge_long),
        "human_prefers_longer": rate(human_long),
        "pairs_with_different_lengths": len(differ),
    }
    return m


def between_judges(files: Sequence[JudgeFile]) -> list[dict[str, Any]]:
    out = []
    for x, y in combinations(files, 2):
        dx = {r.id: decision(r.p_a) for r in x.rows}
        dy = {r.id: decision(r.p_a) for r in y.rows}
        common = sorted(set(dx) & set(dy))
        a, b = [dx[i] for i in common], [dy[i] for i in common]
        out.append(
            {
                "a": x.name,
                "b": y.name,
                "common_pairs": len(common),
                "agreement": rate(p == q for p, q in zip(a, b, strict=True)),
                "cohen_kappa": cohen_kappa(a, b),
            }
        )
    return out


def evaluate_files(paths: Sequence[Path], human: str = "auto", seed: int = 0) -> dict[str, Any]:
    mapping = None if human == "auto" else load_human(Path(human))
    files = [load_labels(p, mapping) for p in paths]
    judges = [judge_metrics(f, seed) for f in files]
    notes = []
    for j in judges:
        if not j["pairs_with_human_label"]:
            notes.append(
                f"{j['name']}: no human labels, so agreement and calibration are not computed."
            )
        elif not j["agreement"]["distinguishable_from_chance"]:
            lo, hi = j["agreement"]["ci95"]
            acc = j["agreement"]["accuracy"]
            notes.append(
                f"{j['name']}: agreement with humans is {acc:.2f}, and its 95 % "
                f"interval [{lo:.2f}, {hi:.2f}] crosses 0.5: on this evidence the judge is not "
                "distinguishable from chance. Do not train on these labels without a better judge."
            )
    return {
        "judges": judges,
        "between_judges": between_judges(files),
        "notes": notes,
        "human_source": human,
        "seed": seed,
    }
