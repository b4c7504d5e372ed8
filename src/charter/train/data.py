"""Rows for TRL's trainers, from charter's outputs or any TRL dataset.

Every trainer gets conversational rows (lists of ``{"role", "content"}``), so the chat
template is applied by TRL exactly as it will be when the model is used:

- SFT: ``prompt``/``completion`` (loss on the completion only). From ``revise`` output
  (``messages`` ending in the final answer), TRL ``messages`` or ``prompt``/``completion``
  rows; plain ``text`` rows are kept as language-modelling text.
- reward and DPO: ``prompt``/``chosen``/``rejected`` and, for soft labels, ``p_chosen``. From
  ``label`` output and merged files (soft or hard), TRL preference rows (hard), or rows with
  ``response_a``/``response_b`` and a ``human_choice`` (human).
- principle-conditioned reward: one ``prompt``/``chosen``/``rejected`` row per pair and
  principle, from a label file's ``per_principle`` verdicts, the principle shown in the
  prompt as ``charter.principled`` says.
- RL: ``prompt`` from any prompt file charter reads.
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal

from charter.constitution import Constitution, builtin_names, load_constitution
from charter.errors import ConfigError, InputError
from charter.io import iter_rows, row_prompt
from charter.judges.records import TIE_TOLERANCE
from charter.pairs import chosen_rejected
from charter.principled import with_principle
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


@dataclass
class PrincipleRows:
    """The examples of a principle-conditioned reward model, and where they came from."""

    rows: list[Row]
    """One per pair and principle whose verdict names a better answer."""
    constitution: Constitution
    """The constitution the labels were judged under: its principles' texts are shown."""
    left_out: dict[str, int]
    """Verdicts that made no example, by why."""


LEFT_OUT = {
    "tie": "verdict(s) that are a tie (p_a = 0.5)",
    "inconsistent": "position-inconsistent verdict(s) (the two orders disagree)",
    "together": "verdict(s) on principles shown together (--principles-in-prompt)",
    "no_verdicts": "record(s) without per-principle verdicts (a reward model's labels)",
}
"""Why a verdict (or a record) gives no example, as the run reports it."""


def principle_rows(source: str, labels: Labels, constitution: str | None = None) -> PrincipleRows:
    """Each record's per-principle verdicts as examples: the principle's rule shown with the
    conversation (``charter.principled.with_principle``), chosen/rejected by its p_a (with
    ``p_chosen`` for soft labels). Ties and position-inconsistent verdicts name no better
    answer and are left out (counted); ``constitution`` is the file the labels were judged
    under, when the records' own name is not a built-in."""
    if labels == "human":
        raise ConfigError(
            "--principle-conditioned trains on each principle's verdict; a human choice names "
            "no principle: use --labels soft or hard on label output"
        )
    left: Counter[str] = Counter()
    judged: list[tuple[str, Row, list[Any]]] = []
    under: dict[str, str] = {}
    for where, row in _rows(source):
        entries = row.get("per_principle")
        if not isinstance(entries, list) or not entries:
            left["no_verdicts"] += 1
            continue
        name, digest = row.get("constitution"), row.get("constitution_hash")
        if not isinstance(name, str) or not isinstance(digest, str):
            raise InputError(
                f"{where}: per_principle verdicts without 'constitution' and "
                "'constitution_hash': train --principle-conditioned on charter label output"
            )
        under.setdefault(digest, name)
        judged.append((where, row, entries))
    if not judged:
        raise InputError(
            f"{source}: no per-principle verdicts to train on (charter label output of a "
            "judge asked under a constitution has them; a reward model's labels do not)"
        )
    if len(under) > 1:
        names = ", ".join(f"{n} ({h})" for h, n in under.items())
        raise InputError(
            f"{source}: labelled under {len(under)} constitutions ({names}): train on the "
            "labels of one"
        )
    ((digest, name),) = under.items()
    found = labelled_under(source, name, digest, constitution)
    rows: list[Row] = []
    for where, row, entries in judged:
        messages = row_prompt(row, where)[0]
        for field_name in ("response_a", "response_b"):
            if not isinstance(row.get(field_name), str):
                raise InputError(f"{where}: per-principle verdicts need '{field_name}'")
        a, b = _answer(row["response_a"]), _answer(row["response_b"])
        for entry in entries:
            principle_id = entry.get("principle_id") if isinstance(entry, dict) else None
            p = entry.get("p_a") if isinstance(entry, dict) else None
            if not isinstance(principle_id, str) or isinstance(p, bool):
                raise InputError(f"{where}: a per_principle entry needs principle_id and p_a")
            if not isinstance(p, int | float) or not 0.0 <= p <= 1.0:
                raise InputError(f"{where}: {principle_id}: 'p_a' must be in [0, 1] (got {p!r})")
            if "+" in principle_id:
                left["together"] += 1
                continue
            if principle_id not in {q.id for q in found.principles}:
                raise InputError(
                    f"{where}: principle {principle_id!r} is not in constitution {found.name!r}"
                )
            if abs(p - 0.5) < TIE_TOLERANCE:
                left["tie"] += 1
                continue
            if entry.get("position_consistent") is False:
                left["inconsistent"] += 1
                continue
            rule = found.principle(principle_id).rule
            chosen, rejected = (a, b) if p > 0.5 else (b, a)
            out: Row = {
                "prompt": _chat(with_principle(messages, rule)),
                "chosen": chosen,
                "rejected": rejected,
            }
            if labels == "soft":
                out["p_chosen"] = float(max(p, 1.0 - p))
            rows.append(out)
    for why, n in left.items():
        log.info("%s: left out %d %s", source, n, LEFT_OUT[why])
    _nonempty(rows, source, "per-principle verdicts that name a better answer", sum(left.values()))
    return PrincipleRows(rows, found, dict(left))


def labelled_under(source: str, name: str, digest: str, given: str | None) -> Constitution:
    """The constitution whose principles' texts go with the verdicts: ``given`` (which must
    be the one the records name, by content), else the built-in of that name, unchanged."""
    if given is not None:
        found = load_constitution(given)
        if found.hash != digest:
            raise ConfigError(
                f"--constitution {given} ({found.name}, {found.hash}) is not the constitution "
                f"{source} was labelled under ({name}, {digest}): give that one"
            )
        return found
    if name not in builtin_names():
        raise ConfigError(
            f"{source} was labelled under constitution {name!r}, not a built-in: give its file "
            "as --constitution FILE (the principles' texts are part of the model's input)"
        )
    found = load_constitution(name)
    if found.hash != digest:
        raise ConfigError(
            f"{source} was labelled under {name!r} as it was then ({digest}); the built-in is "
            f"now {found.hash}: give the file it was labelled with as --constitution FILE"
        )
    return found
