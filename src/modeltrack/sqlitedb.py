"""One connection to the store's SQLite file for the small tables beside the events: the budget ledger and its
holds, the rate buckets, the accounts. Shared by their three modules so that each opens the file the same way:

* on first use, in WAL mode with its schema applied, retrying the switch to WAL (it does not wait on the busy
  handler when several processes open a new database at once, as ``--workers N`` do);
* used from worker threads (``asyncio.to_thread``) under one lock per object;
* a change is one ``BEGIN IMMEDIATE`` transaction (:meth:`SideDB.transaction`), so processes on the same file
  serialise on SQLite's write lock;
* **the store's writer checkpoints the WAL, not these connections.** SQLite checkpoints on a commit that finds the
  WAL past the committing connection's ``wal_autocheckpoint``. The events fill the WAL; with SQLite's default
  (1,000 pages) here, the budget ledger's heartbeat, a connection of the proxy's own process, crossed it first
  and copied the events' pages into the database on the proxy's thread pool: ~3 µs of the proxy's CPU a request
  at saturation (bench/README.md, sixteenth session). These connections checkpoint only past twice the store's
  threshold, which the writer (in its own process, at ``SCHED_IDLE``) reaches first while it writes; so an idle
  store's WAL is still bounded (tests/test_sqlitedb.py).
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")

STORE_CHECKPOINT_PAGES = 10_000
"""The store's ``wal_autocheckpoint`` (``sinks.sqlschema``): its writer commits a batch every flush, and checkpoints
the WAL when it holds this many pages (~40 MB), in batches' worth rather than every 4 MB."""
SIDE_CHECKPOINT_PAGES = 2 * STORE_CHECKPOINT_PAGES


class SideDB:
    def __init__(self, path: str, schema: str, busy_timeout: float = 5.0) -> None:
        self.path = path
        self.schema = schema
        self.busy_timeout = busy_timeout
        self._conn: sqlite3.Connection | None = None
        self._lock = threading.Lock()

    def _db(self) -> sqlite3.Connection:
        if self._conn is None:
            conn = sqlite3.connect(self.path, timeout=self.busy_timeout, isolation_level=None, check_same_thread=False)
            deadline = time.monotonic() + self.busy_timeout
            while True:
                try:
                    conn.execute("PRAGMA journal_mode=WAL")
                    conn.execute(f"PRAGMA wal_autocheckpoint={SIDE_CHECKPOINT_PAGES}")
                    conn.executescript(self.schema)
                    break
                except sqlite3.OperationalError:
                    if time.monotonic() > deadline:
                        conn.close()
                        raise
                    time.sleep(0.01)
            self._conn = conn
        return self._conn

    def run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """``fn(connection)`` under the lock, outside any explicit transaction (reads, single statements)."""
        with self._lock:
            return fn(self._db())

    def transaction(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """``fn(connection)`` in one ``BEGIN IMMEDIATE`` transaction: committed, or rolled back on any error."""
        with self._lock:
            db = self._db()
            db.execute("BEGIN IMMEDIATE")
            try:
                out = fn(db)
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
            return out

    async def arun(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        return await asyncio.to_thread(self.run, fn)

    async def atransaction(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        return await asyncio.to_thread(self.transaction, fn)

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None
