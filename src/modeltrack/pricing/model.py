"""The price data's model: rates in integer pico-dollars per unit (a tiered rate switches every token of a
request to its tier), a model's price sets by date or time of day with their variants (batch, service tier), and a
provider's models. No I/O here: :mod:`.load` builds them from data, :mod:`.engine` prices with them."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from fractions import Fraction
from typing import Any, Final

PICO: Final = 10**12

# ModelTrack provider name → genai-prices provider id.
PROVIDER_IDS = {
    "openai": "openai",
    "anthropic": "anthropic",
    "gemini": "google",
    "azure": "azure",
    "bedrock": "aws",
    "groq": "groq",
    "mistral": "mistral",
    "deepseek": "deepseek",
    "xai": "x-ai",
    "openrouter": "openrouter",
    "together": "together",
    "fireworks": "fireworks",
}

OWN_UNITS: dict[str, dict[str, Any]] = {
    "output_images": {
        "per": 1,
        "price_key": "output_images",
        "dimensions": {"direction": "output", "family": "images"},
    },
    "output_video_seconds": {
        "per": 1,
        "price_key": "output_video_seconds",
        "dimensions": {"direction": "output", "family": "durations", "modality": "video"},
    },
}
"""Units providers bill that genai-prices has none for (Imagen per image, Sora per second of video): priced only
where the override file gives a price (README, "Pricing"); a model without one is ``unpriced``, never $0."""

Rate = int | Fraction


class PricingError(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class Tiered:
    base: Rate
    tiers: tuple[tuple[int, Rate], ...]  # (start, rate), ascending

    def at(self, total_input: int) -> Rate:
        for start, rate in reversed(self.tiers):
            if total_input > start:
                return rate
        return self.base


PriceSet = dict[str, Rate | Tiered]  # usage_key -> rate in pico-dollars per unit


@dataclass(frozen=True, slots=True)
class Unit:
    usage_key: str
    price_key: str
    per: int
    dims: frozenset[tuple[str, str]]


@dataclass(slots=True)
class Model:
    id: str
    match: Any
    prices: list[tuple[Any, PriceSet]]  # (constraint or None, prices); the last active one wins
    variants: list[tuple[dict[str, str], Any, PriceSet]]
    provider: str
    source: str = "genai-prices"
    by_time_of_day: bool = False  # a price (or variant) holds only at some hours (off-peak rates)

    def price_set(self, when: datetime, context: dict[str, str] | None) -> PriceSet:
        chosen = self.prices[0][1]
        for constraint, prices in reversed(self.prices):
            if constraint is None or constraint(when):
                chosen = prices
                break
        if not context or not self.variants:
            return chosen
        overrides: PriceSet = {}
        for cond, constraint, prices in self.variants:
            if constraint is not None and not constraint(when):
                continue
            if all(context.get(k) == v for k, v in cond.items()):
                for key, rate in prices.items():
                    overrides.setdefault(key, rate)
        return {**chosen, **overrides} if overrides else chosen

    def has_variant(self, key: str, value: str, when: datetime) -> bool:
        """Whether a price variant for ``key=value`` (``processing=batch``) applies at ``when``."""
        return any(
            cond.get(key) == value and (constraint is None or constraint(when)) for cond, constraint, _ in self.variants
        )


@dataclass(slots=True)
class ProviderPrices:
    id: str
    models: list[Model]
    fallbacks: list[str]
    model_match: Any
    """genai-prices' guess of which models are this provider's own (``contains: claude``), or None."""
