"""``charter constitution compare``: two label files of the same pairs under two
constitutions, with flips planted where we know them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

import charter
from charter.compare.run import compare
from tests.conftest import run_cli

N = 40
FLIPPED = range(10)
TIES = (10, 11)


@pytest.fixture(scope="module")
def labelled(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    """Real label records (mock judge) to plant known verdicts in."""
    tmp = tmp_path_factory.mktemp("compare")
    src = tmp / "pairs.jsonl"
    rows = [
        {"id": f"q{i}", "prompt": f"question {i}", "response_a": f"a{i}", "response_b": f"b{i}"}
        for i in range(N)
    ]
    rows[0]["response_a"] = "<script>alert(1)</script>"
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp / "l.jsonl"
    charter.run("label", input=str(src), output=out, judge="mock/j", constitution="harmless")
    return [json.loads(line) for line in out.read_text().splitlines()]


def _principle(template: dict[str, Any], pid: str, p_a: float) -> dict[str, Any]:
    return {
        **template,
        "principle_id": pid,
        "p_a": p_a,
        "p_a_when_first": p_a,
        "p_a_when_second": p_a,
    }


def planted(records: list[dict[str, Any]], tmp: Path) -> tuple[Path, Path]:
    first, second = [], []
    for rec in sorted(records, key=lambda r: int(r["id"][1:])):
        i = int(rec["id"][1:])
        template = rec["per_principle"][0]
        human = "b" if i in FLIPPED else "a"
        a = {**rec, "p_a": 0.8, "constitution": "alpha", "constitution_hash": "h-alpha"}
        a.update(human_choice=human, per_principle=[_principle(template, "a-main", 0.8)])
        p_b = 0.2 if i in FLIPPED else 0.5 if i in TIES else 0.9
        others = [_principle(template, "b-other", 0.6)]
        if i in FLIPPED:
            others.append(_principle(template, "b-flip", 0.1))
        b = {**rec, "p_a": p_b, "constitution": "beta", "constitution_hash": "h-beta"}
        b.update(human_choice=human, per_principle=others)
        first.append(a)
        second.append(b)
    pa, pb = tmp / "alpha.jsonl", tmp / "beta.jsonl"
    pa.write_text("".join(json.dumps(r) + "\n" for r in first))
    pb.write_text("".join(json.dumps(r) + "\n" for r in second))
    return pa, pb


def test_known_flips_principles_and_people(labelled: list[dict[str, Any]], tmp_path: Path) -> None:
    pa, pb = planted(labelled, tmp_path)
    c = compare(pa, pb)
    assert c.common_pairs == N and c.only_first == c.only_second == 0
    assert c.agreement.rate == pytest.approx(28 / 40)
    assert c.flips.rate == pytest.approx(10 / 40) and c.flips_to_a == 10
    lo, hi = c.flips.ci95
    assert lo < 0.25 < hi and lo > 0.1 and hi < 0.45
    top = c.principles[0]
    assert (top.constitution, top.principle_id) == ("beta", "b-flip")
    assert (top.asked, top.flips, top.sided, top.lift) == (10, 10, 10, pytest.approx(4.0))
    other = next(p for p in c.principles if p.principle_id == "b-other")
    assert (other.asked, other.flips, other.sided) == (40, 10, 0)
    assert c.human is not None
    assert c.human.first.accuracy == pytest.approx(30 / 40)
    assert c.human.second.accuracy == pytest.approx(39 / 40)
    assert c.human.difference.rate == pytest.approx(-9 / 40)
    assert c.human.difference.ci95[1] < 0  # the second agrees with people better
    assert (c.human.on_flips, c.human.first_right_on_flips) == (10, 0)
    assert len(c.examples) == 10


def test_same_file_twice_agrees_everywhere(labelled: list[dict[str, Any]], tmp_path: Path) -> None:
    pa, _ = planted(labelled, tmp_path)
    c = compare(pa, pa)
    assert c.agreement.rate == 1.0 and c.flips.rate == 0.0 and c.examples == []
    assert any("the same file" in note for note in c.notes)


def test_cli_writes_json_and_an_escaped_report(
    labelled: list[dict[str, Any]], tmp_path: Path
) -> None:
    pa, pb = planted(labelled, tmp_path)
    out = tmp_path / "cmp"
    done = run_cli("constitution", "compare", str(pa), str(pb), "-o", str(out))
    assert done.returncode == 0, done.stderr
    assert "flips 0.25" in done.stdout + done.stderr
    data = json.loads((out / "compare.json").read_text())
    assert data["flips"]["rate"] == 0.25
    html = (out / "report.html").read_text()
    assert "<script>alert(1)</script>" not in html and "&lt;script&gt;" in html
    lonely = tmp_path / "other.jsonl"
    lonely.write_text(pb.read_text().replace('"id": "q', '"id": "z'))
    bad = run_cli("constitution", "compare", str(pa), str(lonely), "-o", str(out))
    assert (
        bad.returncode != 0 and "share no pair id" in bad.stderr and "Traceback" not in bad.stderr
    )
