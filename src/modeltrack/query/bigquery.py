"""The questions a Firestore store's slices cannot hold, asked of its warehouse (:mod:`modeltrack.sinks.bigquery`):
one ``GROUP BY`` query over the range's rows, one row kept per ``request_id``, in the shape of
:meth:`modeltrack.query.base.Reader.aggregate` (the same keys, sums and histogram buckets as the hourly rollups
give). Held by tests/test_warehouse.py: every such question equals SQLite's on the same events.
"""

from __future__ import annotations

import asyncio
from datetime import datetime
from typing import TYPE_CHECKING, Any

from ..rollups import LATENCY_BUCKETS, SUMS, TTFT_BUCKETS
from .base import DIMENSIONS, Filters

if TYPE_CHECKING:
    from ..sinks.bigquery import Warehouse

QUERY_TIMEOUT = 30.0
"""Seconds a question may wait for BigQuery, its retries included (the client's own default is 600 s)."""


def statement(
    table: str,
    f: Filters,
    keys: tuple[str, ...],
    summed: tuple[str, ...],
    only: tuple[str, list[Any]] | None = None,
) -> tuple[str, list[Any]]:
    """The SQL and its parameters (``google.cloud.bigquery`` query parameters) for one question over
    ``[@lo, @hi)``; ``only``: a dimension and the values its rows are limited to (a breakdown's top rows). Column
    names come from :data:`DIMENSIONS` only; every value is a parameter."""
    from google.cloud import bigquery

    for k in keys:
        if k != "hour" and k not in DIMENSIONS:
            raise ValueError(k)
    sums = [s for s in SUMS if s in summed]
    histograms = any(b in summed for b in LATENCY_BUCKETS)
    group = [*keys, *(("lt", "ft") if histograms else ())]
    where = ["`ts` >= @lo", "`ts` < @hi"]
    params: list[Any] = []
    for name, want in f.items():
        if name not in DIMENSIONS:
            raise ValueError(name)
        if name == "status":
            lo, hi = f.status_range() or (0, 999)
            where.append("`status` BETWEEN @status_lo AND @status_hi")
            params += [
                bigquery.ScalarQueryParameter("status_lo", "INT64", lo),
                bigquery.ScalarQueryParameter("status_hi", "INT64", hi),
            ]
        elif name == "cache_hit":
            where.append("`cache_hit` = @cache_hit")
            params.append(bigquery.ScalarQueryParameter("cache_hit", "INT64", 1 if want else 0))
        else:
            where.append(f"`{name}` = @f_{name}")
            params.append(bigquery.ScalarQueryParameter(f"f_{name}", "STRING", want or ""))
    if only is not None:
        name, values = only
        if name not in DIMENSIONS:
            raise ValueError(name)
        kind = "INT64" if name in ("status", "cache_hit") else "STRING"
        where.append(f"`{name}` IN UNNEST(@only)")
        params.append(bigquery.ArrayQueryParameter("only", kind, [int(v) if kind == "INT64" else v for v in values]))
    select = [*(f"`{c}`" for c in group), *(f"SUM(`{s}`) AS `{s}`" for s in sums), "COUNT(*) AS `n`"]
    sql = (
        f"SELECT {', '.join(select)} FROM ("
        f"SELECT * FROM `{table}` WHERE {' AND '.join(where)} "
        "QUALIFY ROW_NUMBER() OVER (PARTITION BY `request_id`) = 1)"
    )
    if group:
        sql += f" GROUP BY {', '.join(f'`{c}`' for c in group)}"
    return sql, params


def fold(rows: Any, keys: tuple[str, ...], summed: tuple[str, ...]) -> list[dict[str, Any]]:
    """The query's rows (one per group and latency/TTFT bucket pair) summed into one row per group."""
    out: dict[tuple[Any, ...], dict[str, Any]] = {}
    wanted = frozenset(summed)
    histograms = any(b in wanted for b in LATENCY_BUCKETS)  # then each row is one group's bucket pair
    for r in rows:
        n = r["n"]
        if not n:
            continue
        k = tuple(r[c] for c in keys)
        acc = out.get(k)
        if acc is None:
            acc = out[k] = {**dict(zip(keys, k, strict=True)), **dict.fromkeys(summed, 0)}
        for s in SUMS:
            if s in wanted:
                acc[s] += int(r[s] or 0)
        if histograms:
            lt, ft = LATENCY_BUCKETS[r["lt"]], r["ft"]
            if lt in wanted:
                acc[lt] += n
            if ft is not None and TTFT_BUCKETS[ft] in wanted:
                acc[TTFT_BUCKETS[ft]] += n
    return [row for row in out.values() if any(row[c] for c in summed)]


async def aggregate(
    wh: Warehouse,
    start: datetime,
    end: datetime,
    f: Filters,
    keys: tuple[str, ...],
    summed: tuple[str, ...],
    only: tuple[str, list[Any]] | None = None,
) -> list[dict[str, Any]]:
    """The rows of the whole hours ``[start, end)`` matching ``f``, grouped by ``keys`` (``hour`` among them
    when the caller splits by hour), with the ``summed`` sums; ``only`` as :func:`statement`'s."""
    from google.cloud import bigquery

    sql, params = statement(wh.table, f, keys, summed, only)
    params += [
        bigquery.ScalarQueryParameter("lo", "TIMESTAMP", start),
        bigquery.ScalarQueryParameter("hi", "TIMESTAMP", end),
    ]
    config = bigquery.QueryJobConfig(query_parameters=params, use_query_cache=True)

    def run() -> list[dict[str, Any]]:
        retry = bigquery.DEFAULT_RETRY.with_deadline(QUERY_TIMEOUT)
        job = wh.client.query(sql, job_config=config, retry=retry, timeout=QUERY_TIMEOUT)
        return fold(job.result(timeout=QUERY_TIMEOUT), keys, summed)

    return await asyncio.to_thread(run)
