"""A Firestore store's BigQuery warehouse (issue N; sinks/bigquery.py, query/bigquery.py), against the real
BigQuery emulator (bqemulator, scripts/test-tools) and the real Firestore emulator, through the real sinks and
the real ``google-cloud-bigquery`` client: every question no slice holds equals SQLite's on the same events and
reads no rollup document; a batch written twice is counted once; a store written before its warehouse answers
alike and ``modeltrack admin migrate`` copies its earlier events exactly once."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from bench.sysinfo import free_port

from modeltrack.cli.main import main
from modeltrack.query.base import Filters
from modeltrack.query.breakdown import SORTS, breakdown
from modeltrack.query.firestore import FirestoreReader
from modeltrack.query.fsplan import slice_for
from modeltrack.query.sqlite import SQLiteReader
from modeltrack.query.times import hour_start, zone
from modeltrack.query.views import Range
from modeltrack.sinks.base import StoreURLError, describe_store, is_transient, open_sink
from modeltrack.sinks.bigquery import WarehouseError, warehouse_row
from modeltrack.sinks.firestore import SLICES_META, FirestoreSink
from modeltrack.sinks.sqlite import SQLiteSink

from .test_firestore_analytics import END, QUESTIONS, START, _events, _norm, _same, both_stores
from .test_spend_controls import MINI_COST, MINI_STREAM, call, mini_body

pytestmark = pytest.mark.usefixtures("firestore_emulator", "bigquery_emulator")

UNSLICED = [(f, g) for f, g in QUESTIONS if slice_for(f, g) is None] + [
    (Filters(key_id="key_1"), ("model",)),  # spend by model of one key
    (Filters(user="customer-3"), ("model", "cache_hit")),  # a user's page, by model
    (Filters(app="bot", status="2xx"), ("user",)),
]


def _url(dataset: str | None = None) -> str:
    name = f"t{uuid.uuid4().hex[:12]}"
    return f"firestore://modeltrack-test/{name}" + (f"?bigquery={dataset}" if dataset else "")


def _dataset() -> str:
    return f"d{uuid.uuid4().hex[:12]}"


async def _same_days(fs: FirestoreReader, sq: SQLiteReader, f: Filters, group_by: tuple[str, ...], tz: str) -> None:
    """By local day: a store may answer a day's hours as one row stamped at any hour of it (Reader.aggregate's
    ``day_zone``), so the two are compared summed by local day."""
    z = zone(tz)

    def days(rows: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
        out: dict[tuple[Any, ...], dict[str, int]] = {}
        for r in rows:
            day = hour_start(r["hour"]).astimezone(z).date().isoformat()
            acc = out.setdefault((day, *(r[k] for k in group_by)), {})
            for k, v in r.items():
                if k != "hour" and k not in group_by and v:
                    acc[k] = acc.get(k, 0) + v
        return sorted((k, tuple(sorted(v.items()))) for k, v in out.items())

    got = await fs.aggregate(START, END, f, group_by, by_hour=True, day_zone=z)
    want = await sq.aggregate(START, END, f, group_by, by_hour=True, day_zone=z)
    assert want and days(got) == days(want), (f, group_by, tz)


@pytest.fixture
async def stores(tmp_path: Path) -> AsyncIterator[Any]:
    sink = open_sink(_url(_dataset()))
    assert isinstance(sink, FirestoreSink) and sink.warehouse is not None
    async for both in both_stores(sink, tmp_path):
        yield both


async def test_every_question_no_slice_holds_equals_sqlite_from_the_warehouse(stores: Any) -> None:
    fs, sq, _, _ = stores
    assert len(UNSLICED) >= 8
    for f, group_by in UNSLICED:
        asked = fs.warehouse_queries
        assert await _same(fs, sq, f, group_by) == 0, (f, group_by)  # not one rollup document
        assert fs.warehouse_queries == asked + 1
        # A ranking's one or two sums, and no histograms, as the breakdown asks for its top rows.
        await _same(fs, sq, f, group_by, latency=False)
        # (SQLite gives every sum anyway: the two are compared on the ones asked for.)
        sums = ("cost_nano_usd", "requests")
        got = await fs.aggregate(START, END, f, group_by, sums=sums)
        want = await sq.aggregate(START, END, f, group_by)
        assert _norm(got) == _norm([{k: r[k] for k in (*group_by, *sums)} for r in want]), (f, group_by)
    # By hour, and by local day in whole- and half-hour zones: rows per hour, which the caller buckets.
    await _same(fs, sq, Filters(app="bot"), ("user",), by_hour=True)
    for tz in ("Europe/Paris", "Asia/Kolkata"):
        await _same_days(fs, sq, Filters(app="bot"), ("user",), tz)
    # The questions the slices hold never reach the warehouse.
    asked = fs.warehouse_queries
    await _same(fs, sq, Filters(team="search"), ("model", "cache_hit"))
    assert fs.warehouse_queries == asked


async def test_a_breakdown_by_user_of_one_app_equals_sqlites_with_the_top_rows_asked_alone(stores: Any) -> None:
    """The breakdown ranks the users of one app on its sort's sums, then asks for the top rows' whole figures and
    previous period: the warehouse limits those queries to the top users (``IN UNNEST``), and every figure equals
    SQLite's."""
    fs, sq, _, _ = stores
    rng = Range(END - timedelta(days=10), END, zone("UTC"), "UTC")
    for f in (Filters(app="bot"), Filters(key_id="key_2", status="2xx")):
        for sort in SORTS:
            for limit in (3, 40):
                got = await breakdown(fs, rng, "user", f, limit=limit, sort=sort)
                want = await breakdown(sq, rng, "user", f, limit=limit, sort=sort)
                assert got == want, (f, sort, limit)
                assert want["rows"] and want["total"]["latency_p95_ms"] is not None
    # The users of one app from the warehouse; the totals of one app from the slices pinned on it (a few documents).
    n = 2 * len(SORTS) * 2
    assert fs.warehouse_queries >= n and fs.reads <= 100 * n, (fs.warehouse_queries, fs.reads)
    some = sorted({r["user"] for r in await sq.aggregate(START, END, Filters(app="bot"), ("user",))})[:3]
    await _same(fs, sq, Filters(app="bot"), ("user", "cache_hit"), values=some)
    await _same(fs, sq, Filters(model="gemini-2.5-flash"), ("status",), values=[200])


async def test_a_batch_written_again_is_counted_once(stores: Any) -> None:
    """A batch the pipeline retries after its rows were inserted (the child died before it answered, or a part
    of an insert failed) inserts them again: the reader keeps one row per request_id."""
    fs, sq, sink, events = stores
    again = events[: len(events) // 3]
    await sink.write(again)  # Firestore finds them stored and skips them; the warehouse gets them twice
    await sink.warehouse.insert(again[:50])  # and a third time, for some
    rows = list(sink.warehouse.client.query(f"SELECT COUNT(*) AS n FROM `{sink.warehouse.table}`").result())
    assert rows[0]["n"] > len(events)  # the duplicates are really there
    for f, group_by in UNSLICED[:4]:
        await _same(fs, sq, f, group_by)


async def test_an_unreachable_warehouse_fails_the_batch_for_a_retry_and_the_retry_counts_it_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A writer whose warehouse is unreachable fails its batch within the sink's timeout, as a transient error (the
    pipeline retries it, never dead-letters it), naming only the error's type, and before Firestore holds any of it
    (the table is made sure of before a store is marked); the retry stores the events and every row. (A batch
    that fails after its commit is retried too: test_a_batch_written_again_is_counted_once.)"""
    events = _events()[:120]
    SQLiteSink(str(tmp_path / "e.db")).write_sync(events)
    url = _url(_dataset())
    monkeypatch.setenv("BIGQUERY_EMULATOR_HOST", f"127.0.0.1:{free_port()}")  # nothing listens there
    down = open_sink(url)
    assert isinstance(down, FirestoreSink)
    with pytest.raises(WarehouseError) as caught:
        await down.write(events)
    assert is_transient(caught.value) and str(caught.value).startswith("bigquery: ")
    assert not any(e.request_id in str(caught.value) for e in events)
    assert await down.read() == []
    await down.close()
    monkeypatch.undo()  # the warehouse is back: the batch's retry, by a new writer
    up = open_sink(url)
    assert isinstance(up, FirestoreSink) and up.warehouse is not None
    await up.write(events)
    fs, sq = FirestoreReader(up), SQLiteReader(str(tmp_path / "e.db"))
    rng = (datetime(2026, 10, 1, tzinfo=UTC), datetime(2026, 12, 1, tzinfo=UTC))
    got = await fs.aggregate(*rng, Filters(app="bot"), ("user", "cache_hit"))
    assert got and _norm(got) == _norm(await sq.aggregate(*rng, Filters(app="bot"), ("user", "cache_hit")))
    assert fs.warehouse_queries == 1 and fs.reads == 0
    await fs.close()
    await sq.close()


async def test_a_store_written_before_its_warehouse_answers_alike_and_migrates_exactly_once(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    events = _events()
    SQLiteSink(str(tmp_path / "e.db")).write_sync(events)
    sq = SQLiteReader(str(tmp_path / "e.db"))
    url = _url()
    old = open_sink(url)
    assert isinstance(old, FirestoreSink)
    await old.write(events[:-40])  # a store without a warehouse
    await old.close()
    dataset = _dataset()
    new = open_sink(f"{url}?bigquery={dataset}")
    assert isinstance(new, FirestoreSink) and new.warehouse is not None
    await new.write(events[-40:])  # the first writer with one marks the store from the next hour
    meta = (await new.collection_ref("slices").document(SLICES_META).get()).to_dict()
    assert meta["warehouse"] > END.strftime("%Y-%m-%dT%H")  # these events are older than that: not held yet
    fs = FirestoreReader(new)
    for f, group_by in UNSLICED[:5]:
        assert await _same(fs, sq, f, group_by) > 0  # from the hourly rollups
    assert fs.warehouse_queries == 0

    assert await asyncio.to_thread(main, ["admin", "migrate", "--store", f"{url}?bigquery={dataset}"]) == 0
    out = capsys.readouterr().out
    # Every event older than the mark: the 40 the new writer inserted too (read once: by request_id).
    assert f"{len(events):,} earlier events copied to the warehouse" in out
    assert await asyncio.to_thread(main, ["admin", "migrate", "--store", f"{url}?bigquery={dataset}"]) == 0
    assert "the warehouse already holds every hour" in capsys.readouterr().out
    fs = FirestoreReader(new)
    for f, group_by in UNSLICED:
        assert await _same(fs, sq, f, group_by) == 0, (f, group_by)
    # A mark inside the range (as a store marked mid-month has): the hours before it from the rollups, the rest
    # from the warehouse, merged into one answer.
    mid = (START + (END - START) / 2).strftime("%Y-%m-%dT%H")
    await new.collection_ref("slices").document(SLICES_META).set({"warehouse": mid}, merge=True)
    split = FirestoreReader(new)
    for f, group_by in UNSLICED[:5]:
        assert await _same(split, sq, f, group_by) > 0, (f, group_by)
        await _same_days(split, sq, f, group_by, "Asia/Kolkata")
    assert split.warehouse_queries == 10
    await split.close()
    # The rows: every event, the 40 twice; the second run copied nothing.
    rows = list(new.warehouse.client.query(f"SELECT request_id FROM `{new.warehouse.table}`").result())
    assert len(rows) == len(events) + 40 and {r["request_id"] for r in rows} == {e.request_id for e in events}
    await fs.close()
    await sq.close()


def test_a_row_holds_the_rollups_dimensions_and_sums_and_nothing_else() -> None:
    ev = _events()[7]
    row = warehouse_row(ev)
    assert row["request_id"] == ev.request_id and row["hour"] == ev.timestamp[:13]
    assert row["ts"] == ev.timestamp[:13] + ":00:00Z"
    assert row["cost_nano_usd"] == round(ev.cost_usd * 1e9) and row["requests"] == 1
    assert not {"session_id", "properties", "traceparent", "upstream_request_id", "timestamp"} & set(row)


def test_a_bad_dataset_is_refused_with_what_to_write() -> None:
    for bad in ("my dataset", "a.b.c", "-x"):
        with pytest.raises(StoreURLError, match=r"write \?bigquery=DATASET"):
            open_sink(f"firestore://p/c?bigquery={bad}")
    sink = open_sink("firestore://p/c?bigquery=other-project.analytics")
    assert isinstance(sink, FirestoreSink) and sink.warehouse is not None
    assert sink.warehouse.table == "other-project.analytics.c_events"
    assert "warehouse bigquery dataset=analytics" in describe_store("firestore://p/c?bigquery=analytics")


async def test_requests_through_the_proxy_reach_the_warehouse_through_the_writer_process(
    replay: Any, make_proxy: Any
) -> None:
    """The whole path: the proxy's store writer (a child process, which opens the store from its URL) commits
    the events to Firestore and inserts their rows; the warehouse then answers a user breakdown of one app."""
    upstream, upstream_url = replay
    upstream.current = MINI_STREAM
    url = _url(_dataset())
    proxy = await make_proxy(upstream_url, store=url)
    assert proxy.settings.store_writer == "process"
    users = ["ana", "ben", "ana", "cho", "ana", "ben"]
    async with aiohttp.ClientSession() as s:
        for user in users:
            headers = {"X-ModelTrack-App": "bot", "X-ModelTrack-User": user}
            status, _, _ = await call(s, proxy.url + "/v1/chat/completions", mini_body(), headers)
            assert status == 200
        status, _, _ = await call(s, proxy.url + "/v1/chat/completions", mini_body(), {"X-ModelTrack-User": "dee"})
    await proxy.pipeline.flush()
    sink = open_sink(url)
    assert isinstance(sink, FirestoreSink)
    reader = FirestoreReader(sink)
    now = datetime.now(UTC)
    start, end = now - timedelta(days=1), now + timedelta(hours=1)
    start, end = start.replace(minute=0, second=0, microsecond=0), end.replace(minute=0, second=0, microsecond=0)
    rows = await reader.aggregate(start, end, Filters(app="bot"), ("user",))
    assert reader.warehouse_queries == 1 and reader.reads == 0
    assert {r["user"]: r["requests"] for r in rows} == {"ana": 3, "ben": 2, "cho": 1}
    assert all(r["cost_nano_usd"] == round(MINI_COST * 1e9) * r["requests"] for r in rows)
    await reader.close()
