"""Evidence that AI labels can be trusted: agreement with human labels (with bootstrap
intervals), calibration, position and length bias, and agreement between judges.

Metric functions are small and pure so they can be checked against hand-computed values;
``evaluate_files`` reads label files through their record model and assembles the metrics
into ``Metrics``, the model that ``metrics.json`` and the report are written from.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from itertools import combinations, pairwise
from pathlib import Path
from typing import Any, Generic, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError

from charter.annotate.records import (
    Annotation,
    flipped,
    human_decision,
    human_p_by_id,
    is_annotation_log,
    read_annotation_logs,
)
from charter.bias import (
    DOUBT,
    Bias,
    estimates,
    head_to_head,
    random_draw_of_log,
    refuse_doubt,
    self_preferences,
)
from charter.errors import InputError
from charter.io import output_lines, part_files, read_record
from charter.judges.records import REWARD_MODEL, LabelRecord
from charter.label_rows import LabelRow, read_label_rows
from charter.prices import PriceTable
from charter.types import Usage
from charter.validation import describe_validation

Choice = Literal["a", "b"]
HumanRowChoice = Literal["a", "b", "tie"]
"""A human label as a row of ``--human FILE`` gives it; a tie names no better answer."""
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
    """Percentile bootstrap interval of the mean of ``values``. A resample is drawn as the
    count of each distinct value (multinomial), which is the same distribution as drawing
    ``n`` values with replacement and costs resamples x distinct values, not resamples x n:
    agreement credits take three values (1, 0.5, 0), so 2,312 pairs take milliseconds, not the
    ten seconds of drawing each value in Python."""
    import numpy as np

    n = len(values)
    if n == 0:
        return (math.nan, math.nan)
    levels, counts = np.unique(np.asarray(values, dtype=float), return_counts=True)
    drawn = np.random.default_rng(seed).multinomial(n, counts / n, size=resamples)
    means = np.sort(drawn @ levels / n)
    lo = means[int((1 - level) / 2 * resamples)]
    hi = means[min(resamples - 1, int((1 + level) / 2 * resamples))]
    return (float(lo), float(hi))


def brier(p_as: Sequence[float], humans: Sequence[str]) -> float:
    if not p_as:
        return math.nan
    return sum((p - (h == "a")) ** 2 for p, h in zip(p_as, humans, strict=True)) / len(p_as)


class _Metric(BaseModel):
    """A block of ``metrics.json``: NaN (a rate over nothing) is written as null."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class Bin(_Metric):
    """One bin of the reliability diagram."""

    lo: float
    """Lower edge of the bin over p_a."""
    hi: float
    """Upper edge (the last bin includes 1.0)."""
    n: int
    """Pairs in the bin."""
    mean_p: float
    """Mean predicted P(A better) of those pairs."""
    frac_a: float
    """Share of those pairs where the human chose A."""


def reliability(p_as: Sequence[float], humans: Sequence[str], bins: int = 10) -> list[Bin]:
    """Equal-width bins over p_a: mean predicted P(A) vs how often the human chose A."""
    out = []
    for b in range(bins):
        lo, hi = b / bins, (b + 1) / bins
        idx = [i for i, p in enumerate(p_as) if lo <= p < hi or (b == bins - 1 and p == 1.0)]
        if idx:
            out.append(
                Bin(
                    lo=lo,
                    hi=hi,
                    n=len(idx),
                    mean_p=sum(p_as[i] for i in idx) / len(idx),
                    frac_a=sum(humans[i] == "a" for i in idx) / len(idx),
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


def krippendorff_alpha(units: Sequence[Sequence[str]]) -> float:
    """Krippendorff's alpha for nominal data; each unit lists the values it was given (any
    number of raters, missing ratings simply absent). Units with fewer than two values are
    unpairable and left out. alpha = 1 - (n - 1) * D / E, where D sums the coincidences
    o_ck = sum over units of (c-k pairs in the unit) / (m_u - 1) over c != k, and E sums
    n_c * n_k over c != k (n_c: pairable values of c; n: all pairable values). No variation
    at all gives 1.0 (as ``cohen_kappa``); nothing pairable gives NaN."""
    pairable = [list(u) for u in units if len(u) >= 2]
    disagree = 0.0
    totals: dict[str, int] = {}
    for u in pairable:
        m = len(u)
        for c in u:
            totals[c] = totals.get(c, 0) + 1
        counts = [u.count(c) for c in set(u)]
        ordered_pairs_differing = m * m - sum(k * k for k in counts)
        disagree += ordered_pairs_differing / (m - 1)
    n = sum(totals.values())
    if n == 0:
        return math.nan
    expected = n * n - sum(v * v for v in totals.values())
    if expected == 0:
        return 1.0
    return 1.0 - (n - 1) * disagree / expected


def fleiss_kappa(units: Sequence[Sequence[str]]) -> float:
    """Fleiss' kappa; every unit must have the same number m >= 2 of ratings (NaN
    otherwise). P_i = (sum_j n_ij^2 - m) / (m (m - 1)); p_j = share of all ratings in
    category j; kappa = (mean P_i - sum p_j^2) / (1 - sum p_j^2); no variation gives 1.0."""
    sizes = {len(u) for u in units}
    if len(sizes) != 1 or (m := sizes.pop()) < 2:
        return math.nan
    n_units = len(units)
    agree = 0.0
    totals: dict[str, int] = {}
    for u in units:
        for c in u:
            totals[c] = totals.get(c, 0) + 1
        agree += (sum(u.count(c) ** 2 for c in set(u)) - m) / (m * (m - 1))
    p_bar = agree / n_units
    expected = sum((v / (n_units * m)) ** 2 for v in totals.values())
    if expected == 1.0:
        return 1.0 if p_bar == 1.0 else math.nan
    return (p_bar - expected) / (1 - expected)


# -- the metrics, as written to metrics.json ----------------------------------------------
class Accuracy(_Metric):
    """Agreement with the human labels over a set of pairs."""

    n: int
    """Pairs with a human label."""
    accuracy: float
    """Share where the judge picked the human's answer, a tie (p_a = 0.5) counting half."""
    ci95: tuple[float, float]
    """95 % percentile-bootstrap interval of ``accuracy``."""


class Agreement(Accuracy):
    """Agreement with the human labels over all of a judge's labelled pairs."""

    distinguishable_from_chance: bool
    """``ci95`` excludes 0.5."""


class ConfidenceBucket(Accuracy):
    """Agreement over the pairs the judge was about this sure of."""

    confidence: tuple[float, float]
    """[lo, hi) of |p_a - 0.5| (the last bucket includes 0.5)."""


class Calibration(_Metric):
    """How far p_a can be read as a probability that humans prefer A."""

    brier: float
    """Mean squared error of p_a against the human's choice (0.25 for a constant 0.5)."""
    ece: float
    """Expected calibration error over ten equal-width bins of p_a."""
    reliability: list[Bin]
    """The non-empty bins behind ``ece``."""


class PositionBias(_Metric):
    """Whether the answer shown first wins more often than its merit says. A reward model's
    judgements are left out: it scores each answer alone, so no answer is shown first."""

    first_shown_wins_when_a_first: float
    """Share of decided A-first judgements that chose the first-shown answer."""
    first_shown_wins_when_b_first: float
    """Share of decided B-first judgements that chose the first-shown answer."""
    first_shown_wins_before_averaging: float
    """The same over every decided judgement."""
    a_wins_after_averaging: float
    """Share of decided pairs where A wins once both orders are averaged."""
    order_consistency: float
    """Share of pairs asked in both orders whose two orders prefer the same answer."""


class LengthBias(_Metric):
    """Whether the longer answer wins, for the judge and for the humans."""

    judge_prefers_longer: float
    """Share of decided pairs of unequal length where the judge picked the longer answer."""
    human_prefers_longer: float
    """The same for the human labels."""
    pairs_with_different_lengths: int
    """Pairs whose answers differ in length (in characters)."""


class Flagged(_Metric):
    """Labels whose probability rests on incomplete log-probabilities; null for label files
    written before charter recorded the flag."""

    topk_truncated: float
    """Share of labels with an option only bounded by the top list's floor: p_a nearer 0.5."""
    low_option_mass: float
    """Share of labels where the options were missing or held little of the probability."""


class RoutedAgreement(_Metric):
    """AI-vs-human agreement on the pairs ``charter route`` sent to people, next to the
    pairs people judged for another reason: is the judge worse where it was doubtful?"""

    routed: Accuracy
    """Pairs a rule (uncertainty, inconsistent, random) sent to people, with their decision:
    where the judge was doubtful, so expect it lower."""
    control: Accuracy
    """Control pairs (``route --control``), with people's decision: a random sample of the
    pairs the rule did not pick, so an estimate of the judge on the rest of the file."""
    carried: Accuracy
    """Pairs nobody annotated whose input carried a human choice (e.g. HH-RLHF's)."""


class RoutingEffect(_Metric):
    """How much the human labels change the judge's dataset (what ``charter merge`` does)."""

    pairs: int
    """Pairs in the label file."""
    human_labelled: int
    """Of those, pairs with a human label (not a skip) in the annotation log."""
    flipped: int
    """Of those, pairs where people prefer the other answer than the AI (neither a tie)."""
    human_ties: int
    """Of those, pairs whose mean human P(A better) is 0.5: no TRL columns once merged."""
    mean_abs_change: float
    """Mean |human p_a - AI p_a| over the human-labelled pairs."""


class JudgeCost(_Metric):
    """What a label file's labels cost, from its records' usage at its judge's prices."""

    usd: float
    """Dollars for all of the file's labels (requests answered from charter's request cache
    cost nothing, and count nothing here)."""
    per_1000_labels: float
    """Dollars per 1,000 labels: the figure to set beside agreement."""
    prompt_tokens_per_label: float
    completion_tokens_per_label: float
    prices: dict[str, Any]
    """The judge's prices ($ per 1M tokens), their source and the date they were read."""


class JudgeMetrics(_Metric):
    """Everything measured about one label file."""

    name: str
    """The file's stem, with the judge's name when the file has one judge."""
    path: str
    pairs: int
    """Labelled pairs in the file."""
    pairs_with_human_label: int
    """Of those, pairs with a human choice to compare with."""
    pairs_with_human_tie: int = 0
    """Of those, pairs people called a tie (a ``tie`` row, or an annotation log's mean P(A) of
    0.5): no better answer to agree with, so left out of agreement and calibration, as
    ``merge`` leaves them out of the TRL columns."""
    agreement: Agreement | None
    """None without human labels."""
    agreement_by_principle: dict[str, Accuracy]
    """Agreement of each principle's own verdict, by principle id."""
    agreement_by_confidence: list[ConfidenceBucket]
    """Agreement by how sure the judge was (empty without human labels)."""
    calibration: Calibration | None
    """None without human labels."""
    position: PositionBias
    length: LengthBias
    flagged: Flagged
    routed_agreement: RoutedAgreement | None = None
    """None unless the human labels are an annotation log (charter annotate)."""
    routing_effect: RoutingEffect | None = None
    """None unless the human labels are an annotation log."""
    cost: JudgeCost | None = None
    """None unless the file has one judge and it has a price (the table, --prices)."""
    bias: Bias | None = None
    """Numbers that stay honest under judge bias: a length-controlled win rate (head-to-head
    files), self-preference, prediction-powered estimates; each with why it is missing."""


class JudgePair(_Metric):
    """How often two judges pick the same answer on the pairs both labelled."""

    a: str
    """Name of the first judge."""
    b: str
    """Name of the second judge."""
    common_pairs: int
    """Pairs (by id) in both files."""
    agreement: float
    """Share of common pairs with the same decision (a, b or tie)."""
    cohen_kappa: float
    """Agreement corrected for chance."""


class InterAnnotator(_Metric):
    """How far the annotators of an annotation log agree with each other, over their a / b
    / tie labels (skips left out)."""

    annotators: int
    """Annotators with at least one label."""
    items: int
    """Pairs with at least one label."""
    items_multiply_labelled: int
    """Pairs labelled by two annotators or more: what the measures below rest on."""
    pairwise_agreement: float
    """Share of pairs of labels on the same pair of answers that are the same."""
    cohen_kappa: float | None
    """Cohen's kappa over the pairs both labelled; None unless there are exactly two
    annotators."""
    krippendorff_alpha: float
    """Krippendorff's alpha (nominal), any number of annotators, missing labels allowed."""
    fleiss_kappa: float | None
    """Fleiss' kappa; None unless every labelled pair has the same number (>= 2) of labels."""


class Metrics(_Metric):
    """The result of ``charter evaluate``: ``metrics.json`` and what the report renders."""

    judges: list[JudgeMetrics]
    """One per label file, in the order given."""
    between_judges: list[JudgePair]
    """One per pair of label files."""
    notes: list[str]
    """Warnings for the reader, e.g. a judge not distinguishable from chance."""
    human_source: str
    """``auto`` (each record's ``human_choice``) or the file of human labels."""
    seed: int
    """Seed of the bootstrap intervals."""
    inter_annotator: InterAnnotator | None = None
    """None unless the human labels are an annotation log."""


# -- label files -------------------------------------------------------------------------
class HumanLabel(BaseModel):
    """A row of a human-label file; a label file works too (its other fields are ignored)."""

    model_config = ConfigDict(extra="ignore", coerce_numbers_to_str=True)

    id: str
    human_choice: HumanRowChoice
    """The answer people preferred, or ``tie`` (accepted as an annotation log's tie is)."""


R = TypeVar("R", LabelRecord, LabelRow)


@dataclass
class JudgeFile(Generic[R]):
    """The records of one label file, under the name the report gives its judge: full
    records (``load_labels``), or the rows ``evaluate`` measures (``load_label_rows``)."""

    name: str
    path: str
    rows: list[R] = field(default_factory=list)
    human_ties: frozenset[str] = frozenset()
    """Pairs whose human label is a tie: their ``human_choice`` is None, as a tie names no
    better answer."""
    usage: Usage = field(default_factory=Usage)
    """What the records' requests used, all together (``load_label_rows``)."""


def read_label(line: str, where: str) -> LabelRecord:
    """One line of a ``charter label`` (or ``score --mode relative``) output. Records from
    older charter versions lack the newer fields, which have defaults; the ``input_hash`` the
    engine appends for resuming is not part of the record."""
    return read_record(line, where, LabelRecord, "label record")


def load_label_rows(path: Path, human: dict[str, HumanRowChoice] | None) -> JudgeFile[LabelRow]:
    """A label file as the rows ``evaluate`` measures (``charter.label_rows``); ``human`` as
    for ``load_labels``."""
    if not path.is_file() and not (path.is_dir() and part_files(path)):
        raise InputError(f"labels not found: {path}")
    jf: JudgeFile[LabelRow] = JudgeFile(name=path.stem, path=str(path))
    ties: set[str] = set()
    judges: set[str] = set()
    for row in read_label_rows(path, jf.usage):
        if human is not None:
            choice = human.get(row.id)
            if choice == "tie":
                ties.add(row.id)
            row.human_choice = None if choice == "tie" else choice
        jf.rows.append(row)
        judges.add(row.judge)
    jf.human_ties = frozenset(ties)
    if not jf.rows:
        raise InputError(f"{path}: no label records")
    if len(judges) == 1 and next(iter(judges)):
        jf.name = f"{path.stem} ({next(iter(judges))})"
    return jf


def load_labels(path: Path, human: dict[str, HumanRowChoice] | None) -> JudgeFile[LabelRecord]:
    """Read a label file; ``human`` (id -> choice), when given, replaces the records' own
    ``human_choice`` (a tie: none, the pair counted in ``human_ties``)."""
    if not path.is_file() and not (path.is_dir() and part_files(path)):
        raise InputError(f"labels not found: {path}")
    jf: JudgeFile[LabelRecord] = JudgeFile(name=path.stem, path=str(path))
    ties: set[str] = set()
    for where, line in output_lines(path):  # a file, or a folder of parts (--engine ray)
        rec = read_label(line, where)
        if human is not None:
            choice = human.get(rec.id)
            if choice == "tie":
                ties.add(rec.id)
            rec = rec.model_copy(update={"human_choice": None if choice == "tie" else choice})
        jf.rows.append(rec)
    jf.human_ties = frozenset(ties)
    if not jf.rows:
        raise InputError(f"{path}: no label records")
    judges = {r.judge for r in jf.rows}
    if len(judges) == 1 and next(iter(judges)):
        jf.name = f"{path.stem} ({next(iter(judges))})"
    return jf


def load_human(path: Path) -> dict[str, HumanRowChoice]:
    """``{"id": ..., "human_choice": "a"|"b"|"tie"}`` rows (a label file works too)."""
    if not path.is_file():
        raise InputError(f"human labels not found: {path}")
    out: dict[str, HumanRowChoice] = {}
    with path.open("r", encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                row = HumanLabel.model_validate_json(line)
            except ValidationError as e:
                raise InputError(f"{path}:{lineno}: {describe_validation(e)}") from e
            out[row.id] = row.human_choice
    if not out:
        raise InputError(f"{path}: no human labels in it")
    return out


@dataclass(frozen=True)
class HumanLog:
    """An annotation log (``charter annotate``) as evaluation reads it."""

    path: str
    annotations: list[Annotation]
    """The standing labels, skips included."""
    p_a: dict[str, float]
    """Each judged pair's mean human P(A better) (non-skip labels only)."""
    routed: frozenset[str]
    """Pairs a routing rule sent to people (not the control pairs)."""

    def choice(self, pair_id: str) -> Choice | None:
        """The human label of a pair: the side of its mean P(A); None for a tie."""
        return human_decision(self.p_a[pair_id])

    def overlay(self, jf: JudgeFile[LabelRow]) -> JudgeFile[LabelRow]:
        """The label file with the log's decision as ``human_choice`` on every pair people
        judged (a tie: none); other pairs keep the human_choice they carry."""
        rows = [
            replace(r, human_choice=self.choice(r.id)) if r.id in self.p_a else r for r in jf.rows
        ]
        ties = frozenset(r.id for r in jf.rows if r.id in self.p_a and self.choice(r.id) is None)
        return JudgeFile(jf.name, jf.path, rows, ties, jf.usage)


ROUTING_RULES = ("uncertainty", "inconsistent", "random")
"""The ``routed_by`` of pairs a rule chose (``control`` pairs are the comparison)."""


def load_human_log(path: Path) -> HumanLog:
    annotations = read_annotation_logs([path])
    return HumanLog(
        path=str(path),
        annotations=annotations,
        p_a=human_p_by_id(annotations),
        routed=frozenset(a.id for a in annotations if a.routed_by in ROUTING_RULES),
    )


def inter_annotator(annotations: Sequence[Annotation]) -> InterAnnotator:
    """Agreement between the annotators of a log over their a/b/tie labels (skips out)."""
    labels = [a for a in annotations if a.choice != "skip"]
    units: dict[str, dict[str, str]] = {}
    for a in labels:
        units.setdefault(a.id, {})[a.annotator] = a.choice
    values = [list(u.values()) for u in units.values()]
    pairs = [(x, y) for v in values for x, y in combinations(v, 2)]
    annotators = sorted({a.annotator for a in labels})
    kappa = None
    if len(annotators) == 2:
        first, second = annotators
        both = [u for _, u in sorted(units.items()) if first in u and second in u]
        kappa = cohen_kappa([u[first] for u in both], [u[second] for u in both])
    return InterAnnotator(
        annotators=len(annotators),
        items=len(units),
        items_multiply_labelled=sum(len(v) >= 2 for v in values),
        pairwise_agreement=rate(x == y for x, y in pairs),
        cohen_kappa=kappa,
        krippendorff_alpha=krippendorff_alpha(values),
        fleiss_kappa=None if math.isnan(fleiss := fleiss_kappa(values)) else fleiss,
    )


def human_loop(
    rows: Sequence[LabelRow], log: HumanLog, seed: int
) -> tuple[RoutedAgreement, RoutingEffect]:
    """AI-vs-human agreement on routed pairs vs the rest, and what the human labels change;
    ``rows`` carry the log's decisions already (``HumanLog.overlay``)."""
    annotated = {a.id for a in log.annotations}  # skips too: people saw these pairs
    decided = [r for r in rows if r.human_choice is not None]
    judged_now = [r for r in decided if r.id in log.p_a]

    def block(group: list[LabelRow]) -> Accuracy:
        return _accuracy([r.p_a for r in group], [str(r.human_choice) for r in group], seed)

    agreement = RoutedAgreement(
        routed=block([r for r in judged_now if r.id in log.routed]),
        control=block([r for r in judged_now if r.id not in log.routed]),
        carried=block([r for r in decided if r.id not in annotated]),
    )
    judged = [(r.p_a, log.p_a[r.id]) for r in rows if r.id in log.p_a]
    effect = RoutingEffect(
        pairs=len(rows),
        human_labelled=len(judged),
        flipped=sum(flipped(h, ai) for ai, h in judged),
        human_ties=sum(h == 0.5 for _, h in judged),
        mean_abs_change=(
            sum(abs(h - ai) for ai, h in judged) / len(judged) if judged else math.nan
        ),
    )
    return agreement, effect


# -- assembling ---------------------------------------------------------------------------
def _accuracy(p_as: Sequence[float], humans: Sequence[str], seed: int) -> Accuracy:
    credits = [credit(p, h) for p, h in zip(p_as, humans, strict=True)]
    return Accuracy(
        n=len(credits),
        accuracy=accuracy(p_as, humans),
        ci95=bootstrap_interval(credits, seed=seed),
    )


def _flag_rate(rows: Sequence[LabelRow], flag: str) -> float:
    """Share of records flagged, over the records written by a charter that sets the flag."""
    return rate(bool(getattr(r, flag)) for r in rows if flag in r.flags_set)


def judge_cost(jf: JudgeFile[LabelRow], table: PriceTable) -> JudgeCost | None:
    """The file's labels' cost at its judge's prices; None when it has several judges or
    its judge has no price."""
    judges = {r.judge for r in jf.rows}
    prices = table.lookup(next(iter(judges))) if len(judges) == 1 else None
    if prices is None:
        return None
    usage = jf.usage
    usd = prices.cost(usage)
    n = len(jf.rows)
    return JudgeCost(
        usd=usd,
        per_1000_labels=usd * 1000 / n,
        prompt_tokens_per_label=usage.prompt_tokens / n,
        completion_tokens_per_label=usage.completion_tokens / n,
        prices=prices.as_dict(),
    )


def judge_metrics(
    jf: JudgeFile[LabelRow], seed: int = 0, annotations: HumanLog | None = None
) -> JudgeMetrics:
    """Everything measured about one label file; ``annotations``: the annotation log its human
    labels came from (already overlaid on ``jf``), for the routing measures."""
    rows = jf.rows
    labelled = [(r, r.human_choice) for r in rows if r.human_choice is not None]
    p_as = [r.p_a for r, _ in labelled]
    humans: list[str] = [h for _, h in labelled]
    agreement = None
    by_principle: dict[str, Accuracy] = {}
    buckets: list[ConfidenceBucket] = []
    calibration = None
    if labelled:
        overall = _accuracy(p_as, humans, seed)
        lo, hi = overall.ci95
        agreement = Agreement(
            **overall.model_dump(), distinguishable_from_chance=not (lo <= 0.5 <= hi)
        )
        principle_p: dict[str, tuple[list[float], list[str]]] = {}
        for r, h in labelled:
            for pl in r.per_principle:
                ps, hs = principle_p.setdefault(pl.principle_id, ([], []))
                ps.append(pl.p_a)
                hs.append(h)
        by_principle = {
            pid: _accuracy(ps, hs, seed) for pid, (ps, hs) in sorted(principle_p.items())
        }
        for lo_e, hi_e in pairwise(CONFIDENCE_EDGES):
            sel = [
                (p, h)
                for p, h in zip(p_as, humans, strict=True)
                if lo_e <= abs(p - 0.5) < hi_e or (hi_e == 0.5 and abs(p - 0.5) == 0.5)
            ]
            block = _accuracy([p for p, _ in sel], [h for _, h in sel], seed)
            buckets.append(ConfidenceBucket(**block.model_dump(), confidence=(lo_e, hi_e)))
        calibration = Calibration(
            brier=brier(p_as, humans), ece=ece(p_as, humans), reliability=reliability(p_as, humans)
        )
    by_order: dict[str, list[bool]] = {"ab": [], "ba": []}
    for r in rows:
        for j in r.judgements:
            if j.p_first != 0.5 and j.source != REWARD_MODEL:
                by_order[j.order].append(j.p_first > 0.5)
    position = PositionBias(
        first_shown_wins_when_a_first=rate(by_order["ab"]),
        first_shown_wins_when_b_first=rate(by_order["ba"]),
        first_shown_wins_before_averaging=rate(by_order["ab"] + by_order["ba"]),
        a_wins_after_averaging=rate(r.p_a > 0.5 for r in rows if r.p_a != 0.5),
        order_consistency=rate(
            r.position_consistent for r in rows if r.position_consistent is not None
        ),
    )
    differ = [r for r in rows if r.len_a != r.len_b]
    a_longer = {r.id: r.len_a > r.len_b for r in differ}
    length = LengthBias(
        judge_prefers_longer=rate((r.p_a > 0.5) == a_longer[r.id] for r in differ if r.p_a != 0.5),
        human_prefers_longer=rate(
            (r.human_choice == "a") == a_longer[r.id] for r in differ if r.human_choice is not None
        ),
        pairs_with_different_lengths=len(differ),
    )
    loop = human_loop(rows, annotations, seed) if annotations is not None else (None, None)
    return JudgeMetrics(
        name=jf.name,
        path=jf.path,
        pairs=len(rows),
        pairs_with_human_label=len(labelled),
        pairs_with_human_tie=sum(r.id in jf.human_ties for r in rows),
        agreement=agreement,
        agreement_by_principle=by_principle,
        agreement_by_confidence=buckets,
        calibration=calibration,
        position=position,
        length=length,
        flagged=Flagged(
            topk_truncated=_flag_rate(rows, "topk_truncated"),
            low_option_mass=_flag_rate(rows, "low_option_mass"),
        ),
        routed_agreement=loop[0],
        routing_effect=loop[1],
    )


def _bias(
    jf: JudgeFile[LabelRow],
    files: Sequence[JudgeFile[LabelRow]],
    log: HumanLog | None,
    human: str,
    human_random: bool,
    seed: int,
) -> Bias:
    """Length control, self-preference and prediction-powered estimates of one file."""
    h2h, h2h_note = head_to_head(jf.rows, seed)
    others = [(f.name, f.rows) for f in files if f is not jf]
    selfish, selfish_note = self_preferences(jf.name, jf.rows, others, seed)
    drawn: dict[str, float] | None = None
    draw = ""
    if log is not None:
        routed = {a.id: a.routed_by for a in log.annotations}
        if human_random:
            refuse_doubt(routed, log.path)
        drawn = random_draw_of_log(routed, log.p_a) or None
        draw = f"the control and random pairs of {log.path}"
    elif human_random:
        drawn = {
            r.id: 1.0 if r.human_choice == "a" else 0.0 if r.human_choice == "b" else 0.5
            for r in jf.rows
            if r.human_choice is not None or r.id in jf.human_ties
        }
        draw = (
            "the records' human labels" if human == "auto" else f"the human labels of {human}"
        ) + " (--human-random)"
    rates, rates_note = estimates(jf.rows, drawn=drawn, draw=draw)
    return Bias(
        head_to_head=h2h,
        head_to_head_note=h2h_note,
        self_preference=selfish,
        self_preference_note=selfish_note,
        estimates=rates,
        estimates_note=rates_note,
    )


def between_judges(files: Sequence[JudgeFile[LabelRow]]) -> list[JudgePair]:
    out = []
    for x, y in combinations(files, 2):
        dx = {r.id: decision(r.p_a) for r in x.rows}
        dy = {r.id: decision(r.p_a) for r in y.rows}
        common = sorted(set(dx) & set(dy))
        a, b = [dx[i] for i in common], [dy[i] for i in common]
        out.append(
            JudgePair(
                a=x.name,
                b=y.name,
                common_pairs=len(common),
                agreement=rate(p == q for p, q in zip(a, b, strict=True)),
                cohen_kappa=cohen_kappa(a, b),
            )
        )
    return out


def evaluate_files(
    paths: Sequence[Path],
    human: str = "auto",
    seed: int = 0,
    prices: Path | None = None,
    human_random: bool = False,
) -> Metrics:
    """Metrics of each label file; ``human``: ``auto`` (each record's human_choice), a file
    of id/human_choice rows (replacing them), or an annotation log (its decisions replace
    those of the pairs people judged; the other pairs keep theirs). ``prices``: a prices
    file over the built-in table, for each judge's $ per 1,000 labels."""
    mapping = None
    humans = None
    if human != "auto":
        source = Path(human)
        if is_annotation_log(source):
            humans = load_human_log(source)
        else:
            mapping = load_human(source)
    files = [load_label_rows(p, mapping) for p in paths]
    if humans is not None:
        files = [humans.overlay(f) for f in files]
    table = PriceTable.with_file(prices)
    judges = [
        judge_metrics(f, seed, humans).model_copy(
            update={
                "cost": judge_cost(f, table),
                "bias": _bias(f, files, humans, human, human_random, seed),
            }
        )
        for f in files
    ]
    notes = []
    if humans is not None:
        known = {r.id for f in files for r in f.rows}
        stray = len(set(humans.p_a) - known)
        if stray:
            notes.append(
                f"{human}: {stray} annotated pair(s) are in none of the label files and are "
                "left out."
            )
    doubt = {a.id for a in humans.annotations if a.routed_by in DOUBT} if humans else set()
    for f, j in zip(files, judges, strict=True):
        routed = sum(r.id in doubt and r.human_choice is not None for r in f.rows)
        if routed and j.agreement is not None:
            notes.append(
                f"{j.name}: the agreement above counts {routed} pair(s) routed because the "
                "judge was doubtful on them, so it understates the judge on the file as a "
                "whole; the control pairs (and pairs with a carried human choice) estimate that."
            )
        if any(r.label_source == REWARD_MODEL for r in f.rows):
            notes.append(
                f"{j.name}: a reward model scores each answer alone: its labels have no "
                "presentation order, so the first-shown and order-consistency figures do not "
                "apply to them."
            )
        if j.pairs_with_human_tie:
            notes.append(
                f"{j.name}: {j.pairs_with_human_tie} pair(s) people called a tie are left out "
                "of agreement and calibration: a tie names no better answer to agree with."
            )
        if j.agreement is None:
            notes.append(
                f"{j.name}: no human labels, so agreement and calibration are not computed."
            )
        elif not j.agreement.distinguishable_from_chance:
            lo, hi = j.agreement.ci95
            notes.append(
                f"{j.name}: agreement with humans is {j.agreement.accuracy:.2f}, and its 95 % "
                f"interval [{lo:.2f}, {hi:.2f}] crosses 0.5: on this evidence the judge is not "
                "distinguishable from chance. Do not train on these labels without a better judge."
            )
    return Metrics(
        judges=judges,
        between_judges=between_judges(files),
        notes=notes,
        human_source=human,
        seed=seed,
        inter_annotator=inter_annotator(humans.annotations) if humans is not None else None,
    )
