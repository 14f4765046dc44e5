"""Reading the Firestore store: equality filters go to Firestore, the time range is the one range filter, and
sums happen here (Firestore has no GROUP BY). Rollup shards are summed like any other rows.

Production Firestore needs composite indexes for filtered queries: ``deploy/firestore.indexes.json``.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, tzinfo
from typing import Any

from ..events import CostEvent
from ..rollups import TOKENS, legacy_latency
from ..sinks.firestore import FirestoreSink
from .base import EventFilter, Filters
from .memory import group, row_matches
from .times import hour_key, stamp


class FirestoreReader:
    name = "firestore"

    def __init__(self, sink: FirestoreSink) -> None:
        self.sink = sink

    def _query(self, f: EventFilter, descending: bool = False) -> Any:
        from google.cloud import firestore

        q = self.sink.collection_ref("events")
        if f.since is not None:
            q = q.where(filter=firestore.FieldFilter("timestamp", ">=", stamp(f.since)))
        if f.until is not None:
            q = q.where(filter=firestore.FieldFilter("timestamp", "<", stamp(f.until)))
        if f.session_id is not None:
            q = q.where(filter=firestore.FieldFilter("session_id", "==", f.session_id))
        for name, value in f.filters.items():
            if name == "status":
                lo, hi = f.filters.status_range() or (0, 999)
                if lo == hi:
                    q = q.where(filter=firestore.FieldFilter("status", "==", lo))
            elif value == "" and name != "cache_hit":
                # "(none)": events store a missing attribution as null, never "" (issue M, item 11)
                q = q.where(filter=firestore.FieldFilter(name, "==", None))
            else:
                q = q.where(filter=firestore.FieldFilter(name, "==", value))
        direction = firestore.Query.DESCENDING if descending else firestore.Query.ASCENDING
        return q.order_by("timestamp", direction=direction).order_by("request_id", direction=direction)

    async def events(self, f: EventFilter, limit: int | None = None) -> list[CostEvent]:
        out: list[CostEvent] = []
        q = self._query(f, descending=bool(limit))
        async for d in q.stream():
            ev = CostEvent.from_dict(d.to_dict())
            if f.filters.matches(ev):  # a status class is checked here (one range filter per query)
                out.append(ev)
                if limit and len(out) >= limit:
                    break
        return list(reversed(out)) if limit else out

    async def iter_events(self, f: EventFilter, chunk: int = 1000) -> AsyncIterator[list[CostEvent]]:
        """Pages of ``chunk`` documents, each query starting after the last document of the previous one."""
        last: Any = None
        while True:
            q = self._query(f).limit(chunk)
            if last is not None:
                q = q.start_after(last)
            page = [d async for d in q.stream()]
            if not page:
                return
            last = page[-1]
            evs = [CostEvent.from_dict(d.to_dict()) for d in page]
            yield [e for e in evs if f.filters.matches(e)]

    async def page(self, f: EventFilter, before: tuple[str, str] | None, limit: int) -> list[CostEvent]:
        out: list[CostEvent] = []
        cursor = before
        while len(out) < limit:
            q = self._query(f, descending=True)
            if cursor is not None:
                q = q.start_after({"timestamp": cursor[0], "request_id": cursor[1]})
            docs = [d.to_dict() async for d in q.limit(limit).stream()]
            if not docs:
                break
            for d in docs:
                ev = CostEvent.from_dict(d)
                if f.filters.matches(ev):  # a status class is checked here (one range filter per query)
                    out.append(ev)
            cursor = (docs[-1]["timestamp"], docs[-1]["request_id"])
            if len(docs) < limit:
                break
        return out[:limit]

    async def event(self, request_id: str) -> CostEvent | None:
        snap = await self.sink.collection_ref("events").document(request_id).get()
        return CostEvent.from_dict(snap.to_dict()) if snap.exists else None

    async def aggregate(
        self,
        start: datetime,
        end: datetime,
        f: Filters,
        group_by: tuple[str, ...] = (),
        by_hour: bool = False,
        day_zone: tzinfo | None = None,
        latency: bool = True,
    ) -> list[dict[str, Any]]:
        from google.cloud import firestore

        q = self.sink.collection_ref("rollups_hourly")
        q = q.where(filter=firestore.FieldFilter("hour", ">=", hour_key(start)))
        q = q.where(filter=firestore.FieldFilter("hour", "<", hour_key(end)))
        rows = [d.to_dict() async for d in q.stream()]
        for row in rows:
            if any(k.startswith("lat_") for k in row):
                legacy_latency(row)  # a document written before the log-spaced buckets
        keys = (("hour",) if by_hour else ()) + group_by
        return group((r for r in rows if row_matches(r, f)), keys)

    async def sessions(self, start: datetime, end: datetime, f: Filters, limit: int) -> list[dict[str, Any]]:
        """The sessions the range and filters select, with their whole figures; each listed session's
        attribution is its first request's (one small query per listed session), as on SQLite."""
        from google.cloud import firestore

        from ..sinks.firestore import session_doc_id

        docs: list[dict[str, Any]] = []
        if f.items():
            keys: set[tuple[str, str]] = set()
            async for chunk in self.iter_events(EventFilter(start, end, f)):
                keys |= {(e.org or "", e.session_id) for e in chunk if e.session_id is not None}
            coll = self.sink.collection_ref("sessions")
            refs = [coll.document(session_doc_id(sid, org)) for org, sid in keys]
            async for snap in self.sink.client.get_all(refs):
                if snap.exists:
                    docs.append(snap.to_dict())
        else:
            start_ms, end_ms = int(start.timestamp() * 1000), int(end.timestamp() * 1000)
            q = self.sink.collection_ref("sessions").where(filter=firestore.FieldFilter("last_ms", ">=", start_ms))
            docs = [row async for d in q.stream() if (row := d.to_dict()).get("first_ms", 0) < end_ms]
        out = [
            {
                "session_id": row["session_id"],
                "first_ts": stamp(datetime.fromtimestamp(row["first_ms"] / 1000, UTC)),
                "last_ts": stamp(datetime.fromtimestamp(row["last_ms"] / 1000, UTC)),
                "org": row.get("org"),
                **{k: int(row.get(k, 0)) for k in ("requests", *TOKENS, "cost_nano_usd")},
                "latency_ms": float(row.get("latency_ms", 0.0)),
            }
            for row in docs
        ]
        top = sorted(out, key=lambda s: -s["cost_nano_usd"])[:limit]
        firsts = await asyncio.gather(*(self._first(s["session_id"], s["org"]) for s in top))
        for s, first in zip(top, firsts, strict=True):
            s.update({k: getattr(first, k) if first is not None else None for k in ("team", "app", "feature", "user")})
        return top

    async def _first(self, session_id: str, org: str | None) -> CostEvent | None:
        found = await self.events(EventFilter(session_id=session_id, filters=Filters(org=org or "")), None)
        return found[0] if found else None

    async def close(self) -> None:
        await self.sink.close()
