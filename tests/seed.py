"""Stored history for dashboard and forecast tests: events spread over past days, written through the real
sink (the proxy can only stamp "now"). Deterministic for a seed; every figure a test checks is summed again by
the test from the events this returns."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

from modeltrack.events import CostEvent, new_request_id

TEAMS = ("search", "ads", "support", None)
APPS = ("web", "batch", "bot")
FEATURES = ("answers", "summaries", "triage", None)
MODELS = (
    ("openai", "gpt-4o-mini-2024-07-18", 0.15, 0.6),
    ("openai", "gpt-4o-2024-08-06", 2.5, 10.0),
    ("anthropic", "claude-sonnet-4-5-20250929", 3.0, 15.0),
    ("gemini", "gemini-2.5-flash", 0.3, 2.5),
)


def history(days: int, per_day: int, seed: int = 7, end: datetime | None = None) -> list[CostEvent]:
    """``per_day`` events a day (weekends at a third), each day ending at ``end`` (default now)."""
    rnd = random.Random(seed)
    end = end or datetime.now(UTC)
    out = []
    for d in range(days, 0, -1):
        day = (end - timedelta(days=d)).replace(hour=0, minute=0, second=0, microsecond=0)
        n = per_day if day.weekday() < 5 else per_day // 3
        for _ in range(n):
            ts = day + timedelta(seconds=rnd.randrange(86400))
            if ts >= end:
                continue
            provider, model, pin, pout = rnd.choice(MODELS)
            inp, outp = rnd.randrange(50, 4000), rnd.randrange(10, 800)
            cached = rnd.random() < 0.1
            status = 200 if rnd.random() > 0.03 else rnd.choice((429, 500))
            cost = None if status != 200 else round((inp * pin + outp * pout) / 1e6, 9)
            session = f"run-{rnd.randrange(40)}" if rnd.random() < 0.3 else None
            stream = rnd.random() < 0.5
            latency = round(rnd.uniform(80, 9000), 1)
            # A stream's first token: a share of its latency (no random draw, so a seed gives the same events
            # as before streams had one).
            ttft = round(40 + latency * 0.08, 1) if stream and status == 200 else None
            out.append(
                CostEvent(
                    timestamp=ts.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ts.microsecond // 1000:03d}Z",
                    request_id=new_request_id(),
                    upstream_request_id=None,
                    provider=provider,
                    endpoint="/v1/chat/completions",
                    model=model,
                    status=status,
                    stream=stream,
                    input_tokens=inp if status == 200 else 0,
                    output_tokens=outp if status == 200 else 0,
                    cache_read_tokens=0,
                    cache_write_tokens=0,
                    reasoning_tokens=0,
                    cost_usd=0.0 if cached else cost,
                    latency_ms=latency,
                    ttft_ms=ttft,
                    team=rnd.choice(TEAMS),
                    app=rnd.choice(APPS),
                    feature=rnd.choice(FEATURES),
                    session_id=session,
                    cache_hit=cached,
                    routed=False,
                    usage_source="cache" if cached else "response",
                    error=None if status == 200 else "rate_limit_exceeded",
                    requested_model=model,
                    cost_source="cache" if cached else "priced",
                    user=f"customer-{rnd.randrange(12)}",
                    saved_usd=cost if cached else None,
                )
            )
    return out
