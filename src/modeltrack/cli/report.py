"""``modeltrack report``: a spend table for a period and a dimension, from the store's rollups (the same figures
as the dashboard's breakdowns), as text, CSV or JSON.

    modeltrack report --by team --since 2026-11-01 --until 2026-11-30 --tz Europe/Paris
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Any

import orjson

from ..query import DIMENSIONS
from ..query.breakdown import breakdown
from ..query.views import make_range, parse_filters
from ..tabular import csv_lines, text_table
from .common import positive_int, reader
from .events import add_filter_arguments


def add_parser(sub: Any) -> None:
    p = sub.add_parser("report", help="a spend table for a period, by team, app, feature, user, provider or model")
    p.add_argument("--by", default="team", choices=DIMENSIONS, help="the dimension to split by (default: team)")
    add_filter_arguments(p, since_default="the last 30 days, today included", session=False)
    p.add_argument("--limit", type=positive_int, default=20, help="rows (default 20; the rest are summed)")
    p.add_argument("--sort", choices=("cost", "requests", "tokens", "errors", "latency"), default="cost")
    p.add_argument("--format", choices=("text", "csv", "json"), default="text")
    p.set_defaults(func=run_report)


def run_report(args: argparse.Namespace) -> int:
    rng = make_range(args.since, args.until, args.tz)
    filters = parse_filters(lambda n: getattr(args, n, None))

    async def go() -> dict[str, Any]:
        r = reader(args)
        try:
            return await breakdown(r, rng, args.by, filters, min(args.limit, 1000), args.sort)
        finally:
            await r.close()

    data = asyncio.run(go())
    rows = [*data["rows"], *([data["other"]] if data["other"] else [])]
    out = sys.stdout
    if args.format == "json":
        sys.stdout.buffer.write(orjson.dumps(data, option=orjson.OPT_INDENT_2) + b"\n")
        return 0
    if args.format == "csv":
        cols = [args.by, "cost_usd", "requests", "input_tokens", "output_tokens", "cache_read_tokens"]
        cols += ["cache_write_tokens", "reasoning_tokens", "error_rate", "cache_hit_rate", "latency_p50_ms"]
        cols += ["latency_p95_ms", "ttft_p50_ms", "ttft_p95_ms", "previous_cost_usd", "change_pct"]
        sys.stdout.buffer.write(csv_lines(cols, rows, True))
        return 0
    rng_d = data["range"]
    out.write(f"Spend by {args.by}, {rng_d['since'][:16]}Z to {rng_d['until'][:16]}Z ({rng_d['tz']})\n\n")
    # Every column the table can be sorted by is printed (latency: the p95 the sort uses).
    header = [args.by, "cost", "share", "requests", "tokens", "errors", "p95 ms", "vs prev"]
    lines = []
    for r in [*rows, data["total"]]:
        key = r[args.by]
        name = {"__other__": f"({r.get('values', 0)} others)", "__total__": "total", None: "(none)"}.get(key, str(key))
        tokens = sum(r[t] for t in ("input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens"))
        change = "new" if r.get("change_pct") is None and r["cost_usd"] else f"{r.get('change_pct') or 0:+.0f}%"
        p95 = r.get("latency_p95_ms")
        lines.append(
            [
                name,
                _money(r["cost_usd"]),
                f"{100 * r['share']:.1f}%",
                f"{r['requests']:,}",
                f"{tokens:,}",
                f"{100 * r['error_rate']:.1f}%",
                "-" if p95 is None else f"{p95:,.1f}",
                change,
            ]
        )
    out.write(text_table(header, lines, [False] + [True] * 7))
    return 0


def _money(v: float) -> str:
    return f"${v:,.2f}" if abs(v) >= 1 else f"${v:.4f}"
