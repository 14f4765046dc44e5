"""Placeholder replaced below."""
from __future__ import annotations

import logging
from typing import Any

log = logging.getLogger("modeltrack.pricing")


class Pricing:
    def __init__(self) -> None:
        self._warned: set[str] = set()

    @classmethod
    def load(cls, overrides: str | None = None) -> "Pricing":
        return cls()

    def cost(self, provider: str, result: Any, requested_model: str | None, ts: float) -> tuple[float | None, str]:
        if result.usage is None:
            return None, "no_usage"
        if result.zero_cost:
            return 0.0, "zero"
        if result.usage.reported_cost_usd is not None:
            return result.usage.reported_cost_usd, "provider"
        return None, "unpriced"

    def warn_unpriced(self, provider: str, model: str | None) -> None:
        key = f"{provider}:{model}"
        if key not in self._warned:
            self._warned.add(key)
            log.warning("no price for provider=%s model=%s: cost_usd will be null", provider, model)
