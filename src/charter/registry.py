"""Every stage charter runs, by name: the one list the CLI, recipes and ``charter.run`` read.
A new stage is a module with a ``SPEC`` and one line here."""

from __future__ import annotations

from charter.errors import ConfigError
from charter.probe import SPEC as PROBE
from charter.stages.deliberate import SPEC as DELIBERATE
from charter.stages.label import SPEC as LABEL
from charter.stages.respond import SPEC as RESPOND
from charter.stages.revise import SPEC as REVISE
from charter.stages.score import SPEC as SCORE
from charter.stages.spec import StageSpec

STAGES: dict[str, StageSpec] = {
    spec.name: spec for spec in (RESPOND, REVISE, LABEL, SCORE, DELIBERATE, PROBE)
}


def get_stage(name: str) -> StageSpec:
    try:
        return STAGES[name]
    except KeyError:
        raise ConfigError(f"no stage {name!r}; stages: {', '.join(STAGES)}") from None
