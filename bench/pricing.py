"""Price resolution + calculation per event (target: < 5 µs amortized).

python -m bench.pricing
"""

from __future__ import annotations

import time

from modeltrack.pricing import Pricing
from modeltrack.providers.base import MeterResult
from modeltrack.usage import Usage

CASES = [
    ("openai", "gpt-4o-mini-2024-07-18", Usage(input_tokens=1200, cache_read_tokens=800, output_tokens=300)),
    (
        "anthropic",
        "claude-sonnet-4-5-20250929",
        Usage(input_tokens=3, cache_read_tokens=1111, cache_write_tokens=418, output_tokens=33),
    ),
    ("gemini", "gemini-2.5-pro", Usage(input_tokens=210_000, output_tokens=5000, reasoning_tokens=3000)),
    ("bedrock", "eu.anthropic.claude-haiku-4-5-20251001-v1:0", Usage(input_tokens=3, output_tokens=44)),
    ("openai", "gpt-5", Usage(input_tokens=53, output_tokens=469, service_tier="flex")),
]


def run(n: int = 200_000) -> dict[str, float]:
    pricing = Pricing.load()
    results = [(p, MeterResult(model=m, usage=u)) for p, m, u in CASES]
    ts = time.time()
    t0 = time.perf_counter()
    for i in range(n):
        p, r = results[i % len(results)]
        pricing.cost(p, r, None, ts + i * 0.01)  # crosses minute boundaries: plans are rebuilt as they would be
    per = (time.perf_counter() - t0) / n
    return {"events": n, "us_per_event": per * 1e6}


if __name__ == "__main__":
    r = run()
    print(f"| pricing | {r['events']:,} events | {r['us_per_event']:.2f} µs/event (target < 5) |")
