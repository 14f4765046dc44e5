"""Google Firestore store (hosted / scaled-out setup), with the official async client.

Data model (``COLL`` = the collection from ``firestore://PROJECT/COLL``, default ``modeltrack``):

* ``COLL_events/{request_id}`` — one document per cost event. ``request_id`` is ``req_`` + 96 random bits, so
  writes spread across Firestore's key space (no monotonically increasing ids, no hot tablet).
* ``COLL_rollups_daily/{day}_{hash}[_{shard}]`` — requests, tokens by kind and ``cost_nano_usd`` per
  (day, team, app, feature, provider, model), updated with ``Increment`` transforms. With ``shards > 1`` each
  batch picks one random shard per key, so a hot key takes ``shards`` × Firestore's ~1 write/s/document;
  readers sum the shards (``rollups()`` does).

Exactly once: every commit is atomic and contains ``create()`` for each event document *and* the increments
for exactly those events (merged in memory: one write per rollup key per commit). If a retry follows an
ambiguous failure whose commit did apply, the ``create()`` fails with ALREADY_EXISTS and nothing in that commit
applies; we then look up which event ids exist, drop them, and commit the rest with their increments. So an
event is stored once and counted once in the rollups, however often it is retried or replayed from the spool.

Firestore allows 500 writes per commit: a batch is split so that events + rollup keys ≤ 500 per commit.
"""

from __future__ import annotations

import hashlib
import random
from typing import Any

from ..events import CostEvent

MAX_WRITES = 500
_TOKENS = ("input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens", "reasoning_tokens")


def rollup_key(ev: CostEvent) -> tuple[str, str, str, str, str, str]:
    return (ev.timestamp[:10], ev.team or "", ev.app or "", ev.feature or "", ev.provider, ev.model or "")


def rollup_doc_id(key: tuple[str, ...], shard: int | None = None) -> str:
    digest = hashlib.sha256("\x1f".join(key[1:]).encode()).hexdigest()[:24]
    return f"{key[0]}_{digest}" + (f"_{shard}" if shard is not None else "")


class FirestoreSink:
    name = "firestore"

    def __init__(
        self, project: str, collection: str = "modeltrack", shards: int = 1, commit_timeout: float = 10.0
    ) -> None:
        self.project = project
        self.collection = collection
        self.shards = max(1, shards)
        self.commit_timeout = commit_timeout
        self._client: Any = None

    @property
    def client(self) -> Any:
        if self._client is None:
            from google.cloud import firestore

            # Application Default Credentials in production; FIRESTORE_EMULATOR_HOST switches to the emulator.
            self._client = firestore.AsyncClient(project=self.project)
        return self._client

    def _events(self) -> Any:
        return self.client.collection(f"{self.collection}_events")

    def _rollups(self) -> Any:
        return self.client.collection(f"{self.collection}_rollups_daily")

    async def open(self) -> None:
        _ = self.client

    def _chunks(self, events: list[CostEvent]) -> list[list[CostEvent]]:
        chunks: list[list[CostEvent]] = []
        cur: list[CostEvent] = []
        keys: set[tuple[str, ...]] = set()
        for ev in events:
            k = rollup_key(ev)
            extra = 1 + (0 if k in keys else 1)
            if cur and len(cur) + len(keys) + extra > MAX_WRITES:
                chunks.append(cur)
                cur, keys = [], set()
            cur.append(ev)
            keys.add(k)
        if cur:
            chunks.append(cur)
        return chunks

    async def write(self, events: list[CostEvent]) -> None:
        # De-duplicate within the batch first (a replayed spool can contain an id twice).
        unique = list({ev.request_id: ev for ev in events}.values())
        for chunk in self._chunks(unique):
            await self._commit(chunk)

    async def _commit(self, events: list[CostEvent]) -> None:
        from google.api_core import exceptions as gexc

        for _ in range(3):
            if not events:
                return
            try:
                await self._batch(events).commit(timeout=self.commit_timeout, retry=None)
                return
            except gexc.Conflict:
                # ALREADY_EXISTS: some of these events were stored by an earlier (ambiguous) commit.
                refs = [self._events().document(ev.request_id) for ev in events]
                existing = {
                    snap.id
                    async for snap in self.client.get_all(refs, field_paths=["request_id"], timeout=self.commit_timeout)
                    if snap.exists
                }
                events = [ev for ev in events if ev.request_id not in existing]
        raise RuntimeError("firestore: conflicts persisted after 3 attempts")  # transient: will be retried

    def _batch(self, events: list[CostEvent]) -> Any:
        from google.cloud import firestore

        batch = self.client.batch()
        merged: dict[tuple[str, ...], dict[str, int]] = {}
        for ev in events:
            batch.create(self._events().document(ev.request_id), ev.to_dict())
            acc = merged.setdefault(rollup_key(ev), dict.fromkeys(("requests", *_TOKENS, "cost_nano_usd"), 0))
            acc["requests"] += 1
            for t in _TOKENS:
                acc[t] += getattr(ev, t)
            acc["cost_nano_usd"] += round((ev.cost_usd or 0.0) * 1e9)
        for key, acc in merged.items():
            shard = random.randrange(self.shards) if self.shards > 1 else None
            day, team, app, feature, provider, model = key
            doc = {
                "day": day,
                "team": team,
                "app": app,
                "feature": feature,
                "provider": provider,
                "model": model,
                **{k: firestore.Increment(v) for k, v in acc.items()},
            }
            batch.set(self._rollups().document(rollup_doc_id(key, shard)), doc, merge=True)
        return batch

    async def read(self, since: str | None = None, limit: int | None = None) -> list[CostEvent]:
        from google.cloud import firestore

        q = self._events()
        if since:
            q = q.where(filter=firestore.FieldFilter("timestamp", ">=", since))
        q = q.order_by("timestamp", direction=firestore.Query.DESCENDING)
        if limit:
            q = q.limit(limit)
        docs = [CostEvent.from_dict(d.to_dict()) async for d in q.stream()]
        return list(reversed(docs))

    async def rollups(self, day: str | None = None) -> list[dict[str, Any]]:
        """Rollup rows, shards summed."""
        from google.cloud import firestore

        q = self._rollups()
        if day:
            q = q.where(filter=firestore.FieldFilter("day", "==", day))
        out: dict[tuple[str, ...], dict[str, Any]] = {}
        async for d in q.stream():
            row = d.to_dict()
            key = tuple(row[k] for k in ("day", "team", "app", "feature", "provider", "model"))
            acc = out.setdefault(key, {k: row[k] for k in ("day", "team", "app", "feature", "provider", "model")})
            for k in ("requests", *_TOKENS, "cost_nano_usd"):
                acc[k] = acc.get(k, 0) + int(row.get(k, 0))
        return sorted(out.values(), key=lambda r: tuple(r[k] for k in ("day", "team", "app", "feature", "provider")))

    async def ping(self) -> bool:
        try:
            # retry=None: the client's default policy retries UNAVAILABLE for minutes, per-attempt timeout or not,
            # and a readiness check that hangs is worse than one that says no.
            await self._rollups().document("_ping").get(timeout=2.0, retry=None)
            return True
        except Exception:  # noqa: BLE001
            return False

    async def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None
