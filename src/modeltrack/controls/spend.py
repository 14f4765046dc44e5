"""A budget's period and the spend in it, from the store's hourly rollups (what the budgets refresh and
``controls status`` read)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from ..query import Filters, Reader
from ..query.times import bucket_start, next_bucket, stamp, zone
from .spec import Budget

UNIT = {"daily": "day", "weekly": "week", "monthly": "month"}


@dataclass(frozen=True)
class Period:
    start: datetime  # UTC
    end: datetime  # UTC
    # The bounds as stored timestamps and as epoch seconds, computed once: every recorded event and every
    # admission compares against them (formatting them per event cost 3 % of a budgeted request's CPU).
    lo: str = field(init=False, repr=False, compare=False)
    hi: str = field(init=False, repr=False, compare=False)
    start_ts: float = field(init=False, repr=False, compare=False)
    end_ts: float = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "lo", stamp(self.start))
        object.__setattr__(self, "hi", stamp(self.end))
        object.__setattr__(self, "start_ts", self.start.timestamp())
        object.__setattr__(self, "end_ts", self.end.timestamp())

    @classmethod
    def of(cls, budget: Budget, now: datetime) -> Period:
        tz = zone(budget.timezone)
        unit = UNIT[budget.period]
        start = bucket_start(now, unit, tz)
        return cls(start.astimezone(UTC), next_bucket(start, unit, tz).astimezone(UTC))

    def contains(self, timestamp: str) -> bool:
        return self.lo <= timestamp < self.hi

    def elapsed_fraction(self, now: datetime) -> float:
        total = (self.end - self.start).total_seconds()
        return min(max((now - self.start).total_seconds() / total, 0.0), 1.0)


async def store_spend(reader: Reader, budget: Budget, period: Period, now: datetime) -> int:
    """The budget's spend in the period from the hourly rollups, in nano-USD. Exact values filter in the store;
    globs (``model: gpt-4o*``) group by their dimension and match here."""
    exact: dict[str, Any] = dict(budget.scope.exact)
    end = min(period.end, now.astimezone(UTC).replace(minute=0, second=0, microsecond=0) + timedelta(hours=1))
    # A period starting at a half-hour (a few time zones) reads from the whole hour before: never less spend.
    start = period.start.replace(minute=0, second=0, microsecond=0)
    globs = budget.scope.globs
    rows = await reader.aggregate(start, end, Filters(**exact), tuple(k for k, _ in globs), latency=False)
    if not globs:
        return sum(int(r["cost_nano_usd"]) for r in rows)
    from .match import Scope

    only_globs = Scope((), globs)
    return sum(int(r["cost_nano_usd"]) for r in rows if only_globs.matches(r))
