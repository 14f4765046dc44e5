"""The dashboard in a real headless browser: the system Chromium (apt), driven by Playwright (pip). Every page
loads with no console error and no request leaves the server; the numbers on the page equal the API's; a filter
or range change updates the URL and the data; screenshots of each page are kept as test artefacts.
"""

from __future__ import annotations

import math
import shutil
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import orjson
import pytest

from modeltrack.config import Settings
from modeltrack.sinks import open_sink
from modeltrack.ui import create_app

from .seed import history

playwright_api = pytest.importorskip("playwright.async_api", reason="pip install playwright (make test does)")
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
TOKEN = "mt-ui-" + "d45hb0ard" * 4


class Browser:
    """One page of the system Chromium, recording console errors and every URL it requests."""

    def __init__(self, page: Any, base: str, shots: Path) -> None:
        self.page = page
        self.base = base
        self.shots = shots
        self.errors: list[str] = []
        self.requests: list[str] = []
        page.on("console", self._console)
        page.on("pageerror", lambda e: self.errors.append(f"pageerror: {e}"))
        page.on("request", lambda r: self.requests.append(r.url))

    def _console(self, message: Any) -> None:
        if message.type in ("error", "warning"):
            self.errors.append(f"{message.type}: {message.text}")

    async def ready(self) -> None:
        # (a selector, not a JS predicate: the page's CSP forbids eval, and the test keeps it on)
        await self.page.wait_for_selector("body[data-ready=true]", timeout=15_000)

    async def open(self, path: str, shot: str | None = None) -> None:
        await self.page.goto(self.base + path)
        await self.ready()
        if shot:
            await self.page.screenshot(path=str(self.shots / f"{shot}.png"), full_page=True)

    async def values(self, selector: str) -> list[float]:
        found = await self.page.locator(selector).evaluate_all("els => els.map(e => e.dataset.value)")
        return [float(v) for v in found]

    async def value(self, selector: str) -> float:
        return float(await self.page.locator(selector).first.get_attribute("data-value") or "nan")

    def query(self) -> dict[str, str]:
        parts = urlsplit(self.page.url)
        return {k: v[0] for k, v in parse_qs(parts.query).items()}

    def path(self) -> str:
        return urlsplit(self.page.url).path


def ms_text(v: float) -> str:
    """The dashboard's ``ms()`` format (app.js)."""
    return f"{v / 1000:.2f} s" if v >= 1000 else f"{math.floor(v + 0.5)} ms"


@pytest.fixture
async def seeded(tmp_path: Path) -> str:
    store = f"sqlite:///{tmp_path}/events.db"
    sink = open_sink(store)
    await sink.open()
    await sink.write(history(45, 30, seed=21))
    await sink.close()
    return store


@pytest.fixture
async def browser() -> AsyncIterator[Any]:
    if not Path(CHROMIUM).exists():
        pytest.fail(f"Chromium not found at {CHROMIUM}: apt-get install chromium (make test does)")
    async with playwright_api.async_playwright() as p:
        b = await p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            yield b
        finally:
            await b.close()


async def start(aiohttp_server: Any, browser: Any, artifacts: Path, store: str, **settings: Any) -> tuple[Browser, Any]:
    server = await aiohttp_server(create_app(Settings.load(env={}, overrides={"store": store, **settings})))
    page = await browser.new_page(viewport={"width": 1400, "height": 1000}, timezone_id="UTC")
    base = str(server.make_url("")).rstrip("/")
    return Browser(page, base, artifacts), server


async def api(server: Any, path: str, token: str | None = None) -> Any:
    import aiohttp

    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with aiohttp.ClientSession() as s, s.get(str(server.make_url(path)), headers=headers) as r:
        assert r.status == 200, await r.text()
        return orjson.loads(await r.read())


def window(days: int) -> tuple[str, str]:
    today = datetime.now(UTC).date()
    return (today - timedelta(days=days - 1)).isoformat(), today.isoformat()


PAGES = {
    "overview": "/",
    "teams": "/teams",
    "apps": "/apps",
    "features": "/features",
    "users": "/users",
    "models": "/models",
    "team-detail": "/teams?team=search",
    "sessions": "/sessions",
    "budgets": "/budgets",
    "whatif": "/whatif?to_model=gpt-4.1-mini",
    "export": "/export",
    "requests": "/requests",
    "errors": "/errors",
}


async def test_every_page_loads_clean_and_shows_the_apis_numbers(
    aiohttp_server: Any, browser: Any, artifacts: Path, seeded: str, tmp_path: Path
) -> None:
    controls = tmp_path / "controls.yaml"
    controls.write_text("budgets:\n  - name: all-monthly\n    limit_usd: 20\n    period: monthly\n")
    b, server = await start(aiohttp_server, browser, artifacts, seeded, controls_file=str(controls))
    for name, path in PAGES.items():
        await b.open(path, shot=name)
        assert await b.page.locator("[data-testid=error]").count() == 0, name
    assert b.errors == []
    assert all(u.startswith(b.base) for u in b.requests), "the dashboard makes no outside call"

    # Overview: the KPI cards and top tables are the API's figures.
    await b.open("/")
    ov = await api(server, "/api/v1/overview?tz=UTC")
    assert await b.value("[data-testid=kpi-month] .value") == pytest.approx(ov["month_to_date"]["cost_usd"])
    assert await b.value("[data-testid=kpi-today] .value") == pytest.approx(ov["today"]["cost_usd"])
    assert await b.value("[data-testid=kpi-forecast] .value") == pytest.approx(ov["forecast"]["forecast_usd"])
    assert await b.values("[data-testid=top-team] td[data-value]") == pytest.approx(
        [r["cost_usd"] for r in ov["top_teams"]]
    )
    assert "$" in await b.page.locator("[data-testid=kpi-month] .value").inner_text()

    # A breakdown page: every row's spend and requests, and the total.
    since, until = window(30)
    bd = await api(server, f"/api/v1/breakdown?dimension=model&limit=25&since={since}&until={until}&tz=UTC")
    await b.open("/models")
    rows = b.page.locator("[data-testid=breakdown] tbody tr")
    assert await rows.count() == len(bd["rows"])
    keys = await rows.evaluate_all("els => els.map(e => e.dataset.key)")
    assert keys == [r["model"] for r in bd["rows"]]
    spend = await b.values("[data-testid=breakdown] tbody tr td.num[data-value]:nth-of-type(2)")
    assert spend == pytest.approx([r["cost_usd"] for r in bd["rows"]])
    assert await b.value("[data-testid=total] td[data-value]") == pytest.approx(bd["total"]["cost_usd"])

    # Budgets and sessions.
    await b.open("/budgets")
    budget = (await api(server, "/api/v1/budgets"))["budgets"][0]
    assert await b.value("[data-testid=budget][data-name=all-monthly] .value") == pytest.approx(budget["spent_usd"])
    await b.open("/sessions")
    ss = await api(server, f"/api/v1/sessions?limit=50&since={since}&until={until}&tz=UTC")
    shown = await b.page.locator("[data-testid=sessions] tbody tr").evaluate_all("els => els.map(e => e.dataset.key)")
    assert shown == [s["session_id"] for s in ss["sessions"]]
    await b.page.locator("[data-testid=sessions] tbody tr").first.click()
    await b.ready()
    assert b.query()["session"] == shown[0]
    steps = await api(server, f"/api/v1/sessions/{shown[0]}")
    shown_steps = await b.values("[data-testid=steps] td[data-value]")
    assert shown_steps == pytest.approx([s["cost_usd"] for s in steps["steps"]])
    await b.page.screenshot(path=str(artifacts / "session-steps.png"), full_page=True)
    assert b.errors == []


async def test_a_filter_or_range_change_updates_the_url_and_the_data(
    aiohttp_server: Any, browser: Any, artifacts: Path, seeded: str
) -> None:
    b, server = await start(aiohttp_server, browser, artifacts, seeded)
    await b.open("/teams")
    first = b.page.locator('[data-testid=breakdown] tbody tr.click:not([data-key=""])').first
    team = await first.get_attribute("data-key")
    assert team
    await first.click()
    await b.ready()
    assert b.path() == "/teams" and b.query()["team"] == team
    assert team in await b.page.locator("[data-testid=detail-title]").inner_text()
    since, until = window(30)
    one = await api(server, f"/api/v1/breakdown?dimension=app&team={team}&since={since}&until={until}&tz=UTC")
    assert await b.value("[data-testid=kpi-spend] .value") == pytest.approx(one["total"]["cost_usd"])
    assert await b.values("[data-testid=breakdown-app] td.num[data-value]:nth-of-type(2)") == pytest.approx(
        [r["cost_usd"] for r in one["rows"]]
    )

    # The range: a preset goes into the URL and the figures follow it.
    await b.page.select_option("[data-testid=range]", "7d")
    await b.ready()
    assert b.query() == {"team": team, "range": "7d"}
    since7, until7 = window(7)
    week = await api(server, f"/api/v1/breakdown?dimension=app&team={team}&since={since7}&until={until7}&tz=UTC")
    assert await b.value("[data-testid=kpi-spend] .value") == pytest.approx(week["total"]["cost_usd"])
    assert week["total"]["cost_usd"] < one["total"]["cost_usd"]
    await b.page.screenshot(path=str(artifacts / "team-7-days.png"), full_page=True)

    # Shared as a link, the view opens the same; removing the filter chip goes back to all teams.
    url = b.page.url
    other = await browser.new_page(viewport={"width": 1400, "height": 1000}, timezone_id="UTC")
    await other.goto(url)
    await other.wait_for_selector("body[data-ready=true]")
    assert await other.locator("[data-testid=kpi-spend] .value").get_attribute("data-value") == str(
        await b.page.locator("[data-testid=kpi-spend] .value").get_attribute("data-value")
    )
    await b.page.locator("[data-filter=team] button").click()
    await b.ready()
    assert "team" not in b.query() and await b.page.locator("[data-testid=breakdown]").count() == 1

    # A drill-down from one dimension to another carries both filters.
    await b.open(f"/teams?team={team}")
    row = b.page.locator('[data-testid=breakdown-model] tbody tr.click:not([data-key=""])').first
    model = await row.get_attribute("data-key")
    await row.click()
    await b.ready()
    assert b.path() == "/models" and b.query() == {"team": team, "model": model}

    # What-if: the form writes the target into the URL; the answer is the API's.
    await b.open("/whatif")
    await b.page.fill("[data-testid=to-model]", "gpt-4.1-mini")
    await b.page.locator("[data-testid=to-model]").press("Enter")
    await b.page.wait_for_selector("[data-testid=whatif-result]")
    await b.ready()
    assert b.query()["to_model"] == "gpt-4.1-mini"
    wi = await api(server, "/api/v1/whatif?to_model=gpt-4.1-mini&days=30")
    assert await b.value("[data-testid=actual]") == pytest.approx(wi["actual_usd"])
    assert await b.value("[data-testid=whatif]") == pytest.approx(wi["whatif_usd"])
    assert b.errors == []


async def test_login_with_a_token_and_the_empty_state(
    aiohttp_server: Any, browser: Any, artifacts: Path, tmp_path: Path
) -> None:
    store = f"sqlite:///{tmp_path}/events.db"
    sink = open_sink(store)
    await sink.open()
    await sink.close()
    b, _ = await start(aiohttp_server, browser, artifacts, store, ui_tokens=TOKEN)
    await b.open("/", shot="login")
    token = b.page.locator("[data-testid=token]")
    await token.fill("not-the-token")
    await token.press("Enter")
    await b.page.wait_for_selector("text=That token is not valid.")
    await token.fill(TOKEN)
    await token.press("Enter")
    await b.page.wait_for_selector("[data-testid=empty]")
    await b.ready()
    text = await b.page.locator("[data-testid=empty]").inner_text()
    assert "No events yet" in text and "http://" in text
    await b.page.screenshot(path=str(artifacts / "empty.png"), full_page=True)
    cookies = await b.page.context.cookies()
    assert all(c["httpOnly"] and c["sameSite"] == "Strict" for c in cookies) and cookies
    assert TOKEN not in await b.page.content()
    # the wrong token's 401 is the only error the console may show
    assert [e for e in b.errors if "401" not in e] == []


async def test_empty_states_say_why(
    aiohttp_server: Any, browser: Any, artifacts: Path, seeded: str, tmp_path: Path
) -> None:
    """Issue M, item 13: a filter that matches nothing is not "No events yet", and neither is a missing store."""
    b, _ = await start(aiohttp_server, browser, artifacts, seeded)
    for path in ("/?team=no-such-team", "/apps?team=no-such-team"):
        await b.open(path)
        text = await b.page.locator("[data-testid=empty]").inner_text()
        assert "No spend for team=no-such-team" in text and "No events yet" not in text, text
    missing = tmp_path / "nowhere" / "events.db"
    b2, _ = await start(aiohttp_server, browser, artifacts, f"sqlite:///{missing}")
    await b2.open("/", shot="no-store")
    text = await b2.page.locator("[data-testid=empty]").inner_text()
    assert "No store at" in text and str(missing) in text and "No events yet" not in text, text
    assert b.errors == [] and [e for e in b2.errors if "503" not in e] == []


async def test_the_admin_pages_create_show_once_rotate_revoke_and_audit(
    aiohttp_server: Any, browser: Any, artifacts: Path, tmp_path: Path
) -> None:
    """Issue K: Keys, Org and Audit log in Chromium, against the admin API of a loopback dashboard (the local
    operator), then behind an admin token."""
    store = f"sqlite:///{tmp_path}/events.db"
    b, server = await start(aiohttp_server, browser, artifacts, store)
    await b.open("/org")
    form = b.page.locator("[data-testid=create-team]")
    await form.locator("[data-field=name]").fill("search")
    await form.locator("[data-field=allowed_models]").fill("gpt-4o-mini, claude-*")
    await form.locator("button[type=submit]").click()
    await b.page.wait_for_selector("[data-testid=teams] td:text('search')")
    await b.open("/keys")
    form = b.page.locator("[data-testid=create-key]")
    await form.locator("[data-field=name]").fill("ci")
    await form.locator("[data-field=team_id]").select_option(label="search")
    await form.locator("[data-field=app]").fill("web")
    await form.locator("[data-field=rpm]").fill("60")
    await form.locator("[data-field=budget_usd]").fill("5")
    await form.locator("button[type=submit]").click()
    secret = (await b.page.locator("[data-testid=secret] pre").inner_text(timeout=10_000)).strip()
    assert secret.startswith("mt_")
    await b.page.screenshot(path=str(artifacts / "keys-secret-once.png"), full_page=True)
    listed = await api(server, "/api/v1/admin/keys")
    (key,) = listed["keys"]
    assert (key["name"], key["app"], key["rpm"], key["prefix"]) == ("ci", "web", 60, secret[:7] + "…")
    assert key["budget_usd"] == 5
    # The key's spend (30 days, from the rollups by key), beside its budget: events made with it, and one not.
    from dataclasses import replace

    from .test_pipeline import make_event

    sink = open_sink(store)
    await sink.open()
    costs = (0.125, 0.0625, 0.0625, 3.0)
    await sink.write(
        [replace(make_event(i), cost_usd=c, key_id=key["id"] if i < 3 else None) for i, c in enumerate(costs)]
    )
    await sink.close()
    await b.open("/keys", shot="keys-spend")
    row = b.page.locator(f"tr[data-key={key['id']}]")
    assert await row.locator("[data-testid=key-spend]").inner_text() == "$0.2500 of $5 / monthly"
    assert "search" in await row.inner_text() and secret not in await row.inner_text()
    await row.locator("[data-testid=rotate]").click()
    rotated = (await b.page.locator("[data-testid=secret] pre").inner_text(timeout=10_000)).strip()
    for _ in range(50):
        if rotated != secret:
            break
        await b.page.wait_for_timeout(100)
        rotated = (await b.page.locator("[data-testid=secret] pre").inner_text()).strip()
    assert rotated.startswith("mt_") and rotated != secret
    # Block, then unblock: the store follows each click, and the row says which it is.
    for label, blocked, status in (("Block", True, "blocked"), ("Unblock", False, "active")):
        button = b.page.locator(f"tr[data-key={key['id']}] [data-testid=block]")
        assert await button.inner_text() == label
        await button.click()
        await b.page.wait_for_selector(f"tr[data-key={key['id']}] [data-testid=status]:text-is('{status}')")
        assert (await api(server, f"/api/v1/admin/keys/{key['id']}"))["blocked"] is blocked
    await b.page.locator(f"tr[data-key={key['id']}] [data-testid=revoke]").click()
    await b.page.wait_for_selector(f"tr[data-key={key['id']}] [data-testid=status]:text('revoked')")
    await b.open("/audit", shot="audit")
    text = await b.page.locator("[data-testid=audit]").inner_text()
    for action in ("create", "rotate", "revoke"):
        assert action in text
    assert secret not in await b.page.content() and rotated not in await b.page.content()
    assert b.errors == []
    # Behind an admin token: the pages ask for it, a wrong one is refused, the right one signs in (cookie).
    admin_token = "mt-admin-" + "b" * 24
    b2, _ = await start(aiohttp_server, browser, artifacts, store, admin_tokens=admin_token)
    await b2.open("/keys")
    login = b2.page.locator("[data-testid=admin-token]")
    await login.fill("wrong")
    await login.press("Enter")
    await b2.page.wait_for_selector("text=that token is not an admin token")
    await login.fill(admin_token)
    await login.press("Enter")
    await b2.page.wait_for_selector(f"tr[data-key={key['id']}]")
    cookies = await b2.page.context.cookies()
    assert any(c["name"] == "modeltrack_admin" and c["httpOnly"] and c["sameSite"] == "Strict" for c in cookies)
    assert all(admin_token not in c["value"] for c in cookies)
    assert [e for e in b2.errors if "401" not in e] == []


async def test_dark_mode_narrow_screens_every_zone_and_auto_refresh(
    aiohttp_server: Any, browser: Any, artifacts: Path, seeded: str
) -> None:
    """Issue M: dark mode follows prefers-color-scheme; the layout works at 400 px; the zone picker offers any
    IANA zone (and the page follows it); the optional auto-refresh is a box, off by default, remembered."""
    server = await aiohttp_server(create_app(Settings.load(env={}, overrides={"store": seeded})))
    base = str(server.make_url("")).rstrip("/")
    page = await browser.new_page(viewport={"width": 400, "height": 900}, color_scheme="dark", timezone_id="UTC")
    b = Browser(page, base, artifacts)
    await b.open("/", shot="dark-400px")
    bg = await page.evaluate("getComputedStyle(document.querySelector('.card')).backgroundColor")
    assert bg == "rgb(17, 26, 43)", bg  # the dark card colour, not white
    width = await page.evaluate("document.documentElement.scrollWidth")
    assert width <= 400, f"the page scrolls sideways at 400 px ({width} px wide)"
    zones = await page.locator("[data-testid=tz] option").evaluate_all("os => os.map(o => o.value)")
    # (Chromium's ICU lists some zones by their older IANA names, e.g. Asia/Calcutta: both are IANA zones)
    india = "Asia/Kolkata" if "Asia/Kolkata" in zones else "Asia/Calcutta"
    assert len(zones) > 300 and india in zones and "America/St_Johns" in zones
    await page.locator("[data-testid=tz]").select_option(india)
    await b.ready()
    assert b.query()["tz"] == india
    box = page.locator("[data-testid=refresh]")
    assert not await box.is_checked()
    await box.check()
    await b.open("/")
    assert await page.locator("[data-testid=refresh]").is_checked()  # remembered, not put in the URL
    assert "refresh" not in b.query()
    assert b.errors == []


async def test_from_any_number_to_its_requests(aiohttp_server: Any, browser: Any, artifacts: Path, seeded: str) -> None:
    """Issue M: the request log (newest first, older pages, filters, each row's whole event) reached from a
    breakdown row, a KPI and a chart point; the Errors page; the charts beyond spend. Numbers equal the API's."""
    b, server = await start(aiohttp_server, browser, artifacts, seeded)
    since, until = window(7)
    await b.open("/requests?range=7d", shot="requests")
    want = await api(server, f"/api/v1/requests?since={since}&until={until}&limit=50")
    rows = b.page.locator("[data-testid=requests] tbody tr")
    assert await rows.count() == 50
    assert await rows.evaluate_all("rs => rs.map(r => r.dataset.key)") == [r["request_id"] for r in want["requests"]]
    await b.page.locator("[data-testid=older]").click()
    await b.ready()
    second = await api(server, f"/api/v1/requests?since={since}&until={until}&limit=50&before={want['next']}")
    assert await rows.first.get_attribute("data-key") == second["requests"][0]["request_id"]
    await rows.first.click()
    await b.ready()
    detail = b.page.locator("[data-testid=request-detail]")
    rid = second["requests"][0]["request_id"]
    assert rid in await detail.inner_text()
    full = await api(server, f"/api/v1/requests/{rid}")
    assert await detail.locator("dd[data-field=model]").inner_text() == full["model"]
    await b.page.screenshot(path=str(artifacts / "request-detail.png"), full_page=True)
    # A breakdown row's log link: the requests of that team, in the page's period.
    await b.open("/teams?range=7d")
    await b.page.locator("[data-testid=breakdown] tr[data-key=search] [data-testid=log-link]").click()
    await b.ready()
    assert b.path() == "/requests" and b.query()["team"] == "search"
    teams = await b.page.locator("[data-testid=requests] tbody tr td:nth-child(4)").all_inner_texts()
    assert teams and set(teams) == {"search"}
    # A KPI: the month's requests.
    await b.open("/")
    await b.page.locator("[data-testid=kpi-month]").click()
    await b.ready()
    assert b.path() == "/requests" and b.query()["range"] == "month"
    # A chart point: the day clicked.
    await b.open("/teams?team=search&range=7d")
    for testid in ("chart-requests", "chart-tokens", "chart-latency", "chart-ttft", "chart-errors"):
        assert await b.page.locator(f"[data-testid={testid}] canvas").count() == 1, testid
    box = await b.page.locator("[data-testid=series] .u-over").bounding_box()
    assert box is not None
    await b.page.mouse.move(box["x"] + box["width"] * 0.5, box["y"] + box["height"] * 0.5)
    await b.page.mouse.click(box["x"] + box["width"] * 0.5, box["y"] + box["height"] * 0.5)
    await b.ready()
    q = b.query()
    assert b.path() == "/requests" and q["since"] == q["until"] and q["team"] == "search"
    # The TTFT chart's first point, read from its legend under the cursor, is the API's (the Overview's trend).
    async with b.page.expect_response(lambda r: "/api/v1/overview" in r.url) as answer:
        await b.open("/?range=7d")
    trend = (await (await answer.value).json())["trend"]
    first = trend["series"][0]
    assert first["ttft_p50_ms"][0] is not None
    await b.page.locator("[data-testid=chart-ttft]").scroll_into_view_if_needed()
    over = await b.page.locator("[data-testid=chart-ttft] .u-over").bounding_box()
    assert over is not None
    await b.page.mouse.move(over["x"] + 1, over["y"] + over["height"] / 2)
    legend = await b.page.locator("[data-testid=chart-ttft] .u-legend .u-series .u-value").all_inner_texts()
    assert legend[-2:] == [ms_text(first["ttft_p50_ms"][0]), ms_text(first["ttft_p95_ms"][0])], legend
    # The Errors page: its classes are the API's.
    await b.open("/errors?range=30d", shot="errors")
    s30, u30 = window(30)
    errors = await api(server, f"/api/v1/errors?since={s30}&until={u30}")
    assert errors["errors"] > 0
    for c in errors["classes"]:
        assert await b.value(f"[data-testid=class-{c['class']}] .value") == c["requests"]
    assert await b.page.locator("[data-testid=errors] tbody tr").count() == len(errors["rows"])
    assert b.errors == []


async def test_the_period_rules_every_page_and_nothing_is_clipped(
    aiohttp_server: Any, browser: Any, artifacts: Path, seeded: str
) -> None:
    """Issue M, item 9: the Overview follows the Period selector (and what-if has no selector of its own);
    "Today" stops at the current hour and is compared with yesterday up to the same time; no card of a detail
    page overflows at 1,400 px."""
    b, server = await start(aiohttp_server, browser, artifacts, seeded)
    since, until = window(7)
    await b.open("/?range=7d", shot="overview-7d")
    want = await api(server, f"/api/v1/breakdown?dimension=team&since={since}&until={until}")
    assert await b.value("[data-testid=kpi-period] .value") == pytest.approx(want["total"]["cost_usd"], abs=1e-9)
    top = await b.page.locator("[data-testid=top-team] td[data-value]").evaluate_all(
        "els => els.map(e => Number(e.dataset.value))"
    )
    assert top == [r["cost_usd"] for r in want["rows"][:5]]
    await b.page.select_option("[data-testid=range]", "today")
    await b.ready()
    today = datetime.now(UTC).date().isoformat()
    assert b.query()["range"] == "today"
    ser = await api(server, f"/api/v1/series?granularity=hour&since={today}&until={today}")
    assert len(ser["buckets"]) == datetime.now(UTC).hour + 1  # no future hours
    brk = await api(server, f"/api/v1/breakdown?dimension=team&since={today}&until={today}")
    span = datetime.fromisoformat(brk["range"]["until"][:19]) - datetime.fromisoformat(brk["range"]["since"][:19])
    prev = datetime.fromisoformat(brk["previous"]["until"][:19]) - datetime.fromisoformat(brk["previous"]["since"][:19])
    assert span == prev <= timedelta(hours=24)  # today so far, against yesterday up to the same hour
    # What-if reads the same Period: no second selector, and its answer covers the page's range.
    await b.open("/whatif?to_model=gpt-4.1-mini&range=7d")
    assert await b.page.locator("select[name=days]").count() == 0
    answer = await b.page.locator("[data-testid=whatif-result] .answer").inner_text()
    assert f"from {since} to {until}" in answer
    # Nothing overflows its card on a detail page at 1,400 px.
    await b.open("/teams?team=search", shot="team-detail-1400")
    widths = await b.page.locator("#view .card").evaluate_all("cs => cs.map(c => c.scrollWidth - c.clientWidth)")
    assert widths and max(widths) <= 0, widths
    assert b.errors == []


async def test_hosted_sign_up_in_chromium(aiohttp_server: Any, browser: Any, artifacts: Path, tmp_path: Path) -> None:
    """Issue K: with MODELTRACK_SIGNUP=open (multi-tenant), the sign-in page offers to create an organisation;
    its first admin's token is shown once, the browser is signed in, and the Keys page works in the new org."""
    store = f"sqlite:///{tmp_path}/events.db"
    b, server = await start(aiohttp_server, browser, artifacts, store, multi_tenant=True, signup="open")
    await b.open("/", shot="signup-form")
    await b.page.locator("[data-testid=signup-org]").fill("Acme Robotics")
    await b.page.locator("[data-testid=signup-subject]").fill("founder@acme.example")
    await b.page.locator("[data-testid=signup] button[type=submit]").click()
    token = (await b.page.locator("[data-testid=signup-token]").inner_text(timeout=10_000)).strip()
    assert token.startswith("mtm_")
    await b.page.screenshot(path=str(artifacts / "signup-token-once.png"), full_page=True)
    cookies = await b.page.context.cookies()
    assert any(c["name"] == "modeltrack_admin" and c["httpOnly"] for c in cookies)
    assert all(token not in c["value"] for c in cookies)
    await b.open("/keys")
    form = b.page.locator("[data-testid=create-key]")
    await form.locator("[data-field=name]").fill("first")
    await form.locator("button[type=submit]").click()
    secret = (await b.page.locator("[data-testid=secret] pre").inner_text(timeout=10_000)).strip()
    assert secret.startswith("mt_")
    me = await api(server, "/api/v1/admin/me", token)
    assert me["role"] == "org_admin" and me["subject"] == "founder@acme.example"
    keys = (await api(server, "/api/v1/admin/keys", token))["keys"]
    assert [k["name"] for k in keys] == ["first"] and keys[0]["org_id"] == me["org_id"]
    assert [e for e in b.errors if "401" not in e and "503" not in e] == []
    # Later, on another browser: the member signs in with that token on the dashboard's own login.
    page = await browser.new_page(viewport={"width": 1400, "height": 1000})
    b2 = Browser(page, b.base, artifacts)
    await b2.open("/")
    await page.locator("[data-testid=token]").fill(token)
    await page.locator("[data-testid=token]").press("Enter")
    await page.wait_for_selector("[data-testid=token]", state="detached", timeout=10_000)
    await b2.ready()
    assert await page.locator("form.login").count() == 0
