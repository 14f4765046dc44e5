"""``modeltrack controls check FILE`` (offline validation) and ``modeltrack controls status`` (each budget's spend,
limit, percent and reset time, read from the store)."""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Any

import orjson

from ..config import Settings
from ..controls.ledger import open_ledger
from ..controls.parse import load
from ..controls.spec import ControlsSpec
from ..controls.status import budget_status
from ..tabular import text_table
from .common import CommandError, reader, store_url


def add_parser(sub: Any) -> None:
    p = sub.add_parser("controls", help="check a controls file, or show budget status")
    csub = p.add_subparsers(dest="controls_cmd")
    check = csub.add_parser("check", help="validate a controls file offline (exit 0: valid)")
    check.add_argument("file", help="the controls file (YAML or JSON)")
    check.set_defaults(func=run_check)
    status = csub.add_parser("status", help="each budget's spend, limit, percent and reset time, from the store")
    status.add_argument("--file", help="the controls file (default: $MODELTRACK_CONTROLS_FILE)")
    status.add_argument("--store", help="store URL (default: $MODELTRACK_STORE, as `modeltrack serve` resolves it)")
    status.add_argument("--format", choices=("table", "json"), default="table")
    status.set_defaults(func=run_status)
    p.set_defaults(func=lambda args: _usage(p))


def _usage(p: argparse.ArgumentParser) -> int:
    p.print_help(sys.stderr)
    return 2


def warnings(spec: ControlsSpec) -> list[str]:
    """What is valid but probably not meant: a downgrade target without a price, a budget nothing can reach."""
    from ..pricing import Pricing

    pricing = Pricing.load()
    out = []
    for r in spec.routes:
        if r.to is not None and not pricing.home_providers(r.to):
            out.append(f"route {r.name}: to: {r.to} is not in the price table (its cost will be null)")
    return out


def run_check(args: argparse.Namespace) -> int:
    spec = load(args.file)
    print(f"{args.file}: valid — {spec.summary()}")
    for b in spec.budgets:
        warn = f", warn at {', '.join(f'{w:g}%' for w in b.warn_at)}" if b.warn_at else ""
        print(
            f"  budget {b.name}: {b.scope.describe()}, ${b.limit_usd:,.2f} {b.period} ({b.timezone}), {b.action}{warn}"
        )
    for r in spec.routes:
        what = f"downgrade to {r.to}" if r.action == "downgrade" else f"block with {r.status}"
        when = ""
        if r.budget:
            when = f" when {r.budget} is above {r.above_percent:g}%"
        elif r.window:
            when = f" between {r.window.start:%H:%M} and {r.window.end:%H:%M} ({r.window.timezone})"
        print(f"  route {r.name}: {r.scope.describe()} → {what}{when}")
    for w in warnings(spec):
        print(f"  warning: {w}")
    return 0


def run_status(args: argparse.Namespace) -> int:
    path = args.file or Settings.load().controls_file
    if not path:
        raise CommandError("no controls file: pass --file FILE or set MODELTRACK_CONTROLS_FILE")
    spec = load(path)
    if not spec.budgets:
        print(f"{path} defines no budgets")
        return 0

    async def go() -> list[dict[str, Any]]:
        r = reader(args)
        # The allocation ledger is where the running proxies' reservations and leases are (the same store).
        ledger = open_ledger(store_url(args), getattr(r, "sink", None))
        try:
            return await budget_status(r, spec.budgets, ledger=ledger)
        finally:
            await ledger.close()
            await r.close()

    rows = asyncio.run(go())
    if args.format == "json":
        sys.stdout.buffer.write(orjson.dumps(rows, option=orjson.OPT_INDENT_2) + b"\n")
        return 0
    header = ["budget", "scope", "spent", "held now", "limit", "used", "resets (UTC)", "projected"]
    lines = []
    for row in rows:
        held = row.get("held_usd")
        lines.append(
            [
                row["name"],
                row["scope"],
                "$" + format(row["spent_usd"], ",.4f"),
                "-" if held is None else "$" + format(held, ",.4f"),
                "$" + format(row["limit_usd"], ",.2f"),
                f"{row['percent']:.1f}%",
                row["resets"][:16],
                "-" if row["projected_usd"] is None else f"${row['projected_usd']:,.2f}",
            ]
        )
    sys.stdout.write(text_table(header, lines, [False, False, True, True, True, True, False, True]))
    print("held now: reserved by requests in flight or leased to running proxies, not yet spent")
    return 0
