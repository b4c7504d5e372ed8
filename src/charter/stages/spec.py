"""One declaration per stage: what the CLI, recipes, ``charter.run`` and every engine use.

A stage module holds its record types, its work function (one record in, one out), its
options model and a ``SPEC``; ``charter.registry`` lists the specs. ``prepare`` turns options
into what an engine needs (``charter.engines.base.Prepared``): it loads and checks the
stage's files (constitution, rubric...) without calling any model, so a recipe can check every
stage before running any.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from charter.config import StageOptions
from charter.engines.base import Prepared


@dataclass(frozen=True)
class StageSpec:
    """A stage, declared once."""

    name: str
    """The CLI command, recipe ``stage:`` and ``charter.run`` name."""
    options: type[StageOptions]
    """Its options: CLI flags, recipe keys and ``charter.run`` keywords."""
    prepare: Callable[[Any], Prepared]
    """Options -> what an engine runs (checks the stage's files; calls no model)."""
    help: str = ""
    """One line for ``charter --help``."""
    complete: Callable[[dict[str, Any]], dict[str, Any]] | None = None
    """Option values -> the same with the values the library computes when they are not
    given (probe's default output name); the CLI, recipes and ``charter.run`` all call it."""
