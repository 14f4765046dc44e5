"""The budget ledger: one allocation counter per budget and period, shared by every process and replica through
the store, so that a budget holds across ``--workers N`` and across replicas.

Why a counter of *allocations* and not just the spend in the rollups: spend reaches the store only after a
request ends and its batch is flushed, so N processes reading the rollups can each admit the whole remainder at
once. Here money is taken from the counter *before* a request is sent, atomically and only if the counter stays
within the limit, so the sum of what every process may spend is never above the limit.

Processes take money in leases (a small slice of the limit, or exactly one request's reservation near the
limit) and spend reservations from their lease locally, so a budget costs a store round trip per lease, not per
request (:mod:`.budgets`). Unused lease money is given back when a process goes idle or the budget nears its
limit. A process that dies holding a lease leaves its unused part allocated until the period ends: the error is
on the safe side (the budget blocks early by at most one lease).

The counter is created on first use at ``seed``: the period's spend already in the rollups, so a budget added or
a ledger lost mid-period starts from what was really spent.
"""

from __future__ import annotations

import asyncio
import hashlib
import sqlite3
import threading
import time
from typing import Any, Protocol

TABLE = """
CREATE TABLE IF NOT EXISTS budget_ledger (
    key TEXT PRIMARY KEY,
    allocated_nano INTEGER NOT NULL,
    created TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
)
"""


def grant(allocated: int, limit: int, want: int, need: int) -> int:
    """How much of a request for ``want`` (at least ``need``) fits under ``limit``: the whole lease while there
    is room for it, then only exactly what is needed, then nothing."""
    room = limit - allocated
    if room >= want:
        return want
    if room >= need:
        return need
    return 0


class Ledger(Protocol):
    name: str

    async def take(self, key: str, want: int, need: int, limit: int, seed: int) -> tuple[int, int]:
        """Allocate per :func:`grant` (creating the counter at ``seed``): (granted, counter after)."""
        ...

    async def give_back(self, key: str, amount: int) -> None: ...

    async def allocated(self, key: str) -> int | None: ...

    async def close(self) -> None: ...


class MemoryLedger:
    """One process only (a JSON Lines store has no shared counters): budgets hold within this process."""

    name = "memory"

    def __init__(self) -> None:
        self._counters: dict[str, int] = {}

    async def take(self, key: str, want: int, need: int, limit: int, seed: int) -> tuple[int, int]:
        cur = self._counters.setdefault(key, seed)
        g = grant(cur, limit, want, need)
        self._counters[key] = cur + g
        return g, cur + g

    async def give_back(self, key: str, amount: int) -> None:
        if key in self._counters:
            self._counters[key] -= amount

    async def allocated(self, key: str) -> int | None:
        return self._counters.get(key)

    async def close(self) -> None:
        return None


class SQLiteLedger:
    """A row per counter in the store's database; each take is one ``BEGIN IMMEDIATE`` transaction, so
    processes on the same file serialise on SQLite's write lock."""

    name = "sqlite"

    def __init__(self, path: str, busy_timeout: float = 5.0) -> None:
        self.path = path
        self._conn: sqlite3.Connection | None = None
        self._lock = threading.Lock()
        self._busy = busy_timeout

    def _db(self) -> sqlite3.Connection:
        if self._conn is None:
            conn = sqlite3.connect(self.path, timeout=self._busy, isolation_level=None, check_same_thread=False)
            # Switching a new database to WAL takes an exclusive lock without waiting on the busy handler: when
            # several processes open it at once, retry (the store's writer has usually done it already).
            deadline = time.monotonic() + self._busy
            while True:
                try:
                    conn.execute("PRAGMA journal_mode=WAL")
                    conn.execute(TABLE)
                    break
                except sqlite3.OperationalError:
                    if time.monotonic() > deadline:
                        conn.close()
                        raise
                    time.sleep(0.01)
            self._conn = conn
        return self._conn

    def _take(self, key: str, want: int, need: int, limit: int, seed: int) -> tuple[int, int]:
        with self._lock:
            db = self._db()
            db.execute("BEGIN IMMEDIATE")
            try:
                db.execute("INSERT OR IGNORE INTO budget_ledger (key, allocated_nano) VALUES (?, ?)", (key, seed))
                (cur,) = db.execute("SELECT allocated_nano FROM budget_ledger WHERE key = ?", (key,)).fetchone()
                g = grant(cur, limit, want, need)
                if g:
                    db.execute("UPDATE budget_ledger SET allocated_nano = ? WHERE key = ?", (cur + g, key))
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
            return g, cur + g

    def _give_back(self, key: str, amount: int) -> None:
        with self._lock:
            self._db().execute(
                "UPDATE budget_ledger SET allocated_nano = allocated_nano - ? WHERE key = ?", (amount, key)
            )

    def _allocated(self, key: str) -> int | None:
        with self._lock:
            row = self._db().execute("SELECT allocated_nano FROM budget_ledger WHERE key = ?", (key,)).fetchone()
            return None if row is None else int(row[0])

    async def take(self, key: str, want: int, need: int, limit: int, seed: int) -> tuple[int, int]:
        return await asyncio.to_thread(self._take, key, want, need, limit, seed)

    async def give_back(self, key: str, amount: int) -> None:
        await asyncio.to_thread(self._give_back, key, amount)

    async def allocated(self, key: str) -> int | None:
        return await asyncio.to_thread(self._allocated, key)

    async def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None


class FirestoreLedger:
    """A document per counter (``COLLECTION_budget_ledger/{sha256(key)}``), changed only by atomic ``Increment``
    writes, whose result (the new total) comes back with the write: no transaction, so processes never wait on
    each other's locks.

    Taking is optimistic: add ``want``, read the total, and give back what does not fit. Increments are applied
    one after another, so each taker owns a distinct interval ``[total - want, total)`` of the counter, and keeps
    only its part below the limit: the grants held at any moment never sum past the limit, however many
    processes take at once.
    """

    name = "firestore"

    def __init__(self, sink: Any) -> None:
        self.sink = sink
        self._created: set[str] = set()

    def _doc(self, key: str) -> Any:
        return self.sink.collection_ref("budget_ledger").document(hashlib.sha256(key.encode()).hexdigest()[:40])

    async def _add(self, ref: Any, delta: int) -> int:
        from google.api_core import exceptions as gexc
        from google.cloud import firestore

        for attempt in range(5):
            try:
                result = await ref.update({"allocated_nano": firestore.Increment(delta)}, retry=None, timeout=5.0)
                return int(result.transform_results[0].integer_value)
            except gexc.Aborted:  # contention: not applied, safe to repeat
                if attempt == 4:
                    raise
                await asyncio.sleep(0.02 * 2**attempt)
        raise AssertionError("unreachable")

    async def take(self, key: str, want: int, need: int, limit: int, seed: int) -> tuple[int, int]:
        from google.api_core import exceptions as gexc

        ref = self._doc(key)
        if key not in self._created:
            try:
                await ref.create({"key": key, "allocated_nano": seed}, retry=None, timeout=5.0)
            except gexc.Conflict:
                pass  # another process created it first: its seed stands
            self._created.add(key)
        after = await self._add(ref, want)
        g = grant(after - want, limit, want, need)
        if g < want:
            after = await self._add(ref, g - want)
        return g, after

    async def give_back(self, key: str, amount: int) -> None:
        await self._add(self._doc(key), -amount)

    async def allocated(self, key: str) -> int | None:
        snap = await self._doc(key).get()
        return int(snap.get("allocated_nano")) if snap.exists else None

    async def close(self) -> None:
        return None


def open_ledger(store_url: str, sink: Any) -> Ledger:
    if store_url.startswith("sqlite://"):
        from ..sinks import _fs_path

        return SQLiteLedger(_fs_path(store_url, "sqlite://"))
    if store_url.startswith("firestore://"):
        return FirestoreLedger(sink)
    return MemoryLedger()
