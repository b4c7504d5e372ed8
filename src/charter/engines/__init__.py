"""Engines run a stage spec over an input into an output, with the same guarantees wherever
the work runs. ``local`` (this process, asyncio) is the default; ``ray`` runs shards on the
workers of a Ray cluster; ``--engine`` chooses."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

from charter.config import EngineOptions, StageOptions
from charter.engines.base import RunSummary
from charter.errors import ConfigError

if TYPE_CHECKING:
    from charter.stages.spec import StageSpec


class Engine(Protocol):
    """Runs one stage: every input id ends exactly once in the output or the failed file, a
    re-run resumes, one writer per output, settings checked (``charter.fingerprint``)."""

    name: str

    async def run(
        self,
        spec: StageSpec,
        opts: StageOptions,
        engine: EngineOptions,
        *,
        progress: bool = False,
        report: Callable[[RunSummary], None] | None = None,
    ) -> RunSummary: ...


def get_engine(name: str) -> Engine:
    if name == "local":
        from charter.engines.local import LocalEngine

        return LocalEngine()
    if name == "ray":
        from charter.engines.ray import RayEngine

        return RayEngine()
    raise ConfigError(f"no engine {name!r}; engines: local, ray")
