"""``charter.run``: any stage from Python, with the CLI's option names (underscored)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from pydantic import BaseModel, ValidationError

from charter.engines import get_engine
from charter.engines.base import RunSummary
from charter.errors import ConfigError
from charter.registry import find_stage
from charter.stages.spec import StageSpec
from charter.validation import describe_validation

if TYPE_CHECKING:
    from charter.recipe import FileSummary


OptionsT = TypeVar("OptionsT", bound=BaseModel)


def options(stage: str, cls: type[OptionsT], values: dict[str, Any]) -> OptionsT:
    """A stage's typed options from keywords; a bad value is a ConfigError naming the field."""
    try:
        return cls(**values)
    except ValidationError as e:
        raise ConfigError(f"{stage}: {describe_validation(e)}") from e


async def arun(
    stage: str,
    *,
    progress: bool = False,
    report: Callable[[Any], None] | None = None,
    **values: Any,
) -> RunSummary | FileSummary:
    """Run ``stage`` with the given options: respond, revise, label, score, deliberate or
    probe on their engine (``engine="local"`` by default), returning a ``RunSummary``;
    route or select in one pass, returning their own summary. Prints nothing unless
    ``progress`` is set (a bar, for the engine's stages) or ``report`` given (called with the
    summary); logs through the ``charter`` logger."""
    spec = find_stage(stage)
    if isinstance(spec, StageSpec):
        opts = options(stage, spec.options, values)
        engine = get_engine(opts.engine)
        return await engine.run(spec, opts, progress=progress, report=report)
    summary = await asyncio.to_thread(spec.run, options(stage, spec.options, values))
    if report is not None:
        report(summary)
    return summary


def run(stage: str, **values: Any) -> RunSummary | FileSummary:
    """``arun`` for code that is not async; inside a running event loop use ``await arun``."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(arun(stage, **values))
    raise ConfigError("charter.run was called inside a running event loop: use await charter.arun")
