"""``charter.run``: any job in the registry from Python, with the CLI's options."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from charter.config import EngineOptions, StageOptions
from charter.engines import get_engine
from charter.errors import ConfigError
from charter.registry import FileStage, Job, Trainer, find
from charter.stages.spec import StageSpec
from charter.validation import describe_validation

OptionsT = TypeVar("OptionsT", bound=BaseModel)


Describe = Callable[[ValidationError], str]
"""How a bad value is said: the CLI names the flag, a recipe its stage."""


def options(cls: type[OptionsT], values: dict[str, Any], describe: Describe) -> OptionsT:
    """Typed options from keywords; a bad value is a ConfigError said by ``describe``."""
    try:
        return cls(**values)
    except ValidationError as e:
        raise ConfigError(describe(e)) from e


def job_options(
    job: Job, values: dict[str, Any], describe: Describe | None = None
) -> tuple[BaseModel, EngineOptions | None]:
    """A job's options from keywords (the CLI's flags, a recipe stage's keys): a stage's own,
    with the values the library computes when not given (``StageSpec.complete``), and apart
    the engine's (``EngineOptions``; only a stage runs on an engine). A bad value is a
    ConfigError said by ``describe`` (default: the job's name and the field)."""
    say = describe or (lambda e: f"{job.name}: {describe_validation(e)}")
    if not isinstance(job, StageSpec):
        return options(job.options, values, say), None
    engine = {k: v for k, v in values.items() if k in EngineOptions.model_fields}
    own = {k: v for k, v in values.items() if k not in engine}
    try:
        own = job.complete(own) if job.complete is not None else own
    except ValidationError as e:
        raise ConfigError(say(e)) from e
    where = options(EngineOptions, engine, say)
    ray_only = sorted(set(engine) - {"engine"})
    if where.engine == "local" and ray_only:  # a flag that would reach nothing
        flags = ", ".join("--" + name.replace("_", "-") for name in ray_only)
        verb = "applies" if len(ray_only) == 1 else "apply"
        raise ConfigError(f"{flags} only {verb} to --engine ray; this run is local")
    return options(job.options, own, say), where


async def run_job(
    job: Job,
    opts: BaseModel,
    engine: EngineOptions | None = None,
    *,
    progress: bool = False,
    report: Callable[[Any], None] | None = None,
) -> Any:
    """Run ``job`` with its options: a stage on its engine, a file stage or a trainer in a
    worker thread (both block). Returns the job's summary, also handed to ``report``."""
    if isinstance(job, StageSpec):
        assert isinstance(opts, StageOptions)
        engine = engine or EngineOptions()
        return await get_engine(engine.engine).run(
            job, opts, engine, progress=progress, report=report
        )
    if isinstance(job, Trainer):
        summary: Any = await asyncio.to_thread(job.run, opts, not progress)
    else:
        assert isinstance(job, FileStage)
        summary = await asyncio.to_thread(job.run, opts)
    if report is not None:
        report(summary)
    return summary


async def arun(
    stage: str,
    *,
    progress: bool = False,
    report: Callable[[Any], None] | None = None,
    **values: Any,
) -> Any:
    """Run ``stage`` (any name in ``charter.registry``: respond, revise, label, score,
    deliberate, probe on their engine, ``engine="local"`` by default, returning a
    ``RunSummary``; route, select, merge in one pass and ``train sft|reward|dpo|rl``,
    returning their own summary) with the given options. Prints nothing unless ``progress``
    is set (or ``report`` given, which is called with the summary); logs through the
    ``charter`` logger.

    ``estimate=True`` (with ``estimate_sample``, ``estimate_fill``) runs nothing: it returns
    what the job would cost (``charter.estimate.Estimate``), from a dry run of a sample that
    sends nothing and writes nothing."""
    from charter.estimate import estimate_job, split_estimate

    job = find(stage)
    estimate, values = split_estimate(values)
    opts, engine = job_options(job, values)
    if estimate.estimate:
        return await estimate_job(job, opts, estimate)
    return await run_job(job, opts, engine, progress=progress, report=report)


def run(
    stage: str,
    *,
    progress: bool = False,
    report: Callable[[Any], None] | None = None,
    **values: Any,
) -> Any:
    """``arun`` for code that is not async; inside a running event loop use ``await arun``.
    A trainer runs on this thread (TRL runs its own loops)."""
    job = find(stage)
    if isinstance(job, Trainer) and not values.get("estimate"):
        opts, _ = job_options(job, values)
        result = job.run(opts, quiet=not progress)
        if report is not None:
            report(result)
        return result
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(arun(stage, progress=progress, report=report, **values))
    raise ConfigError("charter.run was called inside a running event loop: use await charter.arun")
