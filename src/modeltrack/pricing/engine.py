"""Prices a ``Usage`` the way the provider's invoice does, from the generated data in ``pricing/``.

Data: ``pricing/prices.json`` is generated from genai-prices (``make pricing``); user overrides come from
``MODELTRACK_PRICING_FILE`` (YAML or JSON) and win over the data.

Resolution mirrors genai-prices: our provider name → its provider id; the first model whose match clause
accepts the lower-cased model name (the *response's* model, else the requested one), then the provider's
fallback providers, then a compact-date retry (``-20251211`` → ``-2025-12-11``). Results are cached, so a
lookup after the first is one dict hit.

Arithmetic: every rate is converted once, at load, to integer pico-dollars per unit, so a request's cost is a
sum of integer products, exact for any number of events; ``cost_usd`` is rounded to 1e-9 only at the end.

The ledger mapping (see ``usage.py``) onto price units: total input = uncached + cache reads + cache writes;
a priced sub-unit (cache read, cache write, 1h write, audio, reasoning, ...) is carved out of its parent
(genai-prices' leaf decomposition), an unpriced one stays in its parent's price. Tiered prices switch *all*
tokens of the request to the tier rate when total input exceeds the tier start.

What a request may cost before it is sent (a budget's reservation) is :mod:`.bounds`, on top of this.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, date, datetime
from fractions import Fraction
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from ..rounding import nano_usd
from ..usage import Usage
from .load import clause, compile_model, read_data, read_overrides
from .model import OWN_UNITS, PROVIDER_IDS, Model, PriceSet, ProviderPrices, Rate, Tiered, Unit

if TYPE_CHECKING:
    from ..providers.base import MeterResult

log: Final = logging.getLogger("modeltrack.pricing")

_COMPACT_DATE: Final = re.compile(r"(-)(20\d{2})(0[1-9]|1[0-2])(0[1-9]|[12]\d|3[01])(?=-|:|$)")


_PlanKey = tuple[int, datetime, str | None, str | None, tuple[tuple[str, str], ...]]


class _Step:
    """One price unit of a plan (:meth:`Pricing._plan`): how its count is read off the usage, its rate, and the
    positions of the priced units carved out of it. A native class, so that compiled, the per-request loop
    reads its fields directly (a tuple of three, unpacked, took an iterator per unit)."""

    def __init__(self, count: Callable[[Usage], int], rate: Rate | Tiered, descendants: tuple[int, ...]) -> None:
        self.count = count
        self.tiered: Tiered | None = rate if isinstance(rate, Tiered) else None
        self.rate: Rate = rate.base if isinstance(rate, Tiered) else rate  # (for a tiered one: self.tiered.at)
        self.descendants = descendants


class Pricing:
    def __init__(self, data: dict[str, Any], overrides: list[Model] | None = None) -> None:
        self.source = f"{data.get('source', '?')} {data.get('source_version', '?')}"
        self.units: dict[str, Unit] = {}
        self._by_price_key: dict[str, Unit] = {}
        for key, u in {**(data.get("units") or {}), **OWN_UNITS}.items():
            unit = Unit(key, u["price_key"], int(u["per"]), frozenset(u["dimensions"].items()))
            self.units[key] = unit
            self._by_price_key[unit.price_key] = unit
        self.providers: dict[str, ProviderPrices] = {}
        for p in data.get("providers") or []:
            pid = p["id"]
            models = [compile_model(m, pid, self._by_price_key) for m in p.get("models") or []]
            mm = clause(p["model_match"]) if p.get("model_match") else None
            self.providers[pid] = ProviderPrices(pid, models, list(p.get("fallback_model_providers") or []), mm)
        self.overrides = overrides or []
        self._cache: dict[tuple[str, str], tuple[Model, bool] | None] = {}
        self._warned: set[str] = set()
        self._plans: dict[_PlanKey, tuple[_Step, ...]] = {}
        # The last plan price_pico used, and what it was for (its memo's usual answer, without the dict's key).
        self._last_plan: tuple[_Step, ...] | None = None
        self._last_plan_model: Model | None = None
        self._last_plan_when: datetime | None = None
        self._last_plan_tier: str | None = None
        self._last_plan_processing: str | None = None
        self._last_plan_variant: tuple[tuple[str, str], ...] = ()
        self._last_minute = 0
        self._last_when = minute_time(0)

    # --- public API -----------------------------------------------------------------------------------------

    @classmethod
    def load(cls, overrides_path: str | None = None, data_path: Path | None = None) -> Pricing:
        pricing = cls(read_data(data_path))
        if overrides_path:
            pricing.overrides = pricing.parse_overrides(overrides_path)
        return pricing

    def parse_overrides(self, path: str) -> list[Model]:
        """``models: [{provider?, model | match, prices: {input_mtok: .., ...}}]``: validated, errors name the
        entry (:func:`.load.read_overrides`)."""
        return read_overrides(path, self._by_price_key)

    def resolve(self, provider: str, model: str | None) -> tuple[Model, bool] | None:
        """Return (model, matched_directly) or None. ``matched_directly`` is False for fallback providers."""
        if not model:
            return None
        key = (provider, model)
        try:
            return self._cache[key]
        except KeyError:
            pass
        ref = model.lower()
        if provider == "vertex":
            # Vertex AI has no prices of its own in genai-prices: Claude at Anthropic's list prices (its model ids
            # write the date after an @), Gemini at Google's (providers/vertex.py).
            ref = ref.replace("@", "-")
            provider = "anthropic" if ref.startswith("claude") else "gemini"
        found = self._resolve(provider, ref)
        if found is None:
            normalized = _COMPACT_DATE.sub(_dashed, ref)
            if normalized != ref:
                found = self._resolve(provider, normalized)
        if len(self._cache) > 10_000:
            self._cache.clear()  # bounded: model names come from responses
        self._cache[key] = found
        return found

    def _resolve(self, provider: str, ref: str) -> tuple[Model, bool] | None:
        for m in self.overrides:
            if m.provider in ("*", provider) and m.match(ref):
                return m, True
        pid = PROVIDER_IDS.get(provider)
        p = self.providers.get(pid) if pid else None
        if p is None:
            return None
        for m in p.models:
            if m.match(ref):
                return m, True
        for fid in p.fallbacks:
            fp = self.providers.get(fid)
            if fp is not None:
                for m in fp.models:
                    if m.match(ref):
                        return m, False
        return None

    def home_providers(self, model: str) -> list[str]:
        """ModelTrack providers whose own models this name looks like (``claude-…`` → anthropic): where to look
        first when no provider is given."""
        ref = model.lower()
        return [
            name
            for name, pid in PROVIDER_IDS.items()
            if (p := self.providers.get(pid)) is not None and p.model_match is not None and p.model_match(ref)
        ]

    def model_ids(self, provider: str) -> list[str]:
        """The models priced for a ModelTrack provider (its overrides first): what a what-if can compare with."""
        own = [m.id for m in self.overrides if m.provider in ("*", provider)]
        pid = PROVIDER_IDS.get(provider)
        p = self.providers.get(pid) if pid else None
        return own + ([m.id for m in p.models] if p is not None else [])

    def price_pico(
        self,
        model: Model,
        usage: Usage,
        when: datetime,
        direct: bool = True,
        processing: str | None = None,
        variant: tuple[tuple[str, str], ...] = (),
    ) -> int | Fraction:
        """``processing="batch"``: the model's batch prices (genai-prices' ``processing: batch`` variant).
        ``variant``: more of the price context the answer fixed (a video's ``size``), matched against the
        override file's ``price_variants``."""
        tier = usage.service_tier if direct else None
        last = self._last_plan
        # The last request's model, minute, tier, processing and variant (the usual request asks what the last
        # one did): a few identity checks, where building the 5-tuple key, hashing it and looking it up costs
        # ~1,000 CPU instructions. ``when`` is the same object within a minute (``minute_time`` is memoised).
        # Held by tests/test_pricing.py::test_each_request_is_priced_in_its_own_context_whatever_came_before.
        if (
            last is None
            or model is not self._last_plan_model
            or when is not self._last_plan_when
            or tier != self._last_plan_tier
            or processing != self._last_plan_processing
            or variant != self._last_plan_variant
        ):
            key = (id(model), when, tier, processing, variant)
            last = self._plans.get(key)
            if last is None:
                if len(self._plans) > 10_000:
                    self._plans.clear()
                context = {"service_tier": tier} if tier else {}
                context.update(variant)
                if processing:
                    context["processing"] = processing
                last = self._plans[key] = self._plan(model.price_set(when, context or None))
            self._last_plan, self._last_plan_model, self._last_plan_when = last, model, when
            self._last_plan_tier, self._last_plan_processing, self._last_plan_variant = tier, processing, variant
        total_input = usage.total_input_tokens
        leaves: list[int] = []
        total: int | Fraction = 0
        for step in last:
            value: int = step.count(usage)
            for j in step.descendants:
                value -= leaves[j]
            if value < 0:
                value = 0
            leaves.append(value)
            if value:
                tiered = step.tiered
                total += (tiered.at(total_input) if tiered is not None else step.rate) * value
        return total

    def _when(self, ts: float) -> datetime:
        """``time_of(ts)``, the last minute's answer kept: an event's minute is nearly always the last one's, and
        ``time_of`` itself (a division and the ``lru_cache`` call, which hashes its argument) cost ~1,200 CPU
        instructions a request by callgrind; this ~330."""
        minute = int(ts // 60)
        if minute != self._last_minute:
            self._last_minute, self._last_when = minute, minute_time(minute)
        return self._last_when

    def _plan(self, prices: PriceSet) -> tuple[_Step, ...]:
        """genai-prices' leaf decomposition, precomputed: units ordered most-specific first, each with the
        positions of its priced descendants, whose leaf counts are subtracted from its own count."""
        order = sorted((self.units[k] for k in prices if k in self.units), key=lambda u: (-len(u.dims), u.usage_key))
        plan = []
        for i, unit in enumerate(order):
            desc = tuple(j for j in range(i) if unit.dims <= order[j].dims)
            plan.append(_Step(_COUNTS.get(unit.usage_key) or _detail(unit.usage_key), prices[unit.usage_key], desc))
        return tuple(plan)

    def cost(
        self, provider: str, result: MeterResult, requested_model: str | None, ts: float, batch: bool = False
    ) -> tuple[float | None, str]:
        """(cost_usd, cost_source) for an event. Never a silent zero: unknown models give (None, 'unpriced').

        ``batch``: an item of a Batch API job, at the model's batch prices. A model whose price data has no batch
        rate is priced at its standard rate, and says so (``cost_source: standard_rate``): an upper bound, never
        a guessed discount."""
        usage = result.usage
        if usage is None:
            return None, "no_usage"
        if result.zero_cost:
            return 0.0, "zero"
        if usage.reported_cost_usd is not None:
            return round(usage.reported_cost_usd, 9), "provider"
        found = self.resolve(provider, result.model) or self.resolve(provider, requested_model)
        if found is None:
            return None, "unpriced"
        model, direct = found
        when = self._when(ts)
        source = "priced" if model.source != "override" else "override"
        processing = None
        if batch:
            if model.has_variant("processing", "batch", when):
                processing = "batch"
            else:
                source = "standard_rate"
        if usage.details and not usage.total_input_tokens and not usage.output_tokens:
            # Billed by another unit alone (seconds of audio, characters): a model with no price for it is
            # unpriced, never $0 (a per-token transcription model answered as plain text, say).
            prices = model.price_set(when, None)
            if not any(prices.get(k) for k, n in usage.details.items() if n):
                return None, "unpriced"
        pico = self.price_pico(model, usage, when, direct, processing, result.variant)
        return nano_usd(pico), source

    def same_all_day(self, provider: str, model: str) -> bool:
        """Whether ``model``'s prices hold for whole UTC days: true unless one is a time-of-day rate. Date
        constraints (``start_date``) change prices at a UTC midnight, so a day's usage can be priced at once."""
        found = self.resolve(provider, model)
        return found is not None and not found[0].by_time_of_day

    def price(self, provider: str, model: str, usage: Usage, ts: float) -> float | None:
        """USD for ``usage`` as if ``model`` had served it (what-if repricing), or None when it has no price."""
        found = self.resolve(provider, model)
        if found is None:
            return None
        m, direct = found
        return nano_usd(self.price_pico(m, usage, time_of(ts), direct))

    def cache_savings(self, provider: str, result: MeterResult, requested_model: str | None, ts: float) -> float:
        """USD saved by prompt-cache reads: the price of the same request with the cache reads billed as
        uncached input, minus the actual price. 0 when nothing was read from the cache or the model is unknown."""
        usage = result.usage
        if usage is None or not usage.cache_read_tokens or usage.reported_cost_usd is not None:
            return 0.0
        found = self.resolve(provider, result.model) or self.resolve(provider, requested_model)
        if found is None:
            return 0.0
        model, direct = found
        when = time_of(ts)
        uncached = replace(usage, input_tokens=usage.input_tokens + usage.cache_read_tokens, cache_read_tokens=0)
        diff = self.price_pico(model, uncached, when, direct) - self.price_pico(model, usage, when, direct)
        return max(nano_usd(diff), 0.0)

    def warn_unpriced(self, provider: str, model: str | None) -> None:
        key = f"{provider}:{model}"
        if key not in self._warned and len(self._warned) < 10_000:
            self._warned.add(key)
            log.warning(
                "no price for provider=%s model=%s: cost_usd will be null (add it to MODELTRACK_PRICING_FILE)",
                provider,
                model,
            )


def _detail(key: str) -> Any:
    """How a modality unit's count is read: ``Usage.details`` (see usage.py), 0 when not reported."""
    return lambda u: u.details.get(key, 0) if u.details else 0


# How each price unit's count is read off the ledger (see usage.py for the subset relations).
_COUNTS: Final[dict[str, Any]] = {
    "input_tokens": lambda u: u.total_input_tokens,
    "cache_read_tokens": lambda u: u.cache_read_tokens,
    "cache_write_tokens": lambda u: u.cache_write_tokens,
    "cache_write_1h_tokens": lambda u: u.cache_write_1h_tokens,
    "cache_write_5m_tokens": lambda u: u.cache_write_tokens - u.cache_write_1h_tokens,
    "input_audio_tokens": lambda u: u.input_audio_tokens,
    "input_image_tokens": lambda u: u.input_image_tokens,
    "output_tokens": lambda u: u.output_tokens,
    "output_audio_tokens": lambda u: u.output_audio_tokens,
    "output_reasoning_tokens": lambda u: u.reasoning_tokens,
    "web_searches": lambda u: u.web_search_requests,
    "requests": lambda u: 1,
}


@lru_cache(maxsize=4096)
def minute_time(minute: int) -> datetime:
    return datetime.fromtimestamp(minute * 60, UTC)


def time_of(ts: float) -> datetime:
    # Price constraints have day/time-of-day granularity: minute resolution is exact enough and cacheable.
    return minute_time(int(ts // 60))


def _dashed(m: re.Match[str]) -> str:
    y, mo, d = int(m.group(2)), int(m.group(3)), int(m.group(4))
    try:
        date(y, mo, d)
    except ValueError:
        return m.group(0)
    return f"{m.group(1)}{y:04d}-{mo:02d}-{d:02d}"
