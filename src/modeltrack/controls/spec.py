"""The controls file's model: budgets, routing rules, the response cache, client tokens, webhooks and reports,
as frozen objects (:mod:`.parse` reads and validates the file into them, completely, before anything uses it:
a typo is refused at start-up, or on a reload the old rules stay in force). YAML is a superset of JSON, so
either works; ``deploy/controls.example.yaml`` documents every field.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import time as dtime
from typing import Final

from .match import Scope

PERIODS: Final[tuple[str, ...]] = ("daily", "weekly", "monthly")
DAYS: Final[tuple[str, ...]] = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
MIB: Final = 1024 * 1024


class ControlsError(ValueError):
    """The controls file cannot be used; the message says where and what to write instead."""


@dataclass(frozen=True)
class Webhook:
    name: str
    url: str
    format: str = "json"  # json | slack
    timeout_seconds: float = 5.0
    retries: int = 3


@dataclass(frozen=True)
class Budget:
    name: str
    scope: Scope
    period: str
    timezone: str
    limit_usd: float
    warn_at: tuple[float, ...] = ()
    action: str = "block"  # block | warn
    webhook: str | None = None
    on_store_error: str = "open"
    limit_nano: int = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "limit_nano", round(self.limit_usd * 1e9))


@dataclass(frozen=True)
class Window:
    """Local times ``start``-``end`` (may wrap past midnight) on ``days``, in ``timezone``."""

    start: dtime
    end: dtime
    days: frozenset[int]
    timezone: str


@dataclass(frozen=True)
class Route:
    name: str
    scope: Scope
    action: str  # downgrade | block
    to: str | None = None
    status: int = 429
    message: str | None = None
    budget: str | None = None
    above_percent: float | None = None
    window: Window | None = None


@dataclass(frozen=True)
class CacheRule:
    scope: Scope
    ttl_seconds: float | None = None


@dataclass(frozen=True)
class CacheSpec:
    backend: str = "memory"  # memory | redis://...
    max_bytes: int = 64 * MIB
    max_entry_bytes: int = 4 * MIB
    ttl_seconds: float = 3600.0
    rules: tuple[CacheRule, ...] = ()


@dataclass(frozen=True)
class ClientToken:
    """A client token (``X-ModelTrack-Key``) that fixes attribution: its sha256 digest, never the token."""

    digest: bytes
    team: str | None = None
    app: str | None = None
    user: str | None = None

    def attribution(self) -> dict[str, str]:
        return {k: v for k, v in (("team", self.team), ("app", self.app), ("user", self.user)) if v}


@dataclass(frozen=True)
class Report:
    name: str
    every: str  # weekly | monthly
    by: str
    webhook: str
    timezone: str
    top: int = 10


@dataclass(frozen=True)
class Reserve:
    """How a request's cost is bounded before it is sent (the budget reservation)."""

    bytes_per_token: float = 1.0
    default_max_output_tokens: int = 16_384
    unpriced_usd: float | None = None
    """What a request for a model with no price reserves; None: its token bound at the provider's dearest rates
    (:meth:`modeltrack.pricing.Bounds.dearest_bound`). Never zero: an unpriced model may be answered by a priced
    one (``openrouter/auto``), and a zero reservation would let concurrent requests past a block budget."""


@dataclass(frozen=True)
class ControlsSpec:
    source: str = ""
    timezone: str = "UTC"
    refresh_seconds: float = 2.0
    on_store_error: str = "open"
    reserve: Reserve = Reserve()
    webhooks: dict[str, Webhook] = field(default_factory=dict)
    budgets: tuple[Budget, ...] = ()
    routes: tuple[Route, ...] = ()
    cache: CacheSpec | None = None
    tokens: tuple[ClientToken, ...] = ()
    reports: tuple[Report, ...] = ()

    def check_tenancy(self) -> None:
        """Multi-tenant mode: a budget must name its org (one org must never spend, or be refused by, a budget
        another org's requests fill), and the file's client tokens carry no org, so none may be given."""
        if self.tokens:
            raise ControlsError(
                f"{self.source}: tokens carry no org, and MODELTRACK_MULTI_TENANT=true takes only an org's mt_ "
                "keys: remove tokens: and issue keys (modeltrack admin create keys ...)"
            )
        for b in self.budgets:
            if not any(k == "org" for k, _ in b.scope.exact):
                raise ControlsError(
                    f"{self.source}: budget {b.name!r} has no org, so every org would fill it: add "
                    "org: org_... to its scope (or create it per org: modeltrack admin create budgets ...)"
                )

    def summary(self) -> str:
        parts = [f"{len(self.budgets)} budget(s)", f"{len(self.routes)} route(s)"]
        parts.append(f"cache {self.cache.backend.split('@')[-1]}" if self.cache else "cache off")
        if self.tokens:
            parts.append(f"{len(self.tokens)} attributed token(s)")
        if self.reports:
            parts.append(f"{len(self.reports)} report(s)")
        return ", ".join(parts)
