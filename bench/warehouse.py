"""The Firestore store's BigQuery warehouse (issue N): the questions no slice holds, timed (p50/p95) on the
BigQuery emulator (bqemulator: DuckDB underneath; scripts/test-tools installs it).

    python -m bench.warehouse [--events 1000000] [--days 30]      (writes bench/results/warehouse.md)

The events are bench/firestore_scale.py's traffic (5,000 users, 40 apps, 50 keys, ...), each as its warehouse row
(:func:`modeltrack.sinks.bigquery.warehouse_row`'s columns), inserted by the warehouse's own streaming insert.
The questions run through :func:`modeltrack.query.bigquery.aggregate`, as the Firestore reader runs them; they
read no Firestore document.

What this measures is the shape (one query a question, its rows, no documents) and the emulator's speed, not
BigQuery's: on BigQuery an interactive query's latency is its own (queueing, slots; typically around a second
for a month of a clustered table), which no machine here can measure.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from bench.firestore_scale import APPS, KEYS, MODEL, USERS, rows

REPEAT = 7
OUT = Path(__file__).parent / "results" / "warehouse.md"


def questions() -> list[tuple[str, Any, tuple[str, ...]]]:
    from modeltrack.query.base import Filters

    return [
        ("by user, one app", Filters(app=APPS[3]), ("user",)),
        ("by key, one app", Filters(app=APPS[3]), ("key_id",)),
        ("by prompt id, one model", Filters(model=MODEL), ("prompt_id",)),
        ("by model, one key", Filters(key_id=KEYS[7]), ("model",)),
        ("a user's page: by model", Filters(user=USERS[42]), ("model", "cache_hit")),
        ("a user's page: by day", Filters(user=USERS[42]), ("hour",)),
        ("by user, one app, 2xx", Filters(app=APPS[3], status="2xx"), ("user",)),
    ]


class WarehouseOnly:
    """The questions as :class:`modeltrack.query.firestore.FirestoreReader` asks them of its warehouse, for
    :func:`modeltrack.query.breakdown.breakdown` (the bench has no Firestore store beside it)."""

    name = "warehouse"
    histograms_apart = True

    def __init__(self, wh: Any) -> None:
        self.wh = wh

    async def aggregate(
        self,
        start: datetime,
        end: datetime,
        f: Any,
        group_by: tuple[str, ...] = (),
        by_hour: bool = False,
        day_zone: Any = None,
        latency: bool = True,
        values: Any = None,
        sums: Any = None,
    ) -> list[dict[str, Any]]:
        from modeltrack.query.bigquery import aggregate
        from modeltrack.rollups import SUMMED, SUMS

        summed = SUMMED if latency else SUMS
        if sums is not None:
            summed = tuple(s for s in SUMS if s in sums)
        top = (group_by[0], list(values)) if values is not None and group_by else None
        keys = (("hour",) if by_hour else ()) + group_by
        return await aggregate(self.wh, start, end, f, keys, summed, top)


def as_row(i: int, row: dict[str, Any]) -> dict[str, Any]:
    from modeltrack.rollups import LATENCY_BUCKETS, SUMS
    from modeltrack.sinks.bigquery import COLUMNS

    out = {c: row.get(c, 0) for c in COLUMNS if c not in ("request_id", "ts", "lt", "ft")}
    for s in SUMS:
        out[s] = int(row.get(s) or 0)
    out["request_id"] = f"bench-{i:09d}"
    out["ts"] = row["hour"] + ":00:00Z"
    out["lt"] = next(j for j, name in enumerate(LATENCY_BUCKETS) if name in row)
    out["ft"] = None
    return out


async def run(n: int, days: int) -> str:
    from tests.faults import BigQueryEmulator, emulator_running

    from modeltrack.query.bigquery import aggregate
    from modeltrack.rollups import SUMMED
    from modeltrack.sinks.bigquery import Warehouse

    end = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    start = end - timedelta(days=days)
    with tempfile.TemporaryDirectory() as tmp, emulator_running(BigQueryEmulator(Path(tmp)), "BIGQUERY_EMULATOR_HOST"):
        wh = Warehouse(BigQueryEmulator.project, f"bench_{uuid.uuid4().hex[:8]}", "modeltrack")
        await wh.open()
        t0 = time.perf_counter()
        chunk: list[dict[str, Any]] = []
        for i, row in enumerate(rows(n, days, end)):
            chunk.append(as_row(i, row))
            if len(chunk) == 50_000:
                await asyncio.to_thread(wh.insert_rows, chunk)
                chunk = []
        if chunk:
            await asyncio.to_thread(wh.insert_rows, chunk)
        seeded = time.perf_counter() - t0
        lines = [
            "# The warehouse's questions (BigQuery emulator)",
            "",
            f"- date: {datetime.now(UTC):%Y-%m-%d %H:%M} UTC; {n:,} events over {days} days "
            f"({n // days:,} a day), seeded in {seeded:.0f} s ({n / seeded:,.0f} rows/s by streaming insert)",
            f"- bqemulator {_version()}, {os.cpu_count()} cores; each question {REPEAT} times, 30 days, every sum "
            "and histogram",
            "",
            "| question | p50 ms | p95 ms | rows back | Firestore documents |",
            "|---|---|---|---|---|",
        ]
        from modeltrack.query.base import Filters
        from modeltrack.query.breakdown import breakdown
        from modeltrack.query.times import zone
        from modeltrack.query.views import Range

        reader, rng = WarehouseOnly(wh), Range(start, end, zone("UTC"), "UTC")
        for name, f in (("the dashboard's user breakdown, one app", Filters(app=APPS[3])),):
            took = []
            for _ in range(REPEAT):
                t = time.perf_counter()
                got = len((await breakdown(reader, rng, "user", f, limit=20))["rows"])
                took.append((time.perf_counter() - t) * 1000)
            took.sort()
            lines.append(
                f"| {name} (top 20 and the previous 30 days: 4 queries) | "
                f"{statistics.median(took):.0f} | {took[-1]:.0f} | {got:,} | 0 |"
            )
        for name, f, keys in questions():
            took, got = [], 0
            for _ in range(REPEAT):
                t = time.perf_counter()
                got = len(await aggregate(wh, start, end, f, keys, SUMMED))
                took.append((time.perf_counter() - t) * 1000)
            took.sort()
            p95 = took[min(len(took) - 1, round(0.95 * (len(took) - 1)))]
            lines.append(f"| {name} | {statistics.median(took):.0f} | {p95:.0f} | {got:,} | 0 |")
        wh.close()
    return "\n".join(lines) + "\n"


def _version() -> str:
    from tests.faults import BQ_VENV

    found = sorted(BQ_VENV.glob("lib/python*/site-packages/bqemulator-*.dist-info"))
    return found[-1].name.removesuffix(".dist-info").split("-", 1)[1] if found else "?"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--events", type=int, default=1_000_000)
    ap.add_argument("--days", type=int, default=30)
    args = ap.parse_args()
    text = asyncio.run(run(args.events, args.days))
    OUT.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
