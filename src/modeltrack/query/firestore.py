"""Reading the Firestore store: equality filters go to Firestore, the time range is the one range filter, and
sums happen here (Firestore has no GROUP BY). Rollup shards are summed like any other rows.

Production Firestore needs composite indexes for filtered queries: ``deploy/firestore.indexes.json``. A question
no slice holds goes to the store's BigQuery warehouse when it has one (:mod:`.bigquery`), else to the hourly
rollups.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Collection
from dataclasses import replace
from datetime import UTC, datetime, timedelta, tzinfo
from typing import Any

from ..events import CostEvent
from ..rollups import HISTOGRAMS, SUMMED, SUMS, TOKENS, legacy_latency
from ..sinks import slicemeta, slices
from ..sinks.firestore import FirestoreSink
from . import bigquery as warehouse
from . import fsplan, fsraw, stitch
from .base import DIMENSIONS, EventFilter, Filters, only
from .memory import group, row_matches
from .times import hour_key, hour_start, stamp

_UNSEEN: Any = object()
SINCE_TTL = 30.0
"""Seconds a reader trusts what it read of where the slices begin (it only moves when a store is migrated)."""


class FirestoreReader:
    name = "firestore"
    histograms_apart = True
    """The user's histograms are kept apart from its sums (:data:`slices.USER_HISTOGRAMS`): a breakdown by user
    ranks on its sort's sums alone and reads only the top rows whole (:func:`modeltrack.query.breakdown.breakdown`)."""

    def __init__(self, sink: FirestoreSink) -> None:
        self.sink = sink
        self.reads = 0  # documents read by aggregations (bench/firestore_scale.py reports it per question)
        self.warehouse_queries = 0  # questions asked of the BigQuery warehouse
        self._marks = slicemeta.Marks(None, None, True)  # until read from the store
        self._since_at = -SINCE_TTL

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
        values: Collection[Any] | None = None,
        sums: Collection[str] | None = None,
    ) -> list[dict[str, Any]]:
        """From the slices when one holds the question (:func:`slice_for`), for the hours they cover; from the
        hourly rollups otherwise. Both give the same sums (tests/test_firestore_analytics.py). ``values``: only
        the groups whose first ``group_by`` dimension has one of these values (a breakdown's top rows); by user,
        only their cells are read. ``sums``: from the slices, only these sums are read from each cell (a
        ranking of thousands of users reads two values a cell, not every sum)."""
        for g in group_by:
            if g not in DIMENSIONS:
                raise ValueError(g)
        summed = SUMMED if latency else SUMS
        if sums is not None:
            summed = tuple(s for s in SUMS if s in sums)
        keys = (("hour",) if by_hour else ()) + group_by
        sl = fsplan.slice_for(f, group_by)
        if sl is not None and values is not None and sl.dim == "user" == group_by[0] and sl.value is None:
            sl = replace(sl, only=frozenset(str(v) for v in values))
        since = await self._since() if sl is not None else None
        if sl is not None and sl.on_a_pin:
            pins = self._marks.pins
            since = None if since is None or pins is None else max(since, pins)
        if sl is not None and not self._marks.orgs and f.org is None:
            sl = replace(sl, orgs=("",))  # no event has an org: the all-organisations slices do not exist
        if sl is None or since is None:
            top = (group_by[0], list(values)) if values is not None and group_by else None
            return only(await self._unsliced(start, end, f, keys, summed, top), group_by, values)
        sl = replace(sl, users=self._marks.user_shards, values=self._marks.value_shards)
        cut = max(start, min(end, hour_start(since))) if since else start
        parts = []
        if start < cut:
            parts.append(await self._hourly(start, cut, f, keys))
        if cut < end:
            parts.append(await self._sliced(sl, cut, end, by_hour, day_zone, keys, summed))
        return only(parts[0] if len(parts) == 1 else stitch.merge(parts, keys, summed), group_by, values)

    async def _unsliced(
        self,
        start: datetime,
        end: datetime,
        f: Filters,
        keys: tuple[str, ...],
        summed: tuple[str, ...],
        top: tuple[str, list[Any]] | None,
    ) -> list[dict[str, Any]]:
        """A question no slice holds: from the warehouse for the hours it holds every event of (one query; ``top``
        limits its rows to a breakdown's top values), from the hourly rollups for the hours before (streamed
        whole: linear in events)."""
        wh = self.sink.warehouse
        held = None
        if wh is not None:
            await self._since()
            held = self._marks.warehouse
        if wh is None or held is None:
            return await self._hourly(start, end, f, keys)
        cut = max(start, min(end, hour_start(held))) if held else start
        parts = []
        if start < cut:
            parts.append(await self._hourly(start, cut, f, keys))
        if cut < end:
            self.warehouse_queries += 1
            parts.append(await warehouse.aggregate(wh, cut, end, f, keys, summed, top))
        return parts[0] if len(parts) == 1 else stitch.merge(parts, keys, summed)

    async def _since(self) -> str | None:
        now = time.monotonic()
        if now - self._since_at > SINCE_TTL:
            self._marks, self._since_at = await self.sink.slices_meta(), now
        return self._marks.since

    async def _hourly(self, start: datetime, end: datetime, f: Filters, keys: tuple[str, ...]) -> list[dict[str, Any]]:
        from google.cloud import firestore

        q = self.sink.collection_ref("rollups_hourly")
        q = q.where(filter=firestore.FieldFilter("hour", ">=", hour_key(start)))
        q = q.where(filter=firestore.FieldFilter("hour", "<", hour_key(end)))
        rows = [d.to_dict() async for d in q.stream()]
        self.reads += len(rows)
        for row in rows:
            if any(k.startswith("lat_") for k in row):
                legacy_latency(row)  # a document written before the log-spaced buckets
        return group((r for r in rows if row_matches(r, f)), keys)

    async def _sliced(
        self,
        sl: fsplan.Slice,
        start: datetime,
        end: datetime,
        by_hour: bool,
        day_zone: tzinfo | None,
        keys: tuple[str, ...],
        summed: tuple[str, ...],
    ) -> list[dict[str, Any]]:
        weekly = sl.dim == "user" and not by_hour and self._marks.weeks is not None
        weekly = weekly and not sl.on_a_pin
        if not by_hour and end >= datetime.now(UTC):
            end = stitch.horizon(start, end, weekly)
        p = stitch.plan(start, end, by_hour, day_zone)
        if p is None:
            return _rows(await self._cells(sl, "hour", fsplan.hours(start, end), keys, summed, {}), summed)
        days = [(p.first + timedelta(days=i)).strftime("%Y-%m-%d") for i in range((p.last - p.first).days)]
        weeks: list[str] = []
        if weekly and self._marks.weeks is not None:
            weeks, days = fsplan.whole_weeks(days, self._marks.weeks)
        edges = [h for lo, hi in p.edges for h in fsplan.hours(hour_start(lo), hour_start(hi))]
        if not p.stamp_of:
            # No hour moves between rows: every part sums into the same groups as it is read (no merge after).
            out: Groups = {}
            await asyncio.gather(
                self._cells(sl, "day", days, keys, summed, out),
                self._cells(sl, "hour", edges, keys, summed, out),
                self._cells(sl, "week", weeks, keys, summed, out),
            )
            return _rows(out, summed)
        # Day rows are stamped at their midnight (as SQLite's are) before stitch restamps them.
        got = await asyncio.gather(
            self._cells(sl, "day", days, keys, summed, {}),
            self._cells(sl, "hour", edges, keys, summed, {}),
            self._cells(sl, "hour", p.minority, keys, summed, {}),
        )
        day_rows, edge_rows, moved = (_rows(g, summed) for g in got)
        return stitch.combine(p, day_rows, [edge_rows], moved, keys, summed)

    async def _cells(
        self,
        sl: fsplan.Slice,
        kind: str,
        buckets: list[str],
        keys: tuple[str, ...],
        summed: tuple[str, ...],
        out: Groups,
    ) -> Groups:
        """The slice's cells in ``buckets``, selected and summed into their groups in ``out``. The documents are
        read by id (a lookup per document, however large the collection), with only the dimension asked for."""
        if not buckets:
            return out
        coll = self.sink.collection_ref("slices")
        shards = range(self.sink.shards)
        refs = [
            coll.document(slices.slice_doc_id(name, b, shard))
            for name in sl.names(kind)
            for b in buckets
            for shard in shards
        ]
        self.reads += len(refs)
        wanted = frozenset(summed)
        maps: tuple[str, ...] = (sl.dim,)
        if sl.dim == "user" and HISTOGRAMS[0] in wanted:
            maps = ("user", slices.USER_HISTOGRAMS)
        # A few sums (a ranking's): looked up by name in each cell, the others never decoded.
        few = summed if len(summed) <= fsraw.FEW else None
        mask = None
        if sl.only is not None:
            from google.cloud.firestore_v1.field_path import FieldPath

            # (a user cell's key: its cache-hit flag, then the user: slices.carried)
            cells = [slices.SEP.join((hit, u)) for u in sorted(sl.only) for hit in ("0", "1")]
            mask = [FieldPath(m, c).to_api_repr() for m in maps for c in cells]
        dims = slices.carried(sl.dim)
        select = bool(sl.select.items())
        at = keys.index("hour") if "hour" in keys else -1
        # A cell key (a user, a team...) recurs in every bucket: parsed and matched once, not once a bucket.
        groups: dict[str, tuple[Any, ...] | None] = {}
        async for bucket, found in fsraw.batch_get(self.sink.client, refs, maps, mask, few):
            hour = bucket + "T00" if kind == "day" else bucket
            for key, sums in found:
                k = groups.get(key, _UNSEEN)
                if k is _UNSEEN:
                    cell = slices.cell_values(key, dims)
                    k = groups[key] = (
                        None if select and not row_matches(cell, sl.select) else tuple(map(cell.get, keys))
                    )
                if k is None:
                    continue
                if at >= 0:
                    k = (*k[:at], hour, *k[at + 1 :])
                acc = out.get(k)
                if acc is None:
                    acc = out[k] = {**dict(zip(keys, k, strict=True)), **dict.fromkeys(summed, 0)}
                for name, v in sums:  # memory.add_into's sparse walk, inline: some 70,000 cells a question
                    if v and name in wanted:
                        acc[name] += v
        return out

    async def sessions(self, start: datetime, end: datetime, f: Filters, limit: int) -> list[dict[str, Any]]:
        """The sessions the range and filters select, with their whole figures; each listed session's
        attribution is its first request's (one small query per listed session), as on SQLite."""

        from ..sinks.firestore import session_doc_id

        docs: list[dict[str, Any]] = []
        if {k for k, _ in f.items()} <= {"org"}:
            docs = await self._top_sessions(start, end, f.org, limit)
        elif f.items():
            keys: set[tuple[str, str]] = set()
            async for chunk in self.iter_events(EventFilter(start, end, f)):
                keys |= {(e.org or "", e.session_id) for e in chunk if e.session_id is not None}
            coll = self.sink.collection_ref("sessions")
            refs = [coll.document(session_doc_id(sid, org)) for org, sid in keys]
            async for snap in self.sink.client.get_all(refs):
                if snap.exists:
                    docs.append(snap.to_dict())
        out = [
            {
                "session_id": row["session_id"],
                "first_ts": stamp(datetime.fromtimestamp(row["first_ms"] / 1000, UTC)),
                "last_ts": stamp(datetime.fromtimestamp(row["last_ms"] / 1000, UTC)),
                "org": row.get("org") or "",  # as SQLite keeps it
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

    async def _top_sessions(self, start: datetime, end: datetime, org: str | None, limit: int) -> list[dict[str, Any]]:
        """The dearest sessions active in ``[start, end)`` (of one org): read dearest first, a page at a time,
        until ``limit`` of them started before ``end``; never every session of the range. Production Firestore
        serves this from the composite index in deploy/firestore.indexes.json."""
        from google.cloud import firestore

        start_ms, end_ms = int(start.timestamp() * 1000), int(end.timestamp() * 1000)
        q = self.sink.collection_ref("sessions")
        if org is not None:
            q = q.where(filter=firestore.FieldFilter("org", "==", org or None))  # "(none)": stored as null
        q = q.where(filter=firestore.FieldFilter("last_ms", ">=", start_ms))
        q = q.order_by("cost_nano_usd", direction=firestore.Query.DESCENDING)
        out: list[dict[str, Any]] = []
        last: Any = None
        page = max(limit, 20)
        while len(out) < limit:
            pq = q.limit(page) if last is None else q.start_after(last).limit(page)
            snaps = [d async for d in pq.stream()]
            self.reads += len(snaps)
            out += [row for d in snaps if (row := d.to_dict()).get("first_ms", 0) < end_ms]
            if len(snaps) < page:
                break
            last = snaps[-1]
        return out[:limit]

    async def _first(self, session_id: str, org: str | None) -> CostEvent | None:
        found = await self.events(EventFilter(session_id=session_id, filters=Filters(org=org or "")), None)
        return found[0] if found else None

    async def close(self) -> None:
        await self.sink.close()


Groups = dict[tuple[Any, ...], dict[str, Any]]
"""A question's groups as they are summed: the group's key values → its row."""


def _rows(groups: Groups, summed: tuple[str, ...]) -> list[dict[str, Any]]:
    """The groups' rows, those whose sums are all zero left out, as a GROUP BY would."""
    return [r for r in groups.values() if any(r[c] for c in summed)]
