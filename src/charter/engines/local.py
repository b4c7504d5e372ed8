"""The local engine: one process, asyncio. Records stream through a stage's work function
with a bounded in-flight window; results are appended as they finish, failures go to a side
file, and a re-run resumes by skipping ids already written."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import itertools
import json
import logging
import os
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any, Generic, TypeVar

from pydantic import BaseModel

from charter.cache import DEFAULT_NAME, RequestCache
from charter.config import StageOptions
from charter.engines.base import (
    HasId,
    ModelFactory,
    OutputPaths,
    RunStats,
    RunSummary,
    check_distinct,
    check_outputs,
    report_stale,
)
from charter.errors import (
    BackendFatalError,
    BackendUnavailable,
    CharterError,
    ConfigError,
    InputError,
)
from charter.fingerprint import check_and_record, defaults_of
from charter.io import JsonlWriter, OnInvalid, count_rows, jsonl_to_parquet, read_done, read_ids
from charter.progress import RunProgress
from charter.records import FailedRecord
from charter.stages.spec import StageSpec

log = logging.getLogger("charter")
R = TypeVar("R", bound=HasId)


def is_fatal(e: BaseException) -> bool:
    """Errors that would fail every remaining record stop the run instead."""
    if isinstance(e, (BackendFatalError, BackendUnavailable, ConfigError, InputError)):
        return True
    return not isinstance(e, CharterError)


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
        in_flight: dict[asyncio.Task[BaseModel], tuple[R, str]] = {}
        completed = False
        bad_input: InputError | None = None
        try:
            stream = iter(records)
            while True:
                try:
                    record = next(stream)
                except StopIteration:
                    break
                except InputError as e:
                    # Finish what is already in flight, then report the bad row.
                    bad_input = e
                    break
                digest = input_hash(record)
                if record.id in done:
                    # ids are unique in the input: never needed again
                    previous = done.pop(record.id)
                    if previous is not None and previous != digest:
                        stats.changed.append(record.id)
                    stats.skipped += 1
                    if self.on_skip is not None:
                        self.on_skip()
                    continue
                in_flight[asyncio.ensure_future(self.work(record))] = (record, digest)
                if len(in_flight) >= self.window:
                    await self._drain(in_flight, writer, failed, stats)
            while in_flight:
                await self._drain(in_flight, writer, failed, stats)
            if bad_input is not None:
                raise bad_input
            completed = True
            if complete:
                stats.orphans = list(done)
        finally:
            for task in in_flight:
                task.cancel()
            if in_flight:
                await asyncio.gather(*in_flight, return_exceptions=True)
            writer.close()
            failed.close()
            _compact_failed(self.paths.failed, self.paths.work)
            stats.seconds = time.perf_counter() - start
        if completed and self.paths.work != self.paths.out:
            jsonl_to_parquet(self.paths.work, self.paths.out)
        return stats

    async def _drain(
        self,
        in_flight: dict[asyncio.Task[BaseModel], tuple[R, str]],
        writer: JsonlWriter,
        failed: JsonlWriter,
        stats: RunStats,
    ) -> None:
        finished, _ = await asyncio.wait(in_flight, return_when=asyncio.FIRST_COMPLETED)
        fatal: BaseException | None = None
        for task in finished:
            record, digest = in_flight.pop(task)
            exc = task.exception()
            if exc is None:
                writer.write(task.result(), input_hash=digest)
                stats.written += 1
            elif is_fatal(exc):
                fatal = fatal or exc  # write what else finished, then stop the run
                continue
            else:
                failed.write(
                    FailedRecord(
                        id=record.id,
                        stage=self.name,
                        error=" ".join(str(exc).split()),
                        error_type=type(exc).__name__,
                        input=record.model_dump(mode="json"),
                    )
                )
                stats.failed += 1
            if self.on_result is not None:
                self.on_result(exc is None)
        if fatal is not None:
            raise fatal


def _compact_failed(failed: Path, work: Path) -> None:
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


async def _ticker(bar: RunProgress, every: float) -> None:
    while True:
        await asyncio.sleep(every)
        bar.log_line()


def _progress_every() -> float:
    try:
        return max(0.1, float(os.environ.get("CHARTER_PROGRESS_EVERY", "10")))
    except ValueError:
        return 10.0


def _limited(records: Iterator[Any], limit: int | None) -> Iterator[Any]:
    return records if limit is None else itertools.islice(records, limit)


def _remove_if_empty(paths: OutputPaths) -> None:
    """A run that stopped before writing anything (a bad model spec, the input not found...)
    leaves no empty output behind. Only under the output's lock again: if another process has
    taken it meanwhile, the file is its own."""
    try:
        writer = JsonlWriter(paths.work, exclusive=True)
    except ConfigError:
        return
    try:
        if paths.work.stat().st_size == 0:
            paths.work.unlink()
            paths.settings.unlink(missing_ok=True)
    finally:
        writer.close()


class LocalEngine:
    """Runs a stage in this process: the default (``--engine local``)."""

    name = "local"

    async def run(
        self,
        spec: StageSpec,
        opts: StageOptions,
        *,
        progress: bool = False,
        report: Callable[[RunSummary], None] | None = None,
    ) -> RunSummary:
        """Check the paths, lock the output, check it was made with these settings, open the
        cache, build the stage's work, run it over the input (with a progress bar or lines
        when ``progress``), hand the summary to ``report``, then let the stage finish."""
        prepared = spec.prepare(opts)
        paths = OutputPaths.for_output(opts.output)
        cache_path: Path | None = None
        if not opts.no_cache:
            cache_path = opts.cache or paths.out.parent / DEFAULT_NAME
        targets: list[Path] = list(paths.files) + list(prepared.extra_outputs)
        if cache_path is not None:
            targets.append(cache_path)
        check_outputs([opts.input], targets)
        check_distinct(targets, paths.out)
        total = count_rows(opts.input) if Path(opts.input).is_file() else None
        if total is not None and opts.limit is not None:
            total = min(total, opts.limit)
        rejected = 0
        # The lock comes first: a refused second process must not touch any file of the first.
        existed = paths.work.exists()
        writer = JsonlWriter(paths.work, exclusive=True)
        try:
            async with AsyncExitStack() as stack:
                stack.callback(writer.close)  # closing twice is harmless; the pipeline closes it
                check_and_record(
                    paths.settings,
                    prepared.settings,
                    has_records=paths.work.exists() and paths.work.stat().st_size > 0,
                    force=opts.force,
                    output=paths.out,
                    defaults=defaults_of(opts),
                )
                on_invalid: OnInvalid | None = None
                if opts.skip_invalid:
                    paths.rejects.unlink(missing_ok=True)  # rebuilt from the input on every run
                    rejects = JsonlWriter(paths.rejects)
                    stack.callback(rejects.close)

                    def on_invalid(error: InputError, row: object) -> None:
                        nonlocal rejected
                        rejected += 1
                        rejects.write({"error": str(error), "row": row})

                cache = RequestCache(cache_path) if cache_path is not None else None
                if cache is not None:
                    stack.callback(cache.close)
                factory = ModelFactory(opts, cache)
                try:
                    work = prepared.build(factory)
                finally:
                    for m in factory.models:
                        stack.push_async_callback(m.aclose)
                tokens = lambda: sum(m.usage.total_tokens for m in factory.models)  # noqa: E731
                with RunProgress(spec.name, total, tokens, enabled=progress) as bar:
                    ticker = None
                    if progress and not bar.is_terminal:
                        ticker = asyncio.ensure_future(_ticker(bar, _progress_every()))
                    try:
                        pipeline: Pipeline[Any] = Pipeline(
                            spec.name,
                            work,
                            paths,
                            window=max(2 * opts.concurrency, 8),
                            on_result=bar.advance,
                            on_skip=bar.skip_one,
                        )
                        stats = await pipeline.run(
                            _limited(prepared.read(on_invalid), opts.limit),
                            writer=writer,
                            complete=opts.limit is None,
                        )
                    finally:
                        if ticker is not None:
                            ticker.cancel()
        except BaseException:
            if not existed:
                _remove_if_empty(paths)
            raise
        summary = RunSummary(
            stage=spec.name,
            output=paths.out,
            **dataclasses.asdict(stats),
            rejected=rejected,
            models=factory.usage(),
            failed_file=paths.failed if paths.failed.exists() else None,
            rejects_file=paths.rejects if rejected else None,
        )
        if report is not None:
            report(summary)
        report_stale(summary)
        if stats.failed and not stats.written and not stats.skipped:
            log.warning(
                "every record failed (%d); the reasons are in %s", stats.failed, paths.failed
            )
        if prepared.finish is not None:
            prepared.finish(summary, paths)
        return summary
