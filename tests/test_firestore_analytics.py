"""Firestore analytics from slices (issue N): the same events written to SQLite and to the Firestore emulator
through the real sinks answer every question alike, whether the slices (sinks/slices.py) or the hourly rollups
answer it on Firestore; the slices read a few documents a day; a store written before slices keeps answering,
and ``migrate_slices`` builds them exactly once."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from google.cloud import firestore
from google.cloud.firestore_v1.field_path import FieldPath

from modeltrack.cli.main import main
from modeltrack.events import rfc3339
from modeltrack.pricing import Pricing
from modeltrack.query import fsraw
from modeltrack.query.base import Filters
from modeltrack.query.breakdown import SORTS, breakdown
from modeltrack.query.firestore import FirestoreReader
from modeltrack.query.fsplan import slice_for
from modeltrack.query.scoped import ScopedReader
from modeltrack.query.sqlite import SQLiteReader
from modeltrack.query.times import zone
from modeltrack.query.views import Range
from modeltrack.query.whatif import whatif
from modeltrack.sinks.base import StoreURLError, open_sink
from modeltrack.sinks.firestore import SLICES_META, FirestoreSink
from modeltrack.sinks.slices import MAPS, PINS, SEP, SPREAD, USER_HISTOGRAMS, slice_doc_id, slice_name
from modeltrack.sinks.sqlite import SQLiteSink

from .seed import history

pytestmark = pytest.mark.usefixtures("firestore_emulator")

END = datetime(2026, 11, 30, 15, 0, tzinfo=UTC)
START = END - timedelta(days=30, hours=7)  # neither end at a midnight: day rows plus edge hours

QUESTIONS: list[tuple[Filters, tuple[str, ...]]] = [
    (Filters(), ()),
    (Filters(), ("team", "cache_hit")),
    (Filters(), ("model", "cache_hit")),
    (Filters(), ("provider", "model")),
    (Filters(), ("user", "cache_hit")),
    (Filters(), ("status",)),
    (Filters(), ("org",)),
    (Filters(), ("key_id",)),
    (Filters(), ("prompt_id", "cache_hit")),
    (Filters(key_id="key_2"), ()),
    (Filters(team="search"), ("key_id",)),
    (Filters(), ("processing",)),
    (Filters(team="search"), ("model", "cache_hit")),
    (Filters(team=""), ("app",)),
    (Filters(team="ads"), ("team",)),
    (Filters(org="acme"), ("team", "cache_hit")),
    (Filters(org=""), ()),
    (Filters(model="gpt-4o-2024-08-06"), ()),
    (Filters(status="4xx"), ("status",)),
    (Filters(cache_hit=True), ("model",)),
    (Filters(user="customer-3"), ()),
    (Filters(team="support", user="customer-5"), ("user",)),
    (Filters(provider="openai"), ("provider", "model")),
    # The drill-down pages of an app, a feature and a model: pinned on them.
    (Filters(app="web"), ("feature",)),
    (Filters(feature="triage"), ("model", "cache_hit")),
    (Filters(feature=""), ("app",)),
    (Filters(model="gpt-4o-2024-08-06"), ("team",)),
    (Filters(model="gemini-2.5-flash", org="globex"), ("status",)),
    # Not held by one slice: the hourly rollups answer these (those pins keep no user, key or prompt documents).
    (Filters(app="bot"), ("user", "cache_hit")),
    (Filters(app="batch"), ("key_id",)),
    (Filters(model="gemini-2.5-flash", org="globex"), ("prompt_id",)),
    (Filters(provider="openai"), ("team",)),
    (Filters(), ("team", "model")),
    (Filters(team="search", app="web"), ("feature",)),
]


def _events() -> list[Any]:
    evs = history(33, 25, seed=11, end=END)
    out = []
    for i, e in enumerate(evs):
        out.append(
            replace(
                e,
                org=("acme", "globex", None)[i % 3],
                key_id=f"key_{i % 4}" if i % 5 else None,
                prompt_id=f"prompt-{i % 7}" if i % 3 else None,
                processing="batch" if i % 17 == 0 else None,
                latency_ms=0.3 + (i % 50) * 37.1,
            )
        )
    return out


def _norm(rows: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    return sorted(tuple(sorted((k, v) for k, v in r.items() if v != 0 or k in ("status", "cache_hit"))) for r in rows)


async def both_stores(sink: FirestoreSink, tmp_path: Path) -> AsyncIterator[Any]:
    """The same events in ``sink`` and in a SQLite store: (Firestore reader, SQLite reader, sink, events)."""
    events = _events()
    SQLiteSink(str(tmp_path / "e.db")).write_sync(events)
    await sink.write(events)
    fs = FirestoreReader(sink)
    sq = SQLiteReader(str(tmp_path / "e.db"))
    yield fs, sq, sink, events
    await fs.close()
    await sq.close()


@pytest.fixture
async def stores(tmp_path: Path) -> AsyncIterator[Any]:
    async for both in both_stores(FirestoreSink("modeltrack-test", f"t{uuid.uuid4().hex[:12]}"), tmp_path):
        yield both


async def _same(fs: FirestoreReader, sq: SQLiteReader, f: Filters, group_by: tuple[str, ...], **kw: Any) -> int:
    before = fs.reads
    got = await fs.aggregate(START, END, f, group_by, **kw)
    want = await sq.aggregate(START, END, f, group_by, **kw)
    assert want, (f, group_by)
    assert _norm(got) == _norm(want), (f, group_by, kw)
    return fs.reads - before


async def test_every_question_equals_sqlite_and_slices_read_a_few_documents_a_day(stores: Any) -> None:
    fs, sq, _, events = stores
    hourly = len({(e.timestamp[:13], e.team, e.app, e.feature, e.user, e.model, e.status, e.org) for e in events})
    for f, group_by in QUESTIONS:
        reads = await _same(fs, sq, f, group_by)
        sl = slice_for(f, group_by)
        if sl is None:
            assert reads >= hourly // 2, (f, group_by, reads)  # the hourly rollups, streamed whole
        else:
            # 30 days and 2 × 23 edge hours at most, per organisation scope and user shard: the goal.
            assert reads <= (30 + 46) * len(sl.names("day")), (f, group_by, reads)
            assert reads <= 1000, (f, group_by, reads)
    # The dearest sessions: read dearest first, a page, never every session of the range.
    for f in (Filters(), Filters(org="acme"), Filters(org="")):
        before = fs.reads
        got = await fs.sessions(START, END, f, 5)
        want = await sq.sessions(START, END, f, 5)
        assert [(r["session_id"], r["org"], r["cost_nano_usd"]) for r in got] == [
            (r["session_id"], r["org"], r["cost_nano_usd"]) for r in want
        ], f
        assert fs.reads - before <= 20
    # By hour, and by local day in whole-hour and half-hour zones (the day rows are restamped, minority hours
    # moved out of them).
    for tz in (None, "UTC", "Europe/Paris", "America/New_York", "Asia/Kolkata"):
        for f, group_by in ((Filters(), ()), (Filters(team="search"), ("model",)), (Filters(org="acme"), ("team",))):
            await _same(fs, sq, f, group_by, by_hour=True, day_zone=zone(tz) if tz else None)


async def test_whatif_from_daily_sums_equals_each_request_repriced_on_both_stores(stores: Any) -> None:
    """Past its request limit, what-if re-prices sums: per UTC day when the target's prices hold all day (a 24th
    of the documents of per hour), per hour when it has time-of-day rates (DeepSeek's off-peak hours). Each
    equals its requests re-priced one by one (these targets have no context tiers), at the hour's start for the
    hourly sums, on SQLite and on Firestore."""
    fs, sq, _, events = stores
    pricing = Pricing.load()
    rng = Range(START, END, zone("UTC"), "UTC")
    reads: dict[bool, int] = {}
    billed = [e for e in events if not e.cache_hit and START.isoformat()[:19] <= e.timestamp < END.isoformat()[:19]]
    for provider, model, all_day in (("openai", "gpt-4.1-mini", True), ("deepseek", "deepseek-chat", False)):
        assert pricing.same_all_day(provider, model) is all_day
        each = 0
        for e in billed:
            at = datetime.fromisoformat(e.timestamp.replace("Z", "+00:00")).timestamp()
            if not all_day:
                at -= at % 3600  # what an hour's sums can know: its requests priced at the hour's start
            each += round((pricing.price(provider, model, e.usage(), at) or 0) * 1e9)
        for reader in (sq, fs):
            before = fs.reads
            got = await whatif(reader, pricing, rng, Filters(), provider, model, max_events=0)
            assert got["method"] == "aggregate" and got["requests"] == len(billed), (reader.name, model)
            assert got["whatif_usd"] == pytest.approx(each / 1e9, abs=len(billed) * 1e-9), (reader.name, model)
        reads[all_day] = fs.reads - before
    # 30 days and the 31 edge hours of a range with neither end at midnight, against 30 × 24 + 31 hours:
    assert reads[True] * 5 < reads[False]


async def test_a_store_written_before_slices_answers_alike_and_migrates_exactly_once(
    stores: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    _, sq, sink, _ = stores
    # What a store written by an older version looks like: slices only from the mark its first upgraded writer set.
    mark = (END - timedelta(days=3)).strftime("%Y-%m-%dT00")
    async for d in sink.collection_ref("slices").stream():
        if d.id == SLICES_META:
            continue
        if d.get("slice").startswith("week") or d.get("b") < mark[: len(d.get("b"))]:  # and a day or hour before
            await d.reference.delete()
    meta = sink.collection_ref("slices").document(SLICES_META)
    await meta.set({"since": mark, "weeks": firestore.DELETE_FIELD, "pins": firestore.DELETE_FIELD}, merge=True)
    fresh = FirestoreReader(sink)
    reads = await _same(fresh, sq, Filters(), ("team", "cache_hit"))
    assert reads > 100  # before the mark: the hourly rollups
    url = f"firestore://modeltrack-test/{sink.collection}"
    assert await asyncio.to_thread(main, ["admin", "migrate", "--store", url]) == 0
    assert "slices built from" in capsys.readouterr().out
    assert await sink.slices_since() == ""
    assert (await sink.slices_meta()).weeks == ""
    assert (await sink.slices_meta()).pins == ""
    migrated = FirestoreReader(sink)
    for f, group_by in QUESTIONS:
        await _same(migrated, sq, f, group_by)
    reads = await _same(migrated, sq, Filters(), ("team", "cache_hit"))
    assert reads <= 2 * (30 + 46)  # both organisation scopes ("" and every org's)
    assert await asyncio.to_thread(main, ["admin", "migrate", "--store", url]) == 0
    assert "nothing to migrate" in capsys.readouterr().out  # exactly once: a covered store is left alone
    assert await sink.migrate_slices() == 0
    await _same(FirestoreReader(sink), sq, Filters(), ("team", "cache_hit"))


async def test_a_store_written_before_weeks_answers_alike_and_migrates_them(stores: Any) -> None:
    """The user's week documents (sinks/slices.py) came after the day and hour slices: a store written before
    them answers from days until ``admin migrate`` builds its weeks; a writer that opens it marks them from
    the next Monday, the first week it counts whole."""
    fs, sq, sink, _ = stores
    by_user = [(f, g) for f, g in QUESTIONS if slice_for(f, g) is not None and slice_for(f, g).dim == "user"]
    assert len(by_user) == 3
    names = len(slice_for(Filters(), ("user", "cache_hit")).names("day"))  # type: ignore[union-attr]
    # START..END: 29 whole days, 4 of them whole weeks (Mondays 2, 9, 16 and 23 November), and 31 edge hours.
    assert await _same(fs, sq, Filters(), ("user", "cache_hit")) == (4 + 1 + 31) * names
    # What a store written by the version before weeks looks like: no week documents, no mark.
    async for d in sink.collection_ref("slices").stream():
        if d.id != SLICES_META and d.get("slice").startswith("week"):
            await d.reference.delete()
    meta = sink.collection_ref("slices").document(SLICES_META)
    await meta.set({"weeks": firestore.DELETE_FIELD}, merge=True)
    assert (await sink.slices_meta()).weeks is None
    for f, g in by_user:
        await _same(FirestoreReader(sink), sq, f, g)
    assert await _same(FirestoreReader(sink), sq, Filters(), ("user", "cache_hit")) == (29 + 31) * names
    # A writer of this version opens it (an event after END, which no question here counts): it marks the weeks
    # from the next Monday, and until then readers still answer from days.
    later = FirestoreSink("modeltrack-test", sink.collection)
    await later.write([replace(_events()[0], request_id="req_after_end", timestamp=rfc3339(time.time()))])
    weeks = (await sink.slices_meta()).weeks
    today = datetime.now(UTC).date()
    assert weeks == (today + timedelta(days=7 - today.weekday())).isoformat()
    assert await _same(FirestoreReader(sink), sq, Filters(), ("user", "cache_hit")) == (29 + 31) * names
    assert await sink.migrate_slices() > 0
    assert (await sink.slices_meta()).weeks == ""
    for f, g in by_user:
        await _same(FirestoreReader(sink), sq, f, g)
    assert await _same(FirestoreReader(sink), sq, Filters(), ("user", "cache_hit")) == (4 + 1 + 31) * names
    assert await sink.migrate_slices() == 0  # exactly once
    await later.close()


async def test_a_store_written_before_pins_answers_alike_and_migrates_them(stores: Any) -> None:
    """The slices pinned on the app, the feature and the model came after the team's: a store written before
    them answers those questions from the hourly rollups until ``admin migrate`` builds them; a writer that
    opens it marks them from the next UTC midnight."""
    fs, sq, sink, events = stores
    hourly = len({(e.timestamp[:13], e.team, e.app, e.feature, e.user, e.model, e.status, e.org) for e in events})
    pinned = [(f, g) for f, g in QUESTIONS if (sl := slice_for(f, g)) is not None and sl.pin in PINS]
    assert len(pinned) == 5
    sliced = {(str(f), g): await _same(fs, sq, f, g) for f, g in pinned}
    assert max(sliced.values()) <= 1000
    # What a store written by the version before the pins looks like: no such documents, no mark.
    async for d in sink.collection_ref("slices").stream():
        if d.id != SLICES_META and d.get("slice").count(SEP) > 3:
            await d.reference.delete()
    meta = sink.collection_ref("slices").document(SLICES_META)
    await meta.set({"pins": firestore.DELETE_FIELD}, merge=True)
    assert (await sink.slices_meta()).pins is None
    for f, g in pinned:
        assert await _same(FirestoreReader(sink), sq, f, g) >= hourly // 2  # the hourly rollups, streamed whole
    # A writer of this version opens it (an event after END, which no question here counts): it marks the pins
    # from the next UTC midnight, and until then readers still answer from the hourly rollups.
    later = FirestoreSink("modeltrack-test", sink.collection)
    await later.write([replace(_events()[0], request_id="req_after_end_pins", timestamp=rfc3339(time.time()))])
    marks = await sink.slices_meta()
    assert marks.pins == (datetime.now(UTC) + timedelta(days=1)).strftime("%Y-%m-%dT00")
    assert marks.since == "" and marks.weeks == ""  # the other marks stand
    for f, g in pinned:
        assert await _same(FirestoreReader(sink), sq, f, g) >= hourly // 2
    assert await sink.migrate_slices() > 0
    assert (await sink.slices_meta()).pins == ""
    for f, g in pinned:
        assert await _same(FirestoreReader(sink), sq, f, g) == sliced[(str(f), g)]
    assert await sink.migrate_slices() == 0  # exactly once
    await later.close()


async def test_a_breakdown_by_user_equals_sqlites_with_the_top_rows_histograms_read_apart(stores: Any) -> None:
    """By user, Firestore ranks on the one or two sums its sort needs, then reads the top rows' whole figures and
    previous period alone (their cells, through a field mask), and the rest's from the total less the top rows
    (query/breakdown.py). Every figure equals SQLite's, which reads them all at once: percentiles of the
    top rows, of the rest and of the total, hit rates, and the previous period's."""
    fs, sq, _, _ = stores
    assert fs.histograms_apart and not getattr(sq, "histograms_apart", False)
    rng = Range(END - timedelta(days=10), END, zone("UTC"), "UTC")  # the previous 10 days have events too
    for f in (Filters(), Filters(team="support"), Filters(status="2xx")):
        for sort in SORTS:
            for limit in (3, 40):
                for fr, sr in ((fs, sq), (ScopedReader(fs, org="acme"), ScopedReader(sq, org="acme"))):
                    got = await breakdown(fr, rng, "user", f, limit=limit, sort=sort)
                    want = await breakdown(sr, rng, "user", f, limit=limit, sort=sort)
                    assert got == want, (f, sort, limit, fr.name)
                    assert want["rows"] and want["previous"] and want["total"]["latency_p95_ms"] is not None
                    assert (want["other"] is not None) == (limit == 3)
                    assert want["total"]["cache_hits"] > 0
    for latency in (True, False):  # (the API's latency=false reads no histogram at all)
        got = await breakdown(fs, rng, "user", Filters(), limit=3, latency=latency)
        assert got == await breakdown(sq, rng, "user", Filters(), limit=3, latency=latency)
    # The ranking's read: a cell's other sums are never decoded, and the two it asks for equal SQLite's.
    ranked = await fs.aggregate(rng.start, rng.end, Filters(), ("user", "cache_hit"), sums=("requests", "errors"))
    whole = await sq.aggregate(rng.start, rng.end, Filters(), ("user", "cache_hit"))
    assert {k for r in ranked for k in r} == {"user", "cache_hit", "requests", "errors"}
    assert _norm(ranked) == _norm([{k: r[k] for k in ("user", "cache_hit", "requests", "errors")} for r in whole])
    before = fs.reads
    await breakdown(fs, rng, "user", Filters(), limit=3)
    assert fs.reads - before <= 1000


async def test_keys_and_prompt_ids_stay_out_of_the_main_document_and_an_earlier_versions_cells_still_count(
    tmp_path: Path,
) -> None:
    """A platform's keys and prompt ids can number in the thousands a day, and a busy value's cell is some 80
    fields: in the main slice document, which every other dimension shares, they would take it past Firestore's
    20,000 fields a document, and Firestore would refuse the commits. So each value's cells are in one of the
    store's value-shard documents (sinks/slices.py), and the main document holds none. A version before kept them
    in the main document; a store written both ways in the same buckets (a rolling upgrade: half the events
    each way) answers every question by key and prompt id as SQLite does, each event counted once."""
    events = [replace(e, key_id=f"mt_key_{i % 600}", prompt_id=f"p{i % 90}") for i, e in enumerate(_events())]
    half = len(events) // 2
    SQLiteSink(str(tmp_path / "e.db")).write_sync(events)
    sink = FirestoreSink("modeltrack-test", f"k{uuid.uuid4().hex[:12]}", value_shards=3)
    await sink.write(events[:half])
    coll = sink.collection_ref("slices")
    docs = [d async for d in coll.stream() if d.id != SLICES_META]
    where: dict[tuple[str, str], set[str]] = {}
    for d in docs:
        part = d.get("slice").rsplit(SEP, 1)[1]
        maps = set(d.to_dict()) & set(SPREAD)
        assert (part.startswith("values")) == bool(maps), (part, maps)
        for dim in maps:
            for cell in d.get(dim):
                where.setdefault((dim, cell.split(SEP)[-1]), set()).add(part)
    assert set(where) == {(d, getattr(e, d)) for e in events[:half] for d in SPREAD}
    assert len(where) > 300
    assert all(len(parts) == 1 for parts in where.values())  # a value's cells in its one shard, every bucket
    assert {p for parts in where.values() for p in parts} == {"values0", "values1", "values2"}
    # The earlier version's placement: those cells moved into the main documents of their buckets.
    for d in docs:
        kind, org, *pin, part = d.get("slice").split(SEP)
        team = SEP.join(pin)  # a team, or an app's, a feature's or a model's pin
        if part.startswith("values"):
            main_doc = coll.document(slice_doc_id(slice_name(kind, org, team), d.get("b"), 0))
            await main_doc.set({dim: d.get(dim) for dim in SPREAD if dim in d.to_dict()}, merge=True)
            await d.reference.delete()
    # This version writes the other half, into value shards of the same buckets.
    later = FirestoreSink("modeltrack-test", sink.collection)
    await later.write(events[half:])
    fs, sq = FirestoreReader(later), SQLiteReader(str(tmp_path / "e.db"))
    questions = [
        (Filters(), ("key_id",)),
        (Filters(), ("prompt_id", "cache_hit")),
        (Filters(key_id="mt_key_7"), ()),
        (Filters(prompt_id="p3"), ("cache_hit",)),
        (Filters(team="search"), ("key_id",)),
        (Filters(org="acme"), ("prompt_id",)),
    ]
    for f, group_by in questions:
        sl = slice_for(f, group_by)
        assert sl is not None and sl.dim in SPREAD, (f, group_by)
        reads = await _same(fs, sq, f, group_by)
        names = len(replace(sl, values=3).names("day"))  # the main document and this store's 3 value shards
        assert reads <= (30 + 46) * names and reads <= 1000, (f, group_by, reads)
    await _same(fs, sq, Filters(team="search"), ("key_id",), by_hour=True)
    await _same(fs, sq, Filters(), ("prompt_id",), by_hour=True, day_zone=zone("Europe/Paris"))
    await fs.close()
    await sq.close()
    await sink.close()


async def test_a_range_that_reaches_the_present_reads_its_last_day_whole(tmp_path: Path) -> None:
    """No event is stamped after now, so a range ending after now holds the same events as one ending at the end
    of its last UTC day (or week, by user): Firestore reads that day's document instead of its hours. The
    answers equal SQLite's, which reads the hours."""
    now = datetime.now(UTC)
    events = history(12, 20, seed=4, end=now)
    assert max(e.timestamp for e in events) < rfc3339(now.timestamp())
    SQLiteSink(str(tmp_path / "now.db")).write_sync(events)
    sink = FirestoreSink("modeltrack-test", f"n{uuid.uuid4().hex[:12]}")
    await sink.write(events)
    fs, sq = FirestoreReader(sink), SQLiteReader(str(tmp_path / "now.db"))
    today = now.replace(hour=0, minute=0, second=0, microsecond=0)
    end = now.replace(minute=0, second=0, microsecond=0) + timedelta(hours=1)  # as the dashboard's ranges end
    for start in (today - timedelta(days=9), today - timedelta(days=9, hours=-5), today):
        for f, group_by in QUESTIONS[:9]:
            before = fs.reads
            got = await fs.aggregate(start, end, f, group_by)
            assert _norm(got) == _norm(await sq.aggregate(start, end, f, group_by)), (start, f, group_by)
            if start == today - timedelta(days=9) and group_by == ("team", "cache_hit"):
                assert not any(e.org for e in events)  # one organisation scope: ""
                assert fs.reads - before == 10  # 10 day documents: no hour's
    await fs.close()
    await sq.close()


async def test_a_store_keeps_the_user_and_value_shards_it_was_created_with(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """More users (keys, prompt ids) a day need more of their documents a bucket (each stays within Firestore's
    limits): a store created with ``?user_shards=N&value_shards=M`` records N and M in its marks; every writer and
    reader uses the store's numbers, whatever its own URL says (a user's document depends on them), and answers
    equal SQLite's."""
    for bad in ("user_shards", "value_shards"):
        with pytest.raises(StoreURLError, match=f"{bad} must be a whole number from 1 to 4096, got '0'"):
            open_sink(f"firestore://p/c?{bad}=0")
    events = _events()[:300]
    coll = f"u{uuid.uuid4().hex[:12]}"
    first = open_sink(f"firestore://modeltrack-test/{coll}?user_shards=3&value_shards=2")
    assert isinstance(first, FirestoreSink)
    await first.write(events[:150])
    later = open_sink(f"firestore://modeltrack-test/{coll}?user_shards=5&value_shards=6")
    assert isinstance(later, FirestoreSink)
    with caplog.at_level("WARNING"):
        await later.write(events[150:])
    assert "keeps 3 user shards" in caplog.text and "?user_shards=5 is ignored" in caplog.text
    assert "keeps 2 value shards" in caplog.text and "?value_shards=6 is ignored" in caplog.text
    marks = await first.slices_meta()
    assert (marks.user_shards, marks.value_shards) == (3, 2)
    parts = set()
    async for d in first.collection_ref("slices").stream():
        if d.id != SLICES_META:
            parts.add(d.get("slice").rsplit(SEP, 1)[1])
    assert parts == {"main", "user0", "user1", "user2", "values0", "values1"}
    SQLiteSink(str(tmp_path / "u.db")).write_sync(events)
    fs, sq = FirestoreReader(first), SQLiteReader(str(tmp_path / "u.db"))
    for f, group_by in QUESTIONS:
        await _same(fs, sq, f, group_by)
    await fs.close()
    await sq.close()
    await later.close()


def test_the_deploy_kit_exempts_every_slice_dimension_from_indexing() -> None:
    """A slice document holds a map per dimension with a field per value and sum: indexed, a busy day would pass
    Firestore's 40,000 index entries a document and refuse its writes. Slices are read by id, never queried."""
    import json

    doc = json.loads((Path(__file__).resolve().parent.parent / "deploy" / "firestore.indexes.json").read_text())
    exempt = {
        o["fieldPath"]
        for o in doc["fieldOverrides"]
        if o["collectionGroup"] == "modeltrack_slices" and not o["indexes"]
    }
    assert exempt == set(MAPS)


async def test_raw_reads_equal_the_clients_own(stores: Any) -> None:
    """The slices are decoded from the wire's messages (query/fsraw.py), not through ``get_all``'s generic
    decoder and deep copy: every slice document, by every dimension, reads alike both ways (the second is the
    path fsraw falls back to on a client without the GAPIC attributes it uses)."""
    _, _, sink, _ = stores
    coll = sink.collection_ref("slices")
    refs = [snap.reference async for snap in coll.select([]).stream() if snap.id != SLICES_META]
    assert len(refs) > 100
    refs.append(coll.document("no-such-slice"))  # a missing document is left out, as get_all's snapshot says
    public = _PublicOnly(sink.client)
    some = [
        FieldPath(m, f"{hit}\x1fcustomer-{i}").to_api_repr()
        for m in ("user", USER_HISTOGRAMS)
        for hit in "01"
        for i in range(3)
    ]
    reads: list[tuple[tuple[str, ...], list[str] | None]] = [
        (("team",), None),
        (("user",), None),
        (("user", USER_HISTOGRAMS), None),  # a user's sums, then its histograms
        (("user", USER_HISTOGRAMS), some),  # only some users' cells
        (("model",), None),
        (("key_id",), None),
    ]
    for maps, mask in reads:
        raw = {pair async for pair in _pairs(fsraw.batch_get(sink.client, refs, maps, mask))}
        client = {pair async for pair in _pairs(fsraw.batch_get(public, refs, maps, mask))}
        assert raw == client, maps
        assert sum(1 for _, cells in raw if cells) > 10, maps  # (a user shard's documents hold users only)
        if mask:
            assert {key.split("\x1f")[1] for _, cells in raw for key, _ in cells} == {
                "customer-0",
                "customer-1",
                "customer-2",
            }
    assert public.calls == len(reads)


class _PublicOnly:
    """The real client seen through its public ``get_all`` only."""

    def __init__(self, client: Any) -> None:
        self.client, self.calls = client, 0

    def get_all(self, *args: Any, **kwargs: Any) -> Any:
        self.calls += 1
        return self.client.get_all(*args, **kwargs)


async def _pairs(got: Any) -> Any:
    async for bucket, cells in got:
        yield bucket, _frozen(cells)


def _frozen(cells: Any) -> Any:
    return frozenset((key, frozenset(sums)) for key, sums in cells)
