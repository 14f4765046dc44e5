"""Budgets in the request path: admit or refuse before the upstream call, warn in headers and webhooks.

Two figures per budget and period, for two jobs:

* **spent**, what the headers, the warn thresholds, the routing triggers and ``controls status`` show: the
  period's spend in the store's hourly rollups (re-read every ``refresh_seconds``), plus the events this process
  recorded that are not stored yet, plus those it stored since the last read;
* **the lease**, what enforcement uses: money taken from the shared ledger (:mod:`.ledger`) before requests are
  sent (:mod:`.leases`). Each request reserves its worst-case cost (:mod:`.estimate`) from this process's lease
  and is settled to its real cost when it ends, so concurrent requests, in any process or replica, cannot all
  slip under the limit together. Overshoot happens only where a request costs more than its reservation
  (README, "Spend controls").

A request is refused when ``spent`` has reached the limit, or when no lease can cover its reservation. When the
store cannot be reached, a budget fails open (admits, counts ``modeltrack_budget_store_errors_total``) unless it
says ``on_store_error: closed``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime
from typing import Any, Final

from ..events import CostEvent
from ..metrics import Metrics
from ..query import Reader
from ..spent import Spent
from .budgetstate import Admission, BudgetState, Refusal
from .leases import LEASE_IDLE_SECONDS, STORE_TIMEOUT, Leases
from .ledger import Ledger
from .match import DIMENSIONS
from .spec import Budget
from .spend import Period, store_spend
from .tasks import Background

# The clocks as C statics: compiled, a call is then one indirect call, not an attribute lookup on the module
# (~30 ns a call, several a request).
monotonic: Final = time.monotonic
log: Final = logging.getLogger("modeltrack.controls")


class Budgets:
    def __init__(
        self,
        budgets: Iterable[Budget],
        ledger: Ledger,
        reader: Reader | None,
        metrics: Metrics,
        refresh_seconds: float,
        on_alert: Callable[[BudgetState, float], None] | None = None,
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        self.reader = reader
        self.metrics = metrics
        self.refresh_seconds = refresh_seconds
        self.on_alert = on_alert
        self.clock = clock or (lambda: datetime.now(UTC))
        # Epoch seconds, for the per-request period check: a float compare, not an aware datetime's.
        self._now: Callable[[], float] = time.time if clock is None else (lambda: self.clock().timestamp())
        # With the real clock, the request path passes the time it already read (the request's arrival, its
        # event's wall time) instead of reading the clock again: a call of ~180 CPU instructions each.
        self._clocked = clock is not None
        self.budgets: tuple[Budget, ...] = ()
        self._states: dict[str, BudgetState] = {}
        self._task: asyncio.Task[None] | None = None
        self.background = Background()
        self._last_error_log = 0.0
        self.leases = Leases(ledger, self.background, refresh_seconds, self.clock, self._now)
        self.replace(budgets)

    def replace(self, budgets: Iterable[Budget], refresh_seconds: float | None = None) -> None:
        """New definitions (a reload): a budget whose scope, period and time zone did not change keeps its state
        (spend, lease, alerts sent); its limit and thresholds may change. ``refresh_seconds``, when given, is the
        file's new interval: the ticks and the leases (a hold's time to live, how long a full ledger is believed)
        both follow it."""
        if refresh_seconds is not None:
            self.refresh_seconds = self.leases.refresh_seconds = refresh_seconds
        new = tuple(budgets)
        kept: dict[str, BudgetState] = {}
        for b in new:
            old = self._states.get(b.name)
            if old is not None and (old.budget.scope, old.budget.period, old.budget.timezone) == (
                b.scope,
                b.period,
                b.timezone,
            ):
                old.bind(b)
                kept[b.name] = old
        self.budgets = new
        self._states = kept
        self._matching: dict[tuple[Any, ...], tuple[Budget, ...]] = {}
        self._last_key: tuple[Any, ...] | None = None  # the last combination asked for, and its budgets
        self._last_matched: tuple[Budget, ...] = ()

    def state(self, budget: Budget) -> BudgetState:
        """The budget's state for the current period (a new one at rollover)."""
        st = self._states.get(budget.name)
        if st is not None:
            now = self._now()
            if st.start_ts <= now < st.end_ts:
                return st
        st = self._states[budget.name] = BudgetState(budget, Period.of(budget, self.clock()))
        return st

    def matching(self, values: Mapping[str, Any]) -> tuple[Budget, ...]:
        """The budgets whose scope ``values`` fall under (memoised per combination; cleared by a reload)."""
        return self._matching_key(tuple(values.get(d) for d in DIMENSIONS))

    def _matching_key(self, key: tuple[Any, ...]) -> tuple[Budget, ...]:
        # The same combination as the last request's (a busy team, app and model): a tuple comparison, mostly of
        # identical strings (CPython's checks identity first), where hashing the 8-tuple and looking it up costs
        # ~900 CPU instructions.
        if key == self._last_key:
            return self._last_matched
        found = self._matching.get(key)
        if found is None:
            if len(self._matching) >= 4096:
                self._matching.clear()
            values = dict(zip(DIMENSIONS, key, strict=True))
            found = self._matching[key] = tuple(b for b in self.budgets if b.scope.matches(values))
        self._last_key, self._last_matched = key, found
        return found

    # -- admission --------------------------------------------------------------------------------------------
    def admit_now(
        self, matched: tuple[Budget, ...], reserve_nano: int, now: float | None = None, into: Admission | None = None
    ) -> Admission | None:
        """:meth:`admit` without awaiting, for the common case: every budget's state is current and read from the
        store, none is spent, and this process's lease covers the reservation. None otherwise, with nothing
        reserved: the caller awaits :meth:`admit`, which refreshes, asks the ledger or refuses. Same outcome, no
        coroutine per request (tests/test_budget_bounds.py::test_the_lease_is_reserved_from_without_awaiting).
        ``now``: the request's arrival in epoch seconds, when the caller has read the clock already. ``into``: an
        empty admission to fill and return (the request's decision) instead of a new one; left empty on None."""
        adm = Admission() if into is None else into
        if now is None or self._clocked:
            now = self._now()
        states = self._states
        for budget in matched:
            st = states.get(budget.name)
            if st is None or st.refreshed_at is None or not st.start_ts <= now < st.end_ts:
                self.release(adm)
                adm.headers = ()
                return None
            spent = st.store_spent + st.pending_total
            if st.block:
                if spent >= st.limit_nano or (reserve_nano > 0 and st.granted - st.used < reserve_nano):
                    self.release(adm)
                    adm.headers = ()
                    return None
                if reserve_nano > 0:
                    st.used += reserve_nano
                    st.last_use = now
                    adm.hold(st, reserve_nano)
            if 0 <= st.warn_from <= spent:
                adm.headers += (st.header(),)
        return adm

    async def admit(self, matched: Iterable[Budget], reserve_nano: int) -> Admission:
        """Check a request against the budgets it matched (:meth:`matching`), reserving ``reserve_nano``."""
        adm = Admission()
        for budget in matched:
            st = self.state(budget)
            try:
                if st.refreshed_at is None:
                    await self._refresh(st)
                if budget.action == "block":
                    refusal = await self.leases.reserve(st, reserve_nano, adm)
                    if refusal is not None:
                        self.release(adm)
                        self.metrics.budget_blocked.labels(budget.name).inc()
                        return Admission(refusal=refusal)
            except Exception as exc:  # noqa: BLE001 - the store is down or slow: fail open or closed
                refusal = self._store_error(st, exc)
                if refusal is not None:
                    self.release(adm)
                    return Admission(refusal=refusal)
            if 0 <= st.warn_from <= st.spent:
                adm.headers += (st.header(),)
        return adm

    def _store_error(self, st: BudgetState, exc: BaseException) -> Refusal | None:
        b = st.budget
        outcome = "refused" if b.on_store_error == "closed" else "admitted"
        self.metrics.budget_store_errors.labels(b.name, outcome).inc()
        now = monotonic()
        if now - self._last_error_log > 30:
            self._last_error_log = now
            log.warning(
                "budget %s: the store could not be reached (%s); failing %s",
                b.name,
                type(exc).__name__,
                "closed" if outcome == "refused" else "open",
            )
        if outcome == "admitted":
            return None
        return Refusal(
            503,
            "budget_unavailable",
            f"Budget '{b.name}' cannot be checked: the store is unreachable, and the budget fails closed.",
            b.name,
            5,
        )

    def release(self, adm: Admission) -> None:
        st, amount = adm.first, adm.amount
        if st is not None:
            st.used -= amount
            if adm.more is not None:
                for other in adm.more:
                    other.used -= amount
        adm.first = adm.more = None

    def settle(self, adm: Admission, ev: CostEvent) -> None:
        """The request ended: its reservation becomes its real cost."""
        if adm.first is not None:
            self.settle_nano(adm, Spent.of(ev).settle_nano)

    def settle_nano(self, adm: Admission, cost: int) -> None:
        """:meth:`settle`, with the cost the recorder worked out (:attr:`modeltrack.spent.Spent.settle_nano`)."""
        st = adm.first
        if st is None:
            return
        amount = adm.amount
        self._settle(st, amount, cost)
        if adm.more is not None:
            for other in adm.more:
                self._settle(other, amount, cost)
        adm.first = adm.more = None

    def _settle(self, st: BudgetState, amount: int, cost: int) -> None:
        # (Not a use of the lease: an admission is. A lease whose last admission is a second old is returned at
        # the next tick, whatever settles after it: test_budget_bounds.py::test_an_idle_lease_goes_back_to_the_ledger.)
        st.used += (amount if cost < 0 else cost) - amount
        if st.granted - st.used > st.lease > 0:  # more free than one lease (BudgetState.free, inline)
            # A reservation settled below its worst case: keep one lease, return the rest now (the bound).
            self.background.spawn(self.leases.give_back(st, st.free - st.lease))

    # -- spend ------------------------------------------------------------------------------------------------
    def on_recorded(self, ev: CostEvent) -> None:
        if ev.cost_usd and self.budgets:
            self.on_spent(Spent.of(ev))

    def on_spent(self, spent: Spent) -> None:
        """A request was recorded: its cost counts as pending spend until the store has it (:meth:`on_stored`)."""
        cost = spent.cost_nano
        if not cost or not self.budgets:
            return
        matched = self._matching_key(spent.key)
        if not matched:
            return
        stamp, rid, wall = spent.stamp, spent.rid, spent.wall
        # Is the state the current period's? Asked at the request's own time (NaN when not known: every comparison
        # is false, and self.state reads the clock).
        states, now = self._states, self._now() if self._clocked else wall
        for budget in matched:
            st = states.get(budget.name)
            if st is None or not st.start_ts <= now < st.end_ts:
                st = self.state(budget)  # (its first event, or a new period: the usual event skips the call)
            # Period.contains(stamp), inline. The stamp is written from ``wall`` to the millisecond, so a wall time
            # more than a millisecond inside the period is inside it: two float comparisons, where comparing the
            # strings costs two generic calls (~600 CPU instructions). Near an edge, or with no wall time (NaN,
            # every comparison false), the strings decide, as before.
            if st.start_ts + 0.001 <= wall < st.end_ts - 0.001 or st.lo <= stamp < st.hi:
                st.pending[rid] = cost
                st.pending_total += cost
                if st.warn_from >= 0:
                    self._check_thresholds(st)

    def on_stored(self, events: list[CostEvent]) -> None:
        if not self._states:
            return
        states = tuple(self._states.values())
        for ev in events:
            rid = ev.request_id
            for st in states:
                cost = st.pending.get(rid)  # (get and del: C calls once compiled; dict.pop is a method call)
                if cost is not None:
                    del st.pending[rid]
                    st.pending_total -= cost
                    st.store_spent += cost
                    st.stored_since += cost

    async def _refresh(self, st: BudgetState) -> None:
        if self.reader is None:
            st.refreshed_at = monotonic()
            return
        async with asyncio.timeout(STORE_TIMEOUT):
            st.store_spent = await store_spend(self.reader, st.budget, st.period, self.clock())
        st.refreshed_at = monotonic()
        self._check_thresholds(st)

    def _check_thresholds(self, st: BudgetState) -> None:
        b = st.budget
        crossed = [w for w in b.warn_at if w not in st.alerted and st.spent >= w / 100 * b.limit_nano]
        if not crossed:
            return
        st.alerted.update(crossed)
        if self.on_alert is not None:
            self.on_alert(st, max(crossed))  # lower thresholds crossed at the same time are not posted separately

    # -- lifecycle --------------------------------------------------------------------------------------------
    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="modeltrack-budgets")

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.refresh_seconds)
            await self.tick()

    async def tick(self) -> None:
        """Re-read spend from the store; return leases with no admission for a second."""
        now = self._now()  # (``last_use`` is the last admission's time, on the budgets' clock)
        for budget in self.budgets:
            st = self.state(budget)
            try:
                await self._refresh(st)
            except Exception as exc:  # noqa: BLE001 - shown as a store error; figures stay as they were
                self._store_error(st, exc)
            if st.free > 0 and now - st.last_use > LEASE_IDLE_SECONDS:
                await self.leases.give_back(st)
            try:
                await self.leases.heartbeat_and_reap(st)
            except Exception as exc:  # noqa: BLE001 - the next tick tries again; a hold lives 4 ticks
                self._store_error(st, exc)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(BaseException):
                await self._task
            self._task = None
        await self.background.drain()
        for st in self._states.values():
            with contextlib.suppress(Exception):
                await self.leases.let_go(st)
