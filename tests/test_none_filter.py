"""Issue M, item 11: the "(none)" filter (``team=``, ``user=``) on both stores. Events store a missing
attribution as null; the filter must find them in export, what-if and the Overview, not say "No events yet"."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

from modeltrack.config import Settings
from modeltrack.query import EventFilter, Filters, open_reader
from modeltrack.sinks import open_sink
from modeltrack.ui import create_app

from .test_pipeline import make_event


async def test_the_none_filter_finds_unattributed_events(store_url: str, aiohttp_client: Any) -> None:
    now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.000Z")
    events = [replace(make_event(i), timestamp=now, team=None if i % 3 else "search", user=None) for i in range(9)]
    sink = open_sink(store_url)
    await sink.open()
    await sink.write(events)
    await sink.close()
    unattributed = [e for e in events if e.team is None]
    reader = open_reader(store_url)
    try:
        found = await reader.events(EventFilter(filters=Filters(team="")))
    finally:
        await reader.close()
    assert sorted(e.request_id for e in found) == sorted(e.request_id for e in unattributed)
    client = await aiohttp_client(create_app(Settings.load(env={}, overrides={"store": store_url})))
    r = await client.get("/api/v1/export", params={"kind": "events", "format": "jsonl", "team": "", "days": "2"})
    assert r.status == 200 and len((await r.text()).splitlines()) == len(unattributed)
    r = await client.get("/api/v1/overview", params={"team": ""})
    overview = await r.json()
    assert r.status == 200 and overview["empty"] is False, overview
    r = await client.get("/api/v1/whatif", params={"team": "", "to_model": "gpt-4.1-mini", "days": "2"})
    body = await r.json()
    assert r.status == 200 and body["requests"] == len(unattributed), body
