"""A budget's state in this process for one period (:class:`BudgetState`: its spend, lease and reservations), and
what an admission answers (:class:`Admission`, a :class:`Refusal` and what it says). The rules that move them are
:class:`modeltrack.controls.budgets.Budgets`'s."""

from __future__ import annotations

import asyncio
import math
from dataclasses import dataclass
from datetime import datetime

from ..query.times import stamp
from .spec import Budget
from .spend import UNIT, Period


class BudgetState:
    """One budget in one period, in this process.

    What every budgeted request reads (the budget's name, action, limit and first warning threshold, the
    period's bounds) is copied here from the frozen :class:`Budget` and :class:`Period` (:meth:`bind`): this class
    is compiled (scripts/compile), so each read is a native field, not an interpreted object's attribute lookup
    (a dozen of those were a third of a budget's cost on the request path, bench/README.md)."""

    __slots__ = (
        "alerted",
        "block",
        "budget",
        "end_ts",
        "full_until",
        "granted",
        "hi",
        "holding",
        "key",
        "last_use",
        "lease",
        "limit_nano",
        "lo",
        "lock",
        "name",
        "pending",
        "pending_total",
        "period",
        "refreshed_at",
        "room",
        "start_ts",
        "store_spent",
        "stored_since",
        "used",
        "waiting",
        "warn_from",
    )

    def __init__(self, budget: Budget, period: Period) -> None:
        self.period = period
        self.start_ts, self.end_ts = period.start_ts, period.end_ts  # epoch seconds: the admission's check
        self.lo, self.hi = period.lo, period.hi  # stored timestamps: the recorded event's check
        self.bind(budget)
        self.key = f"{budget.name}|{stamp(period.start)}"
        self.store_spent = 0
        self.refreshed_at: float | None = None
        self.pending: dict[str, int] = {}  # request_id → nano-USD: recorded here, not in the store yet
        self.pending_total = 0
        self.granted = 0
        self.used = 0  # reservations in flight + settled costs, against ``granted``
        self.last_use = 0.0  # the last admission's time (epoch seconds, the budgets' clock); idle after a second
        self.room = 0  # what the ledger had left at its last answer
        self.full_until = 0.0  # until then, a request larger than ``room`` is refused without asking the ledger
        self.waiting = 0
        self.lease = 0  # the size of this process's last lease: the most unreserved money it keeps
        self.holding = False  # this process holds part of the ledger (and renews its hold every tick)
        self.stored_since = 0  # this process's spend that reached the store since its last heartbeat
        self.lock = asyncio.Lock()
        self.alerted: set[float] = set()

    def bind(self, budget: Budget) -> None:
        """The budget's definition (again, after a reload that changed its limit or thresholds)."""
        self.budget = budget
        self.name = budget.name
        self.block = budget.action == "block"
        self.limit_nano = budget.limit_nano
        # The spend from which a request gets the warning header (-1: the budget has no threshold).
        self.warn_from = budget.warn_at[0] / 100 * self.limit_nano if budget.warn_at else -1.0

    @property
    def spent(self) -> int:
        return self.store_spent + self.pending_total

    @property
    def free(self) -> int:
        return self.granted - self.used

    def header(self) -> str:
        b = self.budget
        spent, limit = self.spent / 1e9, b.limit_usd
        return (
            f"{b.name}; spent={spent:.6f}; limit={limit:.2f}; remaining={max(limit - spent, 0):.6f}; "
            f"resets={stamp(self.period.end)[:19]}Z"
        )

    def percent(self) -> float:
        return 100.0 * self.spent / self.budget.limit_nano


@dataclass
class Refusal:
    status: int
    kind: str
    message: str
    budget: str
    retry_after: int


def exhausted(st: BudgetState, now: datetime, need: int | None = None) -> Refusal:
    """``budget_exceeded``: the period's spend reached the limit (``need`` None), or what is left of it cannot
    cover a request's worst case even once every reservation is settled. Retry when the period resets."""
    b = st.budget
    if need is None:
        why = "is exhausted"
    else:
        left = max(b.limit_nano - st.spent, 0) / 1e9
        why = f"cannot cover this request (up to ${need / 1e9:.6f}; ${left:.6f} is left)"
    msg = (
        f"Budget '{b.name}' {why}: ${st.spent / 1e9:.6f} spent of ${b.limit_usd:.2f} this {UNIT[b.period]}; "
        f"it resets at {stamp(st.period.end)[:19]}Z."
    )
    return Refusal(429, "budget_exceeded", msg, b.name, max(1, int((st.period.end - now).total_seconds())))


def busy(st: BudgetState, need: int, wait: float) -> Refusal:
    """``budget_busy``: the spend is below the limit, but reservations in flight (here or in other processes) hold
    the rest. ``wait``: the seconds until one can free up for this request (Budgets._held)."""
    b = st.budget
    held = max((b.limit_nano - st.room - st.spent) / 1e9, 0.0)
    retry = max(1, math.ceil(wait))
    msg = (
        f"Budget '{b.name}' cannot cover this request right now (up to ${need / 1e9:.6f}): "
        f"${st.spent / 1e9:.6f} of ${b.limit_usd:.2f} is spent this {UNIT[b.period]} and ${held:.6f} is held by "
        f"requests in flight; retry in {retry} s."
    )
    return Refusal(429, "budget_busy", msg, b.name, retry)


class Admission:
    """What the budgets answered one request: its reservations (settled when it ends), or a refusal; the warning
    headers it gets. One is filled per budgeted request (Budgets.admit_now: the request's
    :class:`~modeltrack.controls.decision.Decision`, which is one), so the usual one, reserving from one budget,
    needs no other object: the first budget's state is a field, only a second one starts a list. Every budget a
    request reserves from holds the same ``amount`` (the request's worst-case cost)."""

    __slots__ = ("amount", "first", "headers", "more", "refusal")

    def __init__(self, refusal: Refusal | None = None) -> None:
        self.first: BudgetState | None = None
        self.more: list[BudgetState] | None = None
        self.amount = 0  # nano-USD held in each of them
        self.refusal = refusal
        self.headers: tuple[str, ...] = ()  # (a tuple: most admissions warn of nothing, and () is not allocated)

    def hold(self, st: BudgetState, amount: int) -> None:
        """Record a reservation of ``amount`` (the same for every budget of one request) from ``st``."""
        self.amount = amount
        if self.first is None:
            self.first = st
        elif self.more is None:
            self.more = [st]
        else:
            self.more.append(st)

    def adopt(self, other: Admission) -> None:
        """Hold what ``other`` holds, and warn as it warns (``other`` gives them up: it is not settled)."""
        self.first, self.more, self.amount, self.headers = other.first, other.more, other.amount, other.headers
        other.first = other.more = None

    @property
    def held(self) -> int:
        """What it holds in all its budgets together, in nano-USD."""
        if self.first is None:
            return 0
        return self.amount * (1 + (len(self.more) if self.more is not None else 0))
