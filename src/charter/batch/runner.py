"""Batch mode: a stage's requests go into provider batches instead of being sent one by one.

The stage runs as it always does. Each request reaches its backend's ``_post``, which, with a
``Batcher`` set, hands the body to the batcher and waits. Once no new request has come for a
moment (every record in flight is waiting on one), the waiting requests go out as batches
(split at the provider's limits), each recorded in ``OUT.batches.json`` before anything waits
on it. When a batch ends its results are read once, kept in the request cache, and handed to
the requests waiting on them; a record that needs another request (the next revision, the
CoT's second turn) makes it then, and it goes into the next round's batch. So a stage of n
rounds takes n rounds of batches, and resume, exactly-once output and the settings check are
the engine's, unchanged.

Never paying twice: a request's ``custom_id`` is the hash of what it sends, so a re-run of a
run killed while waiting finds each request in a batch it already submitted and waits on
that batch; a request whose result was already read comes from the cache. A request that a
batch answered with an error, or left unanswered (expired, cancelled), fails as it would
live: the model's retries put it into the next batch, up to ``--retries`` times.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from charter.batch.api import BatchAPI, BatchNotFound, BatchState, Item, ItemResult
from charter.cache import RequestCache, cache_key
from charter.errors import BackendError, ConfigError, RetryableBackendError

log = logging.getLogger("charter")

SETTLE = 0.25
"""Seconds without a new request after which the waiting requests go out as batches."""
SUBMIT_TRIES = 4
"""Tries to submit one batch when the provider answers with a transient error."""
VERSION = 1


@dataclass
class BatchEntry:
    """One submitted batch as ``OUT.batches.json`` records it."""

    id: str
    provider: str
    endpoint: str
    submitted: str
    custom_ids: list[str]
    status: str = "submitted"
    fetched: bool = False
    """Its results have been read into the cache: it is never read again."""
    completed: int = 0
    failed: int = 0

    def as_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "provider": self.provider,
            "endpoint": self.endpoint,
            "submitted": self.submitted,
            "requests": len(self.custom_ids),
            "status": self.status,
            "completed": self.completed,
            "failed": self.failed,
            "fetched": self.fetched,
            "custom_ids": self.custom_ids,
        }


@dataclass
class Manifest:
    """``OUT.batches.json``: every batch a run submitted, written (atomically) before the run
    waits on it."""

    path: Path
    batches: list[BatchEntry] = field(default_factory=list)

    @classmethod
    def load(cls, path: Path) -> Manifest:
        if not path.exists():
            return cls(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            entries = [
                BatchEntry(
                    id=str(b["id"]),
                    provider=str(b["provider"]),
                    endpoint=str(b["endpoint"]),
                    submitted=str(b["submitted"]),
                    custom_ids=[str(c) for c in b["custom_ids"]],
                    status=str(b.get("status", "submitted")),
                    fetched=bool(b.get("fetched", False)),
                    completed=int(b.get("completed", 0)),
                    failed=int(b.get("failed", 0)),
                )
                for b in data["batches"]
            ]
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise ConfigError(
                f"{path}: cannot read the batches this output's run submitted ({e}); it is how "
                "a re-run avoids paying twice, so charter will not go on without it: restore "
                "it, or cancel those batches at the provider and remove it"
            ) from None
        return cls(path, entries)

    def save(self) -> None:
        data = {"version": VERSION, "batches": [b.as_json() for b in self.batches]}
        tmp = self.path.with_name(self.path.name + ".tmp")
        with tmp.open("w", encoding="utf-8") as f:
            json.dump(data, f, ensure_ascii=False, indent=1)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)

    def unfinished(self, provider: str, endpoint: str) -> list[BatchEntry]:
        return [
            b
            for b in self.batches
            if not b.fetched and b.provider == provider and b.endpoint == endpoint
        ]

    def find(self, batch_id: str) -> BatchEntry:
        return next(b for b in self.batches if b.id == batch_id)


class BatchRun:
    """The batches of one run: a batcher per provider endpoint, one manifest, the cache that
    keeps results."""

    def __init__(
        self, path: Path, cache: RequestCache, *, poll: float, settle: float = SETTLE
    ) -> None:
        self.manifest = Manifest.load(path)
        self.cache = cache
        self.poll = poll
        self.settle = settle
        self._batchers: dict[tuple[str, str], Batcher] = {}
        self.states: dict[str, BatchState] = {}
        """The latest state of each batch this run waits on."""

    @property
    def path(self) -> Path:
        return self.manifest.path

    def attach(self, backend: Any, spec: str) -> None:
        """Send ``backend``'s requests through its provider's batches."""
        make = getattr(backend, "batch_api", None)
        if make is None:
            raise ConfigError(
                f"--batch: {spec} has no batch API (openai/ and anthropic/ models have one); "
                "run without --batch"
            )
        api: BatchAPI = make()
        key = (api.provider, api.endpoint)
        batcher = self._batchers.get(key)
        if batcher is None:
            batcher = self._batchers[key] = Batcher(api, self)
            batcher.reattach()
        backend.batcher = batcher

    def stored(self, custom_id: str) -> ItemResult | None:
        """A request's answer read from an earlier batch (successes only are kept)."""
        raw = self.cache.get(custom_id)
        if raw is None:
            return None
        data = json.loads(raw)
        return ItemResult(custom_id, int(data["status"]), data["body"])

    def keep(self, provider: str, results: Sequence[ItemResult]) -> None:
        """Answered requests into the cache, written before the batch is marked read."""
        for r in results:
            if r.status is not None and r.status < 400 and r.body is not None:
                model = f"{provider}/{r.body.get('model', '')}".rstrip("/")
                value = json.dumps({"status": r.status, "body": r.body}, ensure_ascii=False)
                self.cache.put(r.custom_id, model=model, kind="batch-result", value=value)
        self.cache.flush()

    def describe(self) -> str:
        """One line on the batches waited on: ``batches: 2 in_progress; 310/800 done``."""
        if not self.states:
            return ""
        by_status: dict[str, int] = {}
        for s in self.states.values():
            by_status[s.status] = by_status.get(s.status, 0) + 1
        total = sum(s.total for s in self.states.values())
        done = sum(s.completed + s.failed for s in self.states.values())
        shown = ", ".join(f"{n} {status}" for status, n in sorted(by_status.items()))
        return f"batches: {shown}; {done:,}/{total:,} requests answered"

    def unused(self) -> list[BatchEntry]:
        """Batches of the manifest not yet read, at endpoints no model of this run uses."""
        used = set(self._batchers)
        return [
            b
            for b in self.manifest.batches
            if not b.fetched and (b.provider, b.endpoint) not in used
        ]

    async def aclose(self) -> None:
        for batcher in self._batchers.values():
            await batcher.aclose()


class Batcher:
    """The batches of one provider endpoint: ``send`` is what the backend calls instead of
    posting a request."""

    def __init__(self, api: BatchAPI, run: BatchRun) -> None:
        self.api = api
        self.run = run
        self._futures: dict[str, asyncio.Future[ItemResult]] = {}
        self._pending: dict[str, Item] = {}
        self._attached: dict[str, str] = {}
        """custom_id -> the earlier batch (not yet read) that holds it."""
        self._arrived = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        self._flusher: asyncio.Task[None] | None = None

    def key(self, body: dict[str, Any]) -> str:
        """The request's custom_id: a hash of where it goes and what it sends."""
        return cache_key(
            {
                "kind": "batch-item",
                "provider": self.api.provider,
                "endpoint": self.api.endpoint,
                "body": body,
            }
        )

    def reattach(self) -> None:
        """Wait on the batches an earlier run submitted here and did not read."""
        for entry in self.run.manifest.unfinished(self.api.provider, self.api.endpoint):
            for cid in entry.custom_ids:
                self._attached[cid] = entry.id
            log.info(
                "re-attached to batch %s (%d requests, submitted %s): nothing is submitted again",
                entry.id,
                len(entry.custom_ids),
                entry.submitted,
            )
            self._start(self._watch(entry.id, entry.custom_ids))

    async def send(self, body: dict[str, Any]) -> ItemResult:
        cid = self.key(body)
        future = self._futures.get(cid)
        if future is None:
            stored = self.run.stored(cid)
            if stored is not None:
                return stored
            future = asyncio.get_running_loop().create_future()
            self._futures[cid] = future
            if cid not in self._attached:
                self._pending[cid] = Item(cid, body)
                self._arrived.set()
                if self._flusher is None or self._flusher.done():
                    self._flusher = asyncio.ensure_future(self._flush_loop())
        return await asyncio.shield(future)

    def _start(self, work: Any) -> None:
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _flush_loop(self) -> None:
        while self._pending:
            while True:  # until no request has come for a moment
                self._arrived.clear()
                await asyncio.sleep(self.run.settle)
                if not self._arrived.is_set():
                    break
            items = list(self._pending.values())
            self._pending.clear()
            for chunk in self._chunks(items):
                await self._submit(chunk)

    def _chunks(self, items: list[Item]) -> Iterator[list[Item]]:
        chunk: list[Item] = []
        size = 0
        for item in items:
            n = self.api.size(item)
            if chunk and (len(chunk) >= self.api.max_requests or size + n > self.api.max_bytes):
                yield chunk
                chunk, size = [], 0
            chunk.append(item)
            size += n
        if chunk:
            yield chunk

    async def _submit(self, items: list[Item]) -> None:
        cids = [item.custom_id for item in items]
        for attempt in range(SUBMIT_TRIES):
            try:
                batch_id = await self.api.submit(items)
                break
            except RetryableBackendError as e:
                if attempt + 1 == SUBMIT_TRIES:
                    self._fail(cids, e)
                    return
                log.warning(
                    "submitting a batch to %s failed (%s); trying again", self.api.endpoint, e
                )
                await asyncio.sleep(2.0**attempt)
            except BackendError as e:
                self._fail(cids, e)
                return
        entry = BatchEntry(
            id=batch_id,
            provider=self.api.provider,
            endpoint=self.api.endpoint,
            submitted=datetime.now(timezone.utc).isoformat(timespec="seconds"),
            custom_ids=cids,
        )
        self.run.manifest.batches.append(entry)
        self.run.manifest.save()  # before anything waits on it
        log.info(
            "submitted batch %s: %d requests to %s (recorded in %s)",
            batch_id,
            len(cids),
            self.api.endpoint,
            self.run.path,
        )
        for cid in cids:
            self._attached[cid] = batch_id
        self._start(self._watch(batch_id, cids))

    def _fail(self, cids: list[str], error: BaseException) -> None:
        for cid in cids:
            future = self._futures.pop(cid, None)
            if future is not None and not future.done():
                future.set_exception(error)

    async def _watch(self, batch_id: str, cids: list[str]) -> None:
        """Poll the batch until it ends, read its results once, hand them out."""
        state: BatchState | None = None
        started = time.monotonic()
        while True:
            try:
                state = await self.api.state(batch_id)
            except RetryableBackendError as e:
                log.warning("checking batch %s: %s (checking again)", batch_id, e)
            except BatchNotFound as e:  # expired and deleted, or another account: unanswered
                log.warning(
                    "%s: the provider does not know batch %s; its requests go into a new batch",
                    e,
                    batch_id,
                )
                self._gone(batch_id, cids, "unknown to the provider")
                return
            except BackendError as e:  # never sent again: a re-run asks after it
                self._fail(
                    [c for c in cids if self._attached.get(c) == batch_id], BackendError(str(e))
                )
                return
            else:
                self.run.states[batch_id] = state
                entry = self.run.manifest.find(batch_id)
                if (entry.status, entry.completed, entry.failed) != (
                    state.status,
                    state.completed,
                    state.failed,
                ):
                    entry.status, entry.completed, entry.failed = (
                        state.status,
                        state.completed,
                        state.failed,
                    )
                    self.run.manifest.save()
                if state.done:
                    break
            # a prompt first look, then every --batch-poll seconds
            waited = time.monotonic() - started
            await asyncio.sleep(min(self.run.poll, max(0.05, waited)))
        results = None
        for attempt in range(SUBMIT_TRIES):
            try:
                results = await self.api.results(state)
                break
            except RetryableBackendError as e:
                log.warning("reading the results of batch %s: %s (trying again)", batch_id, e)
                await asyncio.sleep(min(self.run.poll, 2.0**attempt))
            except BackendError:
                break
        if results is None:  # never sent again: the batch is paid for, and a re-run reads it
            self._fail(
                [c for c in cids if self._attached.get(c) == batch_id],
                BackendError(
                    f"could not read the results of batch {batch_id}; a re-run reads them"
                ),
            )
            return
        self.run.keep(self.api.provider, results)
        entry = self.run.manifest.find(batch_id)
        entry.fetched = True
        self.run.manifest.save()
        by_id = {r.custom_id: _cancelled_for_good(r) for r in results}
        for cid in cids:
            if self._attached.get(cid) == batch_id:
                del self._attached[cid]
            result = by_id.get(cid)
            if result is None:
                if state.status == "failed":  # the whole batch refused: the same would be again
                    message = f"batch {batch_id} failed: {state.detail or 'no reason given'}"
                    result = ItemResult(cid, 400, {"error": {"message": message}}, message)
                else:
                    said = f"not answered in batch {batch_id} ({state.status})"
                    result = _cancelled_for_good(ItemResult(cid, None, None, said))
            future = self._futures.pop(cid, None)
            if future is not None and not future.done():
                future.set_result(result)

    def _gone(self, batch_id: str, cids: list[str], why: str) -> None:
        """A batch that will never answer: recorded as read, its requests unanswered (the
        model's retries put them into a new batch)."""
        entry = self.run.manifest.find(batch_id)
        entry.status, entry.fetched = why, True
        self.run.manifest.save()
        for cid in cids:
            if self._attached.get(cid) == batch_id:
                del self._attached[cid]
            future = self._futures.pop(cid, None)
            if future is not None and not future.done():
                future.set_result(ItemResult(cid, None, None, f"batch {batch_id} is {why}"))

    async def aclose(self) -> None:
        tasks = [*self._tasks, *([self._flusher] if self._flusher else [])]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        await self.api.aclose()


def _cancelled_for_good(result: ItemResult) -> ItemResult:
    """A request that was not answered because its batch was cancelled (``charter batch
    cancel``) fails for good: sent again, it would undo the cancelling. A re-run sends it."""
    if result.status is None and "cancel" in (result.error or "").lower():
        message = f"its batch was cancelled ({result.error})"
        return ItemResult(result.custom_id, 400, {"error": {"message": message}}, message)
    return result


LIVE_OK = frozenset({"cancelled", "canceled", "cancelling", "canceling", "failed", "expired"})
"""States of an unread batch that a run without --batch may go past: nothing more of it is
coming (what a cancelled batch answered first is lost to such a run)."""


def refuse_live_over_unread(path: Path) -> None:
    """A run without --batch onto an output whose batches are still out would pay for their
    requests twice: refused in one line."""
    if not path.exists():
        return
    waiting = [b for b in Manifest.load(path).batches if not b.fetched and b.status not in LIVE_OK]
    if waiting:
        raise ConfigError(
            f"{path} lists {len(waiting)} batch(es) submitted and not read yet ({waiting[0].id}, "
            f"{sum(len(b.custom_ids) for b in waiting):,} requests): re-run with --batch to read "
            "them (nothing is paid twice), or cancel them first (charter batch cancel OUT)"
        )


def manifest_of(output: Path) -> Manifest:
    """The batches a --batch run writing ``output`` submitted (a ConfigError if none)."""
    from charter.engines.base import OutputPaths

    paths = OutputPaths.for_folder(output) if output.is_dir() else OutputPaths.for_output(output)
    if not paths.batches.exists():
        raise ConfigError(f"{output}: no batches recorded ({paths.batches} does not exist)")
    return Manifest.load(paths.batches)


def api_for(entry: BatchEntry) -> BatchAPI:
    """The batch API a recorded batch lives at, with this machine's credentials."""
    from charter.backends import create_backend

    backend = create_backend(f"{entry.provider}/batch", base_url=entry.endpoint)
    make = getattr(backend, "batch_api", None)
    if make is None:
        raise ConfigError(f"{entry.provider}/ has no batch API")
    api: BatchAPI = make()
    return api


async def refresh(manifest: Manifest, *, cancel: bool = False) -> list[tuple[BatchEntry, str]]:
    """Each batch not yet read, asked after (or cancelled) at its provider: the entries with
    what happened, the manifest updated. A batch already read is shown as recorded."""
    shown: list[tuple[BatchEntry, str]] = []
    apis: dict[tuple[str, str], BatchAPI] = {}
    try:
        for entry in manifest.batches:
            if entry.fetched:
                shown.append((entry, "results read"))
                continue
            key = (entry.provider, entry.endpoint)
            if key not in apis:
                apis[key] = api_for(entry)
            api = apis[key]
            try:
                state = await (api.cancel(entry.id) if cancel else api.state(entry.id))
            except BackendError as e:
                shown.append((entry, f"could not ask: {e}"))
                continue
            entry.status, entry.completed, entry.failed = (
                state.status,
                state.completed,
                state.failed,
            )
            shown.append((entry, "cancel asked" if cancel else "asked now"))
        manifest.save()
    finally:
        for api in apis.values():
            await api.aclose()
    return shown
