"""From when a Firestore store's slices count every event, and building the ones before (``admin migrate``).

A store written by an older version has events its slices never counted. The ``_meta`` document of
``COLL_slices`` says from when they count every event, so readers use them only from there:

* ``since``: the first hour (``YYYY-MM-DDTHH``) of the day and hour slices; ``""`` every hour;
* ``weeks``: the first Monday (``YYYY-MM-DD``) of the user's week documents (:mod:`.slices`, added after the
  day and hour slices); ``""`` every week;
* ``pins``: the first hour of the slices pinned on the app, the feature and the model (:data:`slices.PINS`,
  added after the team's); ``""`` every hour;
* ``orgs``: whether any event has an organisation (the all-organisations slices exist);
* ``user_shards``: how many documents a bucket's users are spread over (:data:`slices.USER_SHARDS` when absent).
  Set once, by the writer that creates the marks (``?user_shards=N`` on its store URL); every writer and reader
  then uses the store's number, whatever its own URL says, since a user's shard depends on it.
* ``value_shards``: the same for keys and prompt ids (:data:`slices.VALUE_SHARDS` when absent, as for every store
  marked before they had documents of their own: their cells were in the main documents, which readers still
  read for them).
* ``warehouse``: the first hour the BigQuery warehouse (:mod:`.bigquery`, ``?bigquery=DATASET``) holds every
  event of; ``""`` every hour; None: no writer with a warehouse has opened the store. Marked from the next whole
  hour for a store with events (rows are per event, so an hour is a whole bucket); :func:`migrate_warehouse`
  copies the events before it.

A writer marks a store before its first write (:func:`mark`): an empty store is covered from the start; one with
events from the next UTC midnight (day and hour slices, and pins) and the next Monday (weeks), the first whole
buckets it counts. A mark only moves later than the truth, never earlier: readers then answer more from the
hourly rollups (or days), never from documents that miss events. :func:`migrate` builds what comes before the
marks from the hourly rollups, exactly once. Held by tests/test_firestore_analytics.py
(``test_a_store_written_before_slices_answers_alike_and_migrates_exactly_once``,
``test_a_store_written_before_weeks_answers_alike_and_migrates_them``,
``test_a_store_written_before_pins_answers_alike_and_migrates_them``).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from ..events import CostEvent
from ..rollups import HOURLY_DIMENSIONS, SUMMED, legacy_latency
from . import slices

if TYPE_CHECKING:
    from .firestore import FirestoreSink

META = "_meta"
"""The document in ``COLL_slices`` that holds the marks."""
MAX_WRITES = 500
MAX_COPY = 5_000
_HOURLY_FIELDS = ("hour", *HOURLY_DIMENSIONS)


@dataclass(frozen=True)
class Marks:
    """What :data:`META` says: None where a mark is missing (no writer of a version with those documents has
    opened the store)."""

    since: str | None
    weeks: str | None
    orgs: bool
    user_shards: int = slices.USER_SHARDS
    value_shards: int = slices.VALUE_SHARDS
    pins: str | None = None
    warehouse: str | None = None


def _next_hour() -> str:
    return (datetime.now(UTC) + timedelta(hours=1)).strftime("%Y-%m-%dT%H")


def _tomorrow() -> str:
    return (datetime.now(UTC) + timedelta(days=1)).strftime("%Y-%m-%dT00")


def _next_monday() -> str:
    today = datetime.now(UTC).date()
    return (today + timedelta(days=7 - today.weekday())).isoformat()


async def read(sink: FirestoreSink) -> Marks:
    snap = await sink.collection_ref("slices").document(META).get(timeout=sink.commit_timeout)
    return _marks(snap.to_dict() if snap.exists else {})


def _marks(doc: dict[str, Any]) -> Marks:
    since, weeks, users, values, pins, wh = (
        doc.get(k) for k in ("since", "weeks", "user_shards", "value_shards", "pins", "warehouse")
    )
    return Marks(
        since if isinstance(since, str) else None,
        weeks if isinstance(weeks, str) else None,
        bool(doc.get("orgs")),
        users if isinstance(users, int) and users >= 1 else slices.USER_SHARDS,
        values if isinstance(values, int) and values >= 1 else slices.VALUE_SHARDS,
        pins if isinstance(pins, str) else None,
        wh if isinstance(wh, str) else None,
    )


async def mark(sink: FirestoreSink) -> Marks:
    """Mark where the slices begin, before this process's first write (see the module's docstring), and return
    the store's marks (the writer needs its user shards)."""
    from google.api_core import exceptions as gexc

    meta = sink.collection_ref("slices").document(META)
    snap = await meta.get(timeout=sink.commit_timeout, retry=None)
    if not snap.exists:
        events = sink.collection_ref("events").limit(1)
        empty = not [d async for d in events.stream(timeout=sink.commit_timeout, retry=None)]
        first: dict[str, Any] = (
            {"since": "", "weeks": "", "pins": ""}
            if empty
            else {"since": _tomorrow(), "weeks": _next_monday(), "pins": _tomorrow()}
        )
        if sink.user_shards is not None:
            first["user_shards"] = sink.user_shards
        if sink.value_shards is not None:
            first["value_shards"] = sink.value_shards
        if sink.warehouse is not None:
            first["warehouse"] = "" if empty else _next_hour()
        try:
            await meta.create(first, timeout=sink.commit_timeout, retry=None)
            return _marks(first)
        except gexc.Conflict:  # another writer marked it first: its mark stands
            snap = await meta.get(timeout=sink.commit_timeout, retry=None)
    doc = snap.to_dict() or {}
    if not isinstance(doc.get("weeks"), str):
        # Marked by a version without week documents. Another writer may mark it at the same time, or a
        # migration set "" in between: a later mark than the truth only costs reads, so no precondition.
        await meta.update({"weeks": _next_monday()}, timeout=sink.commit_timeout, retry=None)
        doc["weeks"] = _next_monday()
    if not isinstance(doc.get("pins"), str):  # marked by a version without the app, feature and model pins
        await meta.update({"pins": _tomorrow()}, timeout=sink.commit_timeout, retry=None)
        doc["pins"] = _tomorrow()
    if sink.warehouse is not None and not isinstance(doc.get("warehouse"), str):  # the first writer with one
        doc["warehouse"] = _next_hour()
        await meta.update({"warehouse": doc["warehouse"]}, timeout=sink.commit_timeout, retry=None)
    return _marks(doc)


def _pinned_elsewhere(name: str) -> bool:
    """Whether a slice document's name is pinned on one of :data:`slices.PINS` (not the team, not unpinned)."""
    return name.count(slices.SEP) > 3


async def migrate(sink: FirestoreSink) -> int:
    """Build the slices of every hour before ``since``, the week documents of every week before ``weeks``, and
    the app, feature and model pins of every hour before ``pins``, from the hourly rollups, then mark all of them
    as covered: exactly once (a covered store is left alone; running it again rebuilds the same documents, which
    are written whole, not incremented). Returns the hourly documents read.

    Run it once every replica writes them (after the rollout): an event of those hours stored *while* it runs
    may be counted in the hourly rollups and not in the slices."""
    from google.cloud import firestore

    marks = await read(sink)
    if marks.since == "" and marks.weeks == "" and marks.pins == "":
        return 0
    meta = sink.collection_ref("slices").document(META)
    # Never opened by a writer that keeps them: mark from the next whole bucket first (writers count from there).
    if marks.since is None:
        await meta.set({"since": _tomorrow()}, merge=True)
    if marks.weeks is None:
        await meta.set({"weeks": _next_monday()}, merge=True)
    if marks.pins is None:
        await meta.set({"pins": _tomorrow()}, merge=True)
    marks = await read(sink)
    hours = marks.since if marks.since else None  # rebuild the day and hour slices of hours before it
    weeks = marks.weeks if marks.weeks else None  # and the week documents of weeks before this Monday
    pins = marks.pins if marks.pins else None  # and the app, feature and model pins of hours before it
    until = max(h for h in (hours, weeks and weeks + "T00", pins) if h)

    acc: slices.Acc = {}
    read_, orgs = 0, False
    q = sink.collection_ref("rollups_hourly").where(filter=firestore.FieldFilter("hour", "<", until))
    async for d in q.stream():
        row = d.to_dict()
        read_ += 1
        if any(k.startswith("lat_") for k in row):
            legacy_latency(row)
        dims = {k: row.get(k, 0 if k in ("status", "cache_hit") else "") for k in _HOURLY_FIELDS}
        slices.add_row(
            acc, {**dims, **{k: row.get(k) for k in SUMMED}}, users=marks.user_shards, values=marks.value_shards
        )
        orgs = orgs or bool(dims["org"])

    def wanted(name: str, bucket: str) -> bool:
        if name.startswith("week" + slices.SEP):
            return weeks is not None and bucket < weeks
        hour = bucket if "T" in bucket else bucket + "T00"
        if _pinned_elsewhere(name):  # written since ``pins`` (a UTC midnight): a day is wholly before or after
            return pins is not None and hour < pins
        return hours is not None and hour < hours

    coll = sink.collection_ref("slices")
    batch, n = sink.client.batch(), 0
    for (name, bucket), dims in acc.items():
        if not wanted(name, bucket):
            continue
        if n + sink.shards > MAX_WRITES:
            await batch.commit(timeout=sink.commit_timeout)
            batch, n = sink.client.batch(), 0
        batch.set(coll.document(slices.slice_doc_id(name, bucket, 0)), {"slice": name, "b": bucket, **dims})
        # What writers added to the other shards is in the hourly rollups too: counted once, in shard 0.
        for shard in range(1, sink.shards):
            batch.delete(coll.document(slices.slice_doc_id(name, bucket, shard)))
        n += sink.shards
    if n:
        await batch.commit(timeout=sink.commit_timeout)
    done: dict[str, Any] = {"since": "", "weeks": "", "pins": ""}
    if orgs:
        done["orgs"] = True
    await meta.set(done, merge=True)
    return read_


async def migrate_warehouse(sink: FirestoreSink) -> int:
    """Copy the events stored before the warehouse's mark into it, then mark every hour as held; returns the
    events copied. Exactly once as the reader sees it: a row copied twice (a run interrupted and run again, or an
    event a writer inserted too) is read once, by its ``request_id``. Run it once every replica writes to the
    warehouse, as for the slices."""
    from google.cloud import firestore

    wh = sink.warehouse
    if wh is None:
        return 0
    marks = await read(sink)
    if marks.warehouse == "":
        return 0
    meta = sink.collection_ref("slices").document(META)
    if marks.warehouse is None:  # never opened by a writer with a warehouse: writers insert from the next hour
        await meta.set({"warehouse": _next_hour()}, merge=True)
        marks = await read(sink)
    assert marks.warehouse is not None
    until = marks.warehouse + ":00:00"  # events are stamped YYYY-MM-DDTHH:MM:SS.mmmZ
    await wh.open()
    copied, chunk = 0, []
    q = sink.collection_ref("events").where(filter=firestore.FieldFilter("timestamp", "<", until))
    async for d in q.stream():
        chunk.append(CostEvent.from_dict(d.to_dict()))
        if len(chunk) >= MAX_COPY:
            await wh.insert(chunk)
            copied, chunk = copied + len(chunk), []
    if chunk:
        await wh.insert(chunk)
        copied += len(chunk)
    await meta.set({"warehouse": ""}, merge=True)
    return copied
