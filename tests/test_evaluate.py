"""Evaluation metrics against hand-computed values, the report, and a full HH-RLHF run."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from charter.evaluate import (
    JudgeFile,
    LabelRow,
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
from charter.report import write_report
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


def row(
    i: int, p_a: float, human: str | None, p_ab: float, p_ba: float, len_a: int = 10, len_b: int = 5
) -> LabelRow:
    return LabelRow(
        id=f"r{i}",
        p_a=p_a,
        human=human,
        len_a=len_a,
        len_b=len_b,
        position_consistent=(p_ab - 0.5) * (p_ba - 0.5) < 0,
        judgements=[("ab", p_ab), ("ba", p_ba)],
        per_principle=[("x", p_a)],
    )


def test_position_length_and_between_judges() -> None:
    rows = [
        row(0, 0.8, "a", p_ab=0.9, p_ba=0.3),  # consistent: A wins in both orders
        row(1, 0.5, "b", p_ab=0.9, p_ba=0.9),  # always-first judge
        row(2, 0.3, "b", p_ab=0.2, p_ba=0.6, len_a=3, len_b=9),
        row(3, 0.6, "a", p_ab=0.7, p_ba=0.6),  # first shown wins twice -> inconsistent
    ]
    m = judge_metrics(JudgeFile("j", "j.jsonl", rows))
    pos = m["position"]
    assert pos["first_shown_wins_when_a_first"] == pytest.approx(3 / 4)
    assert pos["first_shown_wins_when_b_first"] == pytest.approx(3 / 4)
    assert pos["first_shown_wins_before_averaging"] == pytest.approx(6 / 8)
    assert pos["a_wins_after_averaging"] == pytest.approx(2 / 3)
    assert pos["order_consistency"] == pytest.approx(2 / 4)
    # judge picks: r0 a(longer), r2 b(longer), r3 a(longer); r1 tie excluded -> 3/3
    assert m["length"]["judge_prefers_longer"] == pytest.approx(1.0)
    assert m["length"]["human_prefers_longer"] == pytest.approx(3 / 4)
    assert m["agreement"]["accuracy"] == pytest.approx((1 + 0.5 + 1 + 1) / 4)
    other = JudgeFile(
        "k",
        "k.jsonl",
        [row(0, 0.2, None, 0.2, 0.8), row(1, 0.7, None, 0.7, 0.3), row(9, 0.9, None, 0.9, 0.1)],
    )
    (pair,) = between_judges([JudgeFile("j", "j.jsonl", rows), other])
    assert pair["common_pairs"] == 2 and pair["agreement"] == 0.0


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
    (between,) = metrics["between_judges"]
    assert between["common_pairs"] == 300
    decided = [r for r in first if r["p_a"] != 0.5]
    assert between["agreement"] == pytest.approx((300 - len(decided)) / 300)
    assert between["cohen_kappa"] < 0
    a, b = metrics["judges"]
    assert a["pairs_with_human_label"] == 300 and b["pairs_with_human_label"] == 300
    assert a["agreement"]["accuracy"] + b["agreement"]["accuracy"] == pytest.approx(1.0)


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
    rec = {
        "id": "x",
        "p_a": 0.5,
        "response_a": "a",
        "response_b": "a",
        "judgements": [],
        "per_principle": [],
        "position_consistent": None,
    }
    src = tmp_path / "l.jsonl"
    src.write_text(json.dumps(rec) + "\n")
    metrics = evaluate_files([src])
    write_report(metrics, tmp_path / "r")
    text = (tmp_path / "r" / "metrics.json").read_text()
    assert (
        "NaN" not in text
        and json.loads(text)["judges"][0]["length"]["judge_prefers_longer"] is None
    )
    assert math.isnan(metrics["judges"][0]["position"]["order_consistency"])
