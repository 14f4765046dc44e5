"""A process's leases on its budgets' shared ledger (:mod:`.ledger`): what enforcement spends from.

Each budgeted request reserves its worst-case cost from this process's lease (:meth:`Leases.reserve`); a lease is
taken from the ledger when the one held cannot cover a request, renewed every tick, and returned when unused
(:meth:`Leases.give_back`). The holds of a process that stopped renewing them return to the ledger
(:meth:`Leases.heartbeat_and_reap`). So concurrent requests, in any process or replica, cannot all slip under
the limit together. What a request reserves and settles, and the spend figures, are :mod:`.budgets`'s.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import time
from collections.abc import Callable
from datetime import datetime
from typing import Final

from .budgetstate import Admission, BudgetState, Refusal, busy, exhausted
from .ledger import Ledger
from .tasks import Background

monotonic: Final = time.monotonic  # (a C static once compiled: see budgets.py)
log: Final = logging.getLogger("modeltrack.controls")

LEASE_FRACTION: Final = 0.02
"""A lease is 2 % of the limit (or one request's reservation, if larger): a busy budget costs a ledger round trip
every ~50 limit-fiftieths of spend, and a dead process can hold back at most that much.

**The early-refusal bound** (issue M, item 4): a process never keeps more unreserved money than one lease. A
lease is never larger than that (not one per waiting request), and what settled reservations leave over one
lease goes back to the ledger at once. So when the ledger cannot cover a request, what is neither spent nor
reserved is at most one lease in each other process, plus less than two of the refused request's reservations
(this process's leftover and the ledger's rest): 6 % of the limit, plus that, with 4 processes
(tests/test_controls.py::test_a_refusal_leaves_at_most_one_lease_per_other_process_unused)."""
LEASE_IDLE_SECONDS: Final = 1.0
LEASE_TTL_MIN_SECONDS: Final = 15.0
"""A hold whose owner stopped renewing it for this long (or 4 ticks, if longer) is returned to the ledger."""
STORE_TIMEOUT: Final = 5.0


class Leases:
    def __init__(
        self,
        ledger: Ledger,
        background: Background,
        refresh_seconds: float,
        clock: Callable[[], datetime],
        now: Callable[[], float],
    ) -> None:
        """``clock`` and ``now``: the budgets' clocks (a test's, or the real one), as an aware datetime and in
        epoch seconds. ``refresh_seconds``: how often the budgets tick (a hold lives 4 ticks)."""
        self.ledger = ledger
        self.background = background
        self.refresh_seconds = refresh_seconds
        self.clock = clock
        self._now = now
        self.owner = f"{os.getpid()}-{secrets.token_hex(6)}"  # whose holds these are, in the shared ledger

    async def reserve(self, st: BudgetState, need: int, adm: Admission) -> Refusal | None:
        """Reserve ``need`` for a request from this process's lease, taking a new lease from the ledger when it
        cannot cover it; a refusal when the budget is spent or the ledger has no lease left that large."""
        b = st.budget
        if st.spent >= b.limit_nano:
            return exhausted(st, self.clock())
        if need <= 0:
            return None
        now = monotonic()
        if st.free < need:
            if now < st.full_until and need > st.room:
                # The ledger said a moment ago that no lease this large is left: refuse without asking it again
                # (every refusal would otherwise cost a store transaction). Safe: at worst this refuses for
                # ``refresh_seconds`` while another process returns an unused lease.
                return self.held(st, need)
            st.waiting += 1
            try:
                async with st.lock:
                    if st.free < need:  # not covered by another request's lease fetch while we waited
                        lease = st.lease = max(need, round(b.limit_nano * LEASE_FRACTION))
                        deficit = max(0, -st.free)  # what earlier requests cost beyond their reservations
                        async with asyncio.timeout(STORE_TIMEOUT):
                            granted, after = await self.ledger.take(
                                st.key, lease + deficit, need + deficit, b.limit_nano, st.spent, self.owner, self.ttl
                            )
                        st.granted += granted
                        st.holding = st.holding or granted > 0
                        st.room = b.limit_nano - after
                        if st.free < need:
                            st.full_until = monotonic() + self.refresh_seconds
                            return self.held(st, need)
            finally:
                st.waiting -= 1
        st.used += need
        st.last_use = self._now()
        adm.hold(st, need)
        return None

    def held(self, st: BudgetState, need: int) -> Refusal:
        """The spend is below the limit, but reservations in flight (here or in other processes) hold the rest:
        a temporary refusal, ``budget_busy``. ``Retry-After`` is the earliest a reservation can free up for this
        request: when this process asks the ledger again (``full_until``), and no sooner than an idle lease
        elsewhere is returned (:data:`LEASE_IDLE_SECONDS`)."""
        if st.free > 0 and not st.waiting:
            # What is left of this process's lease cannot cover the requests arriving here: back to the ledger,
            # where it adds up with what other processes return.
            self.background.spawn(self.give_back(st))
        # Allocated to requests in flight or to other processes' leases: what could still come back.
        if st.budget.limit_nano - st.room - st.spent - max(st.free, 0) <= 0:
            return exhausted(st, self.clock(), need)
        return busy(st, need, max(st.full_until - monotonic(), LEASE_IDLE_SECONDS))

    async def give_back(self, st: BudgetState, amount: int | None = None) -> None:
        """Return ``amount`` (all of it when None) of the unused lease to the ledger."""
        free = st.free if amount is None else min(amount, st.free)
        if free <= 0:
            return
        st.granted -= free
        st.room += free  # on its way back to the ledger: what this process knows is left grows by as much
        try:
            await self.ledger.give_back(st.key, free, self.owner)
        except Exception as exc:  # noqa: BLE001 - kept allocated: the budget blocks early, never late
            log.warning("budget %s: could not return an unused lease (%s)", st.budget.name, type(exc).__name__)

    @property
    def ttl(self) -> float:
        """How long a hold lives unrenewed (:data:`LEASE_TTL_MIN_SECONDS`, or 4 ticks if longer)."""
        return max(LEASE_TTL_MIN_SECONDS, 4 * self.refresh_seconds)

    async def heartbeat_and_reap(self, st: BudgetState) -> None:
        """Keep this process's hold alive (with what it stored since), and return the holds of processes that
        stopped renewing theirs."""
        if st.holding:
            stored, st.stored_since = st.stored_since, 0
            if not await self.ledger.heartbeat(st.key, self.owner, stored, self.ttl):
                # Our hold was reaped (this process stalled past its TTL): the ledger no longer counts our free
                # lease, so it must not be spent. What is in flight settles as usual.
                log.warning(
                    "budget %s: this process's hold expired while it was alive; its lease is dropped", st.budget.name
                )
                st.granted, st.holding = st.used, False
        back = await self.ledger.reap(st.key, self.owner)
        if back:
            st.room += back
            log.info(
                "budget %s: $%.6f held by a process that stopped returned to the ledger", st.budget.name, back / 1e9
            )

    async def let_go(self, st: BudgetState) -> None:
        """At shutdown: the unused lease back to the ledger, and this process's hold released."""
        await self.give_back(st)
        if st.holding:
            await self.ledger.release(st.key, self.owner)
