"""``modeltrack pricing show | check | update``: the price data as people read prices."""

from __future__ import annotations

import argparse
import os
import sys
from datetime import UTC, datetime
from decimal import Decimal
from fractions import Fraction
from pathlib import Path
from typing import Any

from ..pricing import PICO, PROVIDER_IDS, REPO_PRICES, Pricing, Rate, Tiered
from .common import CommandError

_LABELS = {
    "input_tokens": "input",
    "cache_read_tokens": "cached input (cache read)",
    "cache_write_tokens": "cache write",
    "cache_write_1h_tokens": "cache write, 1-hour TTL",
    "cache_write_5m_tokens": "cache write, 5-minute TTL",
    "output_tokens": "output",
    "output_reasoning_tokens": "reasoning output",
    "web_searches": "web searches",
    "requests": "requests",
}


def add_parser(sub: Any) -> None:
    p = sub.add_parser("pricing", help="inspect and regenerate price data")
    prs = p.add_subparsers(dest="pricing_cmd")
    show = prs.add_parser("show", help="print the prices ModelTrack applies to a model")
    show.add_argument("model")
    show.add_argument("--provider", help="modeltrack provider name (openai, anthropic, gemini, bedrock, ...)")
    search = prs.add_parser("search", help="list the priced models whose name contains TEXT")
    search.add_argument("text", help="part of a model name, any case (gpt-4o, sonnet, flash)")
    search.add_argument("--provider", help="only this modeltrack provider's models")
    prs.add_parser("check", help="validate the price data and MODELTRACK_PRICING_FILE overrides")
    upd = prs.add_parser("update", help="regenerate pricing/prices.json from the installed genai-prices")
    upd.add_argument("--output", help="where to write (default: pricing/prices.json)")
    p.set_defaults(func=run_pricing, parser=p)


def money(rate: Rate, per: int) -> str:
    value = Decimal(rate.numerator) / Decimal(rate.denominator) if isinstance(rate, Fraction) else Decimal(rate)
    usd = value * per / PICO
    text = f"{usd:f}".rstrip("0").rstrip(".") if "." in f"{usd:f}" else f"{usd:f}"
    return f"${text}"


def per_text(per: int, key: str) -> str:
    noun = "tokens" if key.endswith("_tokens") else key.replace("_", " ")
    return {1_000_000: f"per 1M {noun}", 1_000: f"per 1K {noun}", 1: f"per {noun.rstrip('s')}"}.get(
        per, f"per {per:,} {noun}"
    )


def price_text(rate: Rate | Tiered, per: int, key: str) -> str:
    if isinstance(rate, Tiered):
        tiers = "".join(f"; above {start:,} input tokens {money(r, per)}" for start, r in rate.tiers)
        return f"{money(rate.base, per)} {per_text(per, key)}{tiers}"
    return f"{money(rate, per)} {per_text(per, key)}"


def label(key: str) -> str:
    return _LABELS.get(key, key.removesuffix("_tokens").replace("_", " "))


def run_pricing(args: argparse.Namespace) -> int:
    if args.pricing_cmd is None:
        args.parser.print_help()
        return 2
    if args.pricing_cmd == "update":
        try:
            from ..pricegen import write
        except ImportError:
            raise CommandError("genai-prices is not installed: pip install genai-prices (or `make pricing`)") from None
        try:
            out = write(Path(args.output) if args.output else REPO_PRICES)
        except ImportError:
            raise CommandError("genai-prices is not installed: pip install genai-prices (or `make pricing`)") from None
        print(f"wrote {out}")
        return 0
    overrides = os.environ.get("MODELTRACK_PRICING_FILE") or None
    pricing = Pricing.load(overrides)
    if args.pricing_cmd == "search":
        hits = search(pricing, args.text, args.provider)
        if not hits:
            print(f"modeltrack: no priced model name contains {args.text!r}", file=sys.stderr)
            return 1
        for provider, model_id in hits:
            print(f"{provider}/{model_id}")
        return 0
    if args.pricing_cmd == "check":
        n = sum(len(p.models) for p in pricing.providers.values())
        print(f"ok: {n} models from {pricing.source}; {len(pricing.overrides)} override(s)")
        return 0
    if args.provider:
        providers = [args.provider]
    else:
        home = pricing.home_providers(args.model)
        providers = [*home, *(p for p in (*PROVIDER_IDS, "local") if p not in home)]
    for provider in providers:
        found = pricing.resolve(provider, args.model)
        if found is None:
            continue
        model, _ = found
        now = datetime.now(UTC)
        source = "your override" if model.source == "override" else pricing.source
        print(f"{args.model} → {provider}/{model.id} ({source})")
        prices = model.price_set(now, None)
        width = max(len(label(k)) for k in prices) + 2
        for key, rate in sorted(prices.items(), key=lambda kv: _order(kv[0])):
            unit = pricing.units[key]
            print(f"  {label(key) + ':':{width}} {price_text(rate, unit.per, key)}")
        for cond, _, variant in model.variants:
            if not variant:
                continue
            when = ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in cond.items())
            print(f"  with {when}:")
            for key, rate in sorted(variant.items(), key=lambda kv: _order(kv[0])):
                print(f"    {label(key) + ':':{width - 2}} {price_text(rate, pricing.units[key].per, key)}")
        if len(model.prices) > 1:
            print(f"  (prices change with the date or time of day: {len(model.prices)} periods; shown: now, UTC)")
        return 0
    where = f" at provider {args.provider}" if args.provider else ""
    near = search(pricing, args.model, args.provider, close=True)[:5]
    hint = f"; did you mean {', '.join(f'{p}/{m}' for p, m in near)}?" if near else ""
    print(
        f"modeltrack: no price for {args.model!r}{where}{hint} Its events will have cost_usd null (unpriced); add "
        "it to a pricing file named by MODELTRACK_PRICING_FILE (README: 'Override or add prices')",
        file=sys.stderr,
    )
    return 1


def search(pricing: Pricing, text: str, provider: str | None, close: bool = False) -> list[tuple[str, str]]:
    """(provider, model id) of every priced model whose id contains ``text`` (any case), by provider; with
    ``close``, the nearest spellings too (difflib), for a name that matches nothing."""
    import difflib

    providers = [provider] if provider else [*PROVIDER_IDS, "local"]
    needle = text.lower()
    every = [(p, m) for p in providers for m in dict.fromkeys(pricing.model_ids(p))]
    found = [(p, m) for p, m in every if needle in m.lower()]
    if close and not found:
        ids = {m.lower(): (p, m) for p, m in every}
        found = [ids[k] for k in difflib.get_close_matches(needle, list(ids), n=5, cutoff=0.6)]
    return found


def _order(key: str) -> tuple[int, str]:
    order = list(_LABELS)
    return (order.index(key) if key in order else len(order), key)
