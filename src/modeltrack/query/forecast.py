"""Spend to the end of the month or quarter, with a band, from the store's own history.

Method (simple, stated, checkable): daily spend over the last eight weeks of complete days, in the user's time
zone; each weekday's mean is that weekday's expected spend (weekly seasonality: weekends are usually quieter);
the rest of today is its weekday's mean times the fraction of the day left. The band is a 90 % interval from the
spread of actual days around their weekday's mean, widened with the square root of the days left.

Below ``MIN_DAYS`` days of history the answer is an honest "not enough data", with the spend so far.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta, tzinfo
from typing import Any

from .base import Filters, Reader
from .times import bucket_start, ceil_hour, hour_start, next_bucket, stamp
from .views import QueryError, usd

MIN_DAYS = 14
HISTORY_DAYS = 56
Z90 = 1.645


async def _daily(reader: Reader, start: datetime, end: datetime, filters: Filters, tz: tzinfo) -> dict[datetime, int]:
    out: dict[datetime, int] = {}
    for row in await reader.aggregate(start, end, filters, (), by_hour=True, day_zone=tz, latency=False):
        day = bucket_start(hour_start(row["hour"]), "day", tz)
        out[day] = out.get(day, 0) + int(row["cost_nano_usd"])
    return out


async def forecast(
    reader: Reader, now: datetime, tz: tzinfo, tz_name: str, horizon: str, filters: Filters
) -> dict[str, Any]:
    if horizon not in ("month", "quarter"):
        raise QueryError(f"horizon {horizon!r} is not one of month, quarter")
    today = bucket_start(now, "day", tz)
    period_start = bucket_start(now, horizon, tz)
    period_end = next_bucket(period_start, horizon, tz)
    history_start = min(today - timedelta(days=HISTORY_DAYS), period_start)
    daily = await _daily(reader, history_start.astimezone(UTC), ceil_hour(now), filters, tz)
    spent = sum(v for d, v in daily.items() if d >= period_start)
    base = {
        "horizon": horizon,
        "tz": tz_name,
        "period_start": stamp(period_start),
        "period_end": stamp(period_end),
        "spent_usd": usd(spent),
    }
    first = min((d for d, v in daily.items() if v), default=None)
    complete = []
    if first is not None:
        d = max(first, today - timedelta(days=HISTORY_DAYS))
        while d < today:
            complete.append(d)
            d = next_bucket(d, "day", tz)
    if len(complete) < MIN_DAYS:
        return {
            **base,
            "enough_data": False,
            "reason": f"a forecast needs {MIN_DAYS} complete days of history; the store has {len(complete)}",
            "history_days": len(complete),
        }
    by_weekday: dict[int, list[int]] = {}
    for d in complete:
        by_weekday.setdefault(d.weekday(), []).append(daily.get(d, 0))
    overall = sum(daily.get(d, 0) for d in complete) / len(complete)
    mean = {w: sum(v) / len(v) for w, v in by_weekday.items()}
    residuals = [daily.get(d, 0) - mean.get(d.weekday(), overall) for d in complete]
    sigma = math.sqrt(sum(r * r for r in residuals) / max(len(residuals) - 1, 1))

    day_end = next_bucket(today, "day", tz)
    left_today = (day_end - now).total_seconds() / (day_end - today).total_seconds()
    expected_today = mean.get(today.weekday(), overall)
    projection = [
        {
            "day": stamp(today),
            "expected_usd": usd(round(daily.get(today, 0) + expected_today * left_today)),
            "actual_so_far_usd": usd(daily.get(today, 0)),
        }
    ]
    remaining = expected_today * left_today
    days_left = left_today
    d = day_end
    while d < period_end:
        e = mean.get(d.weekday(), overall)
        projection.append(
            {
                "day": stamp(d),
                "expected_usd": usd(round(e)),
                "low_usd": usd(round(max(e - Z90 * sigma, 0))),
                "high_usd": usd(round(e + Z90 * sigma)),
            }
        )
        remaining += e
        days_left += 1
        d = next_bucket(d, "day", tz)
    band = Z90 * sigma * math.sqrt(days_left)
    total = spent + remaining
    return {
        **base,
        "enough_data": True,
        "forecast_usd": usd(round(total)),
        "low_usd": usd(round(max(total - band, spent))),
        "high_usd": usd(round(total + band)),
        "confidence": 0.9,
        "method": f"weekday means of the last {len(complete)} complete days; 90% band from their spread",
        "history_days": len(complete),
        "weekday_mean_usd": {
            ("mon", "tue", "wed", "thu", "fri", "sat", "sun")[w]: usd(round(m)) for w, m in sorted(mean.items())
        },
        "history": [{"day": stamp(d), "actual_usd": usd(daily.get(d, 0))} for d in complete],
        "projection": projection,
    }
