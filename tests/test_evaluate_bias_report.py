"""The report's "which numbers to trust" section: head to head raw and length-controlled,
self-preference, AI-only / human-only / PPI, each block or the note saying why it is missing,
with model names shown as text; and the same in headless Chromium (Debian's package, driven by
Playwright through ``executable_path``), with a screenshot."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from charter.evaluate import Metrics, evaluate_files
from charter.report import bias_lines, write_report
from tests.test_evaluate_bias import head_to_head_file

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
MARKUP = "<script>window.pwned=1</script>"
"""Planted in the opponent's model name: the report must show it, not run it."""
OPPONENT = f"openai/m2{MARKUP}"


def _with_opponent(path: Path) -> Path:
    text = path.read_text().replace("(openai/m2)", json.dumps(f"({OPPONENT})")[1:-1])
    path.write_text(text)
    return path


def _control_log(path: Path, labels: Path, n: int = 40) -> Path:
    """People's labels of the first ``n`` pairs, as an annotation log of control pairs (a
    random draw), with the choice each record carries."""
    lines = []
    for raw in labels.read_text().splitlines()[:n]:
        rec = json.loads(raw)
        event = {"event": "label", "id": rec["id"], "annotator": "ann",
                 "choice": rec["human_choice"], "routed_by": "control",
                 "time": "2026-01-01T00:00:00Z"}  # fmt: skip
        lines.append(json.dumps(event) + "\n")
    path.write_text("".join(lines))
    return path


@pytest.fixture(scope="module")
def metrics(tmp_path_factory: pytest.TempPathFactory) -> Metrics:
    """Two head-to-head files: m1's own judge, pulled towards length (and so towards m1,
    which writes longer), and an independent judge m3; people's labels; an annotation log
    of control pairs."""
    tmp = tmp_path_factory.mktemp("trust")
    own = _with_opponent(head_to_head_file(tmp / "own.jsonl", judge="openai/m1", bias=2.0))
    fair = _with_opponent(head_to_head_file(tmp / "fair.jsonl", judge="openai/m3", bias=0.0))
    log = _control_log(tmp / "human.jsonl", own)
    return evaluate_files([own, fair], human=str(log))


def test_the_report_shows_the_three_blocks_escaped(metrics: Metrics, tmp_path: Path) -> None:
    own, fair = metrics.judges
    assert own.bias is not None and own.bias.head_to_head is not None
    assert own.bias.self_preference and own.bias.estimates is not None
    assert fair.bias is not None and not fair.bias.self_preference
    html = write_report(metrics, tmp_path).read_text()
    assert html.count("<h3>Which numbers to trust</h3>") == 2
    for heading in ("Head to head: raw and length-controlled", "Self-preference",
                    "AI only, human only, PPI"):  # fmt: skip
        assert html.count(f"<h4>{heading}</h4>") == 2
    assert "<strong>self-preference</strong>" in html  # m1 judging its own answers
    assert "wrote none of the answers" in html  # m3 wrote none: the note instead of a table
    assert "normal (PPI)" in html and "the control and random pairs of" in html
    assert MARKUP not in html and "&lt;script&gt;window.pwned=1&lt;/script&gt;" in html
    lines = bias_lines(own)
    assert len(lines) == 4  # head to head, self-preference against people and m3, estimates
    assert "length-controlled" in lines[0] and lines[1].startswith("self-preference: ")
    assert "PPI" in lines[3]


@pytest.mark.skipif(CHROMIUM is None, reason="no chromium (Debian package): make browser")
def test_the_trust_section_renders_in_chromium(metrics: Metrics, tmp_path: Path) -> None:
    sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright")
    path = write_report(metrics, tmp_path / "report")
    shot = tmp_path / "trust.png"
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.goto(path.as_uri())
        page.wait_for_selector("body[data-plots-rendered]")
        first = page.locator(".trust").first
        tops = set()
        for block in ("bias-head-to-head", "bias-self-preference", "bias-estimates"):
            section = first.locator(f"section.{block}")
            table = section.locator("table")
            assert table.is_visible(), block
            where, box = section.bounding_box(), table.bounding_box()
            assert where is not None and box is not None, block
            assert box["width"] > 100 and box["height"] > 40, block
            tops.add(round(where["y"]))
            # readable where it stands: the whole table fits its block, no scrolling
            fits = table.evaluate("t => [t.offsetWidth, t.parentElement.clientWidth]")
            assert fits[0] <= fits[1], (block, fits)
        assert len(tops) == 1, "the three blocks side by side"
        text = first.inner_text()
        assert "length-controlled" in text and "self-preference" in text and "PPI" in text
        assert f"over {OPPONENT}" in text  # the planted markup is text, and ran nothing
        assert page.evaluate("window.pwned") is None
        # the second judge's missing self-preference shows its note
        note = page.locator(".trust").nth(1).locator("section.bias-self-preference .note")
        assert note.is_visible() and "wrote none of the answers" in note.inner_text()
        # three blocks side by side within the page, not widening it
        assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
        first.scroll_into_view_if_needed()
        first.screenshot(path=str(shot))
        browser.close()
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 10_000
