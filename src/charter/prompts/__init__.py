"""Prompt templates (jinja2 data files), one per task, in our own words."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from functools import cache
from importlib import resources
from typing import TYPE_CHECKING, Any

from charter.types import Message

if TYPE_CHECKING:
    import jinja2


@cache
def _env() -> jinja2.Environment:
    import jinja2  # only when a prompt is rendered: not on start-up paths such as --help

    return jinja2.Environment(
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=False,
        autoescape=False,  # plain text for models, not HTML
    )


@cache
def template(name: str) -> jinja2.Template:
    text = (resources.files("charter") / "prompts" / f"{name}.j2").read_text(encoding="utf-8")
    return _env().from_string(text)


def render(name: str, **context: Any) -> str:
    """Render ``prompts/<name>.j2``; a missing variable is an error, never a blank."""
    return template(name).render(**context).strip()


OWN_TEMPLATES: dict[str, tuple[str, ...]] = {
    "deliberate": ("deliberate_answer", "deliberate_criterion", "deliberate_system"),
    "respond --turns": ("user_turn",),
    "constitution from-polis --rewrite-with": ("polis_principle",),
    "constitution from-polis --dedupe-model": ("polis_same",),
}
"""Templates that only one stage (or mode) reads. Each is left out of ``templates_hash()`` and
hashed into that stage's own settings instead (``templates_hash(*names)``), so a template
added for one stage does not change every other stage's settings (and refuse their resume)."""


@cache
def templates_hash(*names: str) -> str:
    """Content hash of the prompt templates: of ``names``, or, without names, of every
    template but ``OWN_TEMPLATES``. Records made with other templates (another charter
    version) are other records."""
    folder = resources.files("charter") / "prompts"
    own = {f"{n}.j2" for group in OWN_TEMPLATES.values() for n in group}
    wanted = {f"{n}.j2" for n in names}
    digest = hashlib.sha256()
    for entry in sorted(folder.iterdir(), key=lambda e: e.name):
        if not entry.name.endswith(".j2"):
            continue
        if (entry.name in wanted) if names else (entry.name not in own):
            digest.update(entry.name.encode() + b"\0" + entry.read_bytes() + b"\0")
    return "sha256:" + digest.hexdigest()[:16]


def render_conversation(messages: Sequence[Message]) -> str:
    """A conversation as the text a judge reads (``User: ...`` / ``Assistant: ...``)."""
    names = {"system": "System", "user": "User", "assistant": "Assistant"}
    return "\n\n".join(f"{names[m.role]}: {m.content}" for m in messages)


def delimiter_tag(*texts: str) -> str:
    """A tag derived from the texts themselves, so none of them can contain its own closing
    marker (it would have to contain a hash of itself)."""
    salt = 0
    while True:
        material = "\x00".join([str(salt), *texts]).encode()
        tag = "#" + hashlib.sha256(material).hexdigest()[:10]
        if not any(tag in t for t in texts):
            return tag
        salt += 1
