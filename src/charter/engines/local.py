"""The local engine: one process, asyncio. Records stream through a stage's work function
with a bounded in-flight window; results are appended as they finish, failures go to a side
file, and a re-run resumes by skipping ids already written."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any, Generic, TypeVar

from pydantic import BaseModel

from charter.batch.runner import BatchRun, refuse_live_over_unread
from charter.config import EngineOptions, StageOptions
from charter.engines.base import (
    HasId,
    ModelFactory,
    OutputPaths,
    RunStats,
    RunSummary,
)
from charter.engines.run import open_cache, start_run
from charter.engines.window import run_window
from charter.errors import ConfigError
from charter.io import JsonlWriter, jsonl_to_parquet, read_done, read_ids
from charter.records import FailedRecord
from charter.stages.spec import StageSpec

log = logging.getLogger("charter")
R = TypeVar("R", bound=HasId)

BATCH_WINDOW = 50_000
"""Records in flight with --batch: each round of batches holds their requests (50,000 is
OpenAI's limit on one batch file)."""


def input_hash(record: HasId) -> str:
    """Content hash of an input record, stored with its output so that a re-run can tell when
    the input row behind an id has been edited since."""
    blob = json.dumps(record.model_dump(mode="json"), sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


class Pipeline(Generic[R]):
    """Runs one stage function over a stream of records into an output.

    Record ids must be unique within the input (charter's readers guarantee it: see
    ``io.RowIds``), so only the ids already in the output are remembered, and each is dropped
    once skipped: memory does not grow with the length of a run. Each written record carries
    ``input_hash``, the hash of the input record it was made from."""

    def __init__(
        self,
        name: str,
        work: Callable[[R], Awaitable[BaseModel]],
        paths: OutputPaths,
        *,
        window: int = 64,
        on_result: Callable[[bool], None] | None = None,
        on_skip: Callable[[], None] | None = None,
    ) -> None:
        self.name = name
        self.work = work
        self.paths = paths
        self.window = max(1, window)
        self.on_result = on_result
        self.on_skip = on_skip

    async def run(
        self, records: Iterable[R], *, writer: JsonlWriter | None = None, complete: bool = True
    ) -> RunStats:
        """``writer``: the output, already opened and locked by the caller (taken over and
        closed here); ``complete``: the records are the whole input (not ``--limit``ed), so
        output ids left unmatched are orphans."""
        stats = RunStats()
        start = time.perf_counter()
        if writer is None:
            writer = JsonlWriter(self.paths.work, exclusive=True)
        try:
            done = read_done(self.paths.work)
            failed = JsonlWriter(self.paths.failed)
        except BaseException:
            writer.close()
            raise
        completed = False

        def finished(record: R, digest: str, result: BaseModel | BaseException) -> None:
            if isinstance(result, BaseException):
                failed.write(failed_record(self.name, record, result))
                stats.failed += 1
            else:
                writer.write(result, input_hash=digest)
                stats.written += 1
            if self.on_result is not None:
                self.on_result(not isinstance(result, BaseException))

        try:
            pending = skip_done(records, done, stats, self.on_skip)
            await run_window(pending, self.work, self.window, finished)
            completed = True
            if complete:
                stats.orphans = list(done)
        finally:
            writer.close()
            failed.close()
            compact_failed(self.paths.failed, self.paths.work)
            stats.seconds = time.perf_counter() - start
        if completed and self.paths.work != self.paths.out:
            jsonl_to_parquet(self.paths.work, self.paths.out)
        return stats


def skip_done(
    records: Iterable[R],
    done: dict[str, str | None],
    stats: RunStats,
    on_skip: Callable[[], None] | None = None,
) -> Iterator[tuple[R, str]]:
    """The records not yet in the output, each with its input hash. ``done`` (id -> hash of
    the input it was made from) loses each id met: ids are unique in the input, so what is
    left at the end are orphans. Edited rows already done are counted in ``stats.changed``."""
    for record in records:
        digest = input_hash(record)
        if record.id in done:
            previous = done.pop(record.id)
            if previous is not None and previous != digest:
                stats.changed.append(record.id)
            stats.skipped += 1
            if on_skip is not None:
                on_skip()
            continue
        yield record, digest


def failed_record(stage: str, record: HasId, error: BaseException) -> FailedRecord:
    return FailedRecord(
        id=record.id,
        stage=stage,
        error=" ".join(str(error).split()),
        error_type=type(error).__name__,
        input=record.model_dump(mode="json"),
    )


def compact_failed(failed: Path, work: Path) -> None:
    """Keep each failed id once (its latest failure), and none that has since succeeded."""
    if not failed.exists():
        return
    if failed.stat().st_size == 0:
        failed.unlink()
        return
    succeeded = read_ids(work)
    latest: dict[str, str] = {}
    with failed.open("r", encoding="utf-8") as f:
        for line in f:
            if not line.endswith("\n"):
                break
            try:
                rid = str(json.loads(line)["id"])
            except (json.JSONDecodeError, KeyError, TypeError):
                continue
            if rid not in succeeded:
                latest.pop(rid, None)
                latest[rid] = line
    if not latest:
        failed.unlink()
        return
    tmp = failed.with_name(failed.name + ".tmp")
    with tmp.open("w", encoding="utf-8") as f:
        f.writelines(latest.values())
    os.replace(tmp, failed)


class LocalEngine:
    """Runs a stage in this process: the default (``--engine local``)."""

    name = "local"

    async def run(
        self,
        spec: StageSpec,
        opts: StageOptions,
        engine: EngineOptions,
        *,
        progress: bool = False,
        report: Callable[[RunSummary], None] | None = None,
    ) -> RunSummary:
        """Set the run up (``charter.engines.run``), build the stage's work on one model
        factory and cache, and run it over the input in this process."""
        paths = OutputPaths.for_output(opts.output)
        batch = bool(getattr(opts, "batch", False))
        if not batch:
            refuse_live_over_unread(paths.batches)
        if batch and opts.no_cache:
            raise ConfigError(
                "--batch keeps each batch's answers in the request cache: drop --no-cache"
            )
        async with AsyncExitStack() as stack, start_run(spec, opts, paths, stack) as run:
            cache = open_cache(run.cache_path, stack)
            batches = None
            if batch and cache is not None:
                batches = BatchRun(paths.batches, cache, poll=getattr(opts, "batch_poll", 30.0))
                stack.push_async_callback(batches.aclose)  # after the models close
            factory = ModelFactory(opts, cache, run.budget(), batches)
            try:
                work = run.prepared.build(factory)
            finally:
                for m in factory.models:
                    stack.push_async_callback(m.aclose)
            if batches is not None:
                for entry in batches.unused():
                    log.warning(
                        "%s lists batch %s at %s, which no model of this run uses: it is left "
                        "alone (charter batch cancel %s cancels it)",
                        paths.batches,
                        entry.id,
                        entry.endpoint,
                        paths.out,
                    )
            tokens = lambda: sum(m.usage.total_tokens for m in factory.models)  # noqa: E731
            status = batches.describe if batches is not None else None
            with run.progress(tokens, progress, status) as bar:
                pipeline: Pipeline[Any] = Pipeline(
                    spec.name,
                    work,
                    paths,
                    # in batch mode every record waits on a batch: a round holds them all
                    window=BATCH_WINDOW if batches is not None else max(2 * factory.slots, 8),
                    on_result=bar.advance,
                    on_skip=bar.skip_one,
                )
                try:
                    stats = await pipeline.run(
                        run.records(), writer=run.writer, complete=opts.limit is None
                    )
                except BaseException:  # stopped (Ctrl-C, --max-cost...): what it spent counts
                    run.record_cost(factory.usage(), len(read_ids(paths.work)))
                    raise
        return run.finish(stats, factory.usage(), report)
