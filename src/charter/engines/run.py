"""What every engine does around the work itself: check the paths, lock the output, check it
was made with these settings, open the cache and the rejects file, show progress, and at the
end report and let the stage finish. Engines differ only in how the records are run."""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import logging
import os
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AsyncExitStack, asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from charter.budget import Budget
from charter.cache import DEFAULT_NAME, RequestCache
from charter.config import StageOptions
from charter.engines.base import (
    ModelUsage,
    OutputPaths,
    Prepared,
    RunStats,
    RunSummary,
    check_distinct,
    check_outputs,
    check_read_files,
    report_stale,
)
from charter.errors import ConfigError, InputError
from charter.fingerprint import check_and_record, defaults_of
from charter.io import JsonlWriter, OnInvalid, count_rows, part_files
from charter.ledger import Ledger, record_run, spent
from charter.progress import RunProgress
from charter.stages.spec import StageSpec

log = logging.getLogger("charter")


@dataclass
class Run:
    """One run of a stage, set up: the output is locked and its settings checked."""

    spec: StageSpec
    opts: StageOptions
    prepared: Prepared
    paths: OutputPaths
    writer: JsonlWriter
    """The locked output (for a directory output, its lock file)."""
    cache_path: Path | None
    total: int | None
    """Input rows to go through (None: not known before reading)."""
    on_invalid: OnInvalid | None = None
    rejected: int = 0

    def records(self) -> Iterator[Any]:
        """The input records (--limit applied)."""
        records = self.prepared.read(self.on_invalid)
        return records if self.opts.limit is None else itertools.islice(records, self.opts.limit)

    @contextmanager
    def progress(
        self,
        tokens: Callable[[], int],
        enabled: bool,
        status: Callable[[], str] | None = None,
    ) -> Iterator[RunProgress]:
        """One bar (or, off a terminal, a line every CHARTER_PROGRESS_EVERY seconds);
        ``status``: a line shown with it (the batches waited on)."""
        with RunProgress(self.spec.name, self.total, tokens, enabled=enabled, status=status) as bar:
            ticker = None
            if enabled and not bar.is_terminal:
                ticker = asyncio.ensure_future(_ticker(bar.log_line, _progress_every()))
            elif enabled and status is not None:  # records wait on batches: show them move
                ticker = asyncio.ensure_future(_ticker(bar.refresh, 1.0))
            try:
                yield bar
            finally:
                if ticker is not None:
                    ticker.cancel()

    def finish(
        self,
        stats: RunStats,
        models: list[ModelUsage],
        report: Callable[[RunSummary], None] | None,
    ) -> RunSummary:
        """The summary: handed to ``report``, stale records warned about, then the stage's
        own finish (summary lines, derived files)."""
        paths = self.paths
        ledger = self.record_cost(models, stats.written + stats.skipped)
        priced = ledger is not None
        summary = RunSummary(
            stage=self.spec.name,
            output=paths.out,
            **dataclasses.asdict(stats),
            rejected=self.rejected,
            models=models,
            failed_file=paths.failed if paths.failed.exists() else None,
            rejects_file=paths.rejects if self.rejected else None,
            cost=ledger.cost if ledger is not None else None,
            cost_per_1000_records=ledger.cost_per_1000_records if ledger is not None else None,
            cost_file=paths.cost if priced else None,
        )
        if report is not None:
            report(summary)
        report_stale(summary)
        if stats.failed and not stats.written and not stats.skipped:
            log.warning(
                "every record failed (%d); the reasons are in %s", stats.failed, paths.failed
            )
        if self.prepared.finish is not None:
            self.prepared.finish(summary, paths)
        return summary

    def record_cost(self, models: list[ModelUsage], records: int) -> Ledger | None:
        """Add this run's usage to the output's ledger (OUT.cost.json): at the end of a run,
        and when it stops early (Ctrl-C, --max-cost), whose spend counts too. Written once a
        model of the output has a price (a run of local or mock models alone writes none);
        None when there is none."""
        if all(m.prices is None for m in models) and not self.paths.cost.exists():
            return None
        return record_run(
            self.paths.cost,
            stage=self.spec.name,
            output=self.paths.out,
            records=records,
            models=[(m.name, m.usage, m.prices) for m in models],
        )

    def budget(self) -> Budget | None:
        """The run's --max-cost, with what earlier runs spent on the output (its ledger)."""
        cap = self.opts.max_cost
        if cap is None:
            return None
        return Budget(cap=cap, earlier=spent(self.paths.cost), output=self.paths.out)


@asynccontextmanager
async def start_run(
    spec: StageSpec,
    opts: StageOptions,
    paths: OutputPaths,
    stack: AsyncExitStack,
    *,
    sharded_cache: bool = False,
) -> AsyncIterator[Run]:
    """Prepare the stage, check every path, lock the output and check its settings; open
    the rejects file (--skip-invalid). Files the run opens are closed through ``stack``. A
    run that stops before writing anything leaves no empty output behind."""
    prepared = spec.prepare(opts)
    cache_path: Path | None = None
    if not opts.no_cache:
        cache_path = opts.cache or paths.out.parent / DEFAULT_NAME
        if sharded_cache:  # CACHE.shards/, one file per shard
            cache_path = cache_path.with_name(cache_path.name.removesuffix(".sqlite") + ".shards")
    for extra in prepared.extra_outputs:  # written last, after the run: refuse one now
        if extra.is_dir():
            raise ConfigError(f"{extra} is a folder: name a file to write")
    targets: list[Path] = list(paths.files) + list(prepared.extra_outputs)
    if cache_path is not None:
        targets.append(cache_path)
    check_outputs([opts.input], targets)
    check_read_files(opts, targets)
    check_distinct(targets, paths.out)
    total = count_rows(opts.input) if Path(opts.input).is_file() else None
    if total is not None and opts.limit is not None:
        total = min(total, opts.limit)
    # The lock comes first: a refused second process must not touch any file of the first.
    existed = paths.work.exists()
    writer = JsonlWriter(paths.work, exclusive=True)
    try:
        stack.callback(writer.close)  # closing twice is harmless
        check_and_record(
            paths.settings,
            prepared.settings,
            has_records=has_records(paths),
            force=opts.force,
            output=paths.out,
            defaults=defaults_of(opts),
        )
        run = Run(spec, opts, prepared, paths, writer, cache_path, total)
        if opts.skip_invalid:
            paths.rejects.unlink(missing_ok=True)  # rebuilt from the input on every run
            rejects = JsonlWriter(paths.rejects)
            stack.callback(rejects.close)

            def on_invalid(error: InputError, row: object) -> None:
                run.rejected += 1
                rejects.write({"error": str(error), "row": row})

            run.on_invalid = on_invalid
        yield run
    except BaseException:
        writer.close()  # its lock first: removing takes the lock again
        if not existed:
            _remove_if_empty(paths)
        raise


def has_records(paths: OutputPaths) -> bool:
    """Whether the output holds anything yet (a file, or a folder of parts)."""
    if paths.is_folder:
        return bool(part_files(paths.out))
    return paths.work.exists() and paths.work.stat().st_size > 0


def open_cache(path: Path | None, stack: AsyncExitStack) -> RequestCache | None:
    if path is None:
        return None
    cache = RequestCache(path)
    stack.callback(cache.close)
    return cache


async def _ticker(tick: Callable[[], None], every: float) -> None:
    while True:
        await asyncio.sleep(every)
        tick()


def _progress_every() -> float:
    try:
        return max(0.1, float(os.environ.get("CHARTER_PROGRESS_EVERY", "10")))
    except ValueError:
        return 10.0


def _remove_if_empty(paths: OutputPaths) -> None:
    """Under the output's lock again (if another process has taken it meanwhile, the file
    is its own): remove an empty output and its settings file."""
    try:
        writer = JsonlWriter(paths.work, exclusive=True)
    except ConfigError:
        return
    try:
        if paths.work.stat().st_size == 0 and not has_records(paths):
            paths.work.unlink()
            paths.settings.unlink(missing_ok=True)
    finally:
        writer.close()
