"""Reading the SQLite store: a read-only connection (``mode=ro``) that never creates a file or a directory.

Queries run in a worker thread (the API's event loop stays free) and aggregate inside SQLite, never over the
events: whole UTC days from the daily rollups (few rows a day), the hours at a range's edges (and any question
by user and another dimension) from the hourly rollup, each read through its primary key's leading column.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import threading
from collections.abc import AsyncIterator, Collection
from dataclasses import replace
from datetime import UTC, datetime, tzinfo
from pathlib import Path
from typing import Any
from urllib.parse import quote

import orjson

from ..events import CostEvent
from ..rollups import HISTOGRAMS, SUMS, TOKENS
from . import stitch
from .base import DIMENSIONS, EventFilter, Filters, StoreMissing, only
from .times import hour_key, stamp

_SUMMED = (*SUMS, *HISTOGRAMS)
_SESSION_SUMS = ("requests", *TOKENS, "cost_nano_usd", "latency_ms")


class SQLiteReader:
    name = "sqlite"

    def __init__(self, path: str) -> None:
        self.path = os.path.abspath(path)
        if not os.path.isfile(self.path):
            raise StoreMissing(
                f"no database at {self.path}: point MODELTRACK_STORE or --store at the proxy's store "
                "(sqlite:///relative.db or sqlite:////absolute.db)"
            )
        uri = "file:" + quote(str(Path(self.path))) + "?mode=ro"
        self._conn = sqlite3.connect(uri, uri=True, check_same_thread=False, timeout=5.0)
        self._lock = threading.Lock()
        cols = {r[1] for r in self._conn.execute("PRAGMA table_info(events)")}
        if not cols:
            raise StoreMissing(f"{self.path} is not a ModelTrack database (no events table)")
        # A database an earlier version wrote, not migrated yet (the proxy migrates it when it next opens it):
        # its events are still readable, fields taken from the stored JSON.
        self._col = {
            c: c if c in cols else f"json_extract(CAST(doc AS TEXT), '$.{c}')"
            for c in ("timestamp", "session_id", *DIMENSIONS)
        }
        tables = {r[0] for r in self._conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        self._rollups = "rollup_hourly" in tables
        if self._rollups and "lt_00" not in {r[1] for r in self._conn.execute("PRAGMA table_info(rollup_hourly)")}:
            raise StoreMissing(
                f"{self.path} was written by an earlier version: start `modeltrack serve` on it once, which "
                "migrates it in place"
            )
        self._tables = tables

    def _run(self, fn: Any, *args: Any) -> Any:
        with self._lock:
            return fn(*args)

    async def _call(self, fn: Any, *args: Any) -> Any:
        return await asyncio.to_thread(self._run, fn, *args)

    # -- events -------------------------------------------------------------------------------------------
    def _where(self, f: EventFilter) -> tuple[str, list[Any]]:
        conds: list[str] = []
        args: list[Any] = []
        if f.since is not None:
            conds.append(f"{self._col['timestamp']} >= ?")
            args.append(stamp(f.since))
        if f.until is not None:
            conds.append(f"{self._col['timestamp']} < ?")
            args.append(stamp(f.until))
        if f.session_id is not None:
            conds.append(f"{self._col['session_id']} = ?")
            args.append(f.session_id)
        c, a = self._dims(f.filters, self._col)
        return " AND ".join(conds + c) or "1", args + a

    @staticmethod
    def _dims(f: Filters, col: dict[str, str]) -> tuple[list[str], list[Any]]:
        conds: list[str] = []
        args: list[Any] = []
        for name, value in f.items():
            if name == "status":
                lo, hi = f.status_range() or (0, 999)
                conds.append(f"{col['status']} BETWEEN ? AND ?")
                args += [lo, hi]
            elif name == "cache_hit":
                conds.append(f"{col['cache_hit']} = ?")
                args.append(1 if value else 0)
            elif col is _ROLLUP_COLUMNS:
                conds.append(f"{name} = ?")
                args.append(value)
            else:
                conds.append(f"COALESCE({col[name]}, '') = ?")
                args.append(value)
        return conds, args

    def _events(self, f: EventFilter, limit: int | None) -> list[CostEvent]:
        where, args = self._where(f)
        ts = self._col["timestamp"]
        if limit:
            sql = f"SELECT doc FROM events WHERE {where} ORDER BY {ts} DESC, rowid DESC LIMIT ?"
            rows = self._conn.execute(sql, [*args, limit]).fetchall()
            rows.reverse()
        else:
            rows = self._conn.execute(f"SELECT doc FROM events WHERE {where} ORDER BY {ts}, rowid", args).fetchall()
        return [CostEvent.from_dict(orjson.loads(r[0])) for r in rows]

    async def events(self, f: EventFilter, limit: int | None = None) -> list[CostEvent]:
        return list(await self._call(self._events, f, limit))

    def _page(self, f: EventFilter, after: tuple[str, int] | None, chunk: int) -> list[tuple[str, int, bytes]]:
        ts = self._col["timestamp"]
        if after is None:
            where, args = self._where(f)
        else:
            # The page's start as the index range's lower bound (a row-value comparison alone would not seek:
            # each page would scan the index from the range's start, quadratic over a large export).
            where, args = self._where(replace(f, since=None))
            lower = max(stamp(f.since), after[0]) if f.since is not None else after[0]
            where += f" AND {ts} >= ? AND ({ts} > ? OR rowid > ?)"
            args += [lower, after[0], after[1]]
        sql = f"SELECT {ts}, rowid, doc FROM events WHERE {where} ORDER BY {ts}, rowid LIMIT ?"
        return self._conn.execute(sql, [*args, chunk]).fetchall()

    async def _pages(self, f: EventFilter, chunk: int) -> AsyncIterator[list[tuple[str, int, bytes]]]:
        """Keyset pagination on (timestamp, rowid): each page is one indexed query, memory stays constant."""
        after: tuple[str, int] | None = None
        while True:
            rows = await self._call(self._page, f, after, chunk)
            if not rows:
                return
            after = (rows[-1][0], rows[-1][1])
            yield rows

    async def iter_events(self, f: EventFilter, chunk: int = 1000) -> AsyncIterator[list[CostEvent]]:
        async for rows in self._pages(f, chunk):
            yield [CostEvent.from_dict(orjson.loads(r[2])) for r in rows]

    async def iter_raw(self, f: EventFilter, chunk: int = 1000) -> AsyncIterator[list[bytes]]:
        """The stored JSON of each event, as :meth:`iter_events` (an export need not decode and re-encode)."""
        async for rows in self._pages(f, chunk):
            yield [bytes(r[2]) for r in rows]

    def _page_newest(self, f: EventFilter, before: tuple[str, str] | None, limit: int) -> list[CostEvent]:
        where, args = self._where(f)
        ts = self._col["timestamp"]
        if before is not None:
            # The plain bound lets the timestamp index seek; the OR breaks ties between equal timestamps.
            where += f" AND {ts} <= ? AND ({ts} < ? OR request_id < ?)"
            args += [before[0], before[0], before[1]]
        sql = f"SELECT doc FROM events WHERE {where} ORDER BY {ts} DESC, request_id DESC LIMIT ?"
        return [CostEvent.from_dict(orjson.loads(r[0])) for r in self._conn.execute(sql, [*args, limit])]

    async def page(self, f: EventFilter, before: tuple[str, str] | None, limit: int) -> list[CostEvent]:
        return list(await self._call(self._page_newest, f, before, limit))

    def _event(self, request_id: str) -> CostEvent | None:
        row = self._conn.execute("SELECT doc FROM events WHERE request_id = ?", (request_id,)).fetchone()
        return None if row is None else CostEvent.from_dict(orjson.loads(row[0]))

    async def event(self, request_id: str) -> CostEvent | None:
        return await self._call(self._event, request_id)  # type: ignore[no-any-return]

    # -- rollups ------------------------------------------------------------------------------------------
    def _daily_table(self, f: Filters, group_by: tuple[str, ...]) -> str | None:
        """The daily rollup that holds every dimension this question groups or filters by, if one does."""
        needed = {*group_by, *(name for name, _ in f.items())}
        if needed <= {"user", "cache_hit", "org"} and "rollup_day_user" in self._tables:
            return "rollup_day_user"
        if "user" not in needed and "rollup_day_attr" in self._tables:
            return "rollup_day_attr"
        return None

    def _aggregate(
        self,
        start: datetime,
        end: datetime,
        f: Filters,
        group_by: tuple[str, ...],
        by_hour: bool,
        day_zone: tzinfo | None,
        latency: bool = True,
    ) -> list[dict[str, Any]]:
        """Whole UTC days from a daily rollup when one holds the question's dimensions, the rest from the hourly
        rollup (:mod:`modeltrack.query.stitch`); the sums are the same."""
        if not self._rollups:
            raise StoreMissing(f"{self.path} has no hourly rollups yet: start `modeltrack serve` on it once")
        for g in group_by:
            if g not in DIMENSIONS:
                raise ValueError(g)
        summed = _SUMMED if latency else SUMS
        if not by_hour and end >= datetime.now(UTC):
            end = stitch.horizon(start, end, weekly=False)
        table = self._daily_table(f, group_by)
        p = stitch.plan(start, end, by_hour, day_zone) if table is not None else None
        if p is None or table is None:
            return self._sum("rollup_hourly", "hour", hour_key(start), hour_key(end), f, group_by, by_hour, summed)
        days = self._sum(table, "day", p.day_lo, p.day_hi, f, group_by, by_hour, summed)
        edges = [self._sum("rollup_hourly", "hour", lo, hi, f, group_by, by_hour, summed) for lo, hi in p.edges]
        moved: list[dict[str, Any]] = []
        for i in range(0, len(p.minority), 500):
            moved += self._sum_hours(p.minority[i : i + 500], f, group_by, summed)
        return stitch.combine(p, days, edges, moved, (("hour",) if by_hour else ()) + group_by, summed)

    def _sum_hours(
        self, hours: list[str], f: Filters, group_by: tuple[str, ...], summed: tuple[str, ...] = _SUMMED
    ) -> list[dict[str, Any]]:
        keys = ("hour", *group_by)
        conds, args = self._dims(f, _ROLLUP_COLUMNS)
        where = " AND ".join([f"hour IN ({', '.join('?' * len(hours))})", *conds])
        sql = (
            f"SELECT {', '.join((*keys, *(f'SUM({c})' for c in summed)))} FROM rollup_hourly WHERE {where} "
            f"GROUP BY {', '.join(keys)}"
        )
        return [
            {
                **dict(zip(keys, row[: len(keys)], strict=True)),
                **dict(zip(summed, map(int, row[len(keys) :]), strict=True)),
            }
            for row in self._conn.execute(sql, [*hours, *args])
        ]

    def _sum(
        self,
        table: str,
        at: str,
        lo: str,
        hi: str,
        f: Filters,
        group_by: tuple[str, ...],
        by_hour: bool,
        summed: tuple[str, ...] = _SUMMED,
    ) -> list[dict[str, Any]]:
        keys = (("hour",) if by_hour else ()) + group_by
        cols = [f"{at} || 'T00'" if (k == "hour" and at == "day") else k for k in keys]
        conds, args = self._dims(f, _ROLLUP_COLUMNS)
        where = " AND ".join([f"{at} >= ?", f"{at} < ?", *conds])
        sql = f"SELECT {', '.join((*cols, *(f'SUM({c})' for c in summed)))} FROM {table} WHERE {where}"
        if keys:
            sql += f" GROUP BY {', '.join(cols)}"
        rows = self._conn.execute(sql, [lo, hi, *args]).fetchall()
        out = []
        for row in rows:
            d = dict(zip(keys, row[: len(keys)], strict=True))
            sums = row[len(keys) :]
            if sums[0] is None:
                continue  # no row matched (an aggregate without GROUP BY still returns one)
            d.update(zip(summed, (int(v or 0) for v in sums), strict=True))
            out.append(d)
        return out

    async def aggregate(
        self,
        start: datetime,
        end: datetime,
        f: Filters,
        group_by: tuple[str, ...] = (),
        by_hour: bool = False,
        day_zone: tzinfo | None = None,
        latency: bool = True,
        values: Collection[Any] | None = None,
        sums: Collection[str] | None = None,
    ) -> list[dict[str, Any]]:
        rows = list(await self._call(self._aggregate, start, end, f, group_by, by_hour, day_zone, latency))
        return only(rows, group_by, values)

    def _sessions(self, start: datetime, end: datetime, f: Filters, limit: int) -> list[dict[str, Any]]:
        """Sessions are listed by the requests the range and filters select, and always show their whole
        figures (issue M, item 10): a filter picks which sessions, never changes what a row means."""
        since, until = stamp(start), stamp(end)
        cols = (
            "SELECT session_id, first_ts, last_ts, team, app, feature, user, org, requests, "
            f"{', '.join(TOKENS)}, cost_nano_usd, latency_ms FROM sessions"
        )
        if f.items():
            where, args = self._where(EventFilter(start, end, f))
            sql = (
                f"{cols} WHERE (session_id, org) IN (SELECT DISTINCT session_id, COALESCE(org, '') FROM events"
                f" WHERE {where} AND session_id IS NOT NULL) ORDER BY cost_nano_usd DESC LIMIT ?"
            )
            rows = self._conn.execute(sql, [*args, limit]).fetchall()
        else:
            sql = f"{cols} WHERE last_ts >= ? AND first_ts < ? ORDER BY cost_nano_usd DESC LIMIT ?"
            rows = self._conn.execute(sql, [since, until, limit]).fetchall()
        names = ("session_id", "first_ts", "last_ts", "team", "app", "feature", "user", "org", *_SESSION_SUMS)
        return [dict(zip(names, r, strict=True)) for r in rows]

    async def sessions(self, start: datetime, end: datetime, f: Filters, limit: int) -> list[dict[str, Any]]:
        return list(await self._call(self._sessions, start, end, f, limit))

    async def close(self) -> None:
        with self._lock:
            self._conn.close()


_ROLLUP_COLUMNS = {d: d for d in DIMENSIONS}
