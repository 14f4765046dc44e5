"""What the stores aggregate, defined once for SQLite and Firestore (and the tests that check them).

Two rollups are kept, exactly once with the events (in the same transaction or atomic commit as the events
they count):

* **daily** by team × app × feature × provider × model: the round-1 table, kept for existing queries;
* **hourly** by every dimension the API filters or splits on: team × app × feature × user × provider × model ×
  status × cache hit × org × key (last: the org and the public id of the request's ModelTrack key, empty
  without one; a key's spend is what its budget and the Keys page read). Hours let a reader answer any
  hour, day or month in any whole-hour time zone, and carry a latency histogram, so percentiles come from the
  rollups too.

Money is summed as integer nano-dollars (``cost_usd`` is rounded to 1e-9, so nothing is lost).
"""

from __future__ import annotations

import bisect
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .events import CostEvent

HOURLY_DIMENSIONS = ("team", "app", "feature", "user", "provider", "model", "status", "cache_hit", "org", "key_id")
DAILY_DIMENSIONS = ("team", "app", "feature", "provider", "model")
TOKENS = ("input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens", "reasoning_tokens")
SUMS = ("requests", "errors", *TOKENS, "cost_nano_usd", "saved_nano_usd")
DAILY_SUMS = ("requests", *TOKENS, "cost_nano_usd")

LATENCY_BOUNDS_MS = (
    25,
    50,
    100,
    200,
    300,
    500,
    750,
    1_000,
    1_500,
    2_000,
    3_000,
    5_000,
    7_500,
    10_000,
    15_000,
    20_000,
    30_000,
    60_000,
    120_000,
)
"""Upper bounds (inclusive) of the latency histogram's buckets; one more bucket takes everything above."""
LATENCY_BUCKETS = tuple(f"lat_{i:02d}" for i in range(len(LATENCY_BOUNDS_MS) + 1))


def nano_usd(cost: float | None) -> int:
    return round((cost or 0.0) * 1e9)


def is_error(ev: CostEvent) -> bool:
    """An HTTP error, or a request that failed after its status (a stream cut, a provider error event)."""
    return ev.status >= 400 or ev.status == 0 or ev.error is not None


def latency_bucket(ms: float) -> int:
    return bisect.bisect_left(LATENCY_BOUNDS_MS, ms)


def hour_of(timestamp: str) -> str:
    """``2026-11-29T20:14:03.123Z`` → ``2026-11-29T20`` (timestamps are UTC, RFC 3339)."""
    return timestamp[:13]


def daily_key(ev: CostEvent) -> tuple[str, str, str, str, str, str]:
    return (ev.timestamp[:10], ev.team or "", ev.app or "", ev.feature or "", ev.provider, ev.model or "")


def hourly_key(ev: CostEvent) -> tuple[str, str, str, str, str, str, str, int, int, str, str]:
    return (
        hour_of(ev.timestamp),
        ev.team or "",
        ev.app or "",
        ev.feature or "",
        ev.user or "",
        ev.provider,
        ev.model or "",
        ev.status,
        1 if ev.cache_hit else 0,
        ev.org or "",
        ev.key_id or "",
    )


def percentile(buckets: list[int], q: float) -> float | None:
    """An estimate of the ``q`` quantile (0..1) of latency from histogram counts: linear within the bucket,
    the last (open) bucket reported at its lower bound. None when there is no observation."""
    total = sum(buckets)
    if total == 0:
        return None
    rank = q * total
    seen = 0
    for i, n in enumerate(buckets):
        if n and seen + n >= rank:
            lo = LATENCY_BOUNDS_MS[i - 1] if i > 0 else 0
            if i >= len(LATENCY_BOUNDS_MS):
                return float(lo)
            hi = LATENCY_BOUNDS_MS[i]
            return lo + (hi - lo) * max(rank - seen, 0) / n
        seen += n
    return float(LATENCY_BOUNDS_MS[-1])
