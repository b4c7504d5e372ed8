"""Reading preference pairs for labelling.

A row gives one pair (``response_a``/``response_b``; ``chosen``/``rejected`` in HH-RLHF or TRL
form; ``initial``/``final`` from ``charter revise``) or several answers to choose pairs from
(``responses`` from ``charter respond --n K``). Rows that name ``response_a``/``response_b``
keep that order; otherwise a seeded coin per pair decides which answer is A, so a human's
choice (kept aside as ``human_choice``) cannot leak through position.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict

from charter.config import PairMode
from charter.errors import InputError
from charter.io import OnInvalid, RowIds, chat_messages, row_prompt, split_pair, valid_rows
from charter.seeds import derive_rng
from charter.types import Message

if TYPE_CHECKING:
    from charter.engines.base import RunSummary

log = logging.getLogger("charter")


class PairRecord(BaseModel):
    """Two answers to one conversation, to be compared."""

    model_config = ConfigDict(extra="forbid")

    id: str
    """Pair id: the row id, or ``ROWID:i-j`` for pairs drawn from several answers."""
    messages: list[Message]
    """The conversation both answers reply to."""
    response_a: str
    """Shown as (A) in the original order."""
    response_b: str
    """Shown as (B) in the original order."""
    a_source: str
    """Where A came from (``chosen``, ``rejected``, ``initial``, ``final``, ``responses[2]``,
    ``responses[1] (MODEL)`` from a respond run with several models...)."""
    b_source: str
    """Where B came from."""
    human_choice: Literal["a", "b"] | None = None
    """The answer a human preferred, if the input says (None for a human tie too); never
    shown to the judge."""


def _answer_text(value: Any, where: str, field: str) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, list) and value:
        msgs = chat_messages(value, where, field)
        return msgs[-1].content
    raise InputError(f"{where}: field {field!r} must be a string or a list of messages")


def chosen_rejected(row: dict[str, Any], where: str) -> tuple[list[Message], str, str]:
    """(prompt, chosen answer, rejected answer) of a row in any chosen/rejected form."""
    chosen, rejected = row["chosen"], row["rejected"]
    if row.get("prompt") is None and row.get("messages") is None:
        if isinstance(chosen, str) and isinstance(rejected, str):
            try:
                return split_pair(chosen, rejected)  # HH-RLHF transcripts
            except ValueError as e:
                raise InputError(f"{where}: {e}") from e
        if isinstance(chosen, list) and isinstance(rejected, list):  # TRL implicit prompt
            a, b = (
                chat_messages(chosen, where, "chosen"),
                chat_messages(rejected, where, "rejected"),
            )
            shared = [x for x, y in zip(a[:-1], b[:-1], strict=False) if x == y]
            if not shared or a[: len(shared)] != shared or shared[-1].role != "user":
                raise InputError(f"{where}: chosen and rejected share no prompt conversation")
            return shared, a[-1].content, b[-1].content
        raise InputError(f"{where}: chosen/rejected need a prompt, or must be transcripts")
    messages, _ = row_prompt(row, where)
    return (
        messages,
        _answer_text(chosen, where, "chosen"),
        _answer_text(rejected, where, "rejected"),
    )


def _candidates(
    row: dict[str, Any], where: str
) -> tuple[list[Message], list[tuple[str, str]], str | None]:
    """(conversation, [(source, answer)...], which source a human preferred)."""
    if row.get("response_a") is not None and row.get("response_b") is not None:
        messages, _ = row_prompt(row, where)
        human = row.get("human_choice")
        if human not in (None, "a", "b", "tie"):
            raise InputError(f"{where}: human_choice must be 'a', 'b' or 'tie'")
        if human == "tie":
            human = None  # a tie names no better answer: carried as none, as merge writes it
        answers = [
            ("response_a", _answer_text(row["response_a"], where, "response_a")),
            ("response_b", _answer_text(row["response_b"], where, "response_b")),
        ]
        preferred = None if human is None else f"response_{human}"
        return messages, answers, preferred
    if row.get("chosen") is not None and row.get("rejected") is not None:
        messages, chosen, rejected = chosen_rejected(row, where)
        return messages, [("chosen", chosen), ("rejected", rejected)], "chosen"
    if isinstance(row.get("initial"), str) and isinstance(row.get("final"), str):
        messages, _ = row_prompt(row, where)
        return messages, [("initial", row["initial"]), ("final", row["final"])], None
    if isinstance(row.get("responses"), list):
        messages, _ = row_prompt({k: v for k, v in row.items() if k != "responses"}, where)
        models = row.get("models")
        if not (isinstance(models, list) and len(models) == len(row["responses"])):
            models = None
        answers = [
            (
                f"responses[{i}]" + (f" ({models[i]})" if models else ""),
                _answer_text(r, where, f"responses[{i}]"),
            )
            for i, r in enumerate(row["responses"])
        ]
        return messages, answers, None
    raise InputError(
        f"{where}: row has no answers to compare (need response_a/response_b, chosen/rejected, "
        "initial/final or a responses list)"
    )


def read_pairs(
    source: str | Path,
    *,
    mode: PairMode = "all",
    seed: int = 0,
    on_invalid: OnInvalid | None = None,
    on_no_pair: Callable[[str], None] | None = None,
) -> Iterator[PairRecord]:
    """Stream pairs. Rows with fewer than two distinct answers give no pair; ``on_no_pair`` is
    told where each such row is, so a run can say how many it dropped."""
    ids = RowIds()

    def convert(where: str, row: dict[str, Any]) -> list[PairRecord]:
        messages, answers, preferred = _candidates(row, where)
        row_id = ids(row, where, messages, *(a for _, a in answers))
        pairs = list(_pairs(row_id, messages, answers, preferred, mode, seed))
        if not pairs and on_no_pair is not None:
            on_no_pair(where)
        return pairs

    for pairs in valid_rows(source, on_invalid, convert):
        yield from pairs


def _pairs(
    row_id: str,
    messages: list[Message],
    answers: list[tuple[str, str]],
    preferred: str | None,
    mode: PairMode,
    seed: int,
) -> Iterator[PairRecord]:
    distinct = [a for i, a in enumerate(answers) if all(a[1] != b[1] for b in answers[:i])]
    if len(distinct) < 2:
        return
    indices = list(range(len(distinct)))
    if mode == "adjacent":
        combos = list(itertools.pairwise(indices))
    elif mode == "random":
        i, j = sorted(derive_rng(seed, row_id, "pair").sample(indices, 2))
        combos = [(i, j)]
    else:
        combos = list(itertools.combinations(indices, 2))
    single = len(answers) == 2 and len(combos) == 1
    for i, j in combos:
        pid = row_id if single else f"{row_id}:{i}-{j}"
        first, second = distinct[i], distinct[j]
        # The user's own A/B order is kept; elsewhere a seeded coin picks which answer is A,
        # so a human's pick (chosen/rejected) or a revision (initial/final) cannot leak
        # through position.
        explicit = first[0] == "response_a" and second[0] == "response_b"
        if not explicit and derive_rng(seed, pid, "order").random() < 0.5:
            first, second = second, first
        human: Literal["a", "b"] | None = None
        if preferred is not None:
            human = "a" if first[0] == preferred else "b" if second[0] == preferred else None
        yield PairRecord(
            id=pid,
            messages=messages,
            response_a=first[1],
            response_b=second[1],
            a_source=first[0],
            b_source=second[0],
            human_choice=human,
        )


class PairReader:
    """Reads the pairs of a stage's input (label, score --mode relative, probe) and counts
    the rows that gave none."""

    def __init__(self, source: str, mode: PairMode, seed: int) -> None:
        self.source = source
        self.mode: PairMode = mode
        self.seed = seed
        self.no_pair: list[str] = []

    def __call__(self, on_invalid: OnInvalid | None) -> Iterator[PairRecord]:
        self.no_pair.clear()
        return read_pairs(
            self.source,
            mode=self.mode,
            seed=self.seed,
            on_invalid=on_invalid,
            on_no_pair=self.no_pair.append,
        )

    def report(self, summary: RunSummary) -> None:
        """Say how many rows had nothing to compare; fail when no row had anything."""
        if not self.no_pair:
            return
        n = len(self.no_pair)
        first = self.no_pair[0]
        if summary.written + summary.skipped + summary.failed == 0:
            raise InputError(
                f"{self.source}: no pair to judge: all {n:,} row(s) have fewer than two "
                f"distinct answers (first: {first})"
            )
        log.warning(
            "%d input row(s) have fewer than two distinct answers and gave no pair (first: %s)",
            n,
            first,
        )
