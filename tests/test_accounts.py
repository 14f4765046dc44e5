"""Orgs, teams, ModelTrack keys, members, budgets and limits managed at runtime (issue K, part 1): the model and
its roles on SQLite and the Firestore emulator, the admin API (pytest-aiohttp), the CLI, export/apply, and keys
in the request path of real `modeltrack serve` processes: attribution the headers cannot override, allowed
models, expiry, and revocation everywhere within the stated delay. Canary keys prove no secret is kept."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import sqlite3
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
import yaml

from modeltrack.accounts import AccountError, Actor, Admin, open_accounts
from modeltrack.accounts.gitops import apply, export
from modeltrack.config import Settings
from modeltrack.query import EventFilter, open_reader
from modeltrack.ui import create_app

from .proc import ProxyProcess
from .test_spend_controls import MINI_STREAM, mini_body

OP = Actor.operator("test-operator")


@pytest.fixture
async def admin(store_url: str) -> Any:
    store = open_accounts(store_url)
    assert store is not None
    yield Admin(store)
    await store.close()


def _raw_store_text(store_url: str) -> bytes:
    """Everything the store holds about accounts, as bytes (for the canary checks)."""
    if store_url.startswith("sqlite:"):
        path = store_url.removeprefix("sqlite:///")
        with sqlite3.connect(path) as db:
            rows = db.execute("SELECT doc FROM accounts").fetchall()
            rows += db.execute("SELECT coalesce(before, '') || coalesce(after, '') FROM accounts_audit").fetchall()
        return b"\n".join(r[0].encode() for r in rows)
    return b""


async def _firestore_text(admin: Admin) -> bytes:
    out = []
    for kind in ("orgs", "teams", "keys", "members"):
        out.append(orjson.dumps(await admin.store.records(kind)))
    out.append(orjson.dumps(await admin.store.audit(None, 1000)))
    return b"\n".join(out)


async def test_only_digests_are_stored(admin: Admin, store_url: str) -> None:
    team, _ = await admin.create(OP, "teams", {"name": "search"})
    key, secret = await admin.create(OP, "keys", {"name": "ci", "team_id": team["id"], "app": "web"})
    member, token = await admin.create(OP, "members", {"subject": "ana@example.com", "role": "viewer"})
    assert secret is not None and secret.startswith("mt_") and len(secret) > 40
    assert token is not None and token.startswith("mtm_")
    assert "digest" not in key and "token_digest" not in member  # never shown back either
    assert key["prefix"] == secret[:7] + "…"
    stored = await admin.store.get("keys", key["id"])
    assert stored is not None and stored["digest"] == hashlib.sha256(secret.encode()).hexdigest()
    everything = _raw_store_text(store_url) if store_url.startswith("sqlite:") else await _firestore_text(admin)
    assert secret.encode() not in everything and token.encode() not in everything
    assert secret[3:20].encode() not in everything  # not even a part beyond the display prefix


async def test_the_key_lookup_digest_is_sha256(admin: Admin) -> None:
    """The request path digests a presented key with CPython's built-in SHA-256, not OpenSSL's (modeltrack.accounts
    .keyring.sha256): the same digest as the stored one, so an issued key is found and a near miss is not; the
    grant it remembers for a presented key is forgotten at the load that revokes it."""
    import importlib.util

    from modeltrack.accounts.keyring import KeyRing, sha256

    if any(importlib.util.find_spec(m) for m in ("_sha2", "_sha256")):  # CPython's own: not OpenSSL's
        assert sha256 is not hashlib.sha256 and "openssl" not in repr(sha256)
    for data in (b"", b"mt_", b"x" * 55, b"y" * 64, os.urandom(1 << 20)):
        assert sha256(data).digest() == hashlib.sha256(data).digest()
    team, _ = await admin.create(OP, "teams", {"name": "lookup"})
    key, secret = await admin.create(OP, "keys", {"name": "ci", "team_id": team["id"]})
    assert secret is not None
    ring = KeyRing(admin.store)
    assert await ring.refresh()
    grant = ring.lookup(secret.encode())
    assert grant is not None and grant.key_id == key["id"]
    assert ring.lookup(secret[:-1].encode() + (b"A" if secret[-1] != "A" else b"B")) is None
    # A found grant is remembered until the next load (KeyRing.lookup): revoking it must still end it there.
    assert ring.lookup(secret.encode()) is grant
    await admin.delete(OP, "keys", key["id"])
    assert await ring.refresh()
    after = ring.lookup(secret.encode())
    assert after is not None and after.revoked and after.refusal(None, 0.0) is not None


async def test_every_mistake_is_a_json_error_that_says_what(admin: Admin) -> None:
    cases = [
        ("teams", {}, "name: required"),
        ("teams", {"name": "x", "colour": "red"}, "unknown field 'colour'"),
        ("keys", {"name": "k", "rpm": -1}, "rpm: must be a whole number from 1"),
        ("keys", {"name": "k", "expires": "tomorrow"}, "expires: must be an RFC 3339 instant"),
        ("keys", {"name": "k", "digest": "ab"}, "digest: written by the server"),
        ("keys", {"name": "k", "blocked": "yes"}, "blocked: must be true or false"),
        ("keys", {"name": "k", "team_id": "team_nope"}, "team_id: no team team_nope"),
        ("members", {"subject": "a", "role": "boss"}, "role: must be one of org_admin, team_admin, viewer"),
        ("members", {"subject": "a", "role": "team_admin"}, "team_id: required for a team_admin"),
        ("budgets", {"name": "b", "limit_usd": 5, "period": "yearly"}, "period: must be one of daily"),
        ("gizmos", {"name": "x"}, "unknown kind 'gizmos'"),
    ]
    for kind, body, message in cases:
        with pytest.raises(AccountError) as err:
            await admin.create(OP, kind, body)
        assert message in str(err.value), (kind, body, str(err.value))
    await admin.create(OP, "teams", {"name": "dup"})
    with pytest.raises(AccountError, match="a team named 'dup' exists") as err:
        await admin.create(OP, "teams", {"name": "dup"})
    assert err.value.status == 409


async def test_roles_and_orgs_are_enforced(admin: Admin) -> None:
    org_a, _ = await admin.create(OP, "orgs", {"name": "A"})
    org_b, _ = await admin.create(OP, "orgs", {"name": "B"})
    a_search, _ = await admin.create(OP, "teams", {"name": "search"}, org_a["id"])
    a_ads, _ = await admin.create(OP, "teams", {"name": "ads"}, org_a["id"])
    b_team, _ = await admin.create(OP, "teams", {"name": "search"}, org_b["id"])  # same name, other org: fine
    b_key, _ = await admin.create(OP, "keys", {"name": "b", "team_id": b_team["id"]}, org_b["id"])
    a_admin = Actor("alice", "org_admin", org_a["id"])
    lead = Actor("lee", "team_admin", org_a["id"], a_search["id"])
    viewer = Actor("vic", "viewer", org_a["id"], a_ads["id"])
    # Org A never sees org B: not in lists, "not found" by id, cannot refer to B's team.
    assert [k["id"] for k in await admin.records(a_admin, "keys")] == []
    with pytest.raises(AccountError) as err:
        await admin.get(a_admin, "keys", b_key["id"])
    assert err.value.status == 404
    with pytest.raises(AccountError, match="no team"):
        await admin.create(a_admin, "keys", {"name": "x", "team_id": b_team["id"]})
    with pytest.raises(AccountError) as err:
        await admin.delete(a_admin, "keys", b_key["id"])
    assert err.value.status == 404
    # A team admin manages its own team's keys and members, nothing else.
    own, _ = await admin.create(lead, "keys", {"name": "mine", "team_id": a_search["id"]})
    with pytest.raises(AccountError) as err:
        await admin.create(lead, "keys", {"name": "theirs", "team_id": a_ads["id"]})
    assert err.value.status == 403
    with pytest.raises(AccountError) as err:
        await admin.create(lead, "teams", {"name": "new"})
    assert err.value.status == 403
    with pytest.raises(AccountError, match="cannot make an org admin"):
        await admin.create(lead, "members", {"subject": "x", "role": "org_admin", "team_id": a_search["id"]})
    with pytest.raises(AccountError) as err:
        await admin.update(lead, "keys", own["id"], {"team_id": a_ads["id"]})  # moving it out is a write there
    assert err.value.status == 403
    # A team-scoped viewer reads its team only, and writes nothing.
    assert [t["id"] for t in await admin.records(viewer, "teams")] == [a_ads["id"]]
    assert await admin.records(viewer, "keys") == []
    with pytest.raises(AccountError) as err:
        await admin.create(viewer, "keys", {"name": "v", "team_id": a_ads["id"]})
    assert err.value.status == 403
    with pytest.raises(AccountError) as err:
        await admin.audit_log(viewer)
    assert err.value.status == 403


async def test_every_change_is_audited_without_secrets(admin: Admin) -> None:
    team, _ = await admin.create(OP, "teams", {"name": "search"})
    key, secret = await admin.create(OP, "keys", {"name": "ci", "team_id": team["id"]})
    await admin.update(OP, "keys", key["id"], {"rpm": 60})
    _, new_secret = await admin.rotate(OP, key["id"])
    await admin.delete(OP, "keys", key["id"])
    log = await admin.audit_log(OP)
    mine = [e for e in log if e["id"] == key["id"]]
    assert [e["action"] for e in mine] == ["revoke", "rotate", "update", "create"]  # newest first
    update = mine[2]
    assert update["actor"] == "test-operator" and update["before"]["rpm"] is None and update["after"]["rpm"] == 60
    assert mine[0]["after"]["revoked"] and not mine[0]["before"]["revoked"]
    text = orjson.dumps(log)
    assert secret.encode() not in text and new_secret.encode() not in text and b"digest" not in text
    assert all(e["ts"].endswith("Z") for e in log)


async def test_export_and_apply_round_trip(admin: Admin, store_url: str, tmp_path: Path) -> None:
    team, _ = await admin.create(OP, "teams", {"name": "search", "allowed_models": ["gpt-4o*"]})
    key, _ = await admin.create(OP, "keys", {"name": "ci", "team_id": team["id"], "rpm": 10})
    await admin.create(OP, "budgets", {"name": "b", "team_id": team["id"], "limit_usd": 25, "period": "monthly"})
    await admin.delete(OP, "keys", (await admin.create(OP, "keys", {"name": "old"}))[0]["id"])
    first = await export(admin, OP)
    text = yaml.safe_dump(first)
    assert "secret" not in text
    other_url = f"sqlite:///{tmp_path}/other.db"
    other = open_accounts(other_url)
    assert other is not None
    try:
        target = Admin(other)
        counts = await apply(target, OP, yaml.safe_load(text))
        assert counts["created"] == sum(len(first[k]) for k in first if k != "version") and counts["updated"] == 0
        assert await export(target, OP) == first  # lossless: ids, digests, times, revocations
        again = await apply(target, OP, yaml.safe_load(text))
        assert again["created"] == again["updated"] == 0
        # The file wins when applied: a runtime change is undone; prune revokes a key the file does not have.
        await target.update(OP, "keys", key["id"], {"rpm": 99})
        extra, _ = await target.create(OP, "keys", {"name": "made-at-runtime"})
        counts = await apply(target, OP, yaml.safe_load(text), prune=True)
        assert counts["updated"] == 1 and counts["deleted"] == 1
        assert (await target.get(OP, "keys", key["id"]))["rpm"] == 10
        assert (await target.get(OP, "keys", extra["id"]))["revoked"]
        assert [e["action"] for e in (await target.audit_log(OP))[:2]] == ["apply", "apply"]
    finally:
        await other.close()


# --- the admin API ---------------------------------------------------------------------------------------------


async def test_admin_api(aiohttp_client: Any, tmp_path: Path) -> None:
    admin_token = "mt-admin-" + uuid.uuid4().hex
    settings = Settings.load(
        env={}, overrides={"store": f"sqlite:///{tmp_path}/events.db", "admin_tokens": admin_token}
    )
    client = await aiohttp_client(create_app(settings))
    op = {"Authorization": f"Bearer {admin_token}"}
    r = await client.post("/api/v1/admin/teams", json={"name": "search"})
    assert r.status == 401 and (await r.json())["error"]["type"] == "unauthorized"
    r = await client.post("/api/v1/admin/teams", json={"name": "search"}, headers=op)
    assert r.status == 201
    team = await r.json()
    r = await client.post("/api/v1/admin/keys", json={"name": "ci", "team_id": team["id"], "rpm": "x"}, headers=op)
    assert r.status == 400 and "rpm: must be a whole number" in (await r.json())["error"]["message"]
    r = await client.post("/api/v1/admin/keys", data=b"{not json", headers={**op, "Content-Type": "application/json"})
    assert r.status == 400 and "not valid JSON" in (await r.json())["error"]["message"]
    r = await client.post("/api/v1/admin/keys", json={"name": "ci", "team_id": team["id"]}, headers=op)
    key = await r.json()
    assert r.status == 201 and key["secret"].startswith("mt_")
    r = await client.get(f"/api/v1/admin/keys/{key['id']}", headers=op)
    assert "secret" not in await r.json()
    r = await client.patch(f"/api/v1/admin/keys/{key['id']}", json={"tpm": 1000}, headers=op)
    assert r.status == 200 and (await r.json())["tpm"] == 1000
    r = await client.post(f"/api/v1/admin/keys/{key['id']}/rotate", headers=op)
    assert (await r.json())["secret"] != key["secret"]
    # A team admin signs in with its member token and sees its own team only.
    r = await client.post(
        "/api/v1/admin/members", json={"subject": "lee", "role": "team_admin", "team_id": team["id"]}, headers=op
    )
    lee = await r.json()
    lead = {"Authorization": f"Bearer {lee['secret']}"}
    me = await (await client.get("/api/v1/admin/me", headers=lead)).json()
    assert me == {"subject": "lee", "role": "team_admin", "org_id": "org_default", "team_id": team["id"]}
    r = await client.post("/api/v1/admin/teams", json={"name": "other"}, headers=lead)
    assert r.status == 403
    r = await client.delete(f"/api/v1/admin/keys/{key['id']}", headers=lead)
    assert r.status == 200 and (await r.json())["revoked"]
    # The dashboard's read-only token changes nothing here.
    r = await client.get("/api/v1/admin/audit", headers=op)
    entries = (await r.json())["entries"]
    assert [e["action"] for e in entries[:3]] == ["revoke", "create", "rotate"]
    assert entries[0]["actor"] == "lee"
    r = await client.get("/api/v1/admin/audit", params={"format": "jsonl"}, headers=op)
    lines = (await r.text()).splitlines()
    assert len(lines) == len(entries) and "attachment" in r.headers["Content-Disposition"]
    assert key["secret"] not in await r.text()
    # A member removed signs in no more: its token is refused on the very next request.
    r = await client.delete(f"/api/v1/admin/members/{lee['id']}", headers=op)
    assert r.status == 200
    r = await client.get("/api/v1/admin/me", headers=lead)
    assert r.status == 401


async def test_ui_tokens_cannot_administer(aiohttp_client: Any, tmp_path: Path) -> None:
    settings = Settings.load(
        env={}, overrides={"store": f"sqlite:///{tmp_path}/events.db", "ui_tokens": "read-only-token"}
    )
    client = await aiohttp_client(create_app(settings))
    r = await client.post(
        "/api/v1/admin/teams", json={"name": "x"}, headers={"Authorization": "Bearer read-only-token"}
    )
    assert r.status == 401


# --- keys in the request path of real processes -----------------------------------------------------------------


def _cli(store: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MODELTRACK_") or k == "MODELTRACK_FIXTURES"}
    return subprocess.run(
        [sys.executable, "-m", "modeltrack", "admin", *args, "--store", store],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )


async def _status(s: aiohttp.ClientSession, url: str, key: str, **extra: str) -> tuple[int, Any]:
    headers = {"Authorization": "Bearer sk-provider-canary-1", "X-ModelTrack-Key": key, **extra}
    async with s.post(url + "/v1/chat/completions", data=mini_body(), headers=headers) as r:
        body = await r.read()
        return r.status, orjson.loads(body) if r.status != 200 else body  # a 200 is the recorded stream


async def test_keys_in_the_request_path_of_two_replicas(replay: Any, tmp_path: Path) -> None:
    upstream, upstream_url = replay
    upstream.current = MINI_STREAM
    store = f"sqlite:///{tmp_path}/events.db"
    team = orjson.loads(_cli(store, "create", "teams", "name=search", 'allowed_models=["gpt-4o-mini*"]').stdout)
    made = _cli(store, "create", "keys", "name=ci", f"team_id={team['id']}", "app=web", "user=svc-1")
    assert made.returncode == 0, made.stderr
    key = orjson.loads(made.stdout)
    secret = made.stderr.rsplit(" ", 1)[1].strip()
    assert secret.startswith("mt_")
    env = {
        "MODELTRACK_STORE": store,
        "MODELTRACK_OPENAI_BASE_URL": upstream_url,
        "MODELTRACK_KEYS_REFRESH_SECONDS": "1",
    }
    replicas = []
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        p = ProxyProcess(tmp_path / name, env)
        p.env["MODELTRACK_STORE"] = store
        replicas.append(p)
        await p.start()
    try:
        async with aiohttp.ClientSession() as s:
            for p in replicas:
                # The key's attribution wins over the headers; a wrong key is a 401 in the provider's shape.
                status, _ = await _status(s, p.url, secret, **{"X-ModelTrack-Team": "ads", "X-ModelTrack-Feature": "f"})
                assert status == 200
                status, body = await _status(s, p.url, "mt_" + "x" * 43)
                assert status == 401 and body["error"]["type"] == "invalid_key"
            # Allowed models: the team's list applies to its keys.
            async with s.post(
                replicas[0].url + "/v1/chat/completions",
                data=mini_body(model="gpt-4.1"),
                headers={"X-ModelTrack-Key": secret},
            ) as r:
                assert r.status == 403 and (await r.json())["error"]["type"] == "model_not_allowed"
            # Block from the shell, then unblock: both replicas follow each within the stated delay.
            for blocked, want in (("true", 401), ("false", 200)):
                changed_at = time.monotonic()
                assert _cli(store, "update", "keys", key["id"], f"blocked={blocked}").returncode == 0
                for p in replicas:
                    while True:
                        status, body = await _status(s, p.url, secret)
                        if status == want:
                            assert want == 200 or body["error"]["type"] == "key_blocked"
                            break
                        assert time.monotonic() - changed_at < 5, f"blocked={blocked} not in force after 5 s"
                        await asyncio.sleep(0.05)
                assert time.monotonic() - changed_at <= 2.5
            # Revoke from the shell: both replicas refuse it within the stated delay (refresh 1 s + a reload).
            revoked_at = time.monotonic()
            assert _cli(store, "delete", "keys", key["id"]).returncode == 0
            delays = []
            for p in replicas:
                while True:
                    status, body = await _status(s, p.url, secret)
                    if status == 401:
                        assert body["error"]["type"] == "key_revoked"
                        delays.append(time.monotonic() - revoked_at)
                        break
                    assert time.monotonic() - revoked_at < 5, "a revoked key still worked after 5 s"
                    await asyncio.sleep(0.05)
            print(f"\nrevocation took effect on both replicas after {max(delays):.2f} s (refresh 1 s)")
            assert max(delays) <= 2.5
            # An expired key is refused.
            past = _cli(store, "create", "keys", "name=old", "expires=2020-01-01T00:00:00Z")
            old = past.stderr.rsplit(" ", 1)[1].strip()
            await asyncio.sleep(2.2)
            status, body = await _status(s, replicas[1].url, old)
            assert status == 401 and body["error"]["type"] == "key_expired"
    finally:
        for p in replicas:
            assert await p.stop() == 0
    reader = open_reader(store)
    try:
        events = await reader.events(EventFilter())
    finally:
        await reader.close()
    ok = [e for e in events if e.status == 200]
    assert len(ok) >= 2 and len(events) == len(ok)  # refusals by key are not cost events
    assert all((e.team, e.app, e.user, e.key_id) == ("search", "web", "svc-1", key["id"]) for e in ok)
    assert sum(e.feature == "f" for e in ok) == 2  # what the key leaves open, the headers still set
    # Canaries: neither the ModelTrack key nor the provider key is in any log, event or spool.
    for p in replicas:
        logs = p.log_path.read_bytes()
        assert secret.encode() not in logs and b"sk-provider-canary-1" not in logs
    assert secret.encode() not in json.dumps([e.to_dict() for e in events]).encode()
    for path in tmp_path.rglob("*"):
        if path.is_file() and path.suffix != ".db":
            assert secret.encode() not in path.read_bytes(), path
    # Key use is recorded (last_used), on shutdown at the latest.
    listed = orjson.loads(_cli(store, "list", "keys", "--format", "json").stdout)
    assert next(k for k in listed if k["id"] == key["id"])["last_used"]


def test_the_cli_round_trip(tmp_path: Path) -> None:
    store = f"sqlite:///{tmp_path}/events.db"
    assert _cli(store, "create", "teams", "name=search").returncode == 0
    bad = _cli(store, "create", "keys", "name=k", "rpm=lots")
    assert bad.returncode == 2 and "rpm: must be a whole number" in bad.stderr and "Traceback" not in bad.stderr
    made = _cli(store, "create", "keys", "name=k")
    secret = made.stderr.rsplit(" ", 1)[1].strip()
    key_id = orjson.loads(made.stdout)["id"]
    listing = _cli(store, "list", "keys").stdout
    assert key_id in listing and secret[:7] in listing and secret not in listing
    rotated = _cli(store, "rotate", key_id)
    assert rotated.returncode == 0 and "shown once" in rotated.stderr
    out = tmp_path / "org.yaml"
    assert _cli(store, "export", "--output", str(out)).returncode == 0
    assert secret not in out.read_text() and key_id in out.read_text()
    other = f"sqlite:///{tmp_path}/other.db"
    applied = _cli(other, "apply", str(out))
    assert applied.returncode == 0 and "created" in applied.stdout, applied.stderr
    assert _cli(other, "export").stdout == out.read_text()
    audit = _cli(store, "audit", "--format", "jsonl").stdout.splitlines()
    assert [json.loads(line)["action"] for line in audit][:2] == ["rotate", "create"]
    assert all(json.loads(line)["actor"].startswith("cli:") for line in audit)


async def test_a_team_budget_made_at_runtime_blocks_its_keys(replay: Any, make_proxy: Any, tmp_path: Path) -> None:
    """A budget created through the admin model while the proxy runs is in force within the refresh period, for
    the team's keys and for requests attributed to the team; other teams are not in its scope."""
    from .test_spend_controls import MINI_COST

    upstream, upstream_url = replay
    upstream.current = MINI_STREAM
    store = f"sqlite:///{tmp_path}/events.db"
    accounts = open_accounts(store)
    assert accounts is not None
    admin = Admin(accounts)
    try:
        team, _ = await admin.create(OP, "teams", {"name": "search"})
        _, secret = await admin.create(OP, "keys", {"name": "ci", "team_id": team["id"]})
        proxy = await make_proxy(upstream_url, store=store, keys_refresh_seconds=0.2)
        limit = 12 * MINI_COST  # a request reserves ~4.4 times its cost: a few fit
        await admin.create(
            OP, "budgets", {"name": "tiny", "team_id": team["id"], "limit_usd": limit, "period": "daily"}
        )
        await asyncio.sleep(0.6)
        statuses = []
        async with aiohttp.ClientSession() as s:
            for _ in range(20):
                status, body = await _status(s, proxy.url, str(secret))
                statuses.append(status)
                if status == 429:
                    break
            assert statuses[-1] == 429 and body["error"]["type"] == "budget_exceeded", statuses
            assert "Budget 'tiny [bud_" in body["error"]["message"]
            async with s.post(
                proxy.url + "/v1/chat/completions", data=mini_body(), headers={"X-ModelTrack-Team": "ads"}
            ) as r:
                assert r.status == 200  # another team: not in the budget's scope
        spent = sum(e.cost_usd or 0 for e in await proxy.events() if e.team == "search")
        assert 0 < spent <= limit + 1e-12
    finally:
        await accounts.close()


async def test_a_keys_own_budget_blocks_that_key_only(replay: Any, make_proxy: Any, tmp_path: Path) -> None:
    """A key's ``budget_usd`` is a block budget matched by the key's id: that key is refused once it is spent,
    another key of the same team is not; its spend is what the rollups say by key (the Keys page's figure)."""
    from datetime import UTC, datetime, timedelta

    from modeltrack.query import Filters

    from .test_spend_controls import MINI_COST

    upstream, upstream_url = replay
    upstream.current = MINI_STREAM
    store = f"sqlite:///{tmp_path}/events.db"
    accounts = open_accounts(store)
    assert accounts is not None
    admin = Admin(accounts)
    try:
        team, _ = await admin.create(OP, "teams", {"name": "search"})
        limit = 12 * MINI_COST
        capped, capped_secret = await admin.create(
            OP, "keys", {"name": "capped", "team_id": team["id"], "budget_usd": limit, "budget_period": "daily"}
        )
        free, free_secret = await admin.create(OP, "keys", {"name": "free", "team_id": team["id"]})
        proxy = await make_proxy(upstream_url, store=store, keys_refresh_seconds=0.2)
        statuses = []
        async with aiohttp.ClientSession() as s:
            for _ in range(25):
                status, body = await _status(s, proxy.url, str(capped_secret))
                statuses.append(status)
                if status == 429:
                    break
            assert statuses[-1] == 429 and body["error"]["type"] == "budget_exceeded", statuses
            assert f"Budget 'key capped [{capped['id']}]'" in body["error"]["message"]
            for _ in range(3):
                assert (await _status(s, proxy.url, str(free_secret)))[0] == 200
        events = await proxy.events()
        spent = {k["id"]: sum(e.cost_usd or 0 for e in events if e.key_id == k["id"]) for k in (capped, free)}
        assert 0 < spent[capped["id"]] <= limit + 1e-12 and spent[free["id"]] > 0
        reader = open_reader(store)
        now = datetime.now(UTC)
        rows = await reader.aggregate(now - timedelta(days=1), now + timedelta(hours=1), Filters(), ("key_id",))
        await reader.close()
        by_key = {r["key_id"]: r["cost_nano_usd"] for r in rows}
        assert by_key == {k: round(v * 1e9) for k, v in spent.items()}
    finally:
        await accounts.close()


async def test_the_key_as_the_sdks_api_key(replay: Any, make_proxy: Any, tmp_path: Path, caplog: Any) -> None:
    """The mt_ key given to the SDK as its API key: the proxy swaps it for the team's provider key (from the
    operator's file) in the same header and scheme. The upstream never sees the mt_ key; the provider key never
    reaches a log, an event or the spool."""
    import anthropic
    import openai

    from .test_spend_controls import CLAUDE

    upstream, upstream_url = replay
    store = f"sqlite:///{tmp_path}/events.db"
    accounts = open_accounts(store)
    assert accounts is not None
    admin = Admin(accounts)
    team, _ = await admin.create(OP, "teams", {"name": "search"})
    other, _ = await admin.create(OP, "teams", {"name": "ads"})
    _, secret = await admin.create(OP, "keys", {"name": "sdk", "team_id": team["id"], "app": "web"})
    _, ads_secret = await admin.create(OP, "keys", {"name": "ads", "team_id": other["id"]})
    await accounts.close()
    openai_canary, anthropic_canary = "sk-team-canary-" + uuid.uuid4().hex, "sk-ant-canary-" + uuid.uuid4().hex
    keys_file = tmp_path / "provider-keys.yaml"
    keys_file.write_text(
        yaml.safe_dump({"teams": {"search": {"openai": openai_canary, "anthropic": anthropic_canary}}})
    )
    proxy = await make_proxy(upstream_url, store=store, provider_keys_file=str(keys_file))
    assert secret is not None and ads_secret is not None
    upstream.current = MINI_STREAM
    oai = openai.AsyncOpenAI(base_url=proxy.url + "/v1", api_key=secret, max_retries=0)
    stream = await oai.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "x"}], stream=True, max_tokens=20
    )
    async for _ in stream:
        pass
    sent = dict((k.lower(), v) for k, v in upstream.received[-1].raw_headers)
    assert sent[b"authorization"] == b"Bearer " + openai_canary.encode()
    upstream.current = CLAUDE
    ant = anthropic.AsyncAnthropic(base_url=proxy.url, api_key=secret, max_retries=0)
    await ant.messages.create(model="claude-sonnet-4-5", max_tokens=64, messages=[{"role": "user", "content": "x"}])
    sent = dict((k.lower(), v) for k, v in upstream.received[-1].raw_headers)
    # In whichever header and scheme this SDK version sends its key (x-api-key, or Authorization: Bearer).
    assert anthropic_canary.encode() in (sent.get(b"x-api-key"), sent.get(b"authorization", b"")[7:]), sorted(sent)
    async with aiohttp.ClientSession() as s:  # an x-api-key client (curl, older SDKs)
        async with s.post(
            proxy.url + "/v1/messages",
            data=orjson.dumps(CLAUDE.request_body),
            headers={"x-api-key": secret, "anthropic-version": "2023-06-01", "content-type": "application/json"},
        ) as r:
            assert r.status == 200
    sent = dict((k.lower(), v) for k, v in upstream.received[-1].raw_headers)
    assert sent[b"x-api-key"] == anthropic_canary.encode()
    for r in upstream.received:
        assert all(b"mt_" not in v for _, v in r.raw_headers)  # the ModelTrack key never leaves
    # A team with no provider key on the server is told so; nothing is sent.
    before = len(upstream.received)
    with pytest.raises(openai.AuthenticationError) as err:
        await openai.AsyncOpenAI(base_url=proxy.url + "/v1", api_key=ads_secret, max_retries=0).chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "x"}]
        )
    assert "MODELTRACK_PROVIDER_KEYS_FILE" in str(err.value) and len(upstream.received) == before
    events = await proxy.events()
    assert [(e.team, e.app) for e in events] == [("search", "web")] * 3
    text = orjson.dumps([e.to_dict() for e in events]) + caplog.text.encode()
    for path in tmp_path.rglob("*"):
        if path.is_file() and path.suffix not in (".db", ".yaml") and "-wal" not in path.name:
            text += path.read_bytes()
    for canary in (openai_canary, anthropic_canary, secret):
        assert canary.encode() not in text


async def test_a_team_scoped_member_sees_only_its_team_through_every_endpoint(
    aiohttp_client: Any, tmp_path: Path
) -> None:
    """Enforced in the query layer (query/scoped.py): every spend endpoint, asked by a member of team search,
    answers exactly what the same question filtered to team=search answers, and nothing about team ads, even
    when asked for it."""
    from dataclasses import replace as dc_replace
    from datetime import UTC, datetime

    from modeltrack.sinks import open_sink

    from .test_pipeline import make_event

    store = f"sqlite:///{tmp_path}/events.db"
    now = datetime.now(UTC).strftime("%Y-%m-%dT%H:00:00.000Z")
    sink = open_sink(store)
    await sink.open()
    await sink.write(
        [
            dc_replace(make_event(i), timestamp=now, team=("search", "ads")[i % 2], session_id=f"s-{i % 4}")
            for i in range(40)
        ]
    )
    await sink.close()
    controls = tmp_path / "controls.json"
    controls.write_text(
        json.dumps(
            {
                "budgets": [
                    {"name": "search-b", "period": "monthly", "limit_usd": 5, "match": {"team": "search"}},
                    {"name": "ads-b", "period": "monthly", "limit_usd": 5, "match": {"team": "ads"}},
                ]
            }
        )
    )
    accounts = open_accounts(store)
    assert accounts is not None
    admin = Admin(accounts)
    team, _ = await admin.create(OP, "teams", {"name": "search"})
    _, token = await admin.create(OP, "members", {"subject": "vi", "role": "viewer", "team_id": team["id"]})
    await accounts.close()
    client = await aiohttp_client(
        create_app(Settings.load(env={}, overrides={"store": store, "controls_file": str(controls)}))
    )
    member = {"Authorization": f"Bearer {token}"}

    async def get(path: str, headers: dict[str, str] | None = None, **params: str) -> Any:
        r = await client.get(path, params=params, headers=headers or {})
        assert r.status == 200, (path, params, await r.text())
        return await r.read() if path.endswith("export") else await r.json()

    questions = [
        ("/api/v1/overview", {}),
        ("/api/v1/series", {"granularity": "day", "split": "team"}),
        ("/api/v1/breakdown", {"dimension": "team"}),
        ("/api/v1/breakdown", {"dimension": "model"}),
        ("/api/v1/values", {"dimension": "team"}),
        ("/api/v1/sessions", {}),
        ("/api/v1/forecast", {}),
        ("/api/v1/whatif", {"to_model": "gpt-4.1-mini", "days": "2"}),
        ("/api/v1/export", {"kind": "events", "format": "jsonl", "days": "2"}),
        ("/api/v1/export", {"kind": "breakdown", "dimension": "team", "format": "csv", "days": "2"}),
    ]
    for path, params in questions:
        scoped = await get(path, member, **params)
        reference = await get(path, None, **params, team="search")  # the local operator, filtered by hand
        if isinstance(scoped, dict):
            scoped.pop("now", None), reference.pop("now", None)
        assert scoped == reference, path
        asked_for_ads = await get(path, member, **params, team="ads")
        text = asked_for_ads if isinstance(asked_for_ads, bytes) else orjson.dumps(asked_for_ads)
        assert b'"ads"' not in text and b"\nads," not in text, (path, text[:300])
    exported = (await get("/api/v1/export", member, kind="events", format="jsonl", days="2")).splitlines()
    assert len(exported) == 20 and all(orjson.loads(line)["team"] == "search" for line in exported)
    sessions = await get("/api/v1/sessions", member)
    assert sessions["sessions"] and all(s["team"] == "search" for s in sessions["sessions"])
    r = await client.get("/api/v1/sessions/s-1", headers=member)  # an ads session (odd events are ads)
    assert r.status == 404
    budgets = await get("/api/v1/budgets", member)
    assert [b["name"] for b in budgets["budgets"]] == ["search-b"]
    r = await client.get("/api/v1/overview", headers={"Authorization": "Bearer mtm_not-a-member"})
    assert r.status == 200  # no UI tokens on this loopback dashboard: an unknown token reads as before
