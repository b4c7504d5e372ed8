"""Prompt templates (jinja2 data files), one per task, in our own words."""

from __future__ import annotations

import hashlib
from functools import cache
from importlib import resources
from typing import Any

import jinja2


@cache
def _env() -> jinja2.Environment:
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


@cache
def templates_hash() -> str:
    """Content hash of every prompt template: records made with other templates (another
    charter version) are other records."""
    folder = resources.files("charter") / "prompts"
    digest = hashlib.sha256()
    for entry in sorted(folder.iterdir(), key=lambda e: e.name):
        if entry.name.endswith(".j2"):
            digest.update(entry.name.encode() + b"\0" + entry.read_bytes() + b"\0")
    return "sha256:" + digest.hexdigest()[:16]
