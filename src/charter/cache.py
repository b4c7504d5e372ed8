"""SQLite request cache: one file, keyed by a hash of everything that changes the output.

WAL mode lets two processes share a cache file; a lock serialises use of the one connection
inside a process. Only successful results are stored; failures are never cached.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

from charter.errors import ConfigError

SCHEMA_VERSION = 1
DEFAULT_NAME = "charter-cache.sqlite"


def cache_key(payload: dict[str, Any]) -> str:
    """Stable hash of a request. Callers put in only what changes the output: the model spec,
    messages, options and sampling parameters (including the seed), never timeouts,
    concurrency or credentials."""
    blob = json.dumps(
        {"v": SCHEMA_VERSION, **payload}, sort_keys=True, ensure_ascii=False, separators=(",", ":")
    )
    return hashlib.sha256(blob.encode()).hexdigest()


class RequestCache:
    """A key/value store of model results with per-model accounting."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise ConfigError(f"cannot create the cache at {self.path}: {e.strerror or e}") from e
        try:
            self._conn = sqlite3.connect(
                self.path, timeout=60.0, isolation_level=None, check_same_thread=False
            )
            self._init_schema()
        except sqlite3.DatabaseError as e:
            raise ConfigError(f"cannot open cache {self.path}: {e}") from e
        self._lock = threading.Lock()

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
        with self._lock:
            row = self._conn.execute("SELECT value FROM entries WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def put(self, key: str, *, model: str, kind: str, value: str) -> None:
        with self._lock:
            self._conn.execute(
                "INSERT OR REPLACE INTO entries (key, model, kind, value, created)"
                " VALUES (?, ?, ?, ?, ?)",
                (key, model, kind, value, time.time()),
            )

    def stats(self) -> dict[str, Any]:
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
        with self._lock:
            if model is None:
                cur = self._conn.execute("DELETE FROM entries")
            else:
                cur = self._conn.execute("DELETE FROM entries WHERE model = ?", (model,))
            self._conn.execute("VACUUM")
        return int(cur.rowcount)

    def close(self) -> None:
        with self._lock:
            self._conn.close()
