"""Prices: genai-prices' data and the user's overrides (:mod:`.load`), compiled into :mod:`.model`, priced by
:class:`.engine.Pricing` the way the provider's invoice does; what a budget reserves before a request is
:class:`.bounds.Bounds`."""

from .bounds import Bounds
from .engine import Pricing
from .load import PACKAGE_PRICES, REPO_PRICES
from .model import OWN_UNITS, PICO, PROVIDER_IDS, Model, PriceSet, PricingError, Rate, Tiered, Unit

__all__ = [
    "OWN_UNITS",
    "PACKAGE_PRICES",
    "PICO",
    "PROVIDER_IDS",
    "REPO_PRICES",
    "Bounds",
    "Model",
    "PriceSet",
    "Pricing",
    "PricingError",
    "Rate",
    "Tiered",
    "Unit",
]
