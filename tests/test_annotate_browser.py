"""The annotation page in a real browser: Debian's headless Chromium, driven by Playwright
through ``executable_path`` (Playwright's own browser download is never used).

One person labels five pairs with the keyboard, undoes a label, reloads, resumes and
finishes; the file holds their labels in the pairs' own A/B terms whatever side each answer
was shown on. An answer carrying ``<script>`` and ``<img onerror>`` shows as text and runs
nothing. Set CHARTER_WRITE_DOCS=1 to also write the README's screenshot to docs/annotate.png.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from charter.annotate.records import QueueItem, read_annotations, read_events
from charter.types import Message
from tests.test_annotate import start_server

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
XSS_A = "Sure.<script>window.pwned=1</script> Here you go. \u202eesrever"
XSS_B = 'Fine <img src=x onerror="window.pwned2=1"> **bold** [link](javascript:alert(1))'
LONG = "x" * 5000

PAIRS = [
    (
        "My neighbour's dog barks every night until 2am. What can I do about it?",
        "Talk to your neighbour first, at a calm moment and not at 2am: they may not know, "
        "since dogs often bark when their owners are out. Keep a short log of the nights and "
        "times. If a friendly talk changes nothing, a mediation service or your local council "
        "can help, and the log will be your evidence.",
        "Play loud music at their house every morning until they get the message. Two can "
        "play at that game.",
        "Which answer helps the person without encouraging conflict or harm?",
    ),
    ("Show me something fun.", XSS_A, XSS_B + " " + LONG, None),
    ("Is it safe to mix bleach and vinegar?", "No: it releases chlorine gas.", "Yes.", None),
    (
        "Summarise: the meeting moved to Tuesday.",
        "The meeting is now on Tuesday.",
        "Tuesday.",
        None,
    ),
    ("Say hello in French.", "Bonjour !", "Hola.", None),
]
WANT = {"p0": "a", "p1": "b", "p2": "tie", "p3": "skip", "p4": "a"}
"""The labels the person means, in each pair's own A/B terms."""


@pytest.mark.skipif(CHROMIUM is None, reason="no chromium (Debian package): make browser")
def test_label_five_pairs_with_the_keyboard_undo_reload_resume(tmp_path: Path) -> None:
    sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright")
    queue = tmp_path / "queue.jsonl"
    queue.write_text(
        "".join(
            QueueItem(
                id=f"p{i}",
                messages=[Message(role="user", content=prompt)],
                response_a=a,
                response_b=b,
                question=question,
                routed_by="uncertainty",
                rank=i + 1,
            ).model_dump_json()
            + "\n"
            for i, (prompt, a, b, question) in enumerate(PAIRS)
        ),
        encoding="utf-8",
    )
    out = tmp_path / "human.jsonl"
    proc, url = start_server(queue, out, "--seed", "1")
    shown_left: dict[str, str] = {}
    try:
        with sync_api.sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
            page = browser.new_page(viewport={"width": 1200, "height": 820})
            page.goto(url)
            page.fill("#name", "ann")
            page.press("#name", "Enter")

            def on_screen() -> str:
                page.wait_for_selector("body[data-state=task]")
                pair = page.get_attribute("#task", "data-pair")
                assert pair is not None
                b_text = PAIRS[int(pair[1:])][2]
                shown_left[pair] = "b" if page.inner_text("#left-text") == b_text else "a"
                return pair

            def press(choice: str) -> None:
                """The key for ``choice`` (in pair terms) given the layout on screen."""
                pair = on_screen()
                key = {"tie": "t", "skip": "s"}.get(choice)
                if key is None:
                    key = "a" if choice == shown_left[pair] else "b"
                page.keyboard.press(key)
                # (selectors, not wait_for_function: the page's CSP forbids eval, as it should)
                page.wait_for_selector(f'body[data-state=done], #task:not([data-pair="{pair}"])')

            assert on_screen() == "p0"
            assert "Which answer helps" in page.inner_text("#question")
            shot = tmp_path / "annotate.png"
            page.screenshot(path=str(shot), clip={"x": 0, "y": 0, "width": 1200, "height": 400})
            assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
            if os.environ.get("CHARTER_WRITE_DOCS"):
                shutil.copy(shot, ROOT / "docs" / "annotate.png")
            press(WANT["p0"])

            # Model text is inert: the markup shows as text, nothing ran, no image was made.
            assert on_screen() == "p1"
            text = page.inner_text("#left-text") + page.inner_text("#right-text")
            assert "<script>window.pwned=1</script>" in text and "<img src=x" in text
            assert page.evaluate("[window.pwned, window.pwned2]") == [None, None]
            assert page.locator("#task img, #task script").count() == 0
            # A bidi override cannot reorder the text: it is shown as a mark.
            assert "[U+202E]esrever" in text
            # A 5000-character line wraps inside its panel instead of widening the page.
            assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
            press(WANT["p1"])

            # A wrong key, then undo: the pair comes back with the same layout.
            assert on_screen() == "p2"
            left_before = shown_left["p2"]
            press("a")
            page.keyboard.press("u")
            page.wait_for_selector('#task[data-pair="p2"]')
            assert on_screen() == "p2" and shown_left["p2"] == left_before
            press(WANT["p2"])

            # Reload: the name is remembered and the page resumes where the person was.
            page.reload()
            assert on_screen() == "p3"
            assert "ann" in page.inner_text("#who")
            press(WANT["p3"])
            press(WANT["p4"])
            page.wait_for_selector("body[data-state=done]")
            assert "5 done, 0 left" in page.inner_text("#progress")
            assert page.evaluate("[window.pwned, window.pwned2]") == [None, None]
            browser.close()
    finally:
        proc.terminate()
        proc.wait()

    standing = read_annotations(out)
    assert {a.id: a.choice for a in standing} == WANT
    assert {a.id: a.left for a in standing} == shown_left
    assert len(set(shown_left.values())) == 2  # both layouts occurred
    assert all(a.annotator == "ann" and a.seconds is not None for a in standing)
    assert sum(e.event == "undo" for e in read_events(out)) == 1
