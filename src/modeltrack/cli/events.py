"""``modeltrack events``: stored cost events, filtered, as JSON Lines, CSV or a table."""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Any

from ..events import FIELD_ORDER, CostEvent
from ..query import EventFilter, Filters
from ..query.base import status_filter
from ..query.times import parse_instant, zone
from ..tabular import csv_lines, text_table
from .common import CommandError, positive_int, reader

_TABLE = (
    "timestamp",
    "provider",
    "model",
    "team",
    "app",
    "status",
    "input_tokens",
    "output_tokens",
    "cost_usd",
    "latency_ms",
    "error",
)
_NUMERIC = frozenset({"status", "input_tokens", "output_tokens", "cost_usd", "latency_ms"})


def add_filter_arguments(p: argparse.ArgumentParser, since_default: str = "", session: bool = True) -> None:
    """The store, the range and the filters, alike for every command that reads the store."""
    p.add_argument("--store", help="store URL (default: $MODELTRACK_STORE, as `modeltrack serve` resolves it)")
    since = "from this instant: 2026-11-01, or RFC 3339 such as 2026-11-01T09:30:00+01:00"
    p.add_argument("--since", help=f"{since} (default: {since_default})" if since_default else since)
    p.add_argument("--until", help="before this instant (a plain date includes that whole day)")
    p.add_argument("--tz", help="time zone of plain dates (IANA name; default UTC)")
    for name in ("team", "app", "feature", "user", "model", "provider"):
        p.add_argument(f"--{name}", help=f"only events with this {name}")
    if session:
        p.add_argument("--session", help="only events of this session id")
    p.add_argument("--status", help="an HTTP status (429) or class (4xx)")


def event_filter(args: argparse.Namespace) -> EventFilter:
    tz = zone(args.tz)
    since = parse_instant(args.since, tz) if args.since else None
    until = parse_instant(args.until, tz, end_of_day=True) if args.until else None
    try:
        status = status_filter(args.status)
    except ValueError as exc:
        raise CommandError(f"--{exc}") from None
    filters = Filters(
        team=args.team,
        app=args.app,
        feature=args.feature,
        user=args.user,
        provider=args.provider,
        model=args.model,
        status=status,
    )
    return EventFilter(since, until, filters, args.session)


def add_parser(sub: Any) -> None:
    p = sub.add_parser("events", help="print stored cost events (newest last)")
    add_filter_arguments(p)
    p.add_argument("--limit", type=positive_int, help="only the newest N events")
    p.add_argument("--format", choices=("jsonl", "csv", "table"), default="jsonl", help="output format")
    p.set_defaults(func=run_events)


def run_events(args: argparse.Namespace) -> int:
    f = event_filter(args)

    async def go() -> list[CostEvent]:
        r = reader(args)
        try:
            return await r.events(f, args.limit)
        finally:
            await r.close()

    events = asyncio.run(go())
    out = sys.stdout.buffer
    if args.format == "jsonl":
        for ev in events:
            out.write(ev.to_line())
    elif args.format == "csv":
        out.write(to_csv(events).encode())
    else:
        out.write(to_table(events).encode())
    out.flush()
    return 0


def to_csv(events: list[CostEvent]) -> str:
    return csv_lines(FIELD_ORDER, (ev.to_dict() for ev in events), True).decode()


def to_table(events: list[CostEvent]) -> str:
    """Every name and value whole (columns as wide as their widest cell); unpriced shown as such."""
    if not events:
        return "no events\n"
    rows = []
    for ev in events:
        d = ev.to_dict()
        cells = []
        for name in _TABLE:
            v = d[name]
            if name == "cost_usd":
                cells.append("unpriced" if v is None else f"${v:.6f}")
            else:
                cells.append("-" if v is None else str(v))
        rows.append(cells)
    return text_table(_TABLE, rows, [n in _NUMERIC for n in _TABLE])
