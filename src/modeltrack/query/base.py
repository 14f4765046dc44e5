"""The read side of the stores: what the CLI, the API and the budgets ask of them.

Readers never write and never create: a read-only command pointed at a missing database is an error that names
the path, not a new empty database. Each store implements the small :class:`Reader` interface; what is built on
it (time series, breakdowns, forecasts, what-if) lives in :mod:`modeltrack.query.views` and is store-agnostic.
SQLite aggregates in SQL (fast over millions of events), Firestore and JSON Lines in Python.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Collection
from dataclasses import dataclass, fields, replace
from datetime import datetime, tzinfo
from typing import Any, Protocol

from ..events import CostEvent
from ..rollups import HOURLY_DIMENSIONS

DIMENSIONS = HOURLY_DIMENSIONS
"""What the hourly rollups are keyed by (defined once, in :mod:`modeltrack.rollups`): every one can filter a
query or split it (``org``: the organisation of the request's ModelTrack key, what multi-tenant mode narrows an
org's readers to; ``key_id``: that key's public id, for its spend and its budget)."""


class StoreMissing(ValueError):
    """A read-only command was pointed at a store that does not exist."""


def status_filter(text: str | None) -> str | None:
    """A status filter as the CLI and the API accept it: a code (``429``) or a class in any case (``4xx``,
    ``4XX``), normalised to lower case; raises ValueError otherwise."""
    if text is None:
        return None
    if len(text) == 3 and (text.isdigit() or (text[0].isdigit() and text[1:].lower() == "xx")):
        return text.lower()
    raise ValueError(f"status {text!r}: write a code such as 429 or a class such as 4xx")


@dataclass(frozen=True)
class Filters:
    """Equality on rollup dimensions (None: any). ``status`` is a code (``"429"``) or a class (``"4xx"``);
    ``cache_hit`` true for response-cache hits only."""

    team: str | None = None
    app: str | None = None
    feature: str | None = None
    user: str | None = None
    provider: str | None = None
    model: str | None = None
    status: str | None = None
    cache_hit: bool | None = None
    org: str | None = None
    key_id: str | None = None
    error: str | None = None
    prompt_id: str | None = None
    processing: str | None = None  # "batch" (Batch API items) or "" (interactive)

    def items(self) -> list[tuple[str, Any]]:
        return [(f.name, getattr(self, f.name)) for f in fields(self) if getattr(self, f.name) is not None]

    def status_range(self) -> tuple[int, int] | None:
        s = self.status
        if s is None:
            return None
        if len(s) == 3 and s[0].isdigit() and s[1:].lower() == "xx":
            lo = int(s[0]) * 100
            return lo, lo + 99
        return int(s), int(s)

    def matches(self, ev: CostEvent) -> bool:
        """The same test in Python (stores that filter in memory)."""
        for name, want in self.items():
            if name == "status":
                lo, hi = self.status_range() or (0, 999)
                if not lo <= ev.status <= hi:
                    return False
            elif name == "cache_hit":
                if bool(ev.cache_hit) != want:
                    return False
            elif (getattr(ev, name) or "") != want:
                return False
        return True

    def with_(self, **changes: Any) -> Filters:
        return replace(self, **changes)


@dataclass(frozen=True)
class EventFilter:
    """Which events: a time range (``since`` inclusive, ``until`` exclusive, UTC instants), dimension filters,
    and a session."""

    since: datetime | None = None
    until: datetime | None = None
    filters: Filters = Filters()
    session_id: str | None = None

    def matches(self, ev: CostEvent, since: str | None, until: str | None) -> bool:
        if since is not None and ev.timestamp < since:
            return False
        if until is not None and ev.timestamp >= until:
            return False
        if self.session_id is not None and ev.session_id != self.session_id:
            return False
        return self.filters.matches(ev)


class Reader(Protocol):
    name: str

    async def events(self, f: EventFilter, limit: int | None = None) -> list[CostEvent]:
        """Matching events, oldest first; with ``limit``, the newest ``limit`` of them."""
        ...

    def iter_events(self, f: EventFilter, chunk: int = 1000) -> AsyncIterator[list[CostEvent]]:
        """Matching events, oldest first, ``chunk`` at a time, in constant memory (exports)."""
        ...

    async def aggregate(
        self,
        start: datetime,
        end: datetime,
        f: Filters,
        group_by: tuple[str, ...] = (),
        by_hour: bool = False,
        day_zone: tzinfo | None = None,
        latency: bool = True,
        values: Collection[Any] | None = None,
        sums: Collection[str] | None = None,
    ) -> list[dict[str, Any]]:
        """Hourly-rollup sums over whole hours ``[start, end)``, grouped by ``group_by`` dimensions (and by
        ``hour`` with ``by_hour``): one dict per group, with the group's keys, every rollup sum and the
        latency histogram. ``day_zone``: the caller buckets by day or coarser in this time zone, so a store
        may answer many hours as one row stamped at any hour of the same local day. ``latency=False``: the
        caller needs no percentiles, so a store may leave the histogram out (71 fewer sums a row).
        ``values``: only the groups whose first ``group_by`` dimension has one of these values, as the store
        returned them (a breakdown's top rows; :func:`only`). ``sums``: the only sums the caller needs (a ranking
        needs one or two), so a store may leave the others out of its rows."""
        ...

    async def sessions(self, start: datetime, end: datetime, f: Filters, limit: int) -> list[dict[str, Any]]:
        """The most expensive sessions active in ``[start, end)``: ``session_id``, ``first_ts``, ``last_ts``,
        attribution, ``requests``, token sums, ``cost_nano_usd``, ``latency_ms``."""
        ...

    async def page(self, f: EventFilter, before: tuple[str, str] | None, limit: int) -> list[CostEvent]:
        """Matching events newest first, ``limit`` of them, strictly before ``before`` = (timestamp,
        request_id) when given: keyset paging, one indexed query per page however deep."""
        ...

    async def event(self, request_id: str) -> CostEvent | None:
        """One event by its id (None: not in the store)."""
        ...

    async def close(self) -> None: ...


def only(rows: list[dict[str, Any]], group_by: tuple[str, ...], values: Collection[Any] | None) -> list[dict[str, Any]]:
    """The rows of :meth:`Reader.aggregate` its ``values`` keep (all of them without)."""
    return rows if values is None else [r for r in rows if r[group_by[0]] in values]
