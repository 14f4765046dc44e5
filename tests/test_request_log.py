"""The request log and the Errors page's API (issue M), on SQLite and on the Firestore emulator: newest first,
keyset pages that join up to exactly the matching events, a filter on every event field (each compared with
the same filter applied here to the stored events), the full detail of any row, scoping for members, and
errors by status and type split by whose doing they were."""

from __future__ import annotations

import random
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from modeltrack.config import Settings
from modeltrack.events import CostEvent
from modeltrack.sinks import open_sink
from modeltrack.ui import create_app

from .seed import history

ERRORS = ("budget_exceeded", "upstream_reset", "client_disconnected", "shutdown", "truncated", None)


def _events() -> list[CostEvent]:
    rnd = random.Random(5)
    out = []
    for i, e in enumerate(history(2, 60, seed=21)):
        error = rnd.choice(ERRORS) if i % 4 == 0 else None
        status = {"budget_exceeded": 429, "upstream_reset": 502, "client_disconnected": 200}.get(error or "", e.status)
        out.append(
            replace(
                e,
                error=error,
                status=status,
                routed=i % 9 == 0,
                prompt_id=("greet", "summarise", None)[i % 3],
                properties={"env": ("prod", "dev")[i % 2]} if i % 5 else None,
                cost_usd=None if i % 11 == 0 and status == 200 else e.cost_usd,
            )
        )
    return out


@pytest.fixture
async def stored(store_url: str) -> tuple[str, list[CostEvent]]:
    events = _events()
    sink = open_sink(store_url)
    await sink.open()
    await sink.write(events)
    await sink.close()
    return store_url, events


def _newest_first(events: list[CostEvent]) -> list[str]:
    return [e.request_id for e in sorted(events, key=lambda e: (e.timestamp, e.request_id), reverse=True)]


async def test_keyset_pages_join_up_to_every_matching_event_newest_first(
    stored: tuple[str, list[CostEvent]], aiohttp_client: Any
) -> None:
    store, events = stored
    client = await aiohttp_client(create_app(Settings.load(env={}, overrides={"store": store})))
    since = (datetime.now(UTC) - timedelta(days=3)).strftime("%Y-%m-%d")
    cases: list[tuple[dict[str, str], Any]] = [
        ({}, lambda e: True),
        ({"status": "4xx"}, lambda e: 400 <= e.status < 500),
        ({"error": "upstream_reset"}, lambda e: e.error == "upstream_reset"),
        ({"provider": "anthropic", "team": "search"}, lambda e: e.provider == "anthropic" and e.team == "search"),
        ({"prompt_id": "greet"}, lambda e: e.prompt_id == "greet"),
        ({"property.env": "prod"}, lambda e: (e.properties or {}).get("env") == "prod"),
        ({"routed": "true"}, lambda e: e.routed),
        ({"unpriced": "true"}, lambda e: e.cost_usd is None and 200 <= e.status < 400),
        ({"session_id": "run-3"}, lambda e: e.session_id == "run-3"),
        ({"team": ""}, lambda e: e.team is None),
        ({"routed": "false", "model": "gpt-4o-2024-08-06"}, lambda e: not e.routed and e.model == "gpt-4o-2024-08-06"),
    ]
    for params, keep in cases:
        want = _newest_first([e for e in events if keep(e)])
        got: list[str] = []
        cursor = None
        for _ in range(100):
            q = {"since": since, "limit": "7", **params, **({"before": cursor} if cursor else {})}
            r = await client.get("/api/v1/requests", params=q)
            assert r.status == 200, (params, await r.text())
            page = await r.json()
            got += [row["request_id"] for row in page["requests"]]
            cursor = page["next"]
            if cursor is None:
                break
        assert got == want, params
    r = await client.get("/api/v1/requests", params={"routed": "maybe"})
    assert r.status == 400 and "routed" in (await r.json())["error"]["message"]
    r = await client.get("/api/v1/requests", params={"before": "nonsense"})
    assert r.status == 400


async def test_every_row_opens_its_full_event(stored: tuple[str, list[CostEvent]], aiohttp_client: Any) -> None:
    store, events = stored
    client = await aiohttp_client(create_app(Settings.load(env={}, overrides={"store": store})))
    for ev in events[::17]:
        r = await client.get(f"/api/v1/requests/{ev.request_id}")
        assert r.status == 200
        got = await r.json()
        assert got.pop("unpriced") == (ev.cost_usd is None and 200 <= ev.status < 400)
        assert got == ev.to_dict()
    r = await client.get("/api/v1/requests/req_000000000000000000000000")
    assert r.status == 404 and (await r.json())["error"]["type"] == "not_found"


async def test_errors_by_status_and_type_say_whose_doing(
    stored: tuple[str, list[CostEvent]], aiohttp_client: Any
) -> None:
    store, events = stored
    client = await aiohttp_client(create_app(Settings.load(env={}, overrides={"store": store})))
    since = (datetime.now(UTC) - timedelta(days=3)).strftime("%Y-%m-%d")
    data = await (await client.get("/api/v1/errors", params={"since": since})).json()
    failed = [e for e in events if e.status >= 400 or e.status == 0 or e.error is not None]
    assert data["errors"] == len(failed) and data["requests"] == len(events)
    classes = {c["class"]: c["requests"] for c in data["classes"]}
    assert classes["budget"] == sum(1 for e in failed if e.error == "budget_exceeded")
    assert classes["client_disconnected"] == sum(1 for e in failed if e.error == "client_disconnected")
    assert classes["shutdown"] == sum(1 for e in failed if e.error == "shutdown")
    assert classes["upstream"] == sum(1 for e in failed if e.error == "upstream_reset" or e.status >= 500)
    rows = {(r["status"], r["error"]): r["requests"] for r in data["rows"]}
    for (status, error), n in rows.items():
        assert n == sum(1 for e in failed if e.status == status and e.error == error)


async def test_a_team_member_cannot_open_another_teams_request(tmp_path: Any, aiohttp_client: Any) -> None:
    from modeltrack.accounts import Actor, Admin, open_accounts

    store = f"sqlite:///{tmp_path}/events.db"
    events = _events()
    sink = open_sink(store)
    await sink.open()
    await sink.write(events)
    await sink.close()
    accounts = open_accounts(store)
    assert accounts is not None
    admin = Admin(accounts)
    team, _ = await admin.create(Actor.operator(), "teams", {"name": "search"})
    _, token = await admin.create(
        Actor.operator(), "members", {"subject": "v", "role": "viewer", "team_id": team["id"]}
    )
    await accounts.close()
    client = await aiohttp_client(create_app(Settings.load(env={}, overrides={"store": store})))
    member = {"Authorization": f"Bearer {token}"}
    ours = next(e for e in events if e.team == "search")
    theirs = next(e for e in events if e.team == "ads")
    assert (await client.get(f"/api/v1/requests/{ours.request_id}", headers=member)).status == 200
    assert (await client.get(f"/api/v1/requests/{theirs.request_id}", headers=member)).status == 404
    since = (datetime.now(UTC) - timedelta(days=3)).strftime("%Y-%m-%d")
    page = await (await client.get("/api/v1/requests", params={"since": since, "limit": "500"}, headers=member)).json()
    assert page["requests"] and {r["team"] for r in page["requests"]} == {"search"}


async def test_a_custom_property_is_a_dimension(stored: tuple[str, list[CostEvent]], aiohttp_client: Any) -> None:
    """Issue M: each property can split spend (``dimension=property.NAME``), read from the events; sums equal
    the stored events'."""
    store, events = stored
    client = await aiohttp_client(create_app(Settings.load(env={}, overrides={"store": store})))
    since = (datetime.now(UTC) - timedelta(days=3)).strftime("%Y-%m-%d")
    r = await client.get("/api/v1/breakdown", params={"dimension": "property.env", "since": since, "limit": "5"})
    assert r.status == 200, await r.text()
    data = await r.json()
    assert data["complete"] and data["scanned"] == len(events)
    got = {row["property.env"]: (row["requests"], row["cost_usd"]) for row in data["rows"]}
    for value in ("prod", "dev", None):
        mine = [e for e in events if (e.properties or {}).get("env") == value]
        assert got[value][0] == len(mine)
        assert got[value][1] == pytest.approx(sum(e.cost_usd or 0 for e in mine), abs=1e-9)
    assert data["total"]["requests"] == len(events)
    r = await client.get("/api/v1/breakdown", params={"dimension": "property."})
    assert r.status == 400
