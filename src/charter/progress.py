"""Progress bar and end-of-run summary (rich, on stderr)."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from types import TracebackType

from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from charter.engines.base import RunSummary

# Off a terminal (CI logs, files) rich would wrap at 80 columns; give tables room instead.
console = Console(stderr=True, width=None if sys.stderr.isatty() else 160)


class RunProgress:
    """A bar with rate, ETA and tokens on a terminal; ``advance`` is the pipeline's on_result
    callback. Off a terminal (CI logs, files) there is no bar: ``log_line`` prints one plain
    progress line, which the caller does periodically."""

    def __init__(
        self,
        label: str,
        total: int | None,
        tokens: Callable[[], int],
        *,
        enabled: bool = True,
        status: Callable[[], str] | None = None,
    ) -> None:
        """``status``: a line to show beside the counts (the batches a run waits on)."""
        self._label = label
        self._total = total
        self._tokens = tokens
        self._status = status
        self._failed = 0
        self._skipped = 0
        self.is_terminal = console.is_terminal
        enabled = enabled and self.is_terminal
        self._progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TaskProgressColumn(),
            TextColumn("{task.fields[rate]}"),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            TextColumn("{task.fields[info]}"),
            console=console,
            refresh_per_second=4,
            disable=not enabled,
            transient=False,
        )
        self._task = self._progress.add_task(label, total=total, rate="", info="")
        self._start = time.perf_counter()
        self._last = 0.0

    def __enter__(self) -> RunProgress:
        self._progress.start()
        return self

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._refresh()
        self._progress.stop()

    def advance(self, ok: bool) -> None:
        if not ok:
            self._failed += 1
        self._progress.advance(self._task)
        now = time.perf_counter()
        if now - self._last > 0.25:
            self._last = now
            self._refresh()

    def skip_one(self) -> None:
        """A record already in the output: counted as done, not in the rate."""
        self._skipped += 1
        self._progress.advance(self._task)

    def log_line(self) -> None:
        """``label: 1,234/10,000 records (12%), 56.7/s, ETA 2m39s, 89,012 tok, 3 failed``."""
        done = int(self._progress.tasks[0].completed)
        elapsed = max(time.perf_counter() - self._start, 1e-9)
        rate = (done - self._skipped) / elapsed
        parts = [f"{done:,}/{self._total:,} records" if self._total else f"{done:,} records"]
        if self._total:
            parts[0] += f" ({100 * done / self._total:.0f}%)"
        parts.append(f"{rate:.1f}/s")
        if self._total and rate > 0:
            parts.append(f"ETA {_duration(max(self._total - done, 0) / rate)}")
        parts.append(f"{self._tokens():,} tok")
        if self._failed:
            parts.append(f"{self._failed:,} failed")
        said = self._status() if self._status is not None else ""
        if said:
            parts.append(said)
        console.print(
            f"{self._label}: {', '.join(parts)}", highlight=False, markup=False, soft_wrap=True
        )

    def refresh(self) -> None:
        """Redraw the bar's figures now (rate, tokens, status)."""
        self._refresh()

    def _refresh(self) -> None:
        task = self._progress.tasks[0]
        elapsed = max(time.perf_counter() - self._start, 1e-9)
        info = f"{self._tokens():,} tok"
        if self._failed:
            info += f" [red]{self._failed} failed"
        said = self._status() if self._status is not None else ""
        if said:
            info += f" [cyan]{escape(said)}"
        rate = (task.completed - self._skipped) / elapsed
        self._progress.update(self._task, rate=f"{rate:.1f}/s", info=info)


def _duration(seconds: float) -> str:
    s = int(seconds)
    if s >= 3600:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"


def print_summary(summary: RunSummary) -> None:
    """Plain lines (easy to read in logs and CI): records, one line per model, the files."""
    console.print(
        f"[bold]charter {summary.stage}[/]: {summary.written:,} written, "
        f"{summary.skipped:,} already done, {summary.failed:,} failed in "
        f"{summary.seconds:,.1f} s",
        highlight=False,
        soft_wrap=True,
    )
    for m in summary.models:
        u = m.usage
        cost = "" if m.cost is None else f", ${m.cost:,.4f}"
        # answered, then asked another way (a judge that reasons first): not failures
        asked_again = f", {m.fallbacks:,} fallbacks (asked another way)" if m.fallbacks else ""
        console.print(
            f"  {m.name}: {m.sent:,} requests, {m.failed:,} failed{asked_again}, "
            f"{u.cache_hits:,} cache hits, "
            f"{u.prompt_tokens:,} prompt + {u.completion_tokens:,} completion tokens, "
            f"{m.retries:,} retries, {m.errors:,} errors{cost}",
            highlight=False,
            markup=False,
            soft_wrap=True,
        )
    unpriced = [m.name for m in summary.models if m.prices is None and m.usage.requests]
    for name in dict.fromkeys(unpriced):
        console.print(
            f"  no price for {name}: add it with --prices FILE", highlight=False, markup=False
        )
    lines = [f"output: {summary.output}"]
    if summary.cost is not None:
        per = summary.cost_per_1000_records
        each = "" if per is None else f", ${per:,.4f} per 1,000 records"
        lines.append(f"cost so far: ${summary.cost:,.4f}{each} (see {summary.cost_file})")
    if summary.failed_file is not None:
        lines.append(f"failed records: {summary.failed_file}")
    if summary.rejected:
        lines.append(
            f"invalid input rows skipped: {summary.rejected:,} (see {summary.rejects_file})"
        )
    for line in lines:
        console.print(line, highlight=False, markup=False, soft_wrap=True)
