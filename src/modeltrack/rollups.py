"""What the stores aggregate, defined once for SQLite and Firestore (and the tests that check them).

Two rollups are kept, exactly once with the events (in the same transaction or atomic commit as the events
they count):

* **daily** by team × app × feature × provider × model: the round-1 table, kept for existing queries;
* **hourly** by every dimension the API filters or splits on: team × app × feature × user × provider × model ×
  status × cache hit × org × key × error × prompt (the org and the public id of the request's ModelTrack key,
  empty without one: a key's spend is what its budget and the Keys page read; the error type, for the Errors
  page; the prompt template, a dimension like the others). Hours let a reader answer any
  hour, day or month in any whole-hour time zone, and carry latency and TTFT histograms, so percentiles come from the
  rollups too.

Money is summed as integer nano-dollars (``cost_usd`` is rounded to 1e-9, so nothing is lost).
"""

from __future__ import annotations

import bisect
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .events import CostEvent

HOURLY_DIMENSIONS = (
    "team",
    "app",
    "feature",
    "user",
    "provider",
    "model",
    "status",
    "cache_hit",
    "org",
    "key_id",
    "error",
    "prompt_id",
    "processing",
)
DAILY_DIMENSIONS = ("team", "app", "feature", "provider", "model")
TOKENS = ("input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens", "reasoning_tokens")
SUMS = ("requests", "errors", "unpriced", *TOKENS, "cost_nano_usd", "saved_nano_usd")
"""``unpriced``: requests answered (2xx/3xx) whose cost is unknown (``cost_usd`` null: a model without a price,
or no usage to price), so a sum of spend can say how many requests it could not include."""
DAILY_SUMS = ("requests", *TOKENS, "cost_nano_usd")

LATENCY_STEP = 2 ** (1 / 3)
LATENCY_BOUNDS_MS = tuple(0.1 * LATENCY_STEP**k for k in range(70))
"""Upper bounds (inclusive) of the latency histogram's buckets: log-spaced from 0.1 ms, each 2^(1/3) ≈ 1.26
times the one before, to 0.1 × 2^23 ms ≈ 14 minutes; one more bucket takes everything above.

**Error bound:** a percentile read from the rollups lies in the bucket that holds the true value, so from
0.1 ms to 14 minutes it is at most 26 % above or 21 % below it (linear within the bucket); below 0.1 ms it
reads as at most 0.1 ms. (tests/test_api.py::test_latency_percentiles_resolve_sub_millisecond_to_minutes)"""
LATENCY_BUCKETS = tuple(f"lt_{i:02d}" for i in range(len(LATENCY_BOUNDS_MS) + 1))
TTFT_BUCKETS = tuple(f"ft_{i:02d}" for i in range(len(LATENCY_BOUNDS_MS) + 1))
"""The time to first token's histogram: the same bounds (and error bound) as latency's, counted only for the
requests that have one (streams that sent a first token), so its percentiles are the streams' own."""
HISTOGRAMS = (*LATENCY_BUCKETS, *TTFT_BUCKETS)
SUMMED = (*SUMS, *HISTOGRAMS)
"""Every sum a rollup row carries: the counters and the latency and TTFT histograms."""
LEGACY_LATENCY_BOUNDS_MS: tuple[int, ...] = (25, 50, 100, 200, 300, 500, 750, 1_000, 1_500, 2_000, 3_000, 5_000)
LEGACY_LATENCY_BOUNDS_MS += (7_500, 10_000, 15_000, 20_000, 30_000, 60_000, 120_000)
"""The buckets rollups had before (``lat_00`` … ``lat_19``): Firestore documents written then are read by
moving each count to the new bucket of its old bucket's middle (SQLite's are rebuilt from the events)."""
LEGACY_LATENCY_BUCKETS = tuple(f"lat_{i:02d}" for i in range(len(LEGACY_LATENCY_BOUNDS_MS) + 1))


def nano_usd(cost: float | None) -> int:
    return round((cost or 0.0) * 1e9)


def is_error(ev: CostEvent) -> bool:
    """An HTTP error, or a request that failed after its status (a stream cut, a provider error event)."""
    return ev.status >= 400 or ev.status == 0 or ev.error is not None


def is_unpriced(ev: CostEvent) -> bool:
    return ev.cost_usd is None and 200 <= ev.status < 400


def latency_bucket(ms: float) -> int:
    return bisect.bisect_left(LATENCY_BOUNDS_MS, ms)


def legacy_latency(row: dict[str, Any]) -> None:
    """Move an old document's ``lat_NN`` counts into the ``lt_NN`` buckets, in place (see above)."""
    for i, name in enumerate(LEGACY_LATENCY_BUCKETS):
        n = row.pop(name, None)
        if not n:
            continue
        lo = LEGACY_LATENCY_BOUNDS_MS[i - 1] if i else 0
        hi = LEGACY_LATENCY_BOUNDS_MS[i] if i < len(LEGACY_LATENCY_BOUNDS_MS) else lo
        target = LATENCY_BUCKETS[latency_bucket((lo + hi) / 2)]
        row[target] = int(row.get(target) or 0) + int(n)


def hour_of(timestamp: str) -> str:
    """``2026-11-29T20:14:03.123Z`` → ``2026-11-29T20`` (timestamps are UTC, RFC 3339)."""
    return timestamp[:13]


def daily_key(ev: CostEvent) -> tuple[str, str, str, str, str, str]:
    return (ev.timestamp[:10], ev.team or "", ev.app or "", ev.feature or "", ev.provider, ev.model or "")


def hourly_key(ev: CostEvent) -> tuple[str | int, ...]:
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
        ev.error or "",
        ev.prompt_id or "",
        ev.processing or "",
    )


def percentile(buckets: list[int], q: float) -> float | None:
    """An estimate of the ``q`` quantile (0..1) from a latency or TTFT histogram's counts: linear within the
    bucket, the last (open) bucket reported at its lower bound. None when there is no observation."""
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


def event_row(ev: CostEvent) -> dict[str, Any]:
    """One event as an hourly-rollup row of its own (what the stores add to their rollups for it)."""
    row: dict[str, Any] = {
        "hour": hour_of(ev.timestamp),
        "team": ev.team or "",
        "app": ev.app or "",
        "feature": ev.feature or "",
        "user": ev.user or "",
        "provider": ev.provider,
        "model": ev.model or "",
        "status": ev.status,
        "cache_hit": 1 if ev.cache_hit else 0,
        "org": ev.org or "",
        "key_id": ev.key_id or "",
        "error": ev.error or "",
        "prompt_id": ev.prompt_id or "",
        "processing": ev.processing or "",
        "requests": 1,
        "errors": int(is_error(ev)),
        "unpriced": int(is_unpriced(ev)),
        "cost_nano_usd": nano_usd(ev.cost_usd),
        "saved_nano_usd": nano_usd(ev.saved_usd),
        LATENCY_BUCKETS[latency_bucket(ev.latency_ms)]: 1,
    }
    if ev.ttft_ms is not None:
        row[TTFT_BUCKETS[latency_bucket(ev.ttft_ms)]] = 1
    for t in TOKENS:
        row[t] = getattr(ev, t)
    return row
