"""Clean-up of model text in critique/revision chains, and detection of degenerate revisions.

Small models often echo the label they were asked for ("Revision: ...") or keep writing the
next turn of the pattern ("Critique request: ..."). We strip the first and cut the second.
A revision that is empty, cut off, a copy of the critique or of the previous answer is not
accepted: the previous answer stands for that round and the round is flagged.
"""

from __future__ import annotations

import difflib
import re
from typing import Literal

Flag = Literal["empty", "truncated", "copied_critique", "unchanged", "empty_critique"]

_LABEL = re.compile(
    r"^\s*(?:[*_#>]+\s*)?"
    r"(?:here(?:'s| is) (?:the |my |a )?(?:revised|rewritten|new|improved)"
    r" (?:answer|response|version)"
    r"|(?:the )?(?:revised|rewritten|improved|new) (?:answer|response|version)"
    r"|revision|critique|answer|response)"
    r"\s*(?:[*_]+\s*)?:\s*(?:[*_]+\s*)?",
    re.IGNORECASE,
)
_RUNAWAY = re.compile(
    r"\n\s*(?:[*_#]+\s*)?"
    r"(?:critique request|revision request|critique|revision|human|user|assistant)"
    r"\s*(?:[*_]+\s*)?:",
    re.IGNORECASE,
)


def clean(text: str) -> str:
    """Strip an echoed leading label and cut a runaway continuation of the turn pattern."""
    text = text.strip()
    for _ in range(2):  # "**Revision:** Revised answer: ..." happens
        stripped = _LABEL.sub("", text, count=1)
        if stripped == text:
            break
        text = stripped.strip()
    match = _RUNAWAY.search(text)
    if match:
        text = text[: match.start()].rstrip()
    if len(text) >= 2 and text[0] == text[-1] == '"' and text.count('"') == 2:
        text = text[1:-1].strip()
    return text


def _norm(text: str) -> str:
    return " ".join(text.lower().split())


def revision_flags(
    revision: str, *, previous: str, critique: str | None, truncated: bool
) -> list[Flag]:
    """Why a (cleaned) revision should not replace the previous answer; empty if it should."""
    flags: list[Flag] = []
    if not revision.strip():
        return ["empty"]
    if truncated:
        flags.append("truncated")
    if _norm(revision) == _norm(previous):
        flags.append("unchanged")
    if critique and critique.strip():
        ratio = difflib.SequenceMatcher(None, _norm(revision), _norm(critique)).ratio()
        if ratio > 0.9:
            flags.append("copied_critique")
    return flags
