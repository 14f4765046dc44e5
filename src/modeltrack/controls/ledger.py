"""The budget ledger: one allocation counter per budget and period, shared by every process and replica through
the store, so that a budget holds across ``--workers N`` and across replicas.

Why a counter of *allocations* and not just the spend in the rollups: spend reaches the store only after a
request ends and its batch is flushed, so N processes reading the rollups can each admit the whole remainder at
once. Here money is taken from the counter *before* a request is sent, atomically and only if the counter stays
within the limit, so the sum of what every process may spend is never above the limit.

Processes take money in leases (a small slice of the limit, or exactly one request's reservation near the
limit) and spend reservations from their lease locally, so a budget costs a store round trip per lease, not per
request (:mod:`.budgets`). Unused lease money is given back when a process goes idle or the budget nears its
limit.

**Holds.** What each process holds (its leases, less what of them has reached the store as spend) is kept
beside the counter with an owner and an expiry that the owner renews at every budget tick (its heartbeat). A
process killed with SIGKILL stops renewing: once its hold has expired (``ttl``, at least 15 s), the next tick of
any other process returns it to the counter (``reap``), so a dead process's lease and in-flight reservations come
back within ``ttl`` plus one tick instead of at the period's end. The error of a reap is bounded by what the dead
process spent in its last heartbeat interval and had not yet stored: money the counter then briefly does not
see (README, "Spend controls"; tests/test_controls.py::test_a_dead_holders_lease_returns_after_its_ttl).

The counter is created on first use at ``seed``: the period's spend already in the rollups, so a budget added or
a ledger lost mid-period starts from what was really spent.
"""

from __future__ import annotations

import asyncio
import hashlib
import sqlite3
import time
from typing import Any, Protocol

from ..sqlitedb import SideDB

TABLE = """
CREATE TABLE IF NOT EXISTS budget_ledger (
    key TEXT PRIMARY KEY,
    allocated_nano INTEGER NOT NULL,
    created TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
)
"""
HOLDS = """
CREATE TABLE IF NOT EXISTS budget_holds (
    key TEXT NOT NULL, owner TEXT NOT NULL, held_nano INTEGER NOT NULL, expires REAL NOT NULL,
    PRIMARY KEY (key, owner)
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

    async def take(
        self, key: str, want: int, need: int, limit: int, seed: int, owner: str = "", ttl: float = 60.0
    ) -> tuple[int, int]:
        """Allocate per :func:`grant` (creating the counter at ``seed``) and add it to ``owner``'s hold:
        (granted, counter after)."""
        ...

    async def give_back(self, key: str, amount: int, owner: str = "") -> None: ...

    async def heartbeat(self, key: str, owner: str, stored: int, ttl: float) -> bool:
        """Renew ``owner``'s hold and take ``stored`` (its spend that reached the store) out of it; False when
        the hold is gone (reaped: the owner must not spend its local lease)."""
        ...

    async def reap(self, key: str, owner: str) -> int:
        """Return every expired hold of another owner to the counter; the amount returned."""
        ...

    async def release(self, key: str, owner: str) -> None:
        """A clean stop: forget ``owner``'s hold, leaving the counter as it is (what remains of the hold is spend
        on its way to the store)."""
        ...

    async def allocated(self, key: str) -> int | None: ...

    async def close(self) -> None: ...


class MemoryLedger:
    """One process only (a JSON Lines store has no shared counters): budgets hold within this process."""

    name = "memory"

    def __init__(self) -> None:
        self._counters: dict[str, int] = {}

    async def take(
        self, key: str, want: int, need: int, limit: int, seed: int, owner: str = "", ttl: float = 60.0
    ) -> tuple[int, int]:
        cur = self._counters.setdefault(key, seed)
        g = grant(cur, limit, want, need)
        self._counters[key] = cur + g
        return g, cur + g

    async def give_back(self, key: str, amount: int, owner: str = "") -> None:
        if key in self._counters:
            self._counters[key] -= amount

    async def heartbeat(self, key: str, owner: str, stored: int, ttl: float) -> bool:
        return True  # one process: nothing to reap

    async def reap(self, key: str, owner: str) -> int:
        return 0

    async def release(self, key: str, owner: str) -> None:
        return None

    async def allocated(self, key: str) -> int | None:
        return self._counters.get(key)

    async def close(self) -> None:
        return None


class SQLiteLedger:
    """A row per counter and a row per holder in the store's database; each change is one ``BEGIN IMMEDIATE``
    transaction, so processes on the same file serialise on SQLite's write lock."""

    name = "sqlite"

    def __init__(self, path: str, busy_timeout: float = 5.0) -> None:
        self.path = path
        self.db = SideDB(path, TABLE + ";" + HOLDS, busy_timeout)

    async def take(
        self, key: str, want: int, need: int, limit: int, seed: int, owner: str = "", ttl: float = 60.0
    ) -> tuple[int, int]:
        def go(db: sqlite3.Connection) -> tuple[int, int]:
            db.execute("INSERT OR IGNORE INTO budget_ledger (key, allocated_nano) VALUES (?, ?)", (key, seed))
            (cur,) = db.execute("SELECT allocated_nano FROM budget_ledger WHERE key = ?", (key,)).fetchone()
            g = grant(cur, limit, want, need)
            if g:
                db.execute("UPDATE budget_ledger SET allocated_nano = ? WHERE key = ?", (cur + g, key))
                db.execute(
                    "INSERT INTO budget_holds (key, owner, held_nano, expires) VALUES (?, ?, ?, ?) "
                    "ON CONFLICT (key, owner) DO UPDATE SET held_nano = held_nano + excluded.held_nano, "
                    "expires = excluded.expires",
                    (key, owner, g, time.time() + ttl),
                )
            return g, cur + g

        return await self.db.atransaction(go)

    async def give_back(self, key: str, amount: int, owner: str = "") -> None:
        def go(db: sqlite3.Connection) -> None:
            db.execute("UPDATE budget_ledger SET allocated_nano = allocated_nano - ? WHERE key = ?", (amount, key))
            db.execute(
                "UPDATE budget_holds SET held_nano = held_nano - ? WHERE key = ? AND owner = ?", (amount, key, owner)
            )

        await self.db.atransaction(go)

    async def heartbeat(self, key: str, owner: str, stored: int, ttl: float) -> bool:
        def go(db: sqlite3.Connection) -> bool:
            cur = db.execute(
                "UPDATE budget_holds SET held_nano = held_nano - ?, expires = ? WHERE key = ? AND owner = ?",
                (stored, time.time() + ttl, key, owner),
            )
            return cur.rowcount > 0

        return await self.db.atransaction(go)

    async def reap(self, key: str, owner: str) -> int:
        def go(db: sqlite3.Connection) -> int:
            rows = db.execute(
                "SELECT owner, held_nano FROM budget_holds WHERE key = ? AND owner != ? AND expires < ?",
                (key, owner, time.time()),
            ).fetchall()
            back = sum(max(int(held), 0) for _, held in rows)
            for dead, _ in rows:
                db.execute("DELETE FROM budget_holds WHERE key = ? AND owner = ?", (key, dead))
            if back:
                db.execute("UPDATE budget_ledger SET allocated_nano = allocated_nano - ? WHERE key = ?", (back, key))
            return back

        return await self.db.atransaction(go)

    async def release(self, key: str, owner: str) -> None:
        def go(db: sqlite3.Connection) -> None:
            db.execute("DELETE FROM budget_holds WHERE key = ? AND owner = ?", (key, owner))

        await self.db.arun(go)

    async def allocated(self, key: str) -> int | None:
        def go(db: sqlite3.Connection) -> int | None:
            row = db.execute("SELECT allocated_nano FROM budget_ledger WHERE key = ?", (key,)).fetchone()
            return None if row is None else int(row[0])

        return await self.db.arun(go)

    async def close(self) -> None:
        self.db.close()


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

    def _hold(self, key: str, owner: str) -> Any:
        digest = hashlib.sha256(f"{key}\0{owner}".encode()).hexdigest()[:40]
        return self.sink.collection_ref("budget_holds").document(digest)

    async def take(
        self, key: str, want: int, need: int, limit: int, seed: int, owner: str = "", ttl: float = 60.0
    ) -> tuple[int, int]:
        from google.api_core import exceptions as gexc
        from google.cloud import firestore

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
        if g:
            # Not in one commit with the counter (its new total is needed first): a crash in between strands at
            # most this grant, as before holds existed; the safe side.
            await self._hold(key, owner).set(
                {"key": key, "owner": owner, "held_nano": firestore.Increment(g), "expires": time.time() + ttl},
                merge=True,
            )
        return g, after

    async def give_back(self, key: str, amount: int, owner: str = "") -> None:
        from google.cloud import firestore

        batch = self.sink.client.batch()
        batch.update(self._doc(key), {"allocated_nano": firestore.Increment(-amount)})
        batch.set(
            self._hold(key, owner), {"key": key, "owner": owner, "held_nano": firestore.Increment(-amount)}, merge=True
        )
        await batch.commit()

    async def heartbeat(self, key: str, owner: str, stored: int, ttl: float) -> bool:
        from google.api_core import exceptions as gexc
        from google.cloud import firestore

        try:
            await self._hold(key, owner).update(
                {"held_nano": firestore.Increment(-stored), "expires": time.time() + ttl}
            )
        except gexc.NotFound:
            return False
        return True

    async def reap(self, key: str, owner: str) -> int:
        """Each expired hold is deleted and returned to the counter in one atomic commit, on the condition that
        the hold was not renewed since it was read (its owner is alive after all: left alone)."""
        from google.api_core import exceptions as gexc
        from google.cloud import firestore
        from google.cloud.firestore_v1.base_query import FieldFilter

        q = self.sink.collection_ref("budget_holds").where(filter=FieldFilter("key", "==", key))
        back = 0
        async for snap in q.stream():
            d = snap.to_dict() or {}
            if d.get("owner") == owner or float(d.get("expires", 0)) >= time.time():
                continue
            held = max(int(d.get("held_nano", 0)), 0)
            batch = self.sink.client.batch()
            batch.delete(snap.reference, option=self.sink.client.write_option(last_update_time=snap.update_time))
            if held:
                batch.update(self._doc(key), {"allocated_nano": firestore.Increment(-held)})
            try:
                await batch.commit()
                back += held
            except (gexc.FailedPrecondition, gexc.NotFound, gexc.Aborted):
                continue  # renewed or reaped by another process meanwhile
        return back

    async def release(self, key: str, owner: str) -> None:
        await self._hold(key, owner).delete()

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
