"""Dashboard sign-in with OpenID Connect (issue K), against a real OIDC provider started here on loopback
(oidc-provider-mock): the authorization code flow with PKCE, state and nonce, the ID token verified against the
provider's keys, its claims mapped to role, org and team, and the session scoped like a member's."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import aiohttp
import pytest
from oidc_provider_mock import User, run_server_in_thread

from modeltrack.accounts import Actor, Admin, open_accounts
from modeltrack.config import ConfigError, Settings
from modeltrack.ui import create_app

USERS = [
    User(sub="ana", claims={"email": "ana@example.com", "modeltrack_role": "team_admin", "modeltrack_team": "search"}),
    User(sub="olu", claims={"email": "olu@example.com", "modeltrack_role": "org_admin"}),
    User(sub="zed", claims={"email": "zed@example.com", "modeltrack_team": "nowhere"}),
]


@pytest.fixture(scope="module")
def provider() -> Iterator[str]:
    with run_server_in_thread(user_claims=USERS) as server:
        yield f"http://localhost:{server.server_port}"


async def _sign_in(base: str, sub: str) -> aiohttp.ClientSession:
    """A browser's trip: our login → the provider's form (pick a user) → our callback → signed in."""
    s = aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True))
    async with s.get(base + "/api/v1/oidc/login", allow_redirects=False) as r:
        assert r.status == 302
        authorize = r.headers["Location"]
    query = parse_qs(urlsplit(authorize).query)
    assert query["code_challenge_method"] == ["S256"] and query["nonce"] and query["state"]
    async with s.post(authorize, data={"sub": sub}, allow_redirects=False) as r:
        assert r.status == 302, await r.text()
        callback = r.headers["Location"]
    async with s.get(callback, allow_redirects=False) as r:
        assert r.status == 302 and r.headers["Location"] == "/", await r.text()
    return s


async def test_sign_in_maps_claims_to_role_org_and_team(provider: str, aiohttp_server: Any, tmp_path: Path) -> None:
    store = f"sqlite:///{tmp_path}/events.db"
    accounts = open_accounts(store)
    assert accounts is not None
    team, _ = await Admin(accounts).create(Actor.operator(), "teams", {"name": "search"})
    await accounts.close()
    settings = Settings.load(
        env={},
        overrides={
            "store": store,
            "ui_tokens": "read-only-token",  # the token login stays; SSO sits beside it
            "admin_tokens": "an-admin-token",  # so nobody is the local operator by default
            "oidc_issuer": provider,
            "oidc_client_id": "modeltrack-dashboard",
            "oidc_client_secret": "s3cret-for-the-test",
        },
    )
    server = await aiohttp_server(create_app(settings))
    base = str(server.make_url("")).rstrip("/")
    ana = await _sign_in(base, "ana")
    try:
        async with ana.get(base + "/api/v1/admin/me") as r:
            me = await r.json()
        assert me == {
            "subject": "oidc:ana@example.com",
            "role": "team_admin",
            "org_id": "org_default",
            "team_id": team["id"],
        }
        cookie = next(c for c in ana.cookie_jar if c.key == "modeltrack_admin")
        assert cookie["httponly"] and cookie["samesite"] == "Strict"
        async with ana.get(base + "/api/v1/breakdown", params={"dimension": "team"}) as r:
            assert r.status in (200, 503)  # signed in: the spend API answers (scoped), not 401
        async with ana.post(base + "/api/v1/admin/teams", json={"name": "x"}, headers={"Origin": base}) as r:
            assert r.status == 403  # a team admin does not make teams
    finally:
        await ana.close()
    olu = await _sign_in(base, "olu")
    try:
        async with olu.post(base + "/api/v1/admin/teams", json={"name": "ads"}, headers={"Origin": base}) as r:
            assert r.status == 201
        async with olu.get(base + "/api/v1/admin/audit") as r:
            assert (await r.json())["entries"][0]["actor"] == "oidc:olu@example.com"
    finally:
        await olu.close()
    # A claim naming a team that does not exist is refused, not mapped to something else.
    s = aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True))
    try:
        async with s.get(base + "/api/v1/oidc/login", allow_redirects=False) as r:
            authorize = r.headers["Location"]
        async with s.post(authorize, data={"sub": "zed"}, allow_redirects=False) as r:
            callback = r.headers["Location"]
        async with s.get(callback, allow_redirects=False) as r:
            assert r.status == 403 and (await r.json())["error"]["type"] == "oidc_no_team"
        # A callback that did not start here (no flow cookie, or another state) is refused.
        async with aiohttp.ClientSession() as other, other.get(callback, allow_redirects=False) as r:
            assert r.status == 400 and (await r.json())["error"]["type"] == "oidc_state"
        # A forged session cookie is nobody.
        async with aiohttp.ClientSession(cookies={"modeltrack_admin": "o.eyJzdWIiOiJ4In0.00"}) as forged:
            async with forged.get(base + "/api/v1/admin/me") as r:
                assert r.status == 401
    finally:
        await s.close()


def test_bad_oidc_settings_are_refused_with_what_to_write() -> None:
    with pytest.raises(ConfigError, match="set MODELTRACK_OIDC_CLIENT_ID and MODELTRACK_OIDC_CLIENT_SECRET"):
        Settings.load(env={}, overrides={"oidc_issuer": "https://id.example.com"})
    with pytest.raises(ConfigError, match="use https"):
        Settings.load(
            env={}, overrides={"oidc_issuer": "http://id.example.com", "oidc_client_id": "a", "oidc_client_secret": "b"}
        )
    with pytest.raises(ConfigError, match="write viewer, team_admin or org_admin"):
        Settings.load(
            env={},
            overrides={
                "oidc_issuer": "https://id.example.com",
                "oidc_client_id": "a",
                "oidc_client_secret": "b",
                "oidc_default_role": "boss",
            },
        )


async def test_sso_in_chromium(provider: str, aiohttp_server: Any, tmp_path: Path, artifacts: Path) -> None:
    """A person signs in with SSO in a real browser: the login card offers it, the provider's page picks the
    user, and the dashboard opens signed in, its Keys page too (an org admin's claim)."""
    import shutil

    from playwright.async_api import async_playwright

    store = f"sqlite:///{tmp_path}/events.db"
    settings = Settings.load(
        env={},
        overrides={
            "store": store,
            "ui_tokens": "read-only-token",
            "admin_tokens": "an-admin-token",
            "oidc_issuer": provider,
            "oidc_client_id": "modeltrack-dashboard",
            "oidc_client_secret": "s3cret-for-the-test",
        },
    )
    server = await aiohttp_server(create_app(settings))
    base = str(server.make_url("")).rstrip("/")
    async with async_playwright() as p:
        browser = await p.chromium.launch(
            executable_path=shutil.which("chromium") or "/usr/bin/chromium", args=["--no-sandbox"]
        )
        try:
            page = await browser.new_page()
            await page.goto(base + "/")
            await page.locator("[data-testid=sso]").click()
            await page.locator("button[name=sub][value=olu]").click()
            await page.wait_for_selector("body[data-ready=true]")
            await page.goto(base + "/keys")
            await page.wait_for_selector("[data-testid=create-key]")
            text = await page.locator("main").inner_text()
            assert "Signed in as oidc:olu@example.com (org_admin)" in text
            await page.screenshot(path=str(artifacts / "sso-keys.png"), full_page=True)
        finally:
            await browser.close()
