"""Near-duplicates merged by a model (``--dedupe-model``): each candidate statement, in
order of consensus, is shown with those already kept, and the model says which one, if any,
it restates. Requests go through the request cache, so a re-run asks nothing again."""

from __future__ import annotations

import re

from charter.errors import BackendError
from charter.model import Model
from charter.polis.analysis import CANDIDATE, Statement, choose, rank
from charter.prompts import render
from charter.types import GenerateConfig, Message


def read_choice(text: str, count: int) -> int:
    """The number the model replied (0: none of them). ValueError says what is wrong."""
    # The whole reply, not a number found somewhere in it: an echo of the prompt (which
    # numbers the statements) must not read as an answer.
    match = re.fullmatch(r"\s*(?:statement\s*)?(\d+)\s*\.?\s*", text, re.IGNORECASE)
    if match is None:
        raise ValueError(f"not a number: {' '.join(text.split())[:60]!r}")
    number = int(match.group(1))
    if number > count:
        raise ValueError(f"the reply names statement {number} of {count}")
    return number


async def merge_by_model(
    model: Model,
    statements: list[Statement],
    *,
    min_consensus: float | None,
    top: int | None,
    seed: int,
) -> list[str]:
    """Choose the kept statements again, merging each candidate the model finds to restate
    one already kept. Returns notes on replies that could not be read (the statement is then
    kept apart)."""
    config = GenerateConfig(temperature=0.0, max_tokens=8, seed=seed)
    notes: list[str] = []
    kept: list[Statement] = []
    for s in sorted(statements, key=rank):
        if s.status not in CANDIDATE:
            continue
        s.status = "kept"
        if min_consensus is not None and s.consensus < min_consensus:
            continue
        if top is not None and len(kept) >= top:
            continue
        if kept:
            prompt = render(
                "polis_same", statement=s.comment.text, chosen=[k.comment.text for k in kept]
            )
            try:
                reply = await model.generate([Message(role="user", content=prompt)], config)
                number = read_choice(reply.text, len(kept))
            except (ValueError, BackendError) as e:
                notes.append(f"statement {s.comment.id}: {' '.join(str(e).split())}")
                number = 0
            if number:
                same = kept[number - 1]
                s.status, s.duplicate_of = "duplicate", same.comment.id
                same.duplicates.append(s.comment.id)
                continue
        kept.append(s)
    choose(statements, min_consensus=min_consensus, top=top)
    return notes
