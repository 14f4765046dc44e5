"""A breakdown: the top values of one dimension over a range, each with its spend, requests, tokens, hit and
error rates and percentiles, beside the previous period, with the rest and the total (the API's
``/api/breakdown``, the dashboard's Spend pages and ``modeltrack report``).

On a store that keeps its users' histograms apart from their sums (Firestore), a breakdown by user ranks on the
one or two sums its sort needs, then reads the top rows whole; the rest is the total less them. Every figure
equals SQLite's, which reads them all at once (tests/test_firestore_analytics.py,
``test_a_breakdown_by_user_equals_sqlites_with_the_top_rows_histograms_read_apart``); the answers themselves
by tests/test_api.py.
"""

from __future__ import annotations

from typing import Any

from ..rollups import LATENCY_BUCKETS, TOKENS, percentile
from .base import Filters, Reader
from .views import QueryError, Range, add_sums, check_dimension, check_limit, less_sums, summary, usd, value_key

SORTS = ("cost", "requests", "tokens", "errors", "latency")
_RANKED_ON = {
    "cost": ("requests", "cost_nano_usd"),
    "requests": ("requests",),
    "tokens": ("requests", *TOKENS),
    "errors": ("requests", "errors"),
}
"""The sums a ranking by each sort reads (with ``requests``, which every group has) when the store can read
fewer than all of them (a breakdown by user on Firestore)."""


async def breakdown(
    reader: Reader,
    rng: Range,
    dimension: str,
    filters: Filters,
    limit: int = 10,
    sort: str = "cost",
    compare: bool = True,
    latency: bool = True,
) -> dict[str, Any]:
    """The top ``limit`` values of ``dimension`` in the range, each with spend, requests, tokens, response-cache
    hit rate, error rate and latency p50/p95 (null with ``latency=False``, which reads no histogram), and the
    same figures of the previous period of equal length. ``other`` is every value the rows do not show: its
    previous period includes values seen only then, so the rows and ``other`` add up to ``total`` in both."""
    check_dimension(dimension)
    limit = check_limit(limit)
    if sort not in SORTS:
        raise QueryError(f"sort {sort!r} is not one of {', '.join(SORTS)}")
    by = (dimension,) if dimension == "cache_hit" else (dimension, "cache_hit")
    # Thousands of users: on a store that keeps their histograms apart from their sums (Firestore), the ranking
    # reads only the sums it ranks on; the top rows' whole figures and previous period are read for those rows
    # alone, and the rest's from the total less the top rows. The figures are the same
    # (tests/test_firestore_analytics.py).
    apart = dimension == "user" and sort != "latency" and bool(getattr(reader, "histograms_apart", False))
    groups: dict[Any, dict[str, Any]] = {}
    hits: dict[Any, int] = {}
    stored: dict[Any, Any] = {}  # a group's key → its value as the store returned it
    if apart:
        ranking = await reader.aggregate(rng.start, rng.end, filters, by, latency=False, sums=_RANKED_ON[sort])
    else:
        ranking = await reader.aggregate(rng.start, rng.end, filters, by, latency=latency)
    for row in ranking:
        key = value_key(row[dimension])
        stored[key] = row[dimension]
        add_sums(groups.setdefault(key, {}), row)
        if row.get("cache_hit"):
            hits[key] = hits.get(key, 0) + int(row["requests"])

    def measure(g: dict[str, Any]) -> float:
        if sort == "cost":
            return int(g.get("cost_nano_usd", 0))
        if sort == "requests":
            return int(g.get("requests", 0))
        if sort == "tokens":
            return sum(int(g.get(t, 0)) for t in TOKENS)
        if sort == "errors":
            return int(g.get("errors", 0))
        return percentile([int(g.get(b, 0)) for b in LATENCY_BUCKETS], 0.95) or 0.0

    ranked = sorted(groups, key=lambda k: (-measure(groups[k]), str(k)))
    top = [stored[k] for k in ranked[:limit]]
    total: dict[str, Any] = {}
    total_hits = 0
    if apart:
        # The top rows' whole figures (their cells alone), and the total from the store's total.
        hits = {}
        for k in ranked[:limit]:
            groups[k] = {}
        if top:
            for row in await reader.aggregate(rng.start, rng.end, filters, by, latency=latency, values=top):
                key = value_key(row[dimension])
                add_sums(groups[key], row)
                if row.get("cache_hit"):
                    hits[key] = hits.get(key, 0) + int(row["requests"])
        for row in await reader.aggregate(rng.start, rng.end, filters, ("cache_hit",), latency=latency):
            add_sums(total, row)
            total_hits += int(row["requests"]) if row.get("cache_hit") else 0
    else:
        for g in groups.values():
            add_sums(total, g)
        total_hits = sum(hits.values())
    before: dict[Any, dict[str, Any]] = {}
    total_prev: dict[str, Any] = {}
    if compare:
        prev = rng.previous()
        values = top if apart else None
        for row in await reader.aggregate(prev.start, prev.end, filters, (dimension,), latency=False, values=values):
            add_sums(before.setdefault(value_key(row[dimension]), {}), row)
        for row in await reader.aggregate(prev.start, prev.end, filters, latency=False) if apart else before.values():
            add_sums(total_prev, row)

    def row_of(key: Any, g: dict[str, Any], prev: dict[str, Any] | None, n_hits: int) -> dict[str, Any]:
        r = {dimension: key, **summary(g)}
        r["cache_hits"] = n_hits
        r["cache_hit_rate"] = round(n_hits / r["requests"], 4) if r["requests"] else 0.0
        r["share"] = (
            round(int(g.get("cost_nano_usd", 0)) / int(total.get("cost_nano_usd", 0)), 4)
            if total.get("cost_nano_usd")
            else 0.0
        )
        if compare:
            p_cost = int((prev or {}).get("cost_nano_usd", 0))
            r["previous_cost_usd"] = usd(p_cost)
            r["previous_requests"] = int((prev or {}).get("requests", 0))
            r["change_pct"] = round(100 * (int(g.get("cost_nano_usd", 0)) - p_cost) / p_cost, 1) if p_cost else None
        return r

    rows = [row_of(k, groups[k], before.get(k), hits.get(k, 0)) for k in ranked[:limit]]
    rest = ranked[limit:]
    other = None
    if rest:
        acc: dict[str, Any] = {}
        if apart:  # the top rows alone were read whole: the rest is the total less them
            acc = less_sums(total, [groups[k] for k in ranked[:limit]])
        else:
            for k in rest:
                add_sums(acc, groups[k])
        # Its previous period: everything the top rows do not show (values seen only then too), so that the
        # rows and the rest add up to the total in both periods.
        acc_prev = less_sums(total_prev, [before[k] for k in ranked[:limit] if k in before])
        rest_hits = total_hits - sum(hits.get(k, 0) for k in ranked[:limit])
        other = row_of("__other__", acc, acc_prev, rest_hits)
        other["values"] = len(rest)
    totals = row_of("__total__", total, total_prev, total_hits)
    return {
        "range": rng.describe(),
        "previous": rng.previous().describe() if compare else None,
        "dimension": dimension,
        "sort": sort,
        "rows": rows,
        "other": other,
        "total": totals,
    }
