"""SQLite request cache: one file, keyed by a hash of everything that changes the output.

WAL mode lets two processes share a cache file. Writes leave the caller at once: ``put``
queues the entry (``get`` sees it straight away) and a background thread writes the queue in
one transaction every ``FLUSH_EVERY`` seconds or ``FLUSH_ROWS`` entries, so the event loop
never waits on SQLite's commit. ``close`` (and a normal interpreter exit) writes what is
queued; a process killed with SIGKILL loses at most the entries of its last moments, which
only means asking for them again. Only successful results are stored; failures are never
cached.
"""

from __future__ import annotations

import atexit
import hashlib
import json
import logging
import sqlite3
import threading
import time
import weakref
from pathlib import Path
from typing import Any

import orjson

from charter.errors import ConfigError

log = logging.getLogger("charter")

SCHEMA_VERSION = 1
DEFAULT_NAME = "charter-cache.sqlite"
FLUSH_EVERY = 0.5
"""Seconds between writes of the queued entries. Each write rewrites every page of the key
index it touches, and keys are random: fewer, larger writes cost the writer half the CPU of
writes every 0.15 s (benchmarks/client_limit.py), for at most this long of entries lost to a
SIGKILL."""
FLUSH_ROWS = 4096
"""Queued entries that wake the writer before its time."""

_INSERT = "INSERT OR REPLACE INTO entries (key, model, kind, value, created) VALUES (?, ?, ?, ?, ?)"


def cache_key(payload: dict[str, Any]) -> str:
    """Stable hash of a request. Callers put in only what changes the output: the model spec,
    messages, options and sampling parameters (including the seed), never timeouts,
    concurrency or credentials."""
    full = {"v": SCHEMA_VERSION, **payload}
    if _orjson_same(full):
        blob = orjson.dumps(full, option=orjson.OPT_SORT_KEYS)
    else:
        text = json.dumps(full, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
        blob = text.encode()
    return hashlib.sha256(blob).hexdigest()


def _orjson_same(value: Any) -> bool:
    """Whether orjson writes ``value`` byte for byte as ``json.dumps(sort_keys=True,
    ensure_ascii=False, separators=(",", ":"))`` does, so keys made either way agree. They
    differ on floats written with an exponent (``1e-05`` vs ``1e-5``), NaN and infinities,
    integers beyond 64 bits and non-string keys: such payloads take the json module's path."""
    kind = type(value)
    if kind is dict:
        for k, v in value.items():
            if type(k) is not str or (type(v) is not str and not _orjson_same(v)):
                return False
        return True
    if kind is list or kind is tuple:
        return all(type(v) is str or _orjson_same(v) for v in value)
    if kind is str or kind is bool or value is None:
        return True
    if kind is int:
        return bool(-(1 << 63) <= value < (1 << 64))
    if kind is float:
        return bool(value == 0.0 or 1e-4 <= abs(value) < 1e16)
    return False


_open_caches: weakref.WeakSet[RequestCache] = weakref.WeakSet()


@atexit.register
def _close_open_caches() -> None:
    """Write what open caches still have queued when the interpreter exits normally."""
    for cache in list(_open_caches):
        cache.close()


class RequestCache:
    """A key/value store of model results with per-model accounting.

    One connection reads (under a lock, from any thread); a second, owned by the writer
    thread, writes the queued entries. Entries stay visible in memory until their
    transaction has committed, so a ``get`` never misses an entry ``put`` before it."""

    def __init__(
        self, path: str | Path, *, flush_every: float = FLUSH_EVERY, flush_rows: int = FLUSH_ROWS
    ) -> None:
        self.path = Path(path)
        self.flush_every = flush_every
        self.flush_rows = flush_rows
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise ConfigError(f"cannot create the cache at {self.path}: {e.strerror or e}") from e
        try:
            self._conn = self._connect()
            self._init_schema()
        except sqlite3.DatabaseError as e:
            raise ConfigError(f"cannot open cache {self.path}: {e}") from e
        self._lock = threading.Lock()
        """Guards the reading connection."""
        self._queue_lock = threading.Lock()
        """Guards the queued and the being-written entries."""
        self._write_lock = threading.Lock()
        """One batch written at a time, in the order they were queued."""
        self._queued: dict[str, tuple[str, str, str, str, float]] = {}
        self._writing: dict[str, tuple[str, str, str, str, float]] = {}
        self._wconn: sqlite3.Connection | None = None
        self._writer: threading.Thread | None = None
        self._wake = threading.Event()
        self._closed = False
        _open_caches.add(self)

    def _connect(self) -> sqlite3.Connection:
        return sqlite3.connect(
            self.path, timeout=60.0, isolation_level=None, check_same_thread=False
        )

    def _init_schema(self, deadline: float = 60.0) -> None:
        """Switch to WAL and create the table. Two processes opening a new file at once can
        see "database is locked" here, which SQLite's busy timeout does not cover: retry."""
        start = time.monotonic()
        while True:
            try:
                self._conn.execute("PRAGMA journal_mode=WAL")
                self._conn.execute("PRAGMA synchronous=NORMAL")
                self._conn.execute(
                    "CREATE TABLE IF NOT EXISTS entries ("
                    " key TEXT PRIMARY KEY, model TEXT NOT NULL, kind TEXT NOT NULL,"
                    " value TEXT NOT NULL, created REAL NOT NULL)"
                )
                return
            except sqlite3.OperationalError as e:
                if "locked" not in str(e) or time.monotonic() - start > deadline:
                    raise
                time.sleep(0.05)

    def get(self, key: str) -> str | None:
        with self._queue_lock:
            row = self._queued.get(key) or self._writing.get(key)
        if row is not None:
            return row[3]
        with self._lock:
            found = self._conn.execute("SELECT value FROM entries WHERE key = ?", (key,)).fetchone()
        return None if found is None else str(found[0])

    def put(self, key: str, *, model: str, kind: str, value: str) -> None:
        """Queue an entry; the writer thread stores it within ``flush_every`` seconds."""
        if self._closed:
            raise sqlite3.ProgrammingError("Cannot operate on a closed cache.")
        with self._queue_lock:
            self._queued[key] = (key, model, kind, value, time.time())
            full = len(self._queued) >= self.flush_rows
            if self._writer is None:
                self._writer = threading.Thread(
                    target=self._write_loop, name="charter-cache-writer", daemon=True
                )
                self._writer.start()
        if full:
            self._wake.set()

    def flush(self) -> None:
        """Write the queued entries now, in one transaction."""
        with self._write_lock:
            with self._queue_lock:
                if not self._queued:
                    return
                batch, self._queued = self._queued, {}
                self._writing = batch
            try:
                if self._wconn is None:
                    self._wconn = self._connect()
                    self._wconn.execute("PRAGMA synchronous=NORMAL")
                self._wconn.execute("BEGIN IMMEDIATE")
                try:
                    self._wconn.executemany(_INSERT, batch.values())
                    self._wconn.execute("COMMIT")
                except BaseException:
                    self._wconn.execute("ROLLBACK")
                    raise
            except Exception as e:  # sqlite3.Error, or text SQLite cannot store
                # The cache only saves requests: losing a batch means asking again.
                log.warning(
                    "could not write %d entries to the cache %s: %s", len(batch), self.path, e
                )
            finally:
                with self._queue_lock:
                    self._writing = {}

    def _write_loop(self) -> None:
        while not self._closed:
            self._wake.wait(self.flush_every)
            self._wake.clear()
            self.flush()

    def stats(self) -> dict[str, Any]:
        self.flush()
        with self._lock:
            rows = self._conn.execute(
                "SELECT model, kind, COUNT(*), SUM(LENGTH(value)) FROM entries"
                " GROUP BY model, kind ORDER BY model, kind"
            ).fetchall()
        return {
            "path": str(self.path),
            "entries": sum(r[2] for r in rows),
            "file_bytes": self.path.stat().st_size if self.path.exists() else 0,
            "by_model": [
                {"model": r[0], "kind": r[1], "entries": r[2], "value_bytes": r[3] or 0}
                for r in rows
            ],
        }

    def clear(self, model: str | None = None) -> int:
        self.flush()
        with self._lock:
            if model is None:
                cur = self._conn.execute("DELETE FROM entries")
            else:
                cur = self._conn.execute("DELETE FROM entries WHERE model = ?", (model,))
            self._conn.execute("VACUUM")
        return int(cur.rowcount)

    def close(self) -> None:
        """Write what is queued, stop the writer thread and close the file. Idempotent."""
        if self._closed:
            return
        self._closed = True
        self._wake.set()
        if self._writer is not None and self._writer is not threading.current_thread():
            self._writer.join()
        self.flush()
        with self._write_lock:
            if self._wconn is not None:
                self._wconn.close()
        with self._lock:
            self._conn.close()
        _open_caches.discard(self)
