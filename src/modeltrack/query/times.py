"""Instants and periods as users write them, and as the stores keep them.

Stored timestamps are RFC 3339 in UTC with milliseconds (``2026-11-29T20:14:03.123Z``), so two of them compare
as instants when they compare as strings, and rollup hours are their first 13 characters. What users type is
parsed here once, with clear errors: RFC 3339 with any offset (compared as the instant it names) or a plain
date (midnight in the given time zone).
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta, tzinfo
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError


class TimeError(ValueError):
    """A time value that cannot be used, with what to write instead."""


def zone(name: str | None) -> tzinfo:
    if not name or name.upper() == "UTC":
        return UTC
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise TimeError(f"unknown time zone {name!r}: write an IANA name such as UTC or Europe/Paris") from None


def parse_instant(value: str, tz: tzinfo = UTC, end_of_day: bool = False) -> datetime:
    """``2026-11-01T09:30:00Z`` / ``2026-11-01T10:30:00+01:00`` (the same instant), or ``2026-11-01``
    (midnight in ``tz``; with ``end_of_day``, the midnight that ends that day, for inclusive ``--until``)."""
    raw = value.strip()
    try:
        if len(raw) == 10:
            d = date.fromisoformat(raw)
            start = datetime(d.year, d.month, d.day, tzinfo=tz)
            return (start + timedelta(days=1) if end_of_day else start).astimezone(UTC)
        dt = datetime.fromisoformat(raw)
    except ValueError:
        raise TimeError(
            f"{value!r} is not a date or time: write 2026-11-01, or RFC 3339 such as 2026-11-01T09:30:00Z"
        ) from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=tz)
    return dt.astimezone(UTC)


def stamp(dt: datetime) -> str:
    """The stored form of an instant: RFC 3339, UTC, milliseconds (``2026-11-01T09:30:00.000Z``)."""
    dt = dt.astimezone(UTC)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{dt.microsecond // 1000:03d}Z"


def hour_key(dt: datetime) -> str:
    """The rollup hour an instant falls in (``2026-11-01T09``)."""
    return dt.astimezone(UTC).strftime("%Y-%m-%dT%H")


def hour_start(key: str) -> datetime:
    return datetime.strptime(key, "%Y-%m-%dT%H").replace(tzinfo=UTC)


def floor_hour(dt: datetime) -> datetime:
    return dt.astimezone(UTC).replace(minute=0, second=0, microsecond=0)


def ceil_hour(dt: datetime) -> datetime:
    f = floor_hour(dt)
    return f if f == dt.astimezone(UTC) else f + timedelta(hours=1)


def bucket_start(dt: datetime, granularity: str, tz: tzinfo) -> datetime:
    """The start (in ``tz``) of the hour, day, week (Monday) or month containing ``dt``."""
    local = dt.astimezone(tz)
    if granularity == "hour":
        return local.replace(minute=0, second=0, microsecond=0)
    day = datetime(local.year, local.month, local.day, tzinfo=tz)
    if granularity == "day":
        return day
    if granularity == "week":
        return day - timedelta(days=day.weekday())
    if granularity == "month":
        return datetime(local.year, local.month, 1, tzinfo=tz)
    if granularity == "quarter":
        return datetime(local.year, 3 * ((local.month - 1) // 3) + 1, 1, tzinfo=tz)
    raise TimeError(f"unknown granularity {granularity!r}: write hour, day, week, month or quarter")


def next_bucket(start: datetime, granularity: str, tz: tzinfo) -> datetime:
    """The start of the bucket after the one starting at ``start`` (calendar-correct across DST and month
    lengths: computed on local dates, not by adding seconds)."""
    if granularity == "hour":
        return (start.astimezone(UTC) + timedelta(hours=1)).astimezone(tz)
    if granularity in ("day", "week"):
        d = start.date() + timedelta(days=1 if granularity == "day" else 7)
        return datetime(d.year, d.month, d.day, tzinfo=tz)
    months = 1 if granularity == "month" else 3
    y, m = divmod(start.month - 1 + months, 12)
    return datetime(start.year + y, m + 1, 1, tzinfo=tz)
