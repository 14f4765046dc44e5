"""Embedded SQLite store (the default): WAL, one writer thread, one transaction per batch.

Idempotency: ``request_id`` is the primary key; inside one transaction the batch's ids already stored are
skipped, and the daily rollup is incremented only by the rows actually inserted, so a retried or replayed batch
neither duplicates an event nor double-counts the rollup.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import threading
from typing import Any

import orjson

from ..events import CostEvent

SCHEMA = """
PRAGMA journal_mode=WAL;
PRAGMA synchronous=NORMAL;
PRAGMA wal_autocheckpoint=10000;
CREATE TABLE IF NOT EXISTS events (
    request_id TEXT PRIMARY KEY,
    timestamp TEXT NOT NULL,
    provider TEXT NOT NULL,
    model TEXT,
    team TEXT, app TEXT, feature TEXT,
    cost_usd REAL,
    doc BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS events_ts ON events(timestamp);
CREATE INDEX IF NOT EXISTS events_attr ON events(team, app, feature, timestamp);
CREATE TABLE IF NOT EXISTS rollup_daily (
    day TEXT NOT NULL, team TEXT NOT NULL, app TEXT NOT NULL, feature TEXT NOT NULL,
    provider TEXT NOT NULL, model TEXT NOT NULL,
    requests INTEGER NOT NULL DEFAULT 0,
    input_tokens INTEGER NOT NULL DEFAULT 0, output_tokens INTEGER NOT NULL DEFAULT 0,
    cache_read_tokens INTEGER NOT NULL DEFAULT 0, cache_write_tokens INTEGER NOT NULL DEFAULT 0,
    reasoning_tokens INTEGER NOT NULL DEFAULT 0,
    cost_nano_usd INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (day, team, app, feature, provider, model)
);
"""

_ROLLUP = """
INSERT INTO rollup_daily VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)
ON CONFLICT(day, team, app, feature, provider, model) DO UPDATE SET
  requests = requests + excluded.requests,
  input_tokens = input_tokens + excluded.input_tokens,
  output_tokens = output_tokens + excluded.output_tokens,
  cache_read_tokens = cache_read_tokens + excluded.cache_read_tokens,
  cache_write_tokens = cache_write_tokens + excluded.cache_write_tokens,
  reasoning_tokens = reasoning_tokens + excluded.reasoning_tokens,
  cost_nano_usd = cost_nano_usd + excluded.cost_nano_usd
"""


class SQLiteSink:
    name = "sqlite"

    def __init__(self, path: str, busy_timeout: float = 5.0) -> None:
        self.path = path
        self.busy_timeout = busy_timeout
        self._conn: sqlite3.Connection | None = None
        self._lock = threading.Lock()

    def _connect(self) -> sqlite3.Connection:
        if self._conn is None:
            parent = os.path.dirname(os.path.abspath(self.path))
            os.makedirs(parent, exist_ok=True)
            conn = sqlite3.connect(self.path, check_same_thread=False, timeout=self.busy_timeout, isolation_level=None)
            conn.executescript(SCHEMA)
            self._conn = conn
        return self._conn

    async def open(self) -> None:
        await asyncio.to_thread(self._locked, self._connect)

    def _locked(self, fn: Any, *args: Any) -> Any:
        with self._lock:
            return fn(*args)

    def write_sync(self, events: list[CostEvent]) -> None:
        """One transaction: skip ids already stored, insert the rest with one ``executemany``, and add their
        sums to the rollups, merged in memory so each (day, team, app, feature, provider, model) is one upsert."""
        with self._lock:
            conn = self._connect()
            conn.execute("BEGIN IMMEDIATE")
            try:
                ids = [ev.request_id for ev in events]
                existing: set[str] = set()
                for i in range(0, len(ids), 900):
                    part = ids[i : i + 900]
                    marks = ",".join("?" * len(part))
                    existing.update(
                        r[0] for r in conn.execute(f"SELECT request_id FROM events WHERE request_id IN ({marks})", part)
                    )
                # The pipeline hands over each event's JSON line, encoded once at enqueue: store it without the
                # newline (a memoryview slice, no copy) instead of encoding again here.
                lines: list[bytes] | None = getattr(events, "docs", None)
                fresh: dict[str, tuple[CostEvent, Any]] = {}
                for i, ev in enumerate(events):
                    if ev.request_id not in existing and ev.request_id not in fresh:
                        fresh[ev.request_id] = (ev, memoryview(lines[i])[:-1] if lines else ev.to_json())
                conn.executemany(
                    "INSERT INTO events VALUES (?,?,?,?,?,?,?,?,?)",
                    [
                        (e.request_id, e.timestamp, e.provider, e.model, e.team, e.app, e.feature, e.cost_usd, doc)
                        for e, doc in fresh.values()
                    ],
                )
                merged: dict[tuple[str, ...], list[int]] = {}
                for e, _ in fresh.values():
                    key = (e.timestamp[:10], e.team or "", e.app or "", e.feature or "", e.provider, e.model or "")
                    acc = merged.get(key)
                    if acc is None:
                        acc = merged[key] = [0, 0, 0, 0, 0, 0, 0]
                    acc[0] += 1
                    acc[1] += e.input_tokens
                    acc[2] += e.output_tokens
                    acc[3] += e.cache_read_tokens
                    acc[4] += e.cache_write_tokens
                    acc[5] += e.reasoning_tokens
                    acc[6] += round((e.cost_usd or 0.0) * 1e9)
                conn.executemany(_ROLLUP, [(*k, *v) for k, v in merged.items()])
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise

    async def write(self, events: list[CostEvent]) -> None:
        await asyncio.to_thread(self.write_sync, events)

    def read_sync(self, since: str | None = None, limit: int | None = None) -> list[CostEvent]:
        with self._lock:
            conn = self._connect()
            sql = "SELECT doc FROM events"
            args: list[Any] = []
            if since:
                sql += " WHERE timestamp >= ?"
                args.append(since)
            sql += " ORDER BY timestamp DESC, rowid DESC"
            if limit:
                sql += " LIMIT ?"
                args.append(limit)
            rows = conn.execute(sql, args).fetchall()
        return [CostEvent.from_dict(orjson.loads(r[0])) for r in reversed(rows)]

    async def read(self, since: str | None = None, limit: int | None = None) -> list[CostEvent]:
        return await asyncio.to_thread(self.read_sync, since, limit)

    def rollups_sync(self) -> list[dict[str, Any]]:
        with self._lock:
            conn = self._connect()
            cur = conn.execute("SELECT * FROM rollup_daily ORDER BY day, team, app, feature, provider, model")
            names = [d[0] for d in cur.description]
            return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]

    async def ping(self) -> bool:
        try:
            await asyncio.to_thread(self._locked, lambda: self._connect().execute("SELECT 1").fetchone())
            return True
        except (sqlite3.Error, OSError):  # OSError: the path itself is unusable
            return False

    async def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None
