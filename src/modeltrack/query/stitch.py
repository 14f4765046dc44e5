"""Answering a time range from daily rollups plus a few hours, the same way on every store.

A store keeps its sums by UTC day and by UTC hour. A range ``[start, end)`` of whole hours is read as its whole UTC
days from a daily rollup, and the hours before its first and after its last midnight from the hourly one: the
sums are the same, and a 30-day question reads 30 day rows instead of 720 hours.

By hour, that is only done for a caller that buckets by day or coarser in ``day_zone``: each UTC day is then one
row stamped at an hour of the local day most of its hours belong to, and its other hours (one or two a day in
Europe, five in New York, none in UTC; half-hour zones such as Asia/Kolkata count an hour in the day it starts
in, as every reader does) are read by hour and moved out of it.

:func:`plan` says what to read; each store reads it its own way (SQL on SQLite, documents on Firestore), and
:func:`combine` puts the answer together. The results equal a sum of the hourly rollup over the whole range
(tests/test_api.py, tests/test_firestore_analytics.py).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timedelta, tzinfo
from typing import Any

from .times import bucket_start, hour_key

DAY = timedelta(days=1)


@dataclass
class Plan:
    """What to read: whole UTC days ``[first, last)`` by day, ``edges`` (hour-key ranges ``[lo, hi)``) by hour,
    and with a ``day_zone``, the ``minority`` hours to move out of their day rows, which are restamped by
    ``stamp_of`` (``YYYY-MM-DDT00`` → an hour of the row's majority local day)."""

    first: datetime
    last: datetime
    edges: list[tuple[str, str]] = field(default_factory=list)
    minority: list[str] = field(default_factory=list)
    stamp_of: dict[str, str] = field(default_factory=dict)

    @property
    def day_lo(self) -> str:
        return self.first.strftime("%Y-%m-%d")

    @property
    def day_hi(self) -> str:
        return self.last.strftime("%Y-%m-%d")


def horizon(start: datetime, end: datetime, weekly: bool) -> datetime:
    """Where a range that reaches the present may end instead: at the end of its last UTC day, or of its last
    week if it holds that week's Monday (``weekly``). An event is stamped when its request was made, so none is
    stamped after now: extended so, the range holds the same events, and its last day (week) is read from one
    daily row or document instead of an hour's each (the dashboard's ranges end at the next whole hour). Both
    readers ask it: on SQLite a 30-day breakdown otherwise summed today's hourly rows (~12,000 at a million
    events a month, 74 ms of its ~205; bench/README.md)."""
    last = (end - timedelta(hours=1)).replace(minute=0, second=0, microsecond=0)
    day = last.replace(hour=0)
    monday = day - timedelta(days=day.weekday())
    if weekly and start <= monday:
        return max(end, monday + timedelta(days=7))
    return max(end, day + timedelta(days=1))


def plan(start: datetime, end: datetime, by_hour: bool, day_zone: tzinfo | None) -> Plan | None:
    """None: the range holds no whole UTC day, or the caller needs real hours: read it all by hour."""
    if by_hour and day_zone is None:
        return None
    first = start if start == start.replace(hour=0) else (start + DAY).replace(hour=0)
    last = end.replace(hour=0)
    if first >= last:
        return None
    p = Plan(first, last)
    if start < first:
        p.edges.append((hour_key(start), hour_key(first)))
    if last < end:
        p.edges.append((hour_key(last), hour_key(end)))
    if by_hour and day_zone is not None:
        d = first
        while d < last:
            hours = [d + timedelta(hours=i) for i in range(24)]
            local_days = [bucket_start(h, "day", day_zone) for h in hours]
            major = Counter(local_days).most_common(1)[0][0]
            p.stamp_of[hour_key(d)] = hour_key(hours[local_days.index(major)])
            p.minority += [hour_key(h) for h, b in zip(hours, local_days, strict=True) if b != major]
            d += DAY
    return p


def combine(
    p: Plan,
    days: list[dict[str, Any]],
    edges: list[list[dict[str, Any]]],
    moved: list[dict[str, Any]],
    keys: tuple[str, ...],
    summed: tuple[str, ...],
) -> list[dict[str, Any]]:
    """The answer from the day rows (``hour`` = ``YYYY-MM-DDT00`` when grouped by hour), the rows of each edge,
    and the minority hours' rows (grouped by ``hour`` and the same dimensions), which are subtracted from their
    day's row and kept as rows of their own. Rows whose sums are all zero are left out, as a GROUP BY would."""
    if p.stamp_of:
        index = {tuple(r[k] for k in keys): r for r in days}
        for row in moved:
            day_row = index.get((row["hour"][:10] + "T00", *(row[k] for k in keys[1:])))
            if day_row is not None:  # (always there: the day rollup holds every hour's sums)
                for c in summed:
                    day_row[c] -= row[c]
        for row in days:
            row["hour"] = p.stamp_of[row["hour"]]
    parts = [days, *edges] + ([moved] if p.stamp_of else [])
    return days if len(parts) == 1 else merge(parts, keys, summed)


def merge(parts: list[list[dict[str, Any]]], keys: tuple[str, ...], summed: tuple[str, ...]) -> list[dict[str, Any]]:
    """Rows of several reads as one answer: rows with the same keys summed, rows whose sums are all zero left
    out, as a GROUP BY would."""
    merged: dict[tuple[Any, ...], dict[str, Any]] = {}
    for rows in parts:
        for row in rows:
            k = tuple(row[x] for x in keys)
            acc = merged.get(k)
            if acc is None:
                merged[k] = row
            else:
                for c in summed:
                    acc[c] += row[c]
    return [r for r in merged.values() if any(r[c] for c in summed)]
