"""What-if: the real usage of a slice of traffic, re-priced as if another model had served it, with the same
pricing module the proxy uses: "this feature on gpt-4.1-mini would have cost $X instead of $Y".

Each request is re-priced on its own (its token counts by kind, at its own time, so context tiers and dated
prices apply as they would have); past ``MAX_EVENTS`` requests the slice is re-priced from the hourly rollups by
model instead, which applies base-tier prices (the answer says which), per UTC day unless the target has
time-of-day rates (then per hour, each hour at its start's rate: DeepSeek's off-peak window opens at 16:30 UTC).
What is compared is what was billed: response-cache hits cost nothing and are left out; requests whose model had
no price count as unpriced.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from ..usage import Usage
from .base import EventFilter, Filters, Reader
from .times import hour_start
from .views import QueryError, Range, usd

if TYPE_CHECKING:
    from ..pricing import Pricing

MAX_EVENTS = 200_000


async def whatif(
    reader: Reader,
    pricing: Pricing,
    rng: Range,
    filters: Filters,
    provider: str,
    model: str,
    max_events: int = MAX_EVENTS,
) -> dict[str, Any]:
    if not model:
        raise QueryError("name the model to compare with: to_model=gpt-4.1-mini (and to_provider= if it is ambiguous)")
    if pricing.resolve(provider, model) is None:
        homes = pricing.home_providers(model)
        hint = f" (it is priced for provider {', '.join(homes)})" if homes else ""
        raise QueryError(f"no price for {provider}/{model}{hint}: see `modeltrack pricing show {model}`")
    billed = filters.with_(cache_hit=False)
    rollup = await reader.aggregate(rng.start, rng.end, billed, ("provider", "model"))
    n = sum(int(r["requests"]) for r in rollup)
    groups: dict[tuple[str, str], dict[str, Any]] = {}
    unpriced = 0
    if n <= max_events:
        method = "per_request"
        async for chunk in reader.iter_events(EventFilter(rng.start, rng.end, billed)):
            for e in chunk:
                g = _group(groups, e.provider, e.model or "")
                g["requests"] += 1
                if e.cost_usd is None and e.cost_source == "unpriced":
                    unpriced += 1
                    continue
                g["actual_nano"] += round((e.cost_usd or 0) * 1e9)
                ts = datetime.fromisoformat(e.timestamp.replace("Z", "+00:00")).timestamp()
                g["whatif_nano"] += round((pricing.price(provider, model, e.usage(), ts) or 0) * 1e9)
    else:
        method = "aggregate"
        # Summed per UTC day when the target's prices hold all day (a day's rows then price exactly as its hours'
        # would: base-tier prices are linear), which reads a 24th of the documents; per hour otherwise.
        daily = UTC if pricing.same_all_day(provider, model) else None
        for r in await reader.aggregate(
            rng.start, rng.end, billed, ("provider", "model"), by_hour=True, day_zone=daily
        ):
            g = _group(groups, r["provider"], r["model"])
            g["requests"] += int(r["requests"])
            g["actual_nano"] += int(r["cost_nano_usd"])
            usage = Usage(
                input_tokens=int(r["input_tokens"]),
                output_tokens=int(r["output_tokens"]),
                cache_read_tokens=int(r["cache_read_tokens"]),
                cache_write_tokens=int(r["cache_write_tokens"]),
                reasoning_tokens=int(r["reasoning_tokens"]),
            )
            at = hour_start(r["hour"]).timestamp()
            g["whatif_nano"] += round((pricing.price(provider, model, usage, at) or 0) * 1e9)
    rows = sorted(groups.values(), key=lambda g: -g["actual_nano"])
    actual = sum(g["actual_nano"] for g in rows)
    alt = sum(g["whatif_nano"] for g in rows)
    return {
        "range": rng.describe(),
        "target": {"provider": provider, "model": model},
        "method": method,
        "requests": sum(g["requests"] for g in rows),
        "unpriced_requests": unpriced,
        "actual_usd": usd(actual),
        "whatif_usd": usd(alt),
        "difference_usd": usd(alt - actual),
        "change_pct": round(100 * (alt - actual) / actual, 1) if actual else None,
        "rows": [
            {
                "provider": g["provider"],
                "model": g["model"] or None,
                "requests": g["requests"],
                "actual_usd": usd(g["actual_nano"]),
                "whatif_usd": usd(g["whatif_nano"]),
            }
            for g in rows
        ],
    }


def _group(groups: dict[tuple[str, str], dict[str, Any]], provider: str, model: str) -> dict[str, Any]:
    g = groups.get((provider, model))
    if g is None:
        g = groups[(provider, model)] = {
            "provider": provider,
            "model": model,
            "requests": 0,
            "actual_nano": 0,
            "whatif_nano": 0,
        }
    return g
