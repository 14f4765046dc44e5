"""A reader narrowed to one org, one team, or both: what a member reads.

* A team-scoped member (a team admin, or a viewer with a team) reads its team only.
* In multi-tenant mode every member reads its own org only (``MODELTRACK_MULTI_TENANT``), whatever its role.

Every question the API, the dashboard and the exports ask goes through the reader, so narrowing it here is what
enforces the scope, whatever the endpoint or its parameters: the filter is forced to the member's team and
org, and a question about any other (``team=ads``, ``org=org_b``, ``team=`` for "(none)") matches nothing. The
store's fast paths that bypass filters (``iter_raw``) are not exposed. Held by
tests/test_accounts.py::test_a_team_scoped_member_sees_only_its_team_through_every_endpoint and
tests/test_tenants.py (every endpoint, on SQLite and on the Firestore emulator).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Collection
from dataclasses import replace
from datetime import datetime, tzinfo
from typing import Any

from ..events import CostEvent
from .base import EventFilter, Filters, Reader

NOTHING = "\x00outside-this-scope"
"""A team value no event can carry: asked of the store, it matches nothing."""


class ScopedReader:
    def __init__(self, inner: Reader, team: str | None = None, org: str | None = None) -> None:
        self.inner = inner
        self.team = team
        self.org = org
        self.name = inner.name

    def _filters(self, f: Filters) -> Filters:
        if self.team is not None:
            f = f.with_(team=self.team if f.team in (None, self.team) else NOTHING)
        if self.org is not None:
            f = f.with_(org=self.org if f.org in (None, self.org) else NOTHING)
        return f

    def _events(self, f: EventFilter) -> EventFilter:
        return replace(f, filters=self._filters(f.filters))

    async def events(self, f: EventFilter, limit: int | None = None) -> list[CostEvent]:
        return await self.inner.events(self._events(f), limit)

    def iter_events(self, f: EventFilter, chunk: int = 1000) -> AsyncIterator[list[CostEvent]]:
        return self.inner.iter_events(self._events(f), chunk)

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
        return await self.inner.aggregate(
            start, end, self._filters(f), group_by, by_hour, day_zone, latency, values, sums
        )

    @property
    def histograms_apart(self) -> bool:
        return bool(getattr(self.inner, "histograms_apart", False))

    async def sessions(self, start: datetime, end: datetime, f: Filters, limit: int) -> list[dict[str, Any]]:
        return await self.inner.sessions(start, end, self._filters(f), limit)

    async def page(self, f: EventFilter, before: tuple[str, str] | None, limit: int) -> list[CostEvent]:
        return await self.inner.page(self._events(f), before, limit)

    async def event(self, request_id: str) -> CostEvent | None:
        """The event, if it is within this scope; outside it, as if it did not exist."""
        ev = await self.inner.event(request_id)
        return ev if ev is not None and self._filters(Filters()).matches(ev) else None

    async def close(self) -> None:
        return None  # the inner reader is shared by every request
