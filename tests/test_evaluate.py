"""Evaluation metrics against hand-computed values, the report, and a full HH-RLHF run."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from charter.errors import InputError
from charter.evaluate import (
    JudgeFile,
    Metrics,
    accuracy,
    between_judges,
    bootstrap_interval,
    brier,
    cohen_kappa,
    ece,
    evaluate_files,
    judge_metrics,
    reliability,
)
from charter.judges.records import Judgement, LabelRecord, PrincipleLabel
from charter.label_rows import LabelRow
from charter.report import write_report
from charter.types import Usage
from tests.conftest import run_cli


def test_accuracy_counts_ties_as_half() -> None:
    # a right, b right, a wrong, tie  -> (1 + 1 + 0 + 0.5) / 4
    assert accuracy([0.9, 0.2, 0.7, 0.5], ["a", "b", "b", "a"]) == pytest.approx(0.625)


def test_brier_and_ece_by_hand() -> None:
    p = [0.9, 0.8, 0.3, 0.1]
    h = ["a", "b", "a", "b"]
    # (0.1^2 + 0.8^2 + 0.7^2 + 0.1^2) / 4
    assert brier(p, h) == pytest.approx((0.01 + 0.64 + 0.49 + 0.01) / 4)
    # bins of width 0.1: [0.1,0.2): p=0.1 y=0 -> |0.1-0|; [0.3,0.4): p=0.3 y=1 -> 0.7;
    # [0.8,0.9): p=0.8 y=0 -> 0.8; [0.9,1.0]: p=0.9 y=1 -> 0.1; each weight 1/4
    assert ece(p, h) == pytest.approx((0.1 + 0.7 + 0.8 + 0.1) / 4)
    bins = reliability([0.62, 0.68, 0.95], ["a", "b", "a"])
    assert [(b.n, round(b.mean_p, 2), b.frac_a) for b in bins] == [(2, 0.65, 0.5), (1, 0.95, 1.0)]
    assert ece([0.5, 0.5], ["a", "b"]) == pytest.approx(0.0)


def test_cohen_kappa_by_hand() -> None:
    x = ["a", "a", "b", "b", "a", "b", "a", "a", "b", "b"]
    y = ["a", "b", "b", "b", "a", "a", "a", "a", "b", "a"]
    # observed agreement 7/10; P(a): x 5/10, y 6/10 -> pe = .5*.6 + .5*.4 = .5
    assert cohen_kappa(x, y) == pytest.approx((0.7 - 0.5) / (1 - 0.5))
    assert cohen_kappa(["a", "b"], ["a", "b"]) == pytest.approx(1.0)
    assert cohen_kappa(["a", "b"], ["b", "a"]) == pytest.approx(-1.0)


def test_bootstrap_interval_contains_mean_and_narrows() -> None:
    small = [1.0, 0.0] * 10
    large = [1.0, 0.0] * 500
    lo_s, hi_s = bootstrap_interval(small)
    lo_l, hi_l = bootstrap_interval(large)
    assert lo_s < 0.5 < hi_s and lo_l < 0.5 < hi_l
    assert (hi_l - lo_l) < (hi_s - lo_s) / 4
    assert bootstrap_interval([1.0] * 30) == (1.0, 1.0)
    assert bootstrap_interval(small, seed=1) == bootstrap_interval(small, seed=1)


def label(
    id: str = "x",
    p_a: float = 0.5,
    human: str | None = None,
    response_a: str = "a",
    response_b: str = "a",
    judgements: list[Judgement] | None = None,
    per_principle: list[PrincipleLabel] | None = None,
    position_consistent: bool | None = None,
    **extra: object,
) -> LabelRecord:
    """A label record with only what evaluation reads set to something meaningful."""
    return LabelRecord.model_validate(
        {
            "id": id,
            "prompt": [{"role": "user", "content": "q"}],
            "response_a": response_a,
            "response_b": response_b,
            "a_source": "x",
            "b_source": "y",
            "human_choice": human,
            "p_a": p_a,
            "p_a_when_first": None,
            "p_a_when_second": None,
            "position_consistent": position_consistent,
            "label_source": "logprobs",
            "principles": [p.principle_id for p in per_principle or []],
            "per_principle": per_principle or [],
            "judgements": judgements or [],
            "judge": "mock/judge",
            "constitution": "c",
            "constitution_hash": "h",
            "chosen": None,
            "rejected": None,
            "p_chosen": None,
            "low_confidence": False,
            **extra,
        }
    )


def row(
    i: int, p_a: float, human: str | None, p_ab: float, p_ba: float, len_a: int = 10, len_b: int = 5
) -> LabelRecord:
    return label(
        id=f"r{i}",
        p_a=p_a,
        human=human,
        response_a="x" * len_a,
        response_b="y" * len_b,
        position_consistent=(p_ab - 0.5) * (p_ba - 0.5) < 0,
        judgements=[
            Judgement(principle_id="x", order="ab", p_first=p_ab, p_a=p_ab, source="logprobs"),
            Judgement(principle_id="x", order="ba", p_first=p_ba, p_a=1 - p_ba, source="logprobs"),
        ],
        per_principle=[
            PrincipleLabel(
                principle_id="x",
                p_a=p_a,
                p_a_when_first=None,
                p_a_when_second=None,
                position_consistent=None,
            )
        ],
    )


def test_position_length_and_between_judges() -> None:
    rows = [
        row(0, 0.8, "a", p_ab=0.9, p_ba=0.3),  # consistent: A wins in both orders
        row(1, 0.5, "b", p_ab=0.9, p_ba=0.9),  # always-first judge
        row(2, 0.3, "b", p_ab=0.2, p_ba=0.6, len_a=3, len_b=9),
        row(3, 0.6, "a", p_ab=0.7, p_ba=0.6),  # first shown wins twice -> inconsistent
    ]
    m = judge_metrics(JudgeFile("j", "j.jsonl", [LabelRow.of(r) for r in rows]))
    pos = m.position
    assert pos.first_shown_wins_when_a_first == pytest.approx(3 / 4)
    assert pos.first_shown_wins_when_b_first == pytest.approx(3 / 4)
    assert pos.first_shown_wins_before_averaging == pytest.approx(6 / 8)
    assert pos.a_wins_after_averaging == pytest.approx(2 / 3)
    assert pos.order_consistency == pytest.approx(2 / 4)
    # judge picks: r0 a(longer), r2 b(longer), r3 a(longer); r1 tie excluded -> 3/3
    assert m.length.judge_prefers_longer == pytest.approx(1.0)
    assert m.length.human_prefers_longer == pytest.approx(3 / 4)
    assert m.agreement is not None
    assert m.agreement.accuracy == pytest.approx((1 + 0.5 + 1 + 1) / 4)
    other = JudgeFile(
        "k",
        "k.jsonl",
        [
            LabelRow.of(r)
            for r in (
                row(0, 0.2, None, 0.2, 0.8),
                row(1, 0.7, None, 0.7, 0.3),
                row(9, 0.9, None, 0.9, 0.1),
            )
        ],
    )
    (pair,) = between_judges([JudgeFile("j", "j.jsonl", [LabelRow.of(r) for r in rows]), other])
    assert pair.common_pairs == 2 and pair.agreement == 0.0


@pytest.fixture(scope="module")
def hh_labels(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.conftest import HH_FILE

    if not HH_FILE.exists():
        pytest.skip("shared data not present")
    out = tmp_path_factory.mktemp("hh") / "mock-judge.jsonl"
    r = run_cli(
        "label",
        str(HH_FILE),
        "-o",
        str(out),
        "-j",
        "mock/judge",
        "--constitution",
        "harmless",
        "--principles",
        "2",
        "-c",
        "64",
        "--no-cache",
        timeout=300,
    )
    assert r.returncode == 0, r.stderr
    return out


def test_evaluate_full_hh_file(hh_labels: Path, tmp_path: Path) -> None:
    rows = hh_labels.read_text().splitlines()
    assert len(rows) == 2312
    report_dir = tmp_path / "report"
    r = run_cli("evaluate", str(hh_labels), "-o", str(report_dir))
    assert r.returncode == 0, r.stderr
    metrics = json.loads((report_dir / "metrics.json").read_text())
    (judge,) = metrics["judges"]
    assert judge["pairs"] == judge["pairs_with_human_label"] == 2312
    lo, hi = judge["agreement"]["ci95"]
    assert lo < judge["agreement"]["accuracy"] < hi
    assert lo < 0.5 < hi, "a judge that cannot see which answer humans chose is at chance"
    assert "not distinguishable from chance" in r.stderr
    assert set(judge["agreement_by_principle"]) <= {
        p for p in json.loads(rows[0])["principles"]
    } | {x["principle_id"] for line in rows[:200] for x in json.loads(line)["per_principle"]}
    assert sum(b["n"] for b in judge["agreement_by_confidence"]) == 2312
    assert 0 <= judge["calibration"]["ece"] <= 1 and 0 <= judge["calibration"]["brier"] <= 1
    assert (report_dir / "report.html").stat().st_size > 20_000


def test_two_judges_and_human_file(hh_labels: Path, tmp_path: Path) -> None:
    first = [json.loads(x) for x in hh_labels.read_text().splitlines()[:300]]
    flipped = tmp_path / "flipped.jsonl"
    with flipped.open("w") as f:
        for rec in first:
            f.write(json.dumps({**rec, "p_a": 1 - rec["p_a"], "judge": "mock/contrarian"}) + "\n")
    human = tmp_path / "human.jsonl"
    human.write_text(
        "".join(json.dumps({"id": r["id"], "human_choice": "a"}) + "\n" for r in first)
    )
    metrics = evaluate_files([hh_labels, flipped], human=str(human))
    (between,) = metrics.between_judges
    assert between.common_pairs == 300
    decided = [r for r in first if r["p_a"] != 0.5]
    assert between.agreement == pytest.approx((300 - len(decided)) / 300)
    assert between.cohen_kappa < 0
    a, b = metrics.judges
    assert a.pairs_with_human_label == 300 and b.pairs_with_human_label == 300
    assert a.agreement is not None and b.agreement is not None
    assert a.agreement.accuracy + b.agreement.accuracy == pytest.approx(1.0)


def _chromium() -> str | None:
    return (
        shutil.which("chromium")
        or shutil.which("chromium-browser")
        or shutil.which("google-chrome")
    )


def test_report_renders_in_headless_chromium(hh_labels: Path, tmp_path: Path) -> None:
    browser = _chromium()
    if browser is None:
        pytest.skip("no Chromium: `make test` installs Debian's chromium when run as root with apt")
    metrics = evaluate_files([hh_labels])
    path = write_report(metrics, tmp_path / "report")
    profile = tempfile.mkdtemp()
    flags = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={profile}",
        "--virtual-time-budget=5000",
    ]
    dom = subprocess.run(
        [browser, *flags, "--dump-dom", path.as_uri()], capture_output=True, text=True, timeout=120
    )
    match = [x for x in dom.stdout.split() if x.startswith('data-plots-rendered="')]
    assert match, dom.stderr[-500:]
    rendered, total = match[0].split('"')[1].split("/")
    assert int(total) >= 3 and rendered == total, "every plot decoded and drawn"
    assert "charter evaluation report" in dom.stdout and "Reliability diagram" in dom.stdout
    shot = tmp_path / "shot.png"
    subprocess.run(
        [browser, *flags, "--window-size=1100,1800", f"--screenshot={shot}", path.as_uri()],
        capture_output=True,
        timeout=120,
    )
    assert shot.exists() and shot.stat().st_size > 30_000
    shutil.rmtree(profile, ignore_errors=True)


def test_nan_free_metrics_json(tmp_path: Path) -> None:
    rec = label(id="x", p_a=0.5, response_a="a", response_b="a", position_consistent=None)
    src = tmp_path / "l.jsonl"
    src.write_text(rec.model_dump_json() + "\n")
    metrics = evaluate_files([src])
    write_report(metrics, tmp_path / "r")
    text = (tmp_path / "r" / "metrics.json").read_text()
    assert (
        "NaN" not in text
        and json.loads(text)["judges"][0]["length"]["judge_prefers_longer"] is None
    )
    assert math.isnan(metrics.judges[0].position.order_consistency)


def test_label_files_read_through_label_record(tmp_path: Path) -> None:
    from charter.io import JsonlWriter

    src = tmp_path / "labels.jsonl"
    writer = JsonlWriter(src)
    for i, (truncated, low_mass) in enumerate([(True, True), (False, True), (False, False)]):
        rec = label(id=f"n{i}", p_a=0.8, human="a", topk_truncated=truncated)
        writer.write(rec.model_copy(update={"low_option_mass": low_mass}), input_hash=f"h{i}")
    writer.close()
    # Written by a charter from before the flags, option mass and usage were recorded.
    old = row(7, 0.3, "a", p_ab=0.2, p_ba=0.8).model_dump(
        exclude={"usage", "low_option_mass", "topk_truncated"}
    )
    for j in old["judgements"]:
        del j["option_mass"], j["missing_options"]
    with src.open("a") as f:
        f.write(json.dumps(old) + "\n")
    assert '"input_hash":"h0"' in src.read_text()

    metrics = evaluate_files([src])
    (judge,) = metrics.judges
    assert judge.name == "labels (mock/judge)" and judge.pairs == 4
    # Shares over the records that carry the flag: the old record says nothing either way.
    assert judge.flagged.topk_truncated == pytest.approx(1 / 3)
    assert judge.flagged.low_option_mass == pytest.approx(2 / 3)
    assert judge.agreement is not None and judge.agreement.accuracy == pytest.approx(3 / 4)
    assert judge.position.first_shown_wins_when_a_first == pytest.approx(0.0)

    path = write_report(metrics, tmp_path / "r")
    assert "top-k truncated / low option mass</td><td>0.333 / 0.667" in path.read_text()
    written = json.loads((tmp_path / "r" / "metrics.json").read_text())["judges"][0]["flagged"]
    assert written == pytest.approx({"topk_truncated": 1 / 3, "low_option_mass": 2 / 3})


def test_unreadable_label_line_names_file_line_and_field(tmp_path: Path) -> None:
    good = label(id="g", p_a=0.7).model_dump()
    src = tmp_path / "bad.jsonl"
    src.write_text(json.dumps(good) + "\n\n" + json.dumps({**good, "p_a": "very"}) + "\n")
    with pytest.raises(InputError, match=rf"^{src}:3: not a label record: p_a: .*number"):
        evaluate_files([src])
    src.write_text(json.dumps(good) + "\n" + json.dumps({**good, "verdict": "a"}) + "\n")
    with pytest.raises(InputError, match=rf"^{src}:2: .*verdict: Extra inputs"):
        evaluate_files([src])
    src.write_text("{not json\n")
    with pytest.raises(InputError, match=rf"^{src}:1: not JSON"):
        evaluate_files([src])


def test_human_file_overrides_and_is_checked(tmp_path: Path) -> None:
    src = tmp_path / "l.jsonl"
    src.write_text(
        label(id="1", p_a=0.9, human="b").model_dump_json()
        + "\n"
        + label(id="2", p_a=0.9).model_dump_json()
        + "\n"
    )
    human = tmp_path / "human.jsonl"
    human.write_text('{"id": 1, "human_choice": "a", "note": "ids may be numbers"}\n')
    (judge,) = evaluate_files([src], human=str(human)).judges
    assert judge.pairs_with_human_label == 1
    assert judge.agreement is not None and judge.agreement.accuracy == 1.0
    human.write_text('{"id": "1", "human_choice": "c"}\n')
    with pytest.raises(InputError, match=rf"^{human}:1: human_choice: "):
        evaluate_files([src], human=str(human))


def test_metrics_json_keeps_its_keys(tmp_path: Path) -> None:
    """Scripts written against metrics.json before it came from a model keep working."""
    rows = [row(0, 0.8, "a", 0.9, 0.3), row(1, 0.3, "a", 0.2, 0.6), row(2, 0.6, "b", 0.7, 0.4)]
    src = tmp_path / "j.jsonl"
    src.write_text("".join(r.model_dump_json() + "\n" for r in rows))
    metrics = evaluate_files([src, src])
    assert isinstance(metrics, Metrics)
    write_report(metrics, tmp_path / "r")
    data = json.loads((tmp_path / "r" / "metrics.json").read_text())
    old_keys = {"judges", "between_judges", "notes", "human_source", "seed"}
    assert set(data) == old_keys | {"inter_annotator"}  # added with annotation logs (null here)
    judge = data["judges"][0]
    assert set(judge) == {
        "name",
        "path",
        "pairs",
        "pairs_with_human_label",
        "pairs_with_human_tie",  # added with tie rows in --human files
        "agreement",
        "agreement_by_principle",
        "agreement_by_confidence",
        "calibration",
        "position",
        "length",
        "flagged",
        "routed_agreement",  # added with annotation logs (null here)
        "routing_effect",
        "cost",  # added with the price table (null here: the judge has no price)
        "bias",  # added with length control, self-preference and PPI
    }
    assert set(judge["agreement"]) == {"n", "accuracy", "ci95", "distinguishable_from_chance"}
    assert set(judge["agreement_by_principle"]["x"]) == {"n", "accuracy", "ci95"}
    assert {"confidence", "n"} <= set(judge["agreement_by_confidence"][0])
    assert set(judge["calibration"]) == {"brier", "ece", "reliability"}
    assert set(judge["calibration"]["reliability"][0]) == {"lo", "hi", "n", "mean_p", "frac_a"}
    assert set(judge["position"]) == {
        "first_shown_wins_when_a_first",
        "first_shown_wins_when_b_first",
        "first_shown_wins_before_averaging",
        "a_wins_after_averaging",
        "order_consistency",
    }
    assert set(judge["length"]) == {
        "judge_prefers_longer",
        "human_prefers_longer",
        "pairs_with_different_lengths",
    }
    assert set(data["between_judges"][0]) == {"a", "b", "common_pairs", "agreement", "cohen_kappa"}
    assert data["between_judges"][0]["cohen_kappa"] == 1.0


# -- human annotation logs (charter annotate) ------------------------------------------------
def test_inter_annotator_measures_by_hand() -> None:
    from charter.evaluate import fleiss_kappa, krippendorff_alpha

    # 3 annotators (A, B, C) x 5 pairs; C gave no label on the 5th:
    #        A    B    C
    #   i1   a    a    a
    #   i2   a    b    a
    #   i3   b    b    b
    #   i4   a    tie  b
    #   i5   b    b    -
    units = [["a", "a", "a"], ["a", "b", "a"], ["b", "b", "b"], ["a", "tie", "b"], ["b", "b"]]
    # Krippendorff's alpha, nominal. Pairable values n = 3+3+3+3+2 = 14, by value:
    #   n_a = 3 (i1) + 2 (i2) + 1 (i4) = 6;  n_b = 1 + 3 + 1 + 2 = 7;  n_tie = 1.
    # Coincidences of different values, sum over units of (ordered pairs that differ)/(m_u - 1):
    #   i2: m=3, 3*3 - (2^2 + 1^2) = 4 ordered pairs differ -> 4/2 = 2
    #   i4: m=3, 3*3 - (1 + 1 + 1) = 6                      -> 6/2 = 3
    #   i1, i3, i5 agree -> 0;  total D = 5  (observed disagreement D_o = 5/14)
    # Expected: sum over c != k of n_c * n_k = 14^2 - (6^2 + 7^2 + 1^2) = 196 - 86 = 110
    #   (D_e = 110 / (14 * 13))
    # alpha = 1 - D_o / D_e = 1 - (14 - 1) * 5 / 110 = 1 - 65/110 = 45/110 = 0.40909...
    assert krippendorff_alpha(units) == pytest.approx(45 / 110)
    # A unit with one value cannot be paired: it changes nothing.
    assert krippendorff_alpha([*units, ["a"]]) == pytest.approx(45 / 110)
    # Fleiss' kappa needs the same number of labels on every pair: not with i5 short.
    assert math.isnan(fleiss_kappa(units))
    # With C's i5 = b: N = 5 pairs, m = 3 labels each, P_i = (sum_j n_ij^2 - 3) / (3 * 2):
    #   i1 (9-3)/6 = 1;  i2 (4+1-3)/6 = 1/3;  i3 1;  i4 (1+1+1-3)/6 = 0;  i5 1
    #   mean P = (1 + 1/3 + 1 + 0 + 1) / 5 = 2/3
    #   p_a = 6/15, p_b = 8/15, p_tie = 1/15 -> P_e = (36 + 64 + 1) / 225 = 101/225
    #   kappa = (2/3 - 101/225) / (1 - 101/225) = (150 - 101) / (225 - 101) = 49/124
    full = [*units[:4], ["b", "b", "b"]]
    assert fleiss_kappa(full) == pytest.approx(49 / 124)
    # and alpha on it: n = 15, D = 5, E = 225 - 101 = 124 -> 1 - 14 * 5 / 124 = 54/124
    assert krippendorff_alpha(full) == pytest.approx(54 / 124)
    assert krippendorff_alpha([["a", "a"], ["b", "b"]]) == pytest.approx(1.0)
    assert krippendorff_alpha([["a", "a"], ["a", "a"]]) == 1.0  # no variation, as cohen_kappa
    assert math.isnan(krippendorff_alpha([["a"], ["b"]]))


def _event(id: str, annotator: str, choice: str | None, routed_by: str, undo: bool = False) -> str:
    return json.dumps(
        {
            "event": "undo" if undo else "label",
            "id": id,
            "annotator": annotator,
            "choice": choice,
            "routed_by": routed_by,
            "time": "2025-01-01T00:00:00Z",
        }
    )


# The table above as an annotation log; i1-i3 routed (uncertainty), i4-i5 control.
TABLE = {
    "i1": ("a", "a", "a"),
    "i2": ("a", "b", "a"),
    "i3": ("b", "b", "b"),
    "i4": ("a", "tie", "b"),
    "i5": ("b", "b", "skip"),  # C skipped: a missing label
}


def _log(path: Path, annotators: str = "ABC", stray: bool = True) -> Path:
    lines = []
    for id, choices in TABLE.items():
        routed = "control" if id in ("i4", "i5") else "uncertainty"
        for name, choice in zip("ABC", choices, strict=True):
            if name in annotators:
                if name == "B" and id == "i1":  # B first says b, undoes it, then says a
                    lines += [_event(id, name, "b", routed), _event(id, name, None, routed, True)]
                lines.append(_event(id, name, choice, routed))
    if stray:
        lines.append(_event("zz", "A", "a", "uncertainty"))  # in no label file
    path.write_text("\n".join(lines) + "\n")
    return path


def test_annotation_log_as_human_labels(tmp_path: Path) -> None:
    rows = [
        label(id="i1", p_a=0.8),  # humans a (1.0): AI right
        label(id="i2", p_a=0.4),  # humans a, b, a (2/3): AI wrong, flipped
        label(id="i3", p_a=0.3),  # humans b (0.0): AI right
        label(id="i4", p_a=0.6, human="a"),  # humans a, tie, b (0.5): a tie, no label
        label(id="i5", p_a=0.9),  # humans b, b (0.0): AI wrong, flipped
        label(id="c1", p_a=0.7, human="a"),  # carried human label, not routed: AI right
        label(id="c2", p_a=0.2, human="a"),  # carried: AI wrong
        label(id="n1", p_a=0.5),  # no human label
    ]
    src = tmp_path / "judge.jsonl"
    src.write_text("".join(r.model_dump_json() + "\n" for r in rows))
    log = _log(tmp_path / "human.jsonl")
    metrics = evaluate_files([src], human=str(log))
    inter = metrics.inter_annotator
    assert inter is not None
    # 3 annotators; 6 pairs labelled (zz too), 5 by two or more. Pooled pairwise agreement:
    # i1 3/3, i2 1/3, i3 3/3, i4 0/3, i5 1/1 -> 8 of 13 pairs of labels.
    assert (inter.annotators, inter.items, inter.items_multiply_labelled) == (3, 6, 5)
    assert inter.pairwise_agreement == pytest.approx(8 / 13)
    assert inter.krippendorff_alpha == pytest.approx(45 / 110)  # by hand above
    assert inter.cohen_kappa is None and inter.fleiss_kappa is None
    assert any("1 annotated pair(s) are in none of the label files" in n for n in metrics.notes)

    (judge,) = metrics.judges
    # decided human labels: i1 a, i2 a, i3 b, i5 b (log), c1 a, c2 a (carried); i4 a tie
    assert (judge.pairs_with_human_label, judge.pairs_with_human_tie) == (6, 1)
    assert judge.agreement is not None and judge.agreement.accuracy == pytest.approx(3 / 6)
    routed, effect = judge.routed_agreement, judge.routing_effect
    assert routed is not None and effect is not None
    assert (routed.routed.n, routed.routed.accuracy) == (3, pytest.approx(2 / 3))  # i1 i2 i3
    assert (routed.control.n, routed.control.accuracy) == (1, 0.0)  # i5 (i4: a tie)
    assert (routed.carried.n, routed.carried.accuracy) == (2, 0.5)  # c1 c2
    assert any("counts 3 pair(s) routed because the judge was doubtful" in n for n in metrics.notes)
    assert (effect.pairs, effect.human_labelled, effect.flipped, effect.human_ties) == (8, 5, 2, 1)
    # |1 - .8| + |2/3 - .4| + |0 - .3| + |.5 - .6| + |0 - .9| = 1.7667, over 5
    assert effect.mean_abs_change == pytest.approx((0.2 + 0.8 / 3 + 0.3 + 0.1 + 0.9) / 5)

    # Two annotators: Cohen's kappa over the pairs both labelled (all five).
    #   A = a a b a b,  B = a b b tie b: observed 3/5 (i1, i3, i5)
    #   P(A=a) 3/5, P(A=b) 2/5;  P(B=a) 1/5, P(B=b) 3/5, P(B=tie) 1/5
    #   expected = 3/5 * 1/5 + 2/5 * 3/5 + 0 * 1/5 = 0.36
    #   kappa = (0.6 - 0.36) / (1 - 0.36) = 0.375
    two = evaluate_files([src], human=str(_log(tmp_path / "two.jsonl", "AB")))
    assert two.inter_annotator is not None
    assert two.inter_annotator.cohen_kappa == pytest.approx(0.375)
    assert two.inter_annotator.fleiss_kappa is None, "zz has one label"
    two = evaluate_files([src], human=str(_log(tmp_path / "two.jsonl", "AB", stray=False)))
    assert two.inter_annotator is not None
    assert two.inter_annotator.cohen_kappa == pytest.approx(0.375)
    # every pair labelled by exactly two -> Fleiss applies; 2 annotators x 5 pairs:
    #   P_i = (sum_j n_ij^2 - 2) / 2: i1 1, i2 0, i3 1, i4 0, i5 1 -> mean 3/5
    #   of the 10 labels: a 3 + 1 = 4, b 2 + 3 = 5, tie 1 -> p = .4, .5, .1
    #   P_e = .16 + .25 + .01 = .42 -> kappa = (.6 - .42) / (1 - .42) = .18 / .58
    assert two.inter_annotator.fleiss_kappa == pytest.approx(0.18 / 0.58)

    # Without a log the new blocks are absent; an id/human_choice file still replaces labels.
    plain = evaluate_files([src])
    assert plain.inter_annotator is None and plain.judges[0].routed_agreement is None


def test_annotation_log_in_report_and_table(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from charter.cli import app

    rows = [label(id=i, p_a=0.7, judge="<b>judge</b>") for i in TABLE]
    src = tmp_path / "judge.jsonl"
    src.write_text("".join(r.model_dump_json() + "\n" for r in rows))
    log = _log(tmp_path / "human.jsonl")
    out = tmp_path / "report"
    result = CliRunner().invoke(app, ["evaluate", str(src), "-o", str(out), "--human", str(log)])
    assert result.exit_code == 0, result.output
    assert "Krippendorff's α 0.409" in result.stderr and "humans in the loop" in result.stderr
    html = (out / "report.html").read_text()
    assert (
        "Human annotations" in html and "<td>Krippendorff's α (nominal)</td><td>0.409</td>" in html
    )
    assert "<b>judge</b>" not in html and "&lt;b&gt;judge&lt;/b&gt;" in html
    data = json.loads((out / "metrics.json").read_text())
    assert data["inter_annotator"]["krippendorff_alpha"] == pytest.approx(45 / 110)
    assert data["inter_annotator"]["fleiss_kappa"] is None
    assert data["judges"][0]["routing_effect"]["human_labelled"] == 5


def test_the_bootstrap_interval_is_resampling_the_values() -> None:
    """Drawn as counts of each distinct value, it is the percentile interval of the means of
    resamples drawn with replacement: the two agree to the third decimal."""
    import random

    from charter.evaluate import bootstrap_interval

    rng = random.Random(3)
    credits = [rng.choice([0.0, 0.5, 1.0, 1.0, 1.0]) for _ in range(400)]
    means = sorted(sum(rng.choice(credits) for _ in credits) / len(credits) for _ in range(4000))
    by_hand = (means[100], means[3899])
    lo, hi = bootstrap_interval(credits, resamples=4000)
    assert lo == pytest.approx(by_hand[0], abs=0.006) and hi == pytest.approx(by_hand[1], abs=0.006)
    assert lo < sum(credits) / len(credits) < hi
    assert bootstrap_interval([1.0, 1.0]) == (1.0, 1.0) and bootstrap_interval([]) != (0.0, 0.0)


def test_the_report_sets_dollars_per_1000_labels_beside_agreement(tmp_path: Path) -> None:
    """From the records' usage at the judge's prices, as AlpacaEval's judge table does."""
    usage = {"requests": 2, "cache_hits": 0, "prompt_tokens": 1000, "completion_tokens": 10}
    rows = [
        row(i, 0.8, "a", 0.9, 0.3).model_copy(
            update={"judge": "openai/gpt-4o-mini", "usage": Usage(**usage)}
        )
        for i in range(4)
    ]
    src = tmp_path / "mini.jsonl"
    src.write_text("".join(r.model_dump_json() + "\n" for r in rows))
    other = tmp_path / "local.jsonl"
    other.write_text(
        "".join(
            r.model_copy(update={"judge": "openai/local-x"}).model_dump_json() + "\n" for r in rows
        )
    )
    r = run_cli("evaluate", str(src), str(other), "-o", str(tmp_path / "r"))
    assert r.returncode == 0, r.stderr
    data = json.loads((tmp_path / "r" / "metrics.json").read_text())
    mini, local = data["judges"]
    per_label = (1000 * 0.15 + 10 * 0.60) / 1e6  # gpt-4o-mini: $0.15 in, $0.60 out per 1M
    assert mini["cost"]["per_1000_labels"] == pytest.approx(per_label * 1000, rel=1e-12)
    assert mini["cost"]["prompt_tokens_per_label"] == 1000
    assert local["cost"] is None  # no price for it
    html = (tmp_path / "r" / "report.html").read_text()
    assert "$ per 1,000 labels" in html and f"{per_label * 1000:.4f}" in html

    prices = tmp_path / "prices.yaml"
    prices.write_text("local-x: {input: 1, output: 1}\n")
    evaluated = evaluate_files([other], prices=prices)
    assert evaluated.judges[0].cost is not None
    assert evaluated.judges[0].cost.usd == pytest.approx(4 * 1010 / 1e6, rel=1e-12)
