"""Google Firestore store (hosted / scaled-out setup), with the official async client.

Data model (``COLL`` = the collection from ``firestore://PROJECT/COLL``, default ``modeltrack``):

* ``COLL_events/{request_id}`` — one document per cost event. ``request_id`` is ``req_`` + 96 random bits, so
  writes spread across Firestore's key space (no monotonically increasing ids, no hot tablet).
* ``COLL_rollups_daily/{day}_{hash}[_{shard}]`` — requests, tokens by kind and ``cost_nano_usd`` per
  (day, team, app, feature, provider, model).
* ``COLL_rollups_hourly/{hour}_{hash}[_{shard}]`` — per (hour, team, app, feature, user, provider, model,
  status, cache_hit, org, key_id, error, prompt_id, processing; trailing empty ones of those last five are not
  hashed):
  tokens, ``cost_nano_usd``, ``saved_nano_usd`` and the latency histogram (``lat_00`` … ``lat_19``,
  :mod:`modeltrack.rollups`).
* ``COLL_slices/{bucket}_{hash}[_{shard}]`` — per UTC day and hour, organisation scope, pinned team and
  dimension: a map from each value to its sums, for one-dimension questions in one read a day
  (:mod:`modeltrack.sinks.slices`).
* ``COLL_sessions/{hash(org, session_id)}`` — per org and session: requests, tokens, ``cost_nano_usd``, summed latency,
  first and last seen (epoch ms, ``Minimum``/``Maximum`` transforms), team/app/feature/user as last seen.
* ``COLL_claims/{key}`` — once-only markers (a budget alert, a scheduled report): ``create()`` succeeds once.

Every counter is an ``Increment`` transform. With ``shards > 1`` each commit picks one random shard per rollup
key, so a hot key takes ``shards`` × Firestore's ~1 write/s/document; readers sum the shards.

Exactly once: every commit is atomic and contains ``create()`` for each event document *and* the increments
for exactly those events (merged in memory: one write per rollup key per commit). If a retry follows an
ambiguous failure whose commit did apply, the ``create()`` fails with ALREADY_EXISTS and nothing in that commit
applies; we then look up which event ids exist, drop them, and commit the rest with their increments. So an
event is stored once and counted once in every rollup, however often it is retried or replayed from the spool.

Firestore allows 500 writes per commit: a batch is split so that events + rollup and session keys ≤ 500 per
commit.
"""

from __future__ import annotations

import hashlib
import logging
import random
from datetime import datetime
from typing import Any

from ..events import CostEvent
from ..rollups import (
    DAILY_SUMS,
    HOURLY_DIMENSIONS,
    LATENCY_BUCKETS,
    SUMMED,
    SUMS,
    TOKENS,
    TTFT_BUCKETS,
    daily_key,
    event_row,
    hourly_key,
    is_error,
    is_unpriced,
    latency_bucket,
    nano_usd,
)
from . import slicemeta, slices
from .bigquery import Warehouse

log = logging.getLogger("modeltrack.sinks.firestore")

MAX_WRITES = 500
SLICES_META = slicemeta.META
_DAILY_FIELDS = ("day", "team", "app", "feature", "provider", "model")
_HOURLY_FIELDS = ("hour", *HOURLY_DIMENSIONS)


def rollup_doc_id(key: tuple[Any, ...], shard: int | None = None) -> str:
    digest = hashlib.sha256("\x1f".join(str(k) for k in key[1:]).encode()).hexdigest()[:24]
    return f"{key[0]}_{digest}" + (f"_{shard}" if shard is not None else "")


def session_doc_id(session_id: str, org: str | None = None) -> str:
    """A session's document: one per org and session id (without an org, the id it always had)."""
    name = f"{org}\x1f{session_id}" if org else session_id
    return hashlib.sha256(name.encode()).hexdigest()[:32]


_FIRST_HOURLY_PARTS = 9  # hour, team, app, feature, user, provider, model, status, cache_hit


def hourly_doc_id(key: tuple[Any, ...], shard: int | None = None) -> str:
    """An hourly rollup's document. The dimensions added since the first version (org, key, error, prompt) come
    last, and trailing empty ones are not hashed: a key without them has the id it had before they existed, so
    existing documents keep counting (no migration)."""
    parts = list(key)
    while len(parts) > _FIRST_HOURLY_PARTS and parts[-1] == "":
        parts.pop()
    return rollup_doc_id(tuple(parts), shard)


def _epoch_ms(timestamp: str) -> int:
    return int(datetime.fromisoformat(timestamp.replace("Z", "+00:00")).timestamp() * 1000)


class FirestoreSink:
    name = "firestore"

    def __init__(
        self,
        project: str,
        collection: str = "modeltrack",
        shards: int = 1,
        commit_timeout: float = 10.0,
        user_shards: int | None = None,
        value_shards: int | None = None,
        bigquery: str | None = None,
    ) -> None:
        """``user_shards`` and ``value_shards``: for a store this writer creates, how many documents a bucket's
        users, and its keys and prompt ids, are spread over (:mod:`.slicemeta`); an existing store keeps its own
        numbers."""
        self.project = project
        self.collection = collection
        self.shards = max(1, shards)
        self.commit_timeout = commit_timeout
        self.user_shards = user_shards
        self.value_shards = value_shards
        self._client: Any = None
        self._users = 0  # the store's user shards, known once its marks are read (before the first write)
        self._values = slices.VALUE_SHARDS  # and its value shards
        self._orgs = False
        # ``?bigquery=[PROJECT.]DATASET``: every event is also a row of the warehouse (.bigquery).
        self.warehouse = Warehouse(project, bigquery, self.collection, commit_timeout) if bigquery else None

    @property
    def client(self) -> Any:
        if self._client is None:
            from google.cloud import firestore

            # Application Default Credentials in production; FIRESTORE_EMULATOR_HOST switches to the emulator.
            self._client = firestore.AsyncClient(project=self.project)
        return self._client

    def collection_ref(self, kind: str) -> Any:
        """``events``, ``rollups_daily``, ``rollups_hourly``, ``slices``, ``sessions`` or ``claims``."""
        return self.client.collection(f"{self.collection}_{kind}")

    async def open(self) -> None:
        _ = self.client

    async def slices_since(self) -> str | None:
        """The first hour (``YYYY-MM-DDTHH``) the day and hour slices count every event of; ``""``: all of them;
        None: no writer has opened the store since slices exist (the hourly rollups answer everything)."""
        return (await self.slices_meta()).since

    async def slices_meta(self) -> slicemeta.Marks:
        """From when the slices count every event (:mod:`.slicemeta`)."""
        return await slicemeta.read(self)

    async def migrate_slices(self) -> int:
        """Build the slices written before them (``modeltrack admin migrate``): :func:`.slicemeta.migrate`."""
        return await slicemeta.migrate(self)

    async def migrate_warehouse(self) -> int:
        """Copy the events stored before the warehouse into it (``modeltrack admin migrate``):
        :func:`.slicemeta.migrate_warehouse`."""
        return await slicemeta.migrate_warehouse(self)

    def _chunks(self, events: list[CostEvent]) -> list[tuple[list[CostEvent], slices.Acc]]:
        """Commits of at most 500 writes (events and the rollup, slice and session documents they add to), each
        slice document within Firestore's 500 field transforms; with each commit's slice cells."""
        chunks: list[tuple[list[CostEvent], slices.Acc]] = []
        cur: list[CostEvent] = []
        acc: slices.Acc = {}
        fields: dict[tuple[str, str], int] = {}
        keys: set[tuple[Any, ...]] = set()
        for ev in events:
            row = event_row(ev)
            mine: set[tuple[Any, ...]] = {daily_key(ev), hourly_key(ev), *slices.keys(row, self._users, self._values)}
            if ev.session_id is not None:
                mine.add(("session", ev.org or "", ev.session_id))
            if cur and (
                len(cur) + 1 + len(keys | mine) > MAX_WRITES
                or not slices.fits(acc, fields, row, self._users, self._values)
            ):
                chunks.append((cur, acc))
                cur, keys, acc, fields = [], set(), {}, {}
            cur.append(ev)
            keys |= mine
            slices.add_row(acc, row, fields, self._users, self._values)
        if cur:
            chunks.append((cur, acc))
        return chunks

    async def write(self, events: list[CostEvent]) -> None:
        if not self._users:
            # Where each user's (key's, prompt id's) cells go depends on the store's shards: no write before they
            # are known (a failure here fails the batch, which the pipeline retries like any other).
            if self.warehouse is not None:
                await self.warehouse.open()  # the table exists before any reader is told it holds an hour
            marks = await slicemeta.mark(self)
            for what, mine, its in (
                ("user", self.user_shards, marks.user_shards),
                ("value", self.value_shards, marks.value_shards),
            ):
                if mine is not None and mine != its:
                    log.warning(
                        "firestore: this store keeps %d %s shards, set when it was created: ?%s_shards=%d is ignored",
                        its,
                        what,
                        what,
                        mine,
                    )
            self._users, self._values = marks.user_shards, marks.value_shards
        if not self._orgs and any(ev.org for ev in events):
            # Readers then read the all-organisations slices too (without, half as many documents). Set before
            # the events are written, so no reader can see an org's events without it.
            meta = self.collection_ref("slices").document(slicemeta.META)
            await meta.set({"orgs": True}, merge=True, timeout=self.commit_timeout)
            self._orgs = True
        # De-duplicate within the batch first (a replayed spool can contain an id twice).
        unique = list({ev.request_id: ev for ev in events}.values())
        for chunk, cells in self._chunks(unique):
            await self._commit(chunk, cells)
        if self.warehouse is not None:
            # After Firestore holds them: a failure here fails the batch, retried whole (the commits find their
            # events stored and skip them), and the reader keeps one row per request_id.
            await self.warehouse.insert(unique)

    async def _commit(self, events: list[CostEvent], cells: slices.Acc | None = None) -> None:
        """``cells``: the events' slice cells, when already counted (:meth:`_chunks`)."""
        from google.api_core import exceptions as gexc

        for _ in range(3):
            if not events:
                return
            try:
                await self._batch(events, cells).commit(timeout=self.commit_timeout, retry=None)
                return
            except gexc.Conflict:
                # ALREADY_EXISTS: some of these events were stored by an earlier (ambiguous) commit.
                refs = [self.collection_ref("events").document(ev.request_id) for ev in events]
                existing = {
                    snap.id
                    async for snap in self.client.get_all(refs, field_paths=["request_id"], timeout=self.commit_timeout)
                    if snap.exists
                }
                events = [ev for ev in events if ev.request_id not in existing]
                cells = None  # fewer events: counted again
        raise RuntimeError("firestore: conflicts persisted after 3 attempts")  # transient: will be retried

    def _batch(self, events: list[CostEvent], counted: slices.Acc | None = None) -> Any:
        from google.cloud import firestore

        batch = self.client.batch()
        daily: dict[tuple[Any, ...], dict[str, int]] = {}
        hourly: dict[tuple[Any, ...], dict[str, int]] = {}
        sessions: dict[tuple[str, str], dict[str, Any]] = {}
        cells: slices.Acc = {} if counted is None else counted
        for ev in events:
            batch.create(self.collection_ref("events").document(ev.request_id), ev.to_dict())
            if counted is None:
                slices.add(cells, ev, self._users)
            tokens = [getattr(ev, t) for t in TOKENS]
            cost = nano_usd(ev.cost_usd)
            d = daily.setdefault(daily_key(ev), dict.fromkeys(DAILY_SUMS, 0))
            d["requests"] += 1
            for t, n in zip(TOKENS, tokens, strict=True):
                d[t] += n
            d["cost_nano_usd"] += cost
            h = hourly.setdefault(hourly_key(ev), dict.fromkeys(SUMS, 0))
            h["requests"] += 1
            h["errors"] += is_error(ev)
            h["unpriced"] += is_unpriced(ev)
            for t, n in zip(TOKENS, tokens, strict=True):
                h[t] += n
            h["cost_nano_usd"] += cost
            h["saved_nano_usd"] += nano_usd(ev.saved_usd)
            bucket = LATENCY_BUCKETS[latency_bucket(ev.latency_ms)]
            h[bucket] = h.get(bucket, 0) + 1
            if ev.ttft_ms is not None:
                bucket = TTFT_BUCKETS[latency_bucket(ev.ttft_ms)]
                h[bucket] = h.get(bucket, 0) + 1
            if ev.session_id is not None:
                s = sessions.setdefault(
                    (ev.org or "", ev.session_id),
                    {"sums": dict.fromkeys(("requests", *TOKENS, "cost_nano_usd"), 0), "latency_ms": 0.0, "ts": []},
                )
                s["sums"]["requests"] += 1
                for t, n in zip(TOKENS, tokens, strict=True):
                    s["sums"][t] += n
                s["sums"]["cost_nano_usd"] += cost
                s["latency_ms"] += ev.latency_ms
                s["ts"].append(_epoch_ms(ev.timestamp))
                s["attrs"] = {"team": ev.team, "app": ev.app, "feature": ev.feature, "user": ev.user, "org": ev.org}
        for key, acc in daily.items():
            doc = dict(zip(_DAILY_FIELDS, key, strict=True))
            doc.update({k: firestore.Increment(v) for k, v in acc.items()})
            batch.set(self.collection_ref("rollups_daily").document(rollup_doc_id(key, self._shard())), doc, merge=True)
        for key, acc in hourly.items():
            doc = dict(zip(_HOURLY_FIELDS, key, strict=True))
            doc.update({k: firestore.Increment(v) for k, v in acc.items() if v})
            batch.set(
                self.collection_ref("rollups_hourly").document(hourly_doc_id(key, self._shard())), doc, merge=True
            )
        for (name, bucket), dims in cells.items():
            part: dict[str, Any] = {"slice": name, "b": bucket}
            for dim, values in dims.items():
                part[dim] = {
                    cell: {k: firestore.Increment(n) for k, n in sums.items()} for cell, sums in values.items()
                }
            ref = self.collection_ref("slices").document(slices.slice_doc_id(name, bucket, self._shard() or 0))
            batch.set(ref, part, merge=True)
        for (org, sid), s in sessions.items():
            doc = {"session_id": sid, **s["attrs"]}
            doc.update({k: firestore.Increment(v) for k, v in s["sums"].items()})
            doc["latency_ms"] = firestore.Increment(s["latency_ms"])
            doc["first_ms"] = firestore.Minimum(min(s["ts"]))
            doc["last_ms"] = firestore.Maximum(max(s["ts"]))
            batch.set(self.collection_ref("sessions").document(session_doc_id(sid, org)), doc, merge=True)
        return batch

    def _shard(self) -> int | None:
        return random.randrange(self.shards) if self.shards > 1 else None

    async def claim(self, key: str, at: str) -> bool:
        """True for exactly one caller per ``key``, across every process and replica on this store."""
        from google.api_core import exceptions as gexc

        doc = self.collection_ref("claims").document(hashlib.sha256(key.encode()).hexdigest())
        try:
            await doc.create({"key": key, "at": at}, timeout=self.commit_timeout)
        except gexc.Conflict:
            return False
        return True

    async def recall(self, key: str) -> str | None:
        doc = self.collection_ref("claims").document(hashlib.sha256(key.encode()).hexdigest())
        snap = await doc.get(timeout=self.commit_timeout)
        at = snap.get("at") if snap.exists else None
        return at if isinstance(at, str) else None

    async def read(self, since: str | None = None, limit: int | None = None) -> list[CostEvent]:
        from google.cloud import firestore

        q = self.collection_ref("events")
        if since:
            q = q.where(filter=firestore.FieldFilter("timestamp", ">=", since))
        q = q.order_by("timestamp", direction=firestore.Query.DESCENDING)
        if limit:
            q = q.limit(limit)
        docs = [CostEvent.from_dict(d.to_dict()) async for d in q.stream()]
        return list(reversed(docs))

    async def rollups(self, kind: str = "rollups_daily") -> list[dict[str, Any]]:
        """Every rollup row of ``rollups_daily`` or ``rollups_hourly``, shards summed (for checks)."""
        fields = _DAILY_FIELDS if kind == "rollups_daily" else _HOURLY_FIELDS
        sums = DAILY_SUMS if kind == "rollups_daily" else SUMMED
        out: dict[tuple[Any, ...], dict[str, Any]] = {}
        async for d in self.collection_ref(kind).stream():
            row = d.to_dict()
            key = tuple(row.get(k, "") for k in fields)  # (a document older than a dimension lacks it)
            acc = out.setdefault(key, dict(zip(fields, key, strict=True)))
            for k in sums:
                acc[k] = acc.get(k, 0) + int(row.get(k, 0))
        return list(out.values())

    async def ping(self) -> bool:
        try:
            # retry=None: the client's default policy retries UNAVAILABLE for minutes, per-attempt timeout or not,
            # and a readiness check that hangs is worse than one that says no.
            await self.collection_ref("rollups_daily").document("_ping").get(timeout=2.0, retry=None)
            return True
        except Exception:  # noqa: BLE001
            return False

    async def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None
        if self.warehouse is not None:
            self.warehouse.close()
