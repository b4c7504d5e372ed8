"""Every stage charter runs, by name: the one list the CLI, recipes and ``charter.run`` read.
A new stage is a module with a ``SPEC`` and one line here."""

from __future__ import annotations

from typing import TYPE_CHECKING

from charter.errors import ConfigError
from charter.probe import SPEC as PROBE
from charter.stages.deliberate import SPEC as DELIBERATE
from charter.stages.label import SPEC as LABEL
from charter.stages.respond import SPEC as RESPOND
from charter.stages.revise import SPEC as REVISE
from charter.stages.score import SPEC as SCORE
from charter.stages.spec import StageSpec

if TYPE_CHECKING:
    from charter.recipe import FileStage

STAGES: dict[str, StageSpec] = {
    spec.name: spec for spec in (RESPOND, REVISE, LABEL, SCORE, DELIBERATE, PROBE)
}


def get_stage(name: str) -> StageSpec:
    try:
        return STAGES[name]
    except KeyError:
        raise ConfigError(f"no stage {name!r}; stages: {', '.join(STAGES)}") from None


def find_stage(name: str) -> StageSpec | FileStage:
    """Any stage by name: one an engine runs, or one that rewrites a file in one pass
    (``route``, ``select``: ``charter.recipe.FILE_STAGES``, loaded only for those)."""
    if name in STAGES:
        return STAGES[name]
    from charter.recipe import FILE_STAGES  # it imports this module

    if name in FILE_STAGES:
        return FILE_STAGES[name]
    raise ConfigError(f"no stage {name!r}; stages: {', '.join([*STAGES, *FILE_STAGES])}")
