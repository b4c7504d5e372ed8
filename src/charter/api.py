"""``charter.run``: any stage from Python, with the CLI's option names (underscored)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from pydantic import ValidationError

from charter.config import StageOptions
from charter.engines import get_engine
from charter.engines.base import RunSummary
from charter.errors import ConfigError
from charter.registry import get_stage
from charter.validation import describe_validation


def options(stage: str, **values: Any) -> StageOptions:
    """A stage's typed options from keywords; a bad value is a ConfigError naming the field."""
    spec = get_stage(stage)
    try:
        return spec.options(**values)
    except ValidationError as e:
        raise ConfigError(f"{stage}: {describe_validation(e)}") from e


async def arun(
    stage: str,
    *,
    progress: bool = False,
    report: Callable[[RunSummary], None] | None = None,
    **values: Any,
) -> RunSummary:
    """Run ``stage`` (respond, revise, label, score, probe) with the given options on their
    engine (``engine="local"`` by default). Prints nothing unless ``progress`` is set (or
    ``report`` given); logs through the ``charter`` logger."""
    opts = options(stage, **values)
    engine = get_engine(opts.engine)
    return await engine.run(get_stage(stage), opts, progress=progress, report=report)


def run(stage: str, **values: Any) -> RunSummary:
    """``arun`` for code that is not async; inside a running event loop use ``await arun``."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(arun(stage, **values))
    raise ConfigError("charter.run was called inside a running event loop: use await charter.arun")
