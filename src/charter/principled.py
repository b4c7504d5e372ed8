"""Principle-conditioned reward models: the principle is part of what the model reads.

An ordinary reward model learns one notion of "better". A principle-conditioned one (as
SALMON's instructable reward model) is trained on each principle's verdict with that
principle's text in its input, so at scoring time it follows the principle it is given:
``charter train reward --principle-conditioned`` trains one from a label file's per-principle
verdicts, and ``rm/DIR`` scores with it under a constitution's principles.

Training and scoring must show the principle the same way; this module is that one way
(``FORMAT``), and the record in the model folder that says a model was trained so.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from charter.errors import ConfigError
from charter.types import Message

FORMAT = "system-v1"
"""How the principle is shown: a system message before the conversation, ``INSTRUCTION``
with the principle's rule (its ``statement``, else its critique request). A conversation that
has a system message keeps it, after the instruction, in the same system message."""
INSTRUCTION = "Rate the assistant's final answer by this principle alone: {rule}"
"""The system message's text (``FORMAT`` names this wording: a change is a new format)."""
FORMATS = (FORMAT,)
"""The formats this charter can show a principle in."""

TRAIN_RECORD = "charter-train.json"
"""What ``charter train`` wrote into a model folder (``charter.train.run``)."""
RECORD_KEY = "principles"
"""Its entry for a principle-conditioned reward model: the format, and the constitution the
training labels were judged under."""


def with_principle(messages: Sequence[Message], rule: str) -> list[Message]:
    """``messages`` as a principle-conditioned reward model reads them under ``rule``."""
    text = INSTRUCTION.format(rule=" ".join(rule.split()))
    if messages and messages[0].role == "system":
        system = Message(role="system", content=f"{text}\n\n{messages[0].content}")
        return [system, *messages[1:]]
    return [Message(role="system", content=text), *messages]


def conditioning(constitution_name: str, constitution_hash: str) -> dict[str, Any]:
    """The record's entry for a model trained principle-conditioned."""
    return {"format": FORMAT, "constitution": constitution_name, "hash": constitution_hash}


def trained_format(name: str, folder: Path) -> str | None:
    """The principle format ``folder``'s reward model was trained with (None: an ordinary
    reward model, or one not trained by charter)."""
    entry = trained_record(name, folder)
    return None if entry is None else str(entry["format"])


def trained_record(name: str, folder: Path) -> dict[str, Any] | None:
    """The folder's record of a principle-conditioned training (``conditioning``, with what
    it trained on), its format checked; None for an ordinary reward model."""
    record = folder / TRAIN_RECORD
    if not record.is_file():
        return None
    try:
        data = json.loads(record.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ConfigError(f"{name}: unreadable {TRAIN_RECORD} ({e})") from e
    entry = data.get(RECORD_KEY) if isinstance(data, dict) else None
    if entry is None:
        return None
    found = entry.get("format") if isinstance(entry, dict) else None
    if found not in FORMATS:
        raise ConfigError(
            f"{name}: trained principle-conditioned in format {found!r}, which this charter "
            f"cannot show (it knows {', '.join(FORMATS)}): upgrade charter"
        )
    return dict(entry)
