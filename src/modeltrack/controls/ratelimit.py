"""Rate limits (RPM and TPM per key, team or org), shared by every process and replica through the store.

The rule is a token bucket per scope: it holds a minute's worth (``limit``) and refills continuously at
``limit`` per minute, so a quiet key may send its whole minute at once and then ``limit`` per minute. Kept as
GCRA (one number per scope, the bucket's "theoretical arrival time"), so a change is one small atomic write.
Over any ``t`` seconds a scope admits at most ``limit × (1 + t / 60)``, however many processes share it
(README, "Rate limits"; tests/test_ratelimits.py::test_four_processes_stay_within_the_limit).

Processes take cells in leases (a slice of the limit, as budgets do) and spend them locally, so a busy scope
costs a store round trip per lease, not per request; a lease unused for a second goes back. A lease is taken
from the shared bucket before any of it is spent, so leases never admit more than the bucket allows; they can
only refuse a little early (at most one lease per other process).

TPM reserves the request's worst case (the same bound as a budget's reservation) and settles to the real tokens
when the response is metered: the difference goes back to the lease. A refusal is a 429 ``rate_limited`` whose
``Retry-After`` is the seconds until the bucket holds enough for this request, from the shared state.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import sqlite3
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final, Protocol

from mypy_extensions import mypyc_attr

from ..spent import limit_tokens
from ..sqlitedb import SideDB

if TYPE_CHECKING:
    from ..events import CostEvent

# The clocks as C statics: compiled, a call is then one indirect call, not an attribute lookup on the module
# (~30 ns a call, several a request).
monotonic: Final = time.monotonic
wall_clock: Final = time.time
log: Final = logging.getLogger("modeltrack.controls")

WINDOW: Final = 60.0
LEASE_FRACTION: Final = 0.05
LEASE_IDLE_SECONDS: Final = 1.0


def gcra(tat: float, now: float, want: float, need: float, interval: float) -> tuple[float, float, float]:
    """(granted, new tat, retry_after): ``want`` cells if the bucket holds them, else ``need``, else none and
    the seconds until ``need`` fits."""
    base = max(tat, now)
    for n in (want, need):
        new = base + n * interval
        if new - now <= WINDOW + 1e-9:
            return n, new, 0.0
    return 0.0, tat, base + need * interval - WINDOW - now


class RateLedger(Protocol):
    async def take(self, key: str, want: float, need: float, interval: float) -> tuple[float, float]:
        """(granted, retry_after)."""
        ...

    async def give_back(self, key: str, cells: float, interval: float) -> None: ...

    async def close(self) -> None: ...


@mypyc_attr(allow_interpreted_subclasses=True)  # (tests/test_ratelimits.py counts its calls)
class MemoryRateLedger:
    def __init__(self) -> None:
        self.tat: dict[str, float] = {}

    async def take(self, key: str, want: float, need: float, interval: float) -> tuple[float, float]:
        granted, self.tat[key], retry = gcra(self.tat.get(key, 0.0), wall_clock(), want, need, interval)
        return granted, retry

    async def give_back(self, key: str, cells: float, interval: float) -> None:
        if key in self.tat:
            self.tat[key] -= cells * interval

    async def close(self) -> None:
        return None


BUCKETS: Final = "CREATE TABLE IF NOT EXISTS rate_buckets (key TEXT PRIMARY KEY, tat REAL NOT NULL)"


class SQLiteRateLedger:
    """One row per scope in the store's database; a take is one ``BEGIN IMMEDIATE`` transaction."""

    def __init__(self, path: str, busy_timeout: float = 5.0) -> None:
        self.path = path
        self.db = SideDB(
            path, "CREATE TABLE IF NOT EXISTS rate_buckets (key TEXT PRIMARY KEY, tat REAL NOT NULL)", busy_timeout
        )

    async def take(self, key: str, want: float, need: float, interval: float) -> tuple[float, float]:
        def go(db: sqlite3.Connection) -> tuple[float, float]:
            row = db.execute("SELECT tat FROM rate_buckets WHERE key = ?", (key,)).fetchone()
            granted, tat, retry = gcra(row[0] if row else 0.0, wall_clock(), want, need, interval)
            if granted:
                db.execute(
                    "INSERT INTO rate_buckets (key, tat) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET tat = ?",
                    (key, tat, tat),
                )
            return granted, retry

        return await self.db.atransaction(go)

    async def give_back(self, key: str, cells: float, interval: float) -> None:
        def go(db: sqlite3.Connection) -> None:
            db.execute("UPDATE rate_buckets SET tat = tat - ? WHERE key = ?", (cells * interval, key))

        await self.db.arun(go)

    async def close(self) -> None:
        self.db.close()


class FirestoreRateLedger:
    """A document per scope (``{COLLECTION}_rate_buckets``), changed by compare-and-set: read it, compute, write
    with the read's ``update_time`` as a precondition, and read again if another process wrote first. No
    transaction, so no process waits on another's lock (the emulator's, and Firestore's, pessimistic
    transactions time out under this kind of contention); leases keep the writes to a few per minute."""

    ATTEMPTS = 20

    def __init__(self, sink: Any) -> None:
        self.sink = sink

    def _doc(self, key: str) -> Any:
        import hashlib

        return self.sink.collection_ref("rate_buckets").document(hashlib.sha256(key.encode()).hexdigest()[:40])

    async def take(self, key: str, want: float, need: float, interval: float) -> tuple[float, float]:
        import random

        from google.api_core import exceptions as gexc

        ref = self._doc(key)
        for attempt in range(self.ATTEMPTS):
            snap = await ref.get()
            tat0 = float(snap.get("tat")) if snap.exists else 0.0
            granted, tat, retry = gcra(tat0, wall_clock(), want, need, interval)
            if not granted:
                return 0.0, retry
            try:
                if snap.exists:
                    option = self.sink.client.write_option(last_update_time=snap.update_time)
                    await ref.update({"tat": tat}, option=option)
                else:
                    await ref.create({"key": key, "tat": tat})
                return granted, 0.0
            except (gexc.FailedPrecondition, gexc.Conflict, gexc.Aborted):
                await asyncio.sleep(random.uniform(0, 0.005 * (attempt + 1)))  # another process wrote first
        raise RuntimeError(f"rate bucket still contended after {self.ATTEMPTS} attempts")

    async def give_back(self, key: str, cells: float, interval: float) -> None:
        from google.cloud import firestore

        await self._doc(key).update({"tat": firestore.Increment(-cells * interval)})

    async def close(self) -> None:
        return None


def real_tokens(ev: CostEvent | None) -> int | None:
    """:func:`modeltrack.spent.limit_tokens` of a recorded event (None for no event)."""
    if ev is None:
        return None
    total = ev.input_tokens + ev.output_tokens + ev.cache_read_tokens + ev.cache_write_tokens
    return limit_tokens(ev.status, ev.cache_hit, ev.usage_source, total)


def open_rate_ledger(store_url: str, sink: Any) -> RateLedger:
    if store_url.startswith("sqlite://"):
        from ..sinks import _fs_path

        return SQLiteRateLedger(_fs_path(store_url, "sqlite://"))
    if store_url.startswith("firestore://"):
        return FirestoreRateLedger(sink)
    return MemoryRateLedger()


@dataclass(slots=True)
class _Lease:
    cells: float = 0.0
    interval: float = 1.0
    last_use: float = 0.0
    empty_until: float = 0.0  # monotonic: the bucket said it holds nothing for us until then
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


@dataclass(frozen=True, slots=True)
class Limit:
    """One bucket a request draws from: ``scope`` names it (``key:key_…:tpm``), ``per_minute`` its size."""

    scope: str
    per_minute: int
    unit: str  # "requests" or "tokens"
    # Worked out once, read per request (RateLimiter.take_now):
    tokens: bool = field(init=False, compare=False)  # a TPM limit: a request costs its worst-case tokens
    interval: float = field(init=False, compare=False)  # the bucket's seconds per cell

    def __post_init__(self) -> None:
        object.__setattr__(self, "tokens", self.unit == "tokens")
        object.__setattr__(self, "interval", WINDOW / self.per_minute)


@dataclass(slots=True, init=False)
class Ticket:
    """What a request took, to settle TPM to the real tokens: the limits it drew from (the key's own tuple, not a
    copy) and what a TPM limit took; an RPM limit took one. One record per keyed request, not a list of pairs:
    each object a request keeps alive until it ends is also work for the garbage collector (bench/README.md)."""

    limits: tuple[Limit, ...]
    cells: float  # what each TPM limit took: the request's worst-case tokens (at least 1)
    bounds: tuple[int, int] | None = None  # those worst-case (input, output) tokens, handed on to the budgets

    def __init__(self, limits: tuple[Limit, ...], cells: float, bounds: tuple[int, int] | None = None) -> None:
        # Not the dataclass's: compiled, it is a direct call, not an interpreted __init__ (~1,400 instructions).
        self.limits = limits
        self.cells = cells
        self.bounds = bounds


@dataclass(frozen=True)
class RateRefusal:
    message: str
    retry_after: int


class RateLimiter:
    def __init__(self, ledger: RateLedger) -> None:
        self.ledger = ledger
        self.leases: dict[str, _Lease] = {}
        self.store_errors = 0
        self._last_error_log = 0.0
        self._task: asyncio.Task[None] | None = None

    def take_now(self, limits: tuple[Limit, ...], tokens: int, bounds: tuple[int, int] | None = None) -> Ticket | None:
        """:meth:`admit` without awaiting, when this process's leases already cover the request (nearly every
        request: a lease holds a tenth of a minute's bucket); None when one does not, and nothing is taken: the
        caller then awaits :meth:`admit`, which asks the shared bucket. Same outcome, no coroutine per request
        (tests/test_ratelimit.py::test_leases_are_taken_without_the_store_until_they_run_out)."""
        leases = self.leases
        cells = float(max(tokens, 1))
        now = monotonic()
        i = 0
        for lim in limits:
            lease = leases.get(lim.scope)
            cost = cells if lim.tokens else 1.0
            if lease is None or lease.cells < cost or lease.interval != lim.interval:
                self._put_back(limits, i, cells)
                return None
            lease.cells -= cost
            lease.last_use = now
            i += 1
        return Ticket(limits, cells, bounds)

    async def admit(
        self, limits: tuple[Limit, ...], tokens: int, bounds: tuple[int, int] | None = None
    ) -> Ticket | RateRefusal:
        """Take one request (RPM) or ``tokens`` (TPM, the worst case) from every bucket, or none of them."""
        cells = float(max(tokens, 1))
        i = 0
        for lim in limits:
            cost = cells if lim.tokens else 1.0
            retry = await self._take(lim, cost)
            if retry is not None:
                self._put_back(limits, i, cells)  # back to the leases: nothing was sent
                what = "tokens" if lim.tokens else "requests"
                return RateRefusal(
                    f"Rate limit {lim.scope.rsplit(':', 1)[0]}: {lim.per_minute:,} {what} per minute; "
                    f"this request needs {cost:,.0f}; retry in {retry} s.",
                    retry,
                )
            i += 1
        return Ticket(limits, cells, bounds)

    def _put_back(self, limits: tuple[Limit, ...], n: int, cells: float) -> None:
        """What the first ``n`` of ``limits`` took for a request that is not sent after all."""
        for lim in limits[:n]:
            self.leases[lim.scope].cells += cells if lim.tokens else 1.0

    async def _take(self, lim: Limit, cost: float) -> int | None:
        interval = lim.interval
        lease = self.leases.get(lim.scope)
        if lease is None:
            lease = self.leases[lim.scope] = _Lease(interval=interval)
        lease.interval = interval
        lease.last_use = monotonic()
        if lease.cells >= cost:
            lease.cells -= cost
            return None
        if cost > lim.per_minute:
            return math.ceil(WINDOW)  # larger than a whole minute's bucket: never fits
        now = monotonic()
        if now < lease.empty_until:
            # The shared bucket said a moment ago when it refills: refuse without asking it again (a flood of
            # refused requests would otherwise cost a store transaction each). Other processes' returned leases
            # may free cells sooner: this only ever refuses early.
            return max(1, math.ceil(lease.empty_until - now))
        async with lease.lock:
            if lease.cells >= cost:
                lease.cells -= cost
                return None
            need = cost - lease.cells  # a debt from an earlier settle is paid here too
            want = max(need, math.ceil(lim.per_minute * LEASE_FRACTION))
            try:
                granted, retry = await self.ledger.take(lim.scope, want, need, interval)
            except Exception as exc:  # noqa: BLE001 - the store is down or contended: fail open, and say so
                self.store_errors += 1
                if now - self._last_error_log > 30:
                    self._last_error_log = now
                    log.warning("rate limits: the store did not answer (%s); admitting", type(exc).__name__)
                return None
            if not granted:
                lease.empty_until = monotonic() + min(retry, interval * need)
                return max(1, math.ceil(retry))
            lease.cells += granted - cost
            return None

    def settle(self, ticket: Ticket, real_tokens: int | None) -> None:
        """The response was metered: a TPM reservation becomes the real tokens (None: unknown, keep it)."""
        if real_tokens is None:
            return
        for lim in ticket.limits:
            if lim.tokens:
                self.leases[lim.scope].cells += ticket.cells - real_tokens  # may go negative: paid at the next take

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="modeltrack-ratelimits")

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(LEASE_IDLE_SECONDS)
            now = monotonic()
            for scope, lease in list(self.leases.items()):
                if lease.cells > 0 and now - lease.last_use > LEASE_IDLE_SECONDS and not lease.lock.locked():
                    cells, lease.cells = lease.cells, 0.0
                    try:
                        await self.ledger.give_back(scope, cells, lease.interval)
                    except Exception:  # noqa: BLE001 - kept taken: the scope refuses early, never late
                        pass

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(BaseException):
                await self._task
            self._task = None
        for scope, lease in self.leases.items():
            if lease.cells > 0:
                with contextlib.suppress(Exception):
                    await self.ledger.give_back(scope, lease.cells, lease.interval)
                lease.cells = 0.0
        await self.ledger.close()
