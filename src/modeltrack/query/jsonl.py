"""Reading a JSON Lines store: every query reads the file (the JSONL store is for piping into other tools, not
for dashboards over millions of events); duplicates from replays are dropped by ``request_id``."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Collection
from datetime import datetime, tzinfo
from typing import Any

import orjson

from ..events import CostEvent
from ..rollups import event_row
from .base import EventFilter, Filters, StoreMissing, only
from .memory import SessionSums, group, row_matches
from .times import hour_key, stamp


class JSONLReader:
    name = "jsonl"

    def __init__(self, path: str) -> None:
        self.path = os.path.abspath(path)
        if not os.path.isfile(self.path):
            raise StoreMissing(f"no events file at {self.path}: point MODELTRACK_STORE or --store at it")

    def _all(self) -> list[CostEvent]:
        seen: dict[str, CostEvent] = {}
        with open(self.path, "rb") as f:
            for line in f:
                if line.strip():
                    ev = CostEvent.from_dict(orjson.loads(line))
                    seen.setdefault(ev.request_id, ev)
        return sorted(seen.values(), key=lambda e: e.timestamp)

    def _events(self, f: EventFilter) -> list[CostEvent]:
        since = stamp(f.since) if f.since else None
        until = stamp(f.until) if f.until else None
        return [e for e in self._all() if f.matches(e, since, until)]

    async def events(self, f: EventFilter, limit: int | None = None) -> list[CostEvent]:
        out = await asyncio.to_thread(self._events, f)
        return out[-limit:] if limit else out

    async def iter_events(self, f: EventFilter, chunk: int = 1000) -> AsyncIterator[list[CostEvent]]:
        out = await asyncio.to_thread(self._events, f)
        for i in range(0, len(out), chunk):
            yield out[i : i + chunk]

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
        lo, hi = hour_key(start), hour_key(end)
        rows = [r for r in map(event_row, await asyncio.to_thread(self._all)) if lo <= r["hour"] < hi]
        keys = (("hour",) if by_hour else ()) + group_by
        return only(group((r for r in rows if row_matches(r, f)), keys), group_by, values)

    async def sessions(self, start: datetime, end: datetime, f: Filters, limit: int) -> list[dict[str, Any]]:
        """The sessions the range and filters select, each summed whole (as the other stores list them)."""
        picked = {
            (e.org or "", e.session_id) for e in await asyncio.to_thread(self._events, EventFilter(start, end, f))
        }
        sums = SessionSums()
        for e in await asyncio.to_thread(self._all):
            if (e.org or "", e.session_id) in picked:
                sums.add(e)
        return sums.top(limit)

    async def page(self, f: EventFilter, before: tuple[str, str] | None, limit: int) -> list[CostEvent]:
        found = sorted(self._events(f), key=lambda e: (e.timestamp, e.request_id), reverse=True)
        if before is not None:
            found = [e for e in found if (e.timestamp, e.request_id) < before]
        return found[:limit]

    async def event(self, request_id: str) -> CostEvent | None:
        return next((e for e in self._all() if e.request_id == request_id), None)

    async def close(self) -> None:
        return None
