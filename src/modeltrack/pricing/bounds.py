"""What a budget reserves before a request is sent: an upper bound of its cost from its token bounds
(:mod:`modeltrack.controls.estimate`), at the model's prices (:meth:`Bounds.bound`) or, for a model with no price,
at the provider's dearest (:meth:`Bounds.dearest_bound`).

Guarantees, each held by a test:
- the bound is the dearer full price of the request's tokens, all uncached or all written to the cache
  (tests/test_pricing.py::test_the_reservation_bound_is_the_dearer_of_both_full_prices);
- the dearest bound covers every priced model of the provider
  (tests/test_budget_bounds.py::test_the_dearest_bound_covers_every_priced_model_of_the_provider).

Kept apart from :class:`.engine.Pricing`, which prices what a request did cost: this runs before the request
and only for a budgeted one, and keeps its own memos (per model and minute, per provider and hour).
"""

from __future__ import annotations

from datetime import datetime
from typing import Final

from ..usage import Usage
from .engine import Pricing, minute_time, time_of
from .model import PICO, PROVIDER_IDS, Model, Rate, Tiered

_NO_TIER: Final = 1 << 61
"""The input tokens up to which a model without tiers is linear: more than any request has, and small enough to
stay a tagged integer, so that compiled, the per-request comparison with it is native (1 << 62 is not)."""


class Bounds:
    def __init__(self, pricing: Pricing) -> None:
        self.pricing = pricing
        self._dearest: dict[tuple[str, datetime], tuple[float, float]] = {}
        self._linear: dict[tuple[str, str | None, int], tuple[Rate, Rate, int, Model, bool]] = {}
        # The last request's (provider, model, minute) and its rates: the usual request asks what the last one did.
        self._last_bound: tuple[str, str | None, int] = ("", None, -1)
        self._last_linear: tuple[Rate, Rate, int, Model, bool] | None = None

    def bound(self, provider: str, model: str | None, input_tokens: int, output_tokens: int, ts: float) -> float | None:
        """An upper bound of a request's cost before it is sent (a budget reservation): every input token at the
        dearer of the uncached and the cache-write rate, every output token at the output rate (reasoning is
        output). None when the model has no price.

        Below a model's first input tier the price is linear in tokens, so the per-token rates are worked out once
        per model and minute and the bound is two multiplications (it runs for every budgeted request); above it,
        both usages are priced in full. The result is the same either way
        (tests/test_pricing.py::test_the_reservation_bound_is_the_dearer_of_both_full_prices)."""
        p = self.pricing
        minute = int(ts) // 60  # (whole seconds first: integer division, not a float's)
        last = self._last_bound
        lin = self._last_linear
        if lin is None or minute != last[2] or model != last[1] or provider != last[0]:
            key = (provider, model, minute)
            lin = self._linear.get(key)  # one lookup: the model as asked for, this minute
            if lin is None:
                found = p.resolve(provider, model)
                if found is None:
                    return None
                if len(self._linear) > 4096:
                    self._linear.clear()
                lin = self._linear[key] = (*self._linear_rates(found[0], minute_time(minute), found[1]), *found)
            self._last_bound, self._last_linear = key, lin
        r_in, r_out, upto, m, direct = lin
        if input_tokens <= upto:
            if isinstance(r_in, int) and isinstance(r_out, int):
                # The same expression as below, narrowed to integers: compiled, native integer operations. A
                # Fraction rate (a price with more decimals than a pico-dollar holds) takes the generic line.
                return float(input_tokens * r_in + output_tokens * r_out) / PICO
            return float(input_tokens * r_in + output_tokens * r_out) / PICO
        when = minute_time(minute)
        plain = p.price_pico(m, Usage(input_tokens=input_tokens, output_tokens=output_tokens), when, direct)
        written = p.price_pico(m, Usage(cache_write_tokens=input_tokens, output_tokens=output_tokens), when, direct)
        return float(max(plain, written)) / PICO

    def _linear_rates(self, m: Model, when: datetime, direct: bool) -> tuple[Rate, Rate, int]:
        """(input rate, output rate, the input tokens up to which they hold) in pico-dollars per token: the dearer
        of uncached and cache-write input, and output, at one token each (below every tier's start)."""
        p = self.pricing
        starts = [r.tiers[0][0] for r in m.price_set(when, None).values() if isinstance(r, Tiered) and r.tiers]
        r_in = max(
            p.price_pico(m, Usage(input_tokens=1), when, direct),
            p.price_pico(m, Usage(cache_write_tokens=1), when, direct),
        )
        return r_in, p.price_pico(m, Usage(output_tokens=1), when, direct), min(starts, default=_NO_TIER)

    def dearest_bound(self, provider: str, input_tokens: int, output_tokens: int, ts: float) -> float | None:
        """An upper bound of the request's cost at the provider's dearest rates (its overrides and its own price
        data; every provider's when it has none): what a budget reserves for a model with no price, which may
        be answered by any model (``openrouter/auto``). None only when no model has a price at all.

        The rates are each model's average per token at one million tokens, the top of every tier genai-prices
        lists, taken separately for input (the dearer of uncached and cache-write) and output; memoised per
        provider and hour."""
        p = self.pricing
        when = time_of(ts)
        key = (provider, when.replace(minute=0, second=0, microsecond=0))
        rates = self._dearest.get(key)
        if rates is None:
            pid = PROVIDER_IDS.get(provider)
            own = p.providers.get(pid) if pid else None
            models = [m for m in p.overrides if m.provider in ("*", provider)]
            models += own.models if own is not None else []
            if not models:
                models = list(p.overrides) + [m for pr in p.providers.values() for m in pr.models]
            mtok = 1_000_000
            best_in = best_out = 0.0
            for m in models:
                inp = max(
                    p.price_pico(m, Usage(input_tokens=mtok), when),
                    p.price_pico(m, Usage(cache_write_tokens=mtok), when),
                )
                out = p.price_pico(m, Usage(output_tokens=mtok), when)
                best_in = max(best_in, float(inp) / PICO / mtok)
                best_out = max(best_out, float(out) / PICO / mtok)
            if len(self._dearest) > 1024:
                self._dearest.clear()
            rates = self._dearest[key] = (best_in, best_out)
        if not rates[0] and not rates[1]:
            return None
        return input_tokens * rates[0] + output_tokens * rates[1]
