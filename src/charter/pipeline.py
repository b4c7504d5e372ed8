"""The local engine: stream records through an async stage with a bounded in-flight window,
append results as they finish, send failures to a side file, and resume by skipping ids
already written.

Stages are plain ``async def stage(record) -> record`` functions, so the same stage can be
driven by another engine (e.g. Ray Data) without change.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Generic, Protocol, TypeVar

from pydantic import BaseModel

from charter.errors import (
    BackendFatalError,
    BackendUnavailable,
    CharterError,
    ConfigError,
    InputError,
)
from charter.io import JsonlWriter, jsonl_to_parquet, read_done, read_ids
from charter.records import FailedRecord


class HasId(Protocol):
    id: str

    def model_dump(self, *, mode: str = ...) -> dict[str, object]: ...


R = TypeVar("R", bound=HasId)


@dataclass(frozen=True)
class OutputPaths:
    """Where a stage writes. ``work`` is the JSONL appended during the run: the output itself
    for ``.jsonl``, a ``.partial.jsonl`` beside it for ``.parquet`` (converted at the end)."""

    out: Path
    work: Path
    failed: Path
    rejects: Path
    settings: Path
    """The settings that define the output's records (see ``charter.fingerprint``)."""

    @classmethod
    def for_output(cls, out: str | Path) -> OutputPaths:
        out = Path(out)
        name = out.name
        if name.endswith(".parquet"):
            stem, work = name[: -len(".parquet")], out.with_name(name + ".partial.jsonl")
        elif name.endswith(".jsonl"):
            stem, work = name[: -len(".jsonl")], out
        else:
            raise ConfigError(f"output {out}: use a .jsonl or .parquet file name")
        return cls(
            out=out,
            work=work,
            failed=out.with_name(stem + ".failed.jsonl"),
            rejects=out.with_name(stem + ".rejects.jsonl"),
            settings=out.with_name(stem + ".settings.json"),
        )

    @property
    def files(self) -> tuple[Path, ...]:
        """Every file a run writes (the cache aside)."""
        return tuple(dict.fromkeys((self.out, self.work, self.failed, self.rejects, self.settings)))


@dataclass
class RunStats:
    """What one run did."""

    written: int = 0
    failed: int = 0
    skipped: int = 0
    seconds: float = 0.0
    changed: list[str] = field(default_factory=list)
    """Ids already in the output whose input row has changed since (their records are stale)."""
    orphans: list[str] = field(default_factory=list)
    """Ids in the output that no input row has any more (input edited or rows removed)."""


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


class Stage(Generic[R]):
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
