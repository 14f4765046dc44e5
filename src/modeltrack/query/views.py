"""What the API, the dashboard and ``modeltrack report`` answer, built on the :class:`~modeltrack.query.Reader`
interface, so every store answers alike: ranges, spend over time, sessions and their steps, and the figures
every answer shares. Breakdowns live in :mod:`.breakdown`, the overview in :mod:`.overview`, forecasts and
what-if in :mod:`.forecast` and :mod:`.whatif`.

All money comes from the stored events and rollups (integer nano-dollars, summed exactly), never from prices.
Ranges are whole hours (the rollups' resolution); the effective range is returned with every answer.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, tzinfo
from typing import Any

from ..rollups import HISTOGRAMS, LATENCY_BUCKETS, SUMS, TOKENS, TTFT_BUCKETS, percentile
from .base import DIMENSIONS, EventFilter, Filters, Reader, status_filter
from .times import TimeError, bucket_start, ceil_hour, hour_start, next_bucket, parse_instant, stamp, zone

MAX_LIMIT = 1000
MAX_BUCKETS = 5000
GRANULARITIES = ("hour", "day", "week", "month")


class QueryError(ValueError):
    """A question that cannot be answered as asked; the message says what to ask instead (an HTTP 400)."""


@dataclass(frozen=True)
class Range:
    start: datetime  # UTC, a whole hour
    end: datetime  # UTC, a whole hour, exclusive
    tz: tzinfo
    tz_name: str

    def previous(self) -> Range:
        """The period of the same length just before this one."""
        return Range(self.start - (self.end - self.start), self.start, self.tz, self.tz_name)

    def describe(self) -> dict[str, str]:
        return {"since": stamp(self.start), "until": stamp(self.end), "tz": self.tz_name}


def make_range(
    since: str | None, until: str | None, tz_name: str | None, now: datetime | None = None, default_days: int = 30
) -> Range:
    """A range from what a user typed (RFC 3339 or plain dates in ``tz``; ``until`` inclusive of its day), by
    default the last ``default_days`` days including today."""
    try:
        tz = zone(tz_name)
        now = now or datetime.now(UTC)
        end = parse_instant(until, tz, end_of_day=True) if until else now
        # Never past the current hour: "today" is today so far (no future hours drawn as $0), and the previous
        # period it is compared with is as long (yesterday up to the same time, not all of it).
        end = min(end, ceil_hour(now))
        if since:
            start = parse_instant(since, tz)
        else:
            today = bucket_start(now, "day", tz)
            start = (today - timedelta(days=default_days - 1)).astimezone(UTC)
    except TimeError as exc:
        raise QueryError(str(exc)) from None
    if start >= ceil_hour(now):
        raise QueryError(f"since ({stamp(start)}) is in the future: nothing has been recorded there yet")
    if start >= end:
        raise QueryError(f"since ({stamp(start)}) must be before until ({stamp(end)}): swap them")
    if end - start > timedelta(days=3660):
        raise QueryError("a range of at most 10 years, please: narrow since/until")
    # One rule everywhere (issue M, item 8): an hour of the rollups is in [since, until) when its *start* is.
    # In a zone with a 30- or 45-minute offset a local midnight falls mid-hour: that hour belongs to the day
    # its start falls in, so both bounds round up to the next whole hour, and no hour counts in two days.
    return Range(ceil_hour(start), ceil_hour(end), tz, tz_name or "UTC")


def check_dimension(name: str | None, what: str = "dimension") -> str:
    if name not in DIMENSIONS:
        raise QueryError(f"{what} {name!r} is not one of {', '.join(DIMENSIONS)}")
    return name


def check_limit(limit: int | None, default: int = 10, maximum: int = MAX_LIMIT) -> int:
    if limit is None:
        return default
    if not 1 <= limit <= maximum:
        raise QueryError(f"limit must be from 1 to {maximum}, got {limit}")
    return limit


def usd(nano: int) -> float:
    return round(nano / 1e9, 9)


def summary(row: dict[str, Any]) -> dict[str, Any]:
    """One group's figures: money in USD, tokens, rates, and latency and TTFT percentiles from the rollups'
    histograms (TTFT's over the requests that had a first token: null when none did)."""
    requests = int(row.get("requests", 0))
    buckets = [int(row.get(b, 0)) for b in LATENCY_BUCKETS]
    first = [int(row.get(b, 0)) for b in TTFT_BUCKETS]
    out: dict[str, Any] = {
        "cost_usd": usd(int(row.get("cost_nano_usd", 0))),
        "saved_usd": usd(int(row.get("saved_nano_usd", 0))),
        "requests": requests,
        "errors": int(row.get("errors", 0)),
        "unpriced": int(row.get("unpriced", 0)),
        **{t: int(row.get(t, 0)) for t in TOKENS},
        "error_rate": round(int(row.get("errors", 0)) / requests, 4) if requests else 0.0,
        "latency_p50_ms": _round(percentile(buckets, 0.50)),
        "latency_p95_ms": _round(percentile(buckets, 0.95)),
        "ttft_p50_ms": _round(percentile(first, 0.50)),
        "ttft_p95_ms": _round(percentile(first, 0.95)),
    }
    return out


def _round(v: float | None) -> float | None:
    """Milliseconds to the microsecond: a sub-millisecond percentile keeps its figures."""
    return None if v is None else round(v, 3)


_SUMMABLE = frozenset((*SUMS, *HISTOGRAMS))


def _pct(cell: dict[str, int], q: float, buckets: tuple[str, ...] = LATENCY_BUCKETS) -> float | None:
    return _round(percentile([int(cell.get(b, 0)) for b in buckets], q)) if cell else None


def add_sums(acc: dict[str, Any], row: dict[str, Any]) -> None:
    """Sum ``row`` into ``acc``: only the figures the row has (a row read without the histogram has none)."""
    for name, value in row.items():
        if value and name in _SUMMABLE:  # (most of a row's histogram buckets are zero: tested first)
            acc[name] = acc.get(name, 0) + int(value)


def less_sums(whole: dict[str, Any], parts: list[dict[str, Any]]) -> dict[str, Any]:
    out = {k: v for k, v in whole.items() if k in _SUMMABLE}
    for part in parts:
        for k, v in part.items():
            if k in _SUMMABLE:
                out[k] = out.get(k, 0) - int(v)
    return {k: v for k, v in out.items() if v}


def value_key(value: Any) -> Any:
    return None if value in ("", None) else value


async def series(
    reader: Reader,
    rng: Range,
    granularity: str,
    filters: Filters,
    split: str | None = None,
    top: int = 8,
    latency: bool = True,
) -> dict[str, Any]:
    """Spend and requests per hour/day/week/month bucket (in the range's time zone), optionally one series per
    value of ``split`` (the ``top`` values by spend, the rest summed as ``other``)."""
    if granularity not in GRANULARITIES:
        raise QueryError(f"granularity {granularity!r} is not one of {', '.join(GRANULARITIES)}")
    if split is not None:
        check_dimension(split, "split")
    starts = [bucket_start(rng.start, granularity, rng.tz)]
    # A bucket is drawn when one of its hours is in the range (a local midnight mid-hour: the hour's start).
    while ceil_hour(nxt := next_bucket(starts[-1], granularity, rng.tz)) < rng.end:
        starts.append(nxt)
        if len(starts) > MAX_BUCKETS:
            raise QueryError(f"more than {MAX_BUCKETS} {granularity} buckets: use a coarser granularity")
    index = {s.astimezone(UTC): i for i, s in enumerate(starts)}
    rows = await reader.aggregate(
        rng.start,
        rng.end,
        filters,
        (split,) if split else (),
        by_hour=True,
        day_zone=None if granularity == "hour" else rng.tz,
        latency=latency,
    )
    where: dict[str, int] = {}
    per: dict[Any, list[dict[str, int]]] = {}
    for row in rows:
        h = row["hour"]
        i = where.get(h)
        if i is None:
            i = where[h] = index[bucket_start(hour_start(h), granularity, rng.tz).astimezone(UTC)]
        key = value_key(row.get(split)) if split else "total"
        cells = per.get(key)
        if cells is None:
            cells = per[key] = [{} for _ in starts]
        add_sums(cells[i], row)
    ranked = sorted(per, key=lambda k: -sum(int(c.get("cost_nano_usd", 0)) for c in per[k]))
    keep, rest = ranked[:top], ranked[top:]
    out = [(k, per[k]) for k in keep]
    if rest:
        other: list[dict[str, int]] = [{} for _ in starts]
        for k in rest:
            for j, cell in enumerate(per[k]):
                add_sums(other[j], cell)
        out.append(("__other__", other))
    total_nano = sum(int(c.get("cost_nano_usd", 0)) for cells in per.values() for c in cells)
    return {
        "range": rng.describe(),
        "granularity": granularity,
        "split": split,
        "buckets": [stamp(s) for s in starts],
        "series": [_series_of(k, cells, latency) for k, cells in out],
        "total_usd": usd(total_nano),
        "requests": sum(int(c.get("requests", 0)) for cells in per.values() for c in cells),
    }


def _series_of(key: Any, cells: list[dict[str, int]], latency: bool = True) -> dict[str, Any]:
    """One series: per bucket, spend and requests, and what the charts beyond spend draw: errors and their
    rate, unpriced requests, tokens by kind, and latency and TTFT percentiles (from the rollups' histograms)."""
    cost = [int(c.get("cost_nano_usd", 0)) for c in cells]
    requests = [int(c.get("requests", 0)) for c in cells]
    errors = [int(c.get("errors", 0)) for c in cells]
    return {
        "key": key,
        "cost_usd": [usd(v) for v in cost],
        "requests": requests,
        "total_usd": usd(sum(cost)),
        "errors": errors,
        "error_rate": [round(e / n, 4) if n else None for e, n in zip(errors, requests, strict=True)],
        "unpriced": [int(c.get("unpriced", 0)) for c in cells],
        "tokens": {t: [int(c.get(t, 0)) for c in cells] for t in TOKENS},
        "latency_p50_ms": [_pct(c, 0.5) for c in cells] if latency else None,
        "latency_p95_ms": [_pct(c, 0.95) for c in cells] if latency else None,
        "ttft_p50_ms": [_pct(c, 0.5, TTFT_BUCKETS) for c in cells] if latency else None,
        "ttft_p95_ms": [_pct(c, 0.95, TTFT_BUCKETS) for c in cells] if latency else None,
    }


def _session(row: dict[str, Any]) -> dict[str, Any]:
    n = int(row.get("requests") or 0)
    return {
        "session_id": row["session_id"],
        "first_ts": row["first_ts"],
        "last_ts": row["last_ts"],
        **{k: row.get(k) for k in ("team", "app", "feature", "user")},
        "requests": n,
        **{t: int(row.get(t) or 0) for t in TOKENS},
        "cost_usd": usd(int(row.get("cost_nano_usd") or 0)),
        "latency_ms": round(float(row.get("latency_ms") or 0.0), 1),
    }


async def sessions(reader: Reader, rng: Range, filters: Filters, limit: int = 20) -> dict[str, Any]:
    """The most expensive sessions active in the range."""
    limit = check_limit(limit, 20)
    rows = await reader.sessions(rng.start, rng.end, filters, limit)
    return {"range": rng.describe(), "sessions": [_session(r) for r in rows]}


async def session_steps(reader: Reader, session_id: str, limit: int = 5000) -> dict[str, Any]:
    """One session's steps in order: what an agent run cost, call by call."""
    if not session_id or len(session_id) > 128:
        raise QueryError("a session id is 1 to 128 characters")
    events = await reader.events(EventFilter(session_id=session_id), limit)
    if not events:
        raise LookupError(f"no session {session_id!r} in the store")
    steps = []
    for i, e in enumerate(events, 1):
        steps.append(
            {
                "step": i,
                "timestamp": e.timestamp,
                "request_id": e.request_id,
                "provider": e.provider,
                "model": e.model,
                "endpoint": e.endpoint,
                "status": e.status,
                "error": e.error,
                **{t: getattr(e, t) for t in TOKENS},
                "cost_usd": e.cost_usd,
                "latency_ms": e.latency_ms,
                "cache_hit": e.cache_hit,
                "routed": e.routed,
                "prompt_id": e.prompt_id,
            }
        )
    total = sum(round((e.cost_usd or 0) * 1e9) for e in events)
    first, last = events[0], events[-1]
    return {
        "session_id": session_id,
        "team": first.team,
        "app": first.app,
        "feature": first.feature,
        "user": first.user,
        "first_ts": first.timestamp,
        "last_ts": last.timestamp,
        "requests": len(events),
        "cost_usd": usd(total),
        "steps": steps,
    }


async def values(reader: Reader, rng: Range, dimension: str, filters: Filters, limit: int = 200) -> list[Any]:
    """The values of a dimension seen in the range, by spend (for filter pickers)."""
    check_dimension(dimension)
    rows = await reader.aggregate(rng.start, rng.end, filters, (dimension,), latency=False)
    rows.sort(key=lambda r: -int(r["cost_nano_usd"]))
    return [value_key(r[dimension]) for r in rows[: check_limit(limit, 200)]]


def parse_filters(get: Any) -> Filters:
    """Filters from query parameters (``team=search&model=gpt-4o&status=4xx&cache_hit=true``)."""
    try:
        status = status_filter(get("status"))
    except ValueError as exc:
        raise QueryError(str(exc)) from None
    cache_hit = get("cache_hit")
    if cache_hit is not None and cache_hit not in ("true", "false"):
        raise QueryError(f"cache_hit {cache_hit!r}: write true or false")
    return Filters(
        **{d: get(d) for d in DIMENSIONS if d not in ("status", "cache_hit")},
        status=status,
        cache_hit=None if cache_hit is None else cache_hit == "true",
    )
