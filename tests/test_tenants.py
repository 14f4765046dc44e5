"""Hosted multi-tenant mode (issue K, ``MODELTRACK_MULTI_TENANT=true``), on SQLite and on the Firestore emulator.

Two orgs that look alike on purpose (the same team name, the same session id, the same user, the same provider
key and the same request) share one proxy and one dashboard. The tests prove, through the real request path and
every spend endpoint, that:

* every request needs an org's mt_ key, and every event carries that key's org;
* org A is never served org B's cached answer, never spends B's budget nor is refused by it;
* a member of A reads exactly what the operator reads with ``org=A`` and nothing of B, on every endpoint,
  even when it asks for B by name; a session id both orgs used shows A only its own steps;
* nobody reads anything without signing in; sign-up makes an org and its first admin, who sees nothing else;
* an older SQLite store gains the org dimension with every sum kept.
"""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from modeltrack.accounts import Actor, Admin, open_accounts
from modeltrack.config import ConfigError, Settings
from modeltrack.controls.spec import ControlsError
from modeltrack.ui import create_app

from .test_spend_controls import MINI_COST, MINI_STREAM, mini_body, write_controls

OP = Actor.operator("test-operator")
UI_TOKEN = "ui-operator-token-for-tenants-test"
METRICS_TOKEN = "metrics-operator-token-for-tenants-test"
SHARED_PROVIDER_KEY = "sk-provider-shared-by-both-orgs"


async def _post(s: aiohttp.ClientSession, url: str, key: str | None, **headers: str) -> tuple[int, Any, Any]:
    h = {"Authorization": f"Bearer {SHARED_PROVIDER_KEY}", **headers}
    if key is not None:
        h["X-ModelTrack-Key"] = key
    async with s.post(url + "/v1/chat/completions", data=mini_body(), headers=h) as r:
        body = await r.read()
        return r.status, r.headers, orjson.loads(body) if r.status != 200 else body


async def _two_orgs(admin: Admin) -> dict[str, dict[str, Any]]:
    """Orgs A and B, each with a team named ``ml``, a key on it, and an org admin's sign-in token."""
    out: dict[str, dict[str, Any]] = {}
    for name in ("A", "B"):
        org, _ = await admin.create(OP, "orgs", {"name": f"Org {name}"})
        team, _ = await admin.create(OP, "teams", {"name": "ml"}, org["id"])
        _, key = await admin.create(OP, "keys", {"name": "ci", "team_id": team["id"], "user": "ana"}, org["id"])
        _, token = await admin.create(OP, "members", {"subject": f"admin@{name}", "role": "org_admin"}, org["id"])
        out[name] = {"org": org["id"], "team": team["id"], "key": key, "token": token}
    return out


async def test_two_orgs_share_a_proxy_and_a_dashboard_and_see_nothing_of_each_other(
    replay: Any, make_proxy: Any, store_url: str, tmp_path: Path, aiohttp_client: Any
) -> None:
    upstream, upstream_url = replay
    upstream.current = MINI_STREAM
    accounts = open_accounts(store_url)
    assert accounts is not None
    admin = Admin(accounts)
    try:
        orgs = await _two_orgs(admin)
        a, b = orgs["A"], orgs["B"]
        limit = 12 * MINI_COST  # A's org budget: a few requests fit (each reserves ~4.4 times its cost)
        await admin.create(OP, "budgets", {"name": "cap", "limit_usd": limit, "period": "daily"}, a["org"])
        controls = write_controls(tmp_path, {"cache": {"ttl_seconds": 60, "rules": [{"match": {"feature": "faq"}}]}})
        proxy = await make_proxy(
            upstream_url,
            store=store_url,
            multi_tenant=True,
            controls_file=controls,
            keys_refresh_seconds=0.2,
            metrics_token=METRICS_TOKEN,
        )
        await asyncio.sleep(0.5)
        common = {"X-ModelTrack-Session-Id": "shared-session", "X-ModelTrack-Team": "spoofed"}
        async with aiohttp.ClientSession() as s:
            # No key, or a key that is no org's: refused before anything is forwarded.
            assert (await _post(s, proxy.url, None))[0] == 401
            assert (await _post(s, proxy.url, "mt_not-a-key"))[0] == 401
            assert not upstream.received
            # The cache: A's answer is kept; B, asking the same thing with the same provider key, is not served it.
            miss = await _post(s, proxy.url, a["key"], **common, **{"X-ModelTrack-Feature": "faq"})
            hit = await _post(s, proxy.url, a["key"], **common, **{"X-ModelTrack-Feature": "faq"})
            other = await _post(s, proxy.url, b["key"], **common, **{"X-ModelTrack-Feature": "faq"})
            assert [r[1]["X-ModelTrack-Cache"] for r in (miss, hit, other)] == ["MISS", "HIT", "MISS"]
            sent = len(upstream.received)
            assert sent == 2  # A's miss and B's miss reached the upstream; A's hit did not
            # A's budget: A is refused once it is spent; B, in the same team name, is not in its scope.
            statuses = []
            for _ in range(25):
                status, _, body = await _post(s, proxy.url, a["key"], **common)
                statuses.append(status)
                if status == 429:
                    break
            assert statuses[-1] == 429 and body["error"]["type"] == "budget_exceeded", statuses
            for _ in range(4):
                assert (await _post(s, proxy.url, b["key"], **common))[0] == 200
        events = await proxy.events()
        by_org = {o["org"]: [e for e in events if e.org == o["org"]] for o in orgs.values()}
        assert len(events) == sum(len(v) for v in by_org.values())  # every event carries its key's org
        assert all(e.team == "ml" and e.user == "ana" for e in events)  # the key's attribution, not the header's
        assert len(by_org[b["org"]]) == 5 and all(e.status == 200 for e in by_org[b["org"]])
        spent_a = sum(e.cost_usd or 0 for e in by_org[a["org"]])
        assert 0 < spent_a <= limit + 1e-12
        await _metrics_are_the_operators_and_split_by_org(proxy.url, orgs, events)
        await _dashboard_is_scoped(aiohttp_client, store_url, orgs, events)
    finally:
        await accounts.close()


async def _metrics_are_the_operators_and_split_by_org(
    url: str, orgs: dict[str, dict[str, Any]], events: list[Any]
) -> None:
    """/metrics on the proxy's own port, which every tenant reaches: nothing without the operator's token; with
    it, the two orgs' teams of one name are two series, each counting its own org's requests."""
    async with aiohttp.ClientSession() as s:
        for headers in ({}, {"Authorization": f"Bearer {orgs['A']['key']}"}, {"Authorization": "Bearer wrong"}):
            async with s.get(url + "/metrics", headers=headers) as r:
                body = await r.read()
                assert r.status == 401 and b"modeltrack_requests_total" not in body
        async with s.get(url + "/metrics", headers={"Authorization": f"Bearer {METRICS_TOKEN}"}) as r:
            assert r.status == 200
            text = (await r.read()).decode()
    counted: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("modeltrack_requests_total{"):
            labels = dict(pair.split("=", 1) for pair in line[line.index("{") + 1 : line.index("}")].split(","))
            assert labels["team"] == '"ml"', line
            org = labels["org"].strip('"')
            counted[org] = counted.get(org, 0) + float(line.rsplit(" ", 1)[1])
    for me in orgs.values():
        assert counted.pop(me["org"]) == len([e for e in events if e.org == me["org"]]) > 0
    assert not counted, counted  # no request without an org, nothing folded together


async def _dashboard_is_scoped(
    aiohttp_client: Any, store_url: str, orgs: dict[str, dict[str, Any]], events: list[Any]
) -> None:
    client = await aiohttp_client(
        create_app(Settings.load(env={}, overrides={"store": store_url, "multi_tenant": True, "ui_tokens": UI_TOKEN}))
    )
    operator = {"Authorization": f"Bearer {UI_TOKEN}"}

    async def get(path: str, headers: dict[str, str] | None, **params: str) -> Any:
        r = await client.get(path, params=params, headers=headers or {})
        assert r.status == 200, (path, params, await r.text())
        return await r.read() if path.endswith("export") else await r.json()

    questions = [
        ("/api/v1/overview", {}),
        ("/api/v1/series", {"granularity": "day", "split": "model"}),
        ("/api/v1/series", {"granularity": "hour", "days": "1"}),
        *[("/api/v1/breakdown", {"dimension": d}) for d in ("team", "user", "model", "status", "org")],
        ("/api/v1/values", {"dimension": "team"}),
        ("/api/v1/values", {"dimension": "org"}),
        ("/api/v1/sessions", {}),
        ("/api/v1/sessions", {"model": "gpt-4o-mini-2024-07-18"}),  # summed from events, not the sessions table
        ("/api/v1/forecast", {}),
        ("/api/v1/whatif", {"to_model": "gpt-4.1-mini", "days": "2"}),
        ("/api/v1/export", {"kind": "events", "format": "jsonl", "days": "2"}),
        ("/api/v1/export", {"kind": "breakdown", "dimension": "team", "format": "csv", "days": "2"}),
        ("/api/v1/export", {"kind": "series", "format": "jsonl", "days": "2"}),
        ("/api/v1/export", {"kind": "sessions", "format": "csv", "days": "2"}),
    ]
    for name, me in orgs.items():
        member = {"Authorization": f"Bearer {me['token']}"}
        other = next(o for n, o in orgs.items() if n != name)
        for path, params in questions:
            scoped = await get(path, member, **params)
            reference = await get(path, operator, **params, org=me["org"])  # the operator, filtered by hand
            if isinstance(scoped, dict):
                scoped.pop("now", None), reference.pop("now", None)
            assert scoped == reference, (name, path, params)
            asked_for_other = await get(path, member, **params, org=other["org"])
            text = asked_for_other if isinstance(asked_for_other, bytes) else orjson.dumps(asked_for_other)
            assert other["org"].encode() not in text, (name, path, text[:300])
        mine = [e for e in events if e.org == me["org"]]
        exported = (await get("/api/v1/export", member, kind="events", format="jsonl", days="2")).splitlines()
        assert sorted(orjson.loads(line)["request_id"] for line in exported) == sorted(e.request_id for e in mine)
        overview = await get("/api/v1/overview", member)
        assert orjson.dumps(overview).count(other["org"].encode()) == 0
        # The session id both orgs used: each sees its own steps only.
        steps = await get("/api/v1/sessions/shared-session", member)
        assert len(steps["steps"]) == len([e for e in mine if e.session_id == "shared-session"]) > 0
    everything = await get("/api/v1/export", operator, kind="events", format="jsonl", days="2")
    assert len(everything.splitlines()) == len(events)  # the operator's dashboard token reads every org
    for path in ("/api/v1/overview", "/api/v1/export", "/api/v1/sessions"):
        r = await client.get(path)
        assert r.status == 401, path  # multi-tenant: nobody reads without signing in, even on loopback
    r = await client.get("/api/v1/admin/orgs")
    assert r.status == 401  # and loopback is no operator here


async def test_sign_up_makes_an_org_and_its_first_admin(store_url: str, aiohttp_client: Any) -> None:
    accounts = open_accounts(store_url)
    assert accounts is not None
    admin = Admin(accounts)
    existing, _ = await admin.create(OP, "orgs", {"name": "Existing"})
    await accounts.close()
    settings = {"store": store_url, "multi_tenant": True, "signup": "open"}
    client = await aiohttp_client(create_app(Settings.load(env={}, overrides=settings)))
    origin = {"Origin": str(client.make_url("")).rstrip("/")}
    r = await client.post("/api/v1/admin/signup", json={"org": "New Co", "subject": "founder@new.example"})
    assert r.status == 403  # not same-origin
    r = await client.post("/api/v1/admin/signup", json={"org": "", "subject": "x"}, headers=origin)
    assert r.status == 400 and "name" in (await r.json())["error"]["message"]
    r = await client.post(
        "/api/v1/admin/signup", json={"org": "New Co", "subject": "founder@new.example"}, headers=origin
    )
    assert r.status == 201, await r.text()
    made = await r.json()
    token = made["token"]
    assert token.startswith("mtm_") and made["member"]["role"] == "org_admin"
    assert made["member"]["org_id"] == made["org"]["id"] != existing["id"]
    me = {"Authorization": f"Bearer {token}"}
    r = await client.get("/api/v1/admin/me", headers=me)
    assert (await r.json())["org_id"] == made["org"]["id"]
    r = await client.get("/api/v1/admin/orgs", headers=me)
    assert [o["id"] for o in (await r.json())["orgs"]] == [made["org"]["id"]]  # not the other org
    r = await client.get("/api/v1/admin/audit", headers=me)
    entries = (await r.json())["entries"]
    assert {e["actor"] for e in entries} == {"signup:founder@new.example"}
    assert token not in orjson.dumps(entries).decode()
    for i in range(6):  # a handful an hour from one address
        r = await client.post("/api/v1/admin/signup", json={"org": f"Co {i}", "subject": f"s{i}@x"}, headers=origin)
    assert r.status == 429 and r.headers.get("Content-Type", "").startswith("application/json")


async def test_sign_up_is_off_unless_opened(tmp_path: Path, aiohttp_client: Any) -> None:
    store = f"sqlite:///{tmp_path}/events.db"
    client = await aiohttp_client(create_app(Settings.load(env={}, overrides={"store": store, "multi_tenant": True})))
    origin = {"Origin": str(client.make_url("")).rstrip("/")}
    r = await client.post("/api/v1/admin/signup", json={"org": "X", "subject": "y@z"}, headers=origin)
    assert r.status == 404 and "sign-up is off" in (await r.json())["error"]["message"]


@pytest.mark.parametrize(
    ("overrides", "says"),
    [
        ({"multi_tenant": True, "store": "jsonl:///tmp/x.jsonl"}, "MODELTRACK_STORE=sqlite"),
        ({"multi_tenant": True, "client_tokens": "abc"}, "unset MODELTRACK_CLIENT_TOKENS"),
        ({"signup": "open"}, "MODELTRACK_SIGNUP=open needs MODELTRACK_MULTI_TENANT=true"),
        ({"signup": "maybe", "multi_tenant": True}, "write off or open"),
    ],
)
def test_a_tenancy_setting_that_cannot_hold_is_refused_at_start_up(overrides: dict[str, Any], says: str) -> None:
    with pytest.raises(ConfigError, match=says.replace("(", r"\(")):
        Settings.load(env={}, overrides=overrides)


async def test_a_controls_file_budget_without_an_org_is_refused_in_multi_tenant_mode(
    make_proxy: Any, tmp_path: Path
) -> None:
    path = write_controls(tmp_path, {"budgets": [{"name": "all", "period": "daily", "limit_usd": 5}]})
    with pytest.raises(ControlsError, match=r"add org: org_\.\.\. to its scope"):
        await make_proxy("http://127.0.0.1:9", multi_tenant=True, controls_file=path, metrics_token=METRICS_TOKEN)
    scoped = write_controls(
        tmp_path, {"budgets": [{"name": "a", "period": "daily", "limit_usd": 5, "match": {"org": "org_a"}}]}, "ok.json"
    )
    proxy = await make_proxy("http://127.0.0.1:9", multi_tenant=True, controls_file=scoped, metrics_token=METRICS_TOKEN)
    assert proxy.service.controls is not None and len(proxy.service.controls.spec.budgets) == 1


async def test_a_multi_tenant_proxy_without_a_metrics_token_is_refused_at_start_up(make_proxy: Any) -> None:
    """/metrics carries every org's spend: a proxy every tenant reaches must not serve it to anyone."""
    with pytest.raises(ConfigError, match="set MODELTRACK_METRICS_TOKEN to a long random secret"):
        await make_proxy("http://127.0.0.1:9", multi_tenant=True)


def test_an_older_store_gains_the_org_dimension_with_every_sum_kept(tmp_path: Path) -> None:
    """A database the previous version wrote (rollups and sessions without an org, events without the column)
    is migrated when the writer opens it: the derived tables are rebuilt from the events, sums unchanged."""
    from dataclasses import replace

    from modeltrack.sinks.sqlite import SQLiteSink

    from .seed import history

    path = tmp_path / "events.db"
    events = [replace(e, session_id=f"s{i % 7}") for i, e in enumerate(history(3, 40, seed=5))]
    SQLiteSink(str(path)).write_sync(events)
    from modeltrack.rollups import TTFT_BUCKETS

    # The TTFT histogram as a count and a checksum of where each count sits.
    ttft = f"SUM({' + '.join(TTFT_BUCKETS)}), SUM({' + '.join(f'{i} * {b}' for i, b in enumerate(TTFT_BUCKETS))})"
    sums = f"SUM(requests), SUM(errors), SUM(cost_nano_usd), SUM(input_tokens), SUM(lt_03), {ttft}"
    queries = {
        "hourly": f"SELECT hour, team, user, model, status, {sums} FROM rollup_hourly GROUP BY 1, 2, 3, 4, 5",
        "day_attr": f"SELECT day, team, model, {sums} FROM rollup_day_attr GROUP BY 1, 2, 3",
        "day_user": f"SELECT day, user, {sums} FROM rollup_day_user GROUP BY 1, 2",
        "sessions": "SELECT session_id, requests, cost_nano_usd, input_tokens FROM sessions",
    }
    with sqlite3.connect(path) as conn:
        before = {k: sorted(conn.execute(q).fetchall()) for k, q in queries.items()}
        assert all(before.values())
        assert sum(r[-2] for r in before["hourly"]) == sum(e.ttft_ms is not None for e in events) > 0
        # The previous version's shapes: no org anywhere.
        conn.execute("DROP INDEX IF EXISTS events_org")
        conn.execute("ALTER TABLE events DROP COLUMN org")
        conn.execute("ALTER TABLE events DROP COLUMN ft_bucket")  # (the TTFT histogram came later still)
        for table in ("rollup_hourly", "rollup_day_attr", "rollup_day_user", "sessions"):
            conn.execute(f"DROP TABLE {table}")
        conn.execute(
            "CREATE TABLE rollup_hourly (hour TEXT NOT NULL, team TEXT NOT NULL, app TEXT NOT NULL, "
            "feature TEXT NOT NULL, user TEXT NOT NULL, provider TEXT NOT NULL, model TEXT NOT NULL, "
            "status INTEGER NOT NULL, cache_hit INTEGER NOT NULL, requests INTEGER NOT NULL DEFAULT 0, "
            "PRIMARY KEY (hour, team, app, feature, user, provider, model, status, cache_hit)) WITHOUT ROWID"
        )
        conn.execute("CREATE TABLE sessions (session_id TEXT PRIMARY KEY, first_ts TEXT, last_ts TEXT)")
    SQLiteSink(str(path)).write_sync([])  # opened by this version
    with sqlite3.connect(path) as conn:
        assert {k: sorted(conn.execute(q).fetchall()) for k, q in queries.items()} == before
        assert "org" in {r[1] for r in conn.execute("PRAGMA table_info(rollup_hourly)")}
    SQLiteSink(str(path)).write_sync([])  # and again: nothing changes (idempotent)
    with sqlite3.connect(path) as conn:
        assert {k: sorted(conn.execute(q).fetchall()) for k, q in queries.items()} == before


def test_the_readme_documents_multi_tenant_mode() -> None:
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    for needed in ("MODELTRACK_MULTI_TENANT", "MODELTRACK_SIGNUP", "/api/v1/admin/signup"):
        assert needed in readme, needed
