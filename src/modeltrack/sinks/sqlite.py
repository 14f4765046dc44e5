"""Embedded SQLite store (the default): WAL, one writer thread, one transaction per batch.

Idempotency: ``request_id`` is the primary key; inside one transaction the batch's ids already stored are
skipped, and the rollups are incremented only by the rows actually inserted, so a retried or replayed batch
neither duplicates an event nor double-counts a rollup.

The rollups (:mod:`modeltrack.rollups`) are aggregated *by SQLite*, from the rows this transaction inserted
(their rowids are contiguous): the writer thread then holds the GIL only to bind the event rows, and the
aggregation runs inside ``sqlite3_step`` with the GIL released, off the request loop's back. The schema, that SQL
and the migration of a database written by an earlier version (columns added and filled from the stored JSON,
rollups and sessions rebuilt from the events, when the writer opens it) are in :mod:`.sqlschema`. Readers
(:mod:`modeltrack.query`) open it read-only and never create anything.
"""

from __future__ import annotations

import asyncio
import functools
import os
import sqlite3
import threading
import time
from typing import Any

import orjson

from ..events import CostEvent
from ..rollups import (
    latency_bucket,
)
from .sqlschema import EVENT_COLUMNS, ROLL_DAILY, ROLL_SESSIONS, migrate, roll_up

_INSERT = f"INSERT INTO events ({', '.join(EVENT_COLUMNS)}) VALUES "
_ROW_MARKS = f"({', '.join('?' * len(EVENT_COLUMNS))})"
INSERT_ROWS = 400
"""Events inserted per statement, as one multi-row ``VALUES``: Python's sqlite3 releases and takes back the GIL
around every statement step, and ``executemany`` steps once per row. In a proxy whose event loop holds the GIL
under load, each take-back waited for the loop's switch interval, and the writer stored ~2,000 events/s while
6,000/s arrived (the queue grew without bound). 400 rows × 27 columns stays under SQLite's 32,766 variables."""


@functools.cache
def _insert(n: int) -> str:
    return _INSERT + ", ".join([_ROW_MARKS] * n)


def _chunks(n: int, per: int) -> list[int]:
    """Split ``n`` rows into statements of ``per`` rows, then powers of two: a batch of any size uses at most
    ~10 distinct statement texts. Python's sqlite3 keeps the last 128 prepared statements per connection, and a
    400-row ``VALUES`` compiles to a large program: one text per batch size (1 … 400) held ~80 MB of them in a
    proxy under a flood (tests/test_monitoring.py::test_random_team_flood_keeps_series_bounded)."""
    sizes = [per] * (n // per)
    rest = n % per
    bit = 1 << max(rest.bit_length() - 1, 0)
    while rest:
        if rest >= bit:
            sizes.append(bit)
            rest -= bit
        bit >>= 1
    return sizes


@functools.cache
def _select_ids(n: int) -> str:
    return f"SELECT request_id FROM events WHERE request_id IN ({','.join('?' * n)})"


def _row(e: CostEvent, doc: Any) -> tuple[Any, ...]:
    return (
        e.request_id,
        e.timestamp,
        e.provider,
        e.model,
        e.team,
        e.app,
        e.feature,
        e.user,
        e.session_id,
        e.status,
        e.error,
        1 if e.cache_hit else 0,
        e.cost_usd,
        e.saved_usd,
        e.input_tokens,
        e.output_tokens,
        e.cache_read_tokens,
        e.cache_write_tokens,
        e.reasoning_tokens,
        e.latency_ms,
        e.org,
        e.key_id,
        e.prompt_id,
        e.processing,
        latency_bucket(e.latency_ms),
        -1 if e.ttft_ms is None else latency_bucket(e.ttft_ms),
        doc,
    )


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
            conn.execute("PRAGMA temp_store=MEMORY")  # the per-batch rollup delta never touches a file
            # Processes opening a new database at once (``--workers N``, each with its writer) race to switch it
            # to WAL, and that switch does not wait on the busy handler: it fails at once. The schema is
            # idempotent, so try again until the busy timeout (tests/test_workers.py).
            deadline = time.monotonic() + self.busy_timeout
            while True:
                try:
                    migrate(conn)
                    break
                except sqlite3.OperationalError:
                    if conn.in_transaction:
                        conn.execute("ROLLBACK")
                    if time.monotonic() > deadline:
                        conn.close()
                        raise
                    time.sleep(0.01)
            self._conn = conn
        return self._conn

    async def open(self) -> None:
        await asyncio.to_thread(self._locked, self._connect)

    def _locked(self, fn: Any, *args: Any) -> Any:
        with self._lock:
            return fn(*args)

    def write_sync(self, events: list[CostEvent]) -> None:
        """One transaction: skip ids already stored, insert the rest (``INSERT_ROWS`` per statement), then let
        SQLite add exactly those rows to the rollups."""
        with self._lock:
            conn = self._connect()
            conn.execute("BEGIN IMMEDIATE")
            try:
                ids = [ev.request_id for ev in events]
                existing: set[str] = set()
                i = 0
                for size in _chunks(len(ids), 512):
                    part = ids[i : i + size]
                    i += size
                    existing.update(r[0] for r in conn.execute(_select_ids(size), part))
                # The pipeline hands over each event's JSON line, encoded once at enqueue: store it without the
                # newline (a memoryview slice, no copy) instead of encoding again here.
                lines: list[bytes] | None = getattr(events, "docs", None)
                fresh: dict[str, tuple[CostEvent, Any]] = {}
                for i, ev in enumerate(events):
                    if ev.request_id not in existing and ev.request_id not in fresh:
                        fresh[ev.request_id] = (ev, memoryview(lines[i])[:-1] if lines else ev.to_json())
                if fresh:
                    (last,) = conn.execute("SELECT COALESCE(MAX(rowid), 0) FROM events").fetchone()
                    new_rows = [_row(e, doc) for e, doc in fresh.values()]
                    # At most INSERT_ROWS per statement, and fewer where SQLite was built with a lower limit.
                    per = max(
                        1, min(INSERT_ROWS, conn.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER) // len(EVENT_COLUMNS))
                    )
                    i = 0
                    for size in _chunks(len(new_rows), per):
                        chunk = new_rows[i : i + size]
                        i += size
                        conn.execute(_insert(size), [v for row in chunk for v in row])
                    # The rows just inserted have the rowids after ``last``: the rollups take exactly them.
                    conn.execute(ROLL_DAILY, (last,))
                    roll_up(conn, last)
                    conn.execute(ROLL_SESSIONS, (last,))
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise

    async def write(self, events: list[CostEvent]) -> None:
        await asyncio.to_thread(self.write_sync, events)

    def claim_sync(self, key: str, at: str) -> bool:
        """True for exactly one caller per ``key`` across every process sharing this database."""
        with self._lock:
            cur = self._connect().execute("INSERT OR IGNORE INTO claims (key, at) VALUES (?, ?)", (key, at))
            return cur.rowcount == 1

    async def claim(self, key: str, at: str) -> bool:
        return bool(await asyncio.to_thread(self.claim_sync, key, at))

    def recall_sync(self, key: str) -> str | None:
        with self._lock:
            row = self._connect().execute("SELECT at FROM claims WHERE key = ?", (key,)).fetchone()
            return None if row is None else str(row[0])

    async def recall(self, key: str) -> str | None:
        return await asyncio.to_thread(self.recall_sync, key)

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

    def rollups_sync(self, table: str = "rollup_daily") -> list[dict[str, Any]]:
        """Every row of a rollup table (``rollup_daily``, ``rollup_hourly``, ``sessions``), for checks."""
        if table not in ("rollup_daily", "rollup_hourly", "rollup_day_attr", "rollup_day_user", "sessions"):
            raise ValueError(table)
        with self._lock:
            conn = self._connect()
            cur = conn.execute(f"SELECT * FROM {table}")
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
