"""Rows for TRL's trainers, from charter's outputs or any TRL dataset.

Every trainer gets conversational rows (lists of ``{"role", "content"}``), so the chat
template is applied by TRL exactly as it will be when the model is used:

- SFT: ``prompt``/``completion`` (loss on the completion only). From ``revise`` output
  (``messages`` ending in the final answer), TRL ``messages`` or ``prompt``/``completion``
  rows; plain ``text`` rows are kept as language-modelling text.
- reward and DPO: ``prompt``/``chosen``/``rejected`` and, for soft labels, ``p_chosen``. From
  ``label`` output and merged files (soft or hard), TRL preference rows (hard), or rows with
  ``response_a``/``response_b`` and a ``human_choice`` (human).
- RL: ``prompt`` from any prompt file charter reads.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from typing import Any, Literal

from charter.errors import InputError
from charter.io import iter_rows, row_prompt
from charter.pairs import chosen_rejected
from charter.types import Message

log = logging.getLogger("charter")

Labels = Literal["soft", "hard", "human"]
Row = dict[str, Any]


def _chat(messages: list[Message]) -> list[dict[str, str]]:
    return [{"role": m.role, "content": m.content} for m in messages]


def _answer(text: str) -> list[dict[str, str]]:
    return [{"role": "assistant", "content": text}]


def _rows(source: str) -> Iterator[tuple[str, Row]]:
    yield from iter_rows(source)


def _nonempty(rows: list[Row], source: str, what: str, skipped: int = 0) -> list[Row]:
    if not rows:
        extra = f" ({skipped:,} row(s) skipped)" if skipped else ""
        raise InputError(f"{source}: no {what} to train on{extra}")
    return rows


def sft_rows(source: str) -> list[Row]:
    """Prompt/completion rows (or ``text`` rows) for ``SFTTrainer``."""
    rows: list[Row] = []
    for where, row in _rows(source):
        if isinstance(row.get("text"), str) and not any(
            k in row for k in ("prompt", "messages", "completion")
        ):
            rows.append({"text": row["text"]})
            continue
        if row.get("final") is not None and row.get("prompt") is not None:  # revise output
            messages, answer = row_prompt({"prompt": row["prompt"]}, where)[0], row["final"]
        else:
            messages, answer = row_prompt(row, where)
        if not isinstance(answer, str) or not answer.strip():
            raise InputError(
                f"{where}: no answer to learn: give 'completion', 'response', or a conversation "
                "that ends with an assistant turn"
            )
        rows.append({"prompt": _chat(messages), "completion": _answer(answer)})
    return _nonempty(rows, source, "examples")


def prompt_rows(source: str) -> list[Row]:
    """Prompt-only rows for ``GRPOTrainer``."""
    rows = [{"prompt": _chat(row_prompt(row, where)[0])} for where, row in _rows(source)]
    return _nonempty(rows, source, "prompts")


def preference_rows(source: str, labels: Labels) -> list[Row]:
    """``prompt``/``chosen``/``rejected`` rows, with ``p_chosen`` for soft labels."""
    rows: list[Row] = []
    skipped = 0
    for where, row in _rows(source):
        converted = _preference(row, where, labels)
        if converted is None:
            skipped += 1
        else:
            rows.append(converted)
    if not rows and labels == "human":
        raise InputError(
            f"{source}: no row has a human_choice (with response_a/response_b); for TRL "
            "chosen/rejected rows pass --labels hard"
        )
    if skipped:
        why = {
            "soft": "no TRL columns (below --min-confidence when labelled)",
            "hard": "no TRL columns (a tie, position-inconsistent, or below --min-confidence "
            "when labelled; --labels soft trains on ties and inconsistent pairs)",
            "human": "no human_choice, or a human tie",
        }[labels]
        log.info("%s: %d row(s) skipped: %s", source, skipped, why)
    return _nonempty(rows, source, "preference pairs", skipped)


SOFT_ONLY = ("tie", "inconsistent")
"""Why ``label`` left a pair out of its TRL columns when soft training still wants it: its
p_a says how the judge was split, which is what a soft target is for."""


def _soft_from_p_a(row: Row, where: str) -> Row:
    """A tie or position-inconsistent pair as a soft row: A and B with P(A) as the target
    (chosen is the likelier one, so p_chosen >= 0.5)."""
    p = row.get("p_a")
    if isinstance(p, bool) or not isinstance(p, int | float) or not 0.0 <= p <= 1.0:
        raise InputError(f"{where}: 'p_a' must be a probability in [0, 1] (got {p!r})")
    for field in ("response_a", "response_b"):
        if not isinstance(row.get(field), str):
            raise InputError(f"{where}: a pair left out of the TRL columns needs '{field}'")
    messages = row_prompt(row, where)[0]
    a, b = _answer(row["response_a"]), _answer(row["response_b"])
    chosen, rejected = (a, b) if p >= 0.5 else (b, a)
    return {
        "prompt": _chat(messages),
        "chosen": chosen,
        "rejected": rejected,
        "p_chosen": float(max(p, 1.0 - p)),
    }


def _preference(row: Row, where: str, labels: Labels) -> Row | None:
    if labels == "human":
        choice = row.get("human_choice")
        if choice is None or choice == "tie":  # a tie names no better answer
            return None
        if choice not in ("a", "b"):
            raise InputError(f"{where}: 'human_choice' must be 'a', 'b' or 'tie' (got {choice!r})")
        for field in ("response_a", "response_b"):
            if not isinstance(row.get(field), str):
                raise InputError(f"{where}: human labels need 'response_a' and 'response_b'")
        messages = row_prompt(row, where)[0]
        won, lost = ("response_a", "response_b") if choice == "a" else ("response_b", "response_a")
        return {
            "prompt": _chat(messages),
            "chosen": _answer(row[won]),
            "rejected": _answer(row[lost]),
        }
    if "chosen" not in row or "rejected" not in row:
        raise InputError(
            f"{where}: no 'chosen'/'rejected' columns (fields: {', '.join(row) or 'none'}); "
            "train on charter label output, a merged file or TRL preference rows"
        )
    if row["chosen"] is None or row["rejected"] is None:
        if labels == "soft" and row.get("excluded_reason") in SOFT_ONLY:
            return _soft_from_p_a(row, where)
        return None  # below --min-confidence, or a tie/inconsistent pair for hard labels
    messages, chosen, rejected = chosen_rejected(row, where)
    out: Row = {"prompt": _chat(messages), "chosen": _answer(chosen), "rejected": _answer(rejected)}
    if labels == "hard" and isinstance(row.get("margin"), int | float):
        out["margin"] = float(row["margin"])  # TRL's reward trainer reads it
    if labels == "soft":
        p = row.get("p_chosen")
        if p is None:
            raise InputError(
                f"{where}: no 'p_chosen': soft labels need charter label output or a merged "
                "file; pass --labels hard to train on chosen/rejected alone"
            )
        if isinstance(p, bool) or not isinstance(p, int | float) or not 0.0 <= p <= 1.0:
            raise InputError(f"{where}: 'p_chosen' must be a probability in [0, 1] (got {p!r})")
        if math.isnan(p):
            raise InputError(f"{where}: 'p_chosen' is NaN")
        if p < 0.5:  # chosen is the less likely answer: swap so the target is >= 0.5
            out["chosen"], out["rejected"], p = out["rejected"], out["chosen"], 1.0 - p
        out["p_chosen"] = float(p)
    return out
