"""Each budget's figures as people read them (``controls status``, the API's budgets view): from the store's
rollups, and with the ledger, what the running proxies hold right now."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

from ..query import Reader
from ..query.times import stamp
from .ledger import Ledger
from .spec import Budget
from .spend import Period, store_spend


async def budget_status(
    reader: Reader, budgets: Iterable[Budget], now: datetime | None = None, ledger: Ledger | None = None
) -> list[dict[str, Any]]:
    """Each budget's spend, limit, percent, reset time and projected end-of-period spend, from the store alone
    (``controls status``, the API's budgets view). With the ``ledger``, also what the running proxies hold:
    ``held_usd``, reserved by requests in flight or leased and not yet spent (None: no proxy has taken any)."""
    now = now or datetime.now(UTC)
    out = []
    for b in budgets:
        period = Period.of(b, now)
        spent_nano = await store_spend(reader, b, period, now)
        spent = spent_nano / 1e9
        held: float | None = None
        if ledger is not None:
            allocated = await ledger.allocated(f"{b.name}|{stamp(period.start)}")
            held = None if allocated is None else round(max(allocated - spent_nano, 0) / 1e9, 9)
        frac = period.elapsed_fraction(now)
        out.append(
            {
                "name": b.name,
                "scope": b.scope.describe(),
                "period": b.period,
                "timezone": b.timezone,
                "action": b.action,
                "spent_usd": round(spent, 9),
                "limit_usd": b.limit_usd,
                "percent": round(100 * spent / b.limit_usd, 2),
                "period_start": stamp(period.start),
                "resets": stamp(period.end),
                "projected_usd": round(spent / frac, 6) if frac >= 0.01 else None,
                "warn_at": list(b.warn_at),
                **({"held_usd": held} if ledger is not None else {}),
            }
        )
    return out
