"""The dashboard's first page in one answer: spend in the chosen period (the Period selector), today and month
to date, the month's forecast, the period's trend, and its top teams and models."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, tzinfo
from typing import Any

from .base import EventFilter, Filters, Reader
from .breakdown import breakdown
from .forecast import forecast
from .times import bucket_start, ceil_hour, stamp
from .views import Range, series, summary, usd


async def overview(
    reader: Reader, now: datetime, tz: tzinfo, tz_name: str, filters: Filters, rng: Range | None = None
) -> dict[str, Any]:
    today = bucket_start(now, "day", tz)
    month = bucket_start(now, "month", tz)
    end = ceil_hour(now)
    # An hour counts in the local day its start falls in (views.make_range): local midnights round up.
    today_rows = await reader.aggregate(ceil_hour(today), end, filters, latency=False)
    month_rng = Range(ceil_hour(month), end, tz, tz_name)
    period = rng or Range(ceil_hour(today - timedelta(days=29)), end, tz, tz_name)
    month_rows = await reader.aggregate(month_rng.start, month_rng.end, filters, latency=False)
    month_total = summary(month_rows[0]) if month_rows else summary({})
    # The top tables show spend and share only: no histogram to read.
    teams = await breakdown(reader, period, "team", filters, limit=5, compare=False, latency=False)
    models = await breakdown(reader, period, "model", filters, limit=5, compare=False, latency=False)
    one_day = period.end - period.start <= timedelta(hours=25)
    trend = await series(reader, period, "hour" if one_day else "day", filters)
    month_forecast = await forecast(reader, now, tz, tz_name, "month", filters)
    month_forecast.pop("history", None)
    latest = await reader.events(EventFilter(filters=filters), 1)
    return {
        "now": stamp(now.astimezone(UTC)),
        "tz": tz_name,
        "empty": not latest,
        "last_event": latest[0].timestamp if latest else None,
        "today": {
            "since": stamp(today),
            "cost_usd": usd(sum(int(r["cost_nano_usd"]) for r in today_rows)),
            "requests": sum(int(r["requests"]) for r in today_rows),
            "unpriced": sum(int(r.get("unpriced", 0)) for r in today_rows),
        },
        "month_to_date": {
            "since": stamp(month),
            "cost_usd": month_total["cost_usd"],
            "requests": month_total["requests"],
            "saved_usd": month_total["saved_usd"],
            "unpriced": month_total["unpriced"],
        },
        "period": {
            **period.describe(),
            "cost_usd": teams["total"]["cost_usd"],
            "requests": teams["total"]["requests"],
            "saved_usd": teams["total"]["saved_usd"],
            "unpriced": teams["total"]["unpriced"],
        },
        "forecast": month_forecast,
        "trend": trend,
        "top_teams": teams["rows"],
        "top_models": models["rows"],
    }
