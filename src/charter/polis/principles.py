"""Kept statements into principles: by a fixed template, or rewritten by a model
(``--rewrite-with``) through the request cache, so a re-run asks only what is not cached."""

from __future__ import annotations

import asyncio
import json
import re
from dataclasses import dataclass

from charter.constitution import Constitution, GroupVotes, Principle, Provenance
from charter.errors import BackendError
from charter.model import Model
from charter.polis.analysis import Analysis, Statement
from charter.prompts import render
from charter.types import GenerateConfig, Message

FIELDS = ("critique_request", "revision_request", "comparison_question")


def templated(statement: str) -> dict[str, str]:
    """The three requests for ``statement`` by charter's template (no model asked)."""
    quoted = f"“{statement}”"
    return {
        "critique_request": (
            f"People across opinion groups in a public consultation agreed with this statement: "
            f"{quoted} Point out any way the last answer goes against it, or ignores it "
            "where it applies."
        ),
        "revision_request": (
            f"Rewrite the answer so that it is in keeping with the statement {quoted} where the "
            "statement bears on the request; leave the rest of the answer as it is."
        ),
        "comparison_question": f"Which answer is more in keeping with the statement {quoted}?",
    }


@dataclass
class Rewrite:
    """A model's rewrite of one statement, or why there is none (the template is used)."""

    fields: dict[str, str] | None
    error: str | None = None


def parse_rewrite(text: str) -> dict[str, str]:
    """The three fields from a model's reply: one JSON object, possibly fenced or with words
    around it. ValueError says what is wrong."""
    match = re.search(r"\{.*\}", text, re.DOTALL)
    if match is None:
        raise ValueError("no JSON object in the reply")
    try:
        data = json.loads(match.group(0))
    except json.JSONDecodeError as e:
        raise ValueError(f"not valid JSON: {e.msg}") from e
    if not isinstance(data, dict):
        raise ValueError("the reply is not a JSON object")
    fields = {}
    for name in FIELDS:
        value = data.get(name)
        if not isinstance(value, str) or not value.strip():
            raise ValueError(f"{name}: missing or empty")
        fields[name] = " ".join(value.split())
    return fields


async def rewrite_all(
    model: Model, statements: list[str], *, seed: int, max_tokens: int = 400
) -> list[Rewrite]:
    """Each statement rewritten into principle form by ``model`` (temperature 0, ``seed``).
    A reply that cannot be read, or a request that failed for good, is recorded with its
    reason; the caller falls back to the template for it."""
    config = GenerateConfig(temperature=0.0, max_tokens=max_tokens, seed=seed)

    async def one(statement: str) -> Rewrite:
        prompt = render("polis_principle", statement=statement)
        try:
            reply = await model.generate([Message(role="user", content=prompt)], config)
            return Rewrite(parse_rewrite(reply.text))
        except (ValueError, BackendError) as e:
            return Rewrite(None, " ".join(str(e).split()))

    return list(await asyncio.gather(*(one(s) for s in statements)))


def principle_for(s: Statement, fields: dict[str, str], source: str) -> Principle:
    return Principle(
        id=f"polis-{s.comment.id}",
        statement=s.comment.text,
        tags=("polis",),
        provenance=Provenance(
            source=source,
            comment_ids=s.comment_ids,
            text=s.comment.text,
            agrees=s.total.agrees,
            disagrees=s.total.disagrees,
            passes=s.total.passes,
            consensus=round(s.consensus, 6),
            groups={
                g: GroupVotes(agrees=c.agrees, disagrees=c.disagrees, passes=c.passes)
                for g, c in s.groups.items()
            },
        ),
        **fields,
    )


def build_constitution(
    analysis: Analysis,
    *,
    name: str,
    description: str,
    source: str,
    rewrites: dict[str, Rewrite] | None = None,
) -> Constitution:
    """The constitution of the kept statements, in order of consensus. ``rewrites``: by
    comment id; a statement without a usable rewrite takes the template."""
    principles = []
    for s in analysis.kept:
        rewrite = (rewrites or {}).get(s.comment.id)
        fields = rewrite.fields if rewrite and rewrite.fields else templated(s.comment.text)
        principles.append(principle_for(s, fields, source))
    return Constitution(name=name, description=description, principles=tuple(principles))
