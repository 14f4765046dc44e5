"""Budgets, routing, the response cache and attributed tokens, end to end: real clients through the real proxy to
the replay upstream (real recordings), with the controls file the way users write it."""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web

from .expected import expected_cost
from .replay import load
from .test_passthrough import request_body

MINI_STREAM = load("test_openai__test_run_stream_sync_streams_real_model", 0)  # gpt-4o-mini, $1.695e-05
MINI_COST = expected_cost((MINI_STREAM.name, 0), "2026-11-29T12:00:00Z")
CLAUDE = load("test_anthropic__test_anthropic_cache_real_api", 1)  # claude-sonnet-4-5, sized JSON
GEMINI = load("test_google__test_google_stream_usage_is_live_mid_stream")


def write_controls(tmp_path: Path, doc: dict[str, Any], name: str = "controls.json") -> str:
    path = tmp_path / name
    path.write_bytes(orjson.dumps(doc))
    return str(path)


def mini_body(**extra: Any) -> bytes:
    body = {**MINI_STREAM.request_body, "max_tokens": 20, **extra}
    return orjson.dumps(body)


async def call(
    s: aiohttp.ClientSession, url: str, body: bytes, headers: dict[str, str] | None = None
) -> tuple[int, Any, bytes]:
    async with s.post(url, data=body, headers={"Authorization": "Bearer sk-test", **(headers or {})}) as r:
        return r.status, r.headers, await r.read()


class Hooks:
    """A webhook receiver: records every post; ``fail_first`` posts get a 500."""

    def __init__(self, fail_first: int = 0) -> None:
        self.posts: list[tuple[str, dict[str, Any]]] = []
        self.fail_first = fail_first
        self.seen = 0

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/{name}", self.handle)
        return app

    async def handle(self, request: web.Request) -> web.Response:
        self.seen += 1
        if self.seen <= self.fail_first:
            return web.Response(status=500)
        self.posts.append((request.match_info["name"], await request.json()))
        return web.Response(text="ok")


# --- budgets ---------------------------------------------------------------------------------------------------


async def test_a_budget_refuses_before_the_upstream_in_each_providers_shape(
    replay: Any, make_proxy: Any, tmp_path: Path
) -> None:
    upstream, upstream_url = replay
    upstream.current = MINI_STREAM
    limit = 0.0002
    path = write_controls(
        tmp_path, {"budgets": [{"name": "tiny", "period": "daily", "limit_usd": limit, "match": {"team": "search"}}]}
    )
    proxy = await make_proxy(upstream_url, controls_file=path)
    team = {"X-ModelTrack-Team": "search"}
    statuses = []
    async with aiohttp.ClientSession() as s:
        for _ in range(30):
            status, headers, body = await call(s, proxy.url + "/v1/chat/completions", mini_body(), team)
            statuses.append(status)
            if status == 429:
                break
        assert statuses[-1] == 429 and statuses.count(200) == len(statuses) - 1 >= 5
        err = orjson.loads(body)["error"]
        assert err["type"] == "budget_exceeded" and "Budget 'tiny'" in err["message"]
        assert "spent of $0.00" in err["message"] and "resets at" in err["message"]
        assert int(headers["Retry-After"]) > 0
        admitted = len(upstream.received)
        # The other providers get their own shapes; nothing reaches the upstream.
        upstream.current = CLAUDE
        status, _, body = await call(s, proxy.url + "/v1/messages", request_body(CLAUDE), team)
        assert status == 429
        a = orjson.loads(body)
        assert a["type"] == "error" and a["error"]["type"] == "budget_exceeded"
        status, _, body = await call(
            s, proxy.url + "/v1beta/models/gemini-2.5-flash:generateContent", b'{"contents": []}', team
        )
        assert status == 429 and orjson.loads(body)["error"]["status"] == "BUDGET_EXCEEDED"
        # Another team is not in the budget's scope.
        status, _, _ = await call(s, proxy.url + "/v1/chat/completions", mini_body(), {"X-ModelTrack-Team": "ads"})
        assert status == 200
    assert len(upstream.received) == admitted + 1
    events = await proxy.events()
    refused = [e for e in events if e.status == 429]
    assert len(refused) == 3
    assert all(e.error == "budget_exceeded" and e.cost_usd == 0 and e.cost_source == "blocked" for e in refused)
    spent = sum(e.cost_usd or 0 for e in events if e.team == "search")
    assert spent <= limit
    assert spent == pytest.approx(MINI_COST * admitted)


async def test_a_budget_counts_each_recorded_request_at_its_cost_before_it_is_stored(
    replay: Any, make_proxy: Any, tmp_path: Path
) -> None:
    """The recorder hands the budgets its own figures (modeltrack.spent: the scope key and the cost, not read back
    off the event): after each request of team ml, the next one's header shows the sum so far, exactly; another
    team's request matches nothing and adds nothing."""
    upstream, upstream_url = replay
    upstream.current = MINI_STREAM
    limit = MINI_COST * 50
    budget = {"name": "ml", "match": {"team": "ml"}, "period": "monthly", "limit_usd": limit, "warn_at": [1]}
    path = write_controls(tmp_path, {"refresh_seconds": 60, "budgets": [{**budget, "action": "block"}]})
    proxy = await make_proxy(upstream_url, controls_file=path)
    spent: list[str] = []
    async with aiohttp.ClientSession() as s:
        for team in ("ml", "ml", "other", "ml", "ml"):
            status, headers, _ = await call(
                s, proxy.url + "/v1/chat/completions", mini_body(), {"X-ModelTrack-Team": team}
            )
            assert status == 200
            spent += [h.split("; ")[1] for h in headers.getall("X-ModelTrack-Budget", [])]
    # No header while the spend is below the 1 % threshold (half a request's cost); then the sum so far.
    assert spent == [f"spent={n * MINI_COST:.6f}" for n in (1, 2, 3)]


async def test_warn_thresholds_send_headers_and_one_webhook_each_across_processes(
    replay: Any, make_proxy: Any, aiohttp_server: Any, tmp_path: Path
) -> None:
    upstream, upstream_url = replay
    upstream.current = MINI_STREAM
    hooks = Hooks(fail_first=1)  # the first delivery is retried
    server = await aiohttp_server(hooks.app())
    base = str(server.make_url("")).rstrip("/")
    path = write_controls(
        tmp_path,
        {
            "refresh_seconds": 0.2,
            "webhooks": {
                "generic": {"url": base + "/generic", "format": "json"},
                "slack": {"url": base + "/slack", "format": "slack"},
            },
            "budgets": [
                {"name": "w", "period": "monthly", "limit_usd": MINI_COST * 4, "action": "warn", "warn_at": [50, 100]},
                {"name": "s", "period": "monthly", "limit_usd": MINI_COST * 4, "action": "warn", "warn_at": [75]},
            ],
        },
    )
    path2 = write_controls(tmp_path, orjson.loads(Path(path).read_bytes()), "controls2.json")
    doc2 = orjson.loads(Path(path2).read_bytes())
    doc2["budgets"][0]["webhook"] = "generic"
    doc2["budgets"][1]["webhook"] = "slack"
    Path(path).write_bytes(orjson.dumps(doc2))
    Path(path2).write_bytes(orjson.dumps(doc2))
    a = await make_proxy(upstream_url, controls_file=path)
    b = await make_proxy(upstream_url, controls_file=path2, spool_dir=str(tmp_path / "spool-b"))
    seen_headers = []
    async with aiohttp.ClientSession() as s:
        for i in range(8):  # alternate between the two processes sharing one store
            p = (a, b)[i % 2]
            status, headers, _ = await call(s, p.url + "/v1/chat/completions", mini_body())
            assert status == 200  # warn budgets never refuse
            seen_headers.append(headers.getall("X-ModelTrack-Budget", []))
            await p.pipeline.flush()
            await asyncio.sleep(0.25)  # the other process re-reads the store
    for p in (a, b):
        await p.service.controls.settled()
    generic = [body for name, body in hooks.posts if name == "generic"]
    slack = [body for name, body in hooks.posts if name == "slack"]
    assert sorted(body["threshold_percent"] for body in generic) == [50, 100]  # once each, across both
    assert all(body["type"] == "budget_threshold" and body["budget"] == "w" for body in generic)
    # The 50 % alert's first post fails and is retried 0.5 s later, so the 100 % alert may arrive first.
    full = next(body for body in generic if body["threshold_percent"] == 100)
    assert full["spent_usd"] >= full["limit_usd"] and "resets" in full
    assert len(slack) == 1 and list(slack[0]) == ["text"] and "*s*" in slack[0]["text"] and "75%" in slack[0]["text"]
    assert seen_headers[0] == []  # below every threshold
    assert any(h and h[0].startswith("w; spent=") and "; limit=" in h[0] and "; resets=" in h[0] for h in seen_headers)
    retried = sum(
        p.service.metrics.registry.get_sample_value(
            "modeltrack_webhook_deliveries_total", {"webhook": hook, "result": "retried"}
        )
        or 0.0
        for p in (a, b)
        for hook in ("generic", "slack")
    )
    assert retried == 1


# --- routing ---------------------------------------------------------------------------------------------------


async def test_a_downgrade_changes_only_the_model_bytes(replay: Any, make_proxy: Any, tmp_path: Path) -> None:
    upstream, upstream_url = replay
    upstream.current = MINI_STREAM
    path = write_controls(
        tmp_path,
        {"routes": [{"name": "cheaper", "match": {"model": "gpt-4o"}, "action": "downgrade", "to": "gpt-4o-mini"}]},
    )
    proxy = await make_proxy(upstream_url, controls_file=path)
    sent = b'{"model" : "gpt-4o",  "stream":true, "stream_options":{"include_usage":true},\n"messages":[]}'
    async with aiohttp.ClientSession() as s:
        status, headers, _ = await call(s, proxy.url + "/v1/chat/completions", sent)
        assert status == 200 and headers["X-ModelTrack-Routed-From"] == "gpt-4o"
        status, headers, _ = await call(s, proxy.url + "/v1/chat/completions", sent, {"X-ModelTrack-No-Route": "true"})
        assert status == 200 and "X-ModelTrack-Routed-From" not in headers
    first, second = upstream.received
    assert first.body == sent.replace(b'"gpt-4o"', b'"gpt-4o-mini"')
    assert dict((k.lower(), v) for k, v in first.raw_headers)[b"content-length"] == str(len(first.body)).encode()
    assert second.body == sent
    assert all(not k.lower().startswith(b"x-modeltrack") for k, _ in second.raw_headers)  # the opt-out is stripped
    routed, plain = sorted(await proxy.events(), key=lambda e: not e.routed)
    assert (routed.routed, routed.requested_model, routed.route_rule) == (True, "gpt-4o", "cheaper")
    assert routed.model == "gpt-4o-mini-2024-07-18" and routed.cost_usd == pytest.approx(MINI_COST)
    assert (plain.routed, plain.requested_model, plain.route_rule) == (False, "gpt-4o", None)


async def test_routes_block_rewrite_paths_and_follow_their_triggers(
    replay: Any, make_proxy: Any, tmp_path: Path
) -> None:
    upstream, upstream_url = replay
    path = write_controls(
        tmp_path,
        {
            "budgets": [{"name": "month", "period": "monthly", "limit_usd": MINI_COST * 2.5, "action": "warn"}],
            "routes": [
                {
                    "name": "interns",
                    "match": {"app": "intern-*", "model": "claude-*"},
                    "action": "block",
                    "status": 403,
                },
                {
                    "name": "near-limit",
                    "match": {"provider": "gemini"},
                    "action": "downgrade",
                    "to": "gemini-2.0-flash",
                    "when": {"budget": "month", "above_percent": 50},
                },
            ],
        },
    )
    proxy = await make_proxy(upstream_url, controls_file=path)
    gem = "/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse"
    async with aiohttp.ClientSession() as s:
        upstream.current = CLAUDE
        status, _, body = await call(
            s, proxy.url + "/v1/messages", request_body(CLAUDE), {"X-ModelTrack-App": "intern-bot"}
        )
        assert status == 403
        err = orjson.loads(body)
        assert err["error"]["type"] == "route_blocked" and "'interns'" in err["error"]["message"]
        upstream.current = GEMINI
        await call(s, proxy.url + gem, b'{"contents": []}')  # budget at 0 %: not routed
        upstream.current = MINI_STREAM
        for _ in range(2):
            await call(s, proxy.url + "/v1/chat/completions", mini_body())  # 80 % of the month
        await proxy.pipeline.flush()
        upstream.current = GEMINI
        status, headers, _ = await call(s, proxy.url + gem, b'{"contents": []}')
        assert status == 200 and headers["X-ModelTrack-Routed-From"] == "gemini-2.5-flash"
    assert [r.raw_path for r in upstream.received if "gemini" in r.raw_path] == [
        "/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse",
        "/v1beta/models/gemini-2.0-flash:streamGenerateContent?alt=sse",
    ]
    events = await proxy.events()
    blocked = next(e for e in events if e.status == 403)
    assert (blocked.error, blocked.route_rule, blocked.cost_usd, blocked.routed) == (
        "route_blocked",
        "interns",
        0,
        False,
    )
    routed = next(e for e in events if e.routed)
    assert (routed.requested_model, routed.route_rule) == ("gemini-2.5-flash", "near-limit")


# --- the response cache ------------------------------------------------------------------------------------------


async def test_a_cache_hit_is_the_same_bytes_at_no_cost(replay: Any, make_proxy: Any, tmp_path: Path) -> None:
    upstream, upstream_url = replay
    path = write_controls(tmp_path, {"cache": {"rules": [{"match": {"feature": "faq"}}]}})
    proxy = await make_proxy(upstream_url, controls_file=path)
    faq = {"X-ModelTrack-Feature": "faq"}
    async with aiohttp.ClientSession(auto_decompress=False) as s:
        for rec, route in ((CLAUDE, "/v1/messages"), (MINI_STREAM, "/v1/chat/completions")):
            upstream.current = rec
            body = request_body(rec)
            miss = await call(s, proxy.url + route, body, faq)
            hit = await call(s, proxy.url + route, body, faq)
            assert (miss[1]["X-ModelTrack-Cache"], hit[1]["X-ModelTrack-Cache"]) == ("MISS", "HIT")
            assert hit[0] == miss[0] == 200 and hit[2] == miss[2]
            strip = {"date", "x-modeltrack-cache", "server"}
            assert [(k, v) for k, v in hit[1].items() if k.lower() not in strip] == [
                (k, v) for k, v in miss[1].items() if k.lower() not in strip
            ]
            # Key order and spacing of the JSON body do not matter.
            reordered = orjson.dumps(dict(reversed(list(orjson.loads(body).items()))))
            again = await call(s, proxy.url + route, reordered, faq)
            assert again[1]["X-ModelTrack-Cache"] == "HIT" and again[2] == miss[2]
        assert len(upstream.received) == 2
        # Another key never gets this answer; opting out skips the cache; other features are not cached at all.
        other = await call(
            s,
            proxy.url + "/v1/chat/completions",
            request_body(MINI_STREAM),
            {**faq, "Authorization": "Bearer sk-other"},
        )
        assert other[1]["X-ModelTrack-Cache"] == "MISS"
        off = await call(
            s, proxy.url + "/v1/chat/completions", request_body(MINI_STREAM), {**faq, "X-ModelTrack-Cache": "off"}
        )
        assert "X-ModelTrack-Cache" not in off[1]
        plain = await call(s, proxy.url + "/v1/chat/completions", request_body(MINI_STREAM))
        assert "X-ModelTrack-Cache" not in plain[1]
    assert len(upstream.received) == 5
    events = await proxy.events()
    hits = [e for e in events if e.cache_hit]
    assert len(hits) == 4
    for e in hits:
        original = next(o for o in events if not o.cache_hit and o.provider == e.provider)
        assert e.cost_usd == 0 and e.saved_usd == original.cost_usd and e.cost_source == "cache"
        assert (e.input_tokens, e.output_tokens, e.model) == (
            original.input_tokens,
            original.output_tokens,
            original.model,
        )
    registry = proxy.service.metrics.registry
    assert registry.get_sample_value("modeltrack_response_cache_requests_total", {"result": "hit"}) == 4
    saved = sum(
        registry.get_sample_value(
            "modeltrack_cache_savings_usd_total", {"provider": p, "model": m, "team": "", "app": "", "feature": "faq"}
        )
        or 0
        for p, m in {(e.provider, e.model) for e in hits}
    )
    assert saved == pytest.approx(sum(e.saved_usd for e in hits))


async def test_each_client_token_has_its_own_cached_answers(replay: Any, make_proxy: Any, tmp_path: Path) -> None:
    """Two clients with their own X-ModelTrack-Key tokens, the same provider key and the same attribution: each
    has its own cache entries: the token is part of the cache key (controls.cache.cache_key)."""
    upstream, upstream_url = replay
    upstream.current = MINI_STREAM
    path = write_controls(tmp_path, {"cache": {"rules": [{"match": {"feature": "faq"}}]}})
    proxy = await make_proxy(upstream_url, controls_file=path, client_tokens="tok-alpha, tok-beta")
    body = request_body(MINI_STREAM)
    url = proxy.url + "/v1/chat/completions"
    seen = []
    async with aiohttp.ClientSession(auto_decompress=False) as s:
        for token in ("tok-alpha", "tok-alpha", "tok-beta", "tok-beta", "tok-alpha"):
            status, headers, _ = await call(s, url, body, {"X-ModelTrack-Feature": "faq", "X-ModelTrack-Key": token})
            assert status == 200
            seen.append(headers["X-ModelTrack-Cache"])
    assert seen == ["MISS", "HIT", "MISS", "HIT", "HIT"]
    assert len(upstream.received) == 2


async def test_only_complete_successes_are_cached_and_ttls_expire(replay: Any, make_proxy: Any, tmp_path: Path) -> None:
    upstream, upstream_url = replay
    path = write_controls(tmp_path, {"cache": {"ttl_seconds": 60}})
    proxy = await make_proxy(upstream_url, controls_file=path)
    on = {"X-ModelTrack-Cache": "on"}
    error = load("test_openai_responses__test_openai_responses_model_http_error")
    async with aiohttp.ClientSession() as s:
        upstream.current = error
        for _ in range(2):
            status, headers, _ = await call(s, proxy.url + "/v1/responses", b'{"model":"gpt-4o"}', on)
            assert status == 400 and headers["X-ModelTrack-Cache"] == "MISS"
        upstream.current = MINI_STREAM
        short = {**on, "X-ModelTrack-Cache-TTL": "1"}
        assert (await call(s, proxy.url + "/v1/chat/completions", mini_body(), short))[1][
            "X-ModelTrack-Cache"
        ] == "MISS"
        await proxy.service.controls.settled()
        assert (await call(s, proxy.url + "/v1/chat/completions", mini_body(), short))[1]["X-ModelTrack-Cache"] == "HIT"
        await asyncio.sleep(1.1)
        assert (await call(s, proxy.url + "/v1/chat/completions", mini_body(), short))[1][
            "X-ModelTrack-Cache"
        ] == "MISS"
        # A stream cut short is never stored.
        upstream.current = MINI_STREAM
        upstream.tail_delay = 5
        cut = mini_body(user="cut")
        with pytest.raises(asyncio.TimeoutError):
            async with s.post(
                proxy.url + "/v1/chat/completions", data=cut, headers=on, timeout=aiohttp.ClientTimeout(total=0.5)
            ) as r:
                await r.read()
        upstream.tail_delay = 0
        await asyncio.sleep(0.3)
        assert (await call(s, proxy.url + "/v1/chat/completions", cut, on))[1]["X-ModelTrack-Cache"] == "MISS"


# --- attributed tokens ---------------------------------------------------------------------------------------


async def test_a_token_pinned_to_a_team_cannot_spend_for_another(replay: Any, make_proxy: Any, tmp_path: Path) -> None:
    upstream, upstream_url = replay
    upstream.current = MINI_STREAM
    digest = hashlib.sha256(b"tok-search").hexdigest()
    path = write_controls(tmp_path, {"tokens": [{"sha256": digest, "team": "search", "user": "svc-1"}]})
    proxy = await make_proxy(upstream_url, controls_file=path)
    async with aiohttp.ClientSession() as s:
        status, _, _ = await call(
            s,
            proxy.url + "/v1/chat/completions",
            mini_body(),
            {"X-ModelTrack-Key": "tok-search", "X-ModelTrack-Team": "ads", "X-ModelTrack-App": "web"},
        )
        assert status == 200
        status, _, body = await call(s, proxy.url + "/v1/chat/completions", mini_body(), {"X-ModelTrack-Team": "ads"})
        assert status == 401 and orjson.loads(body)["error"]["type"] == "invalid_client_token"
    (ev,) = [e for e in await proxy.events() if e.status == 200]
    assert (ev.team, ev.user, ev.app) == ("search", "svc-1", "web")  # the token wins; what it leaves open stays
    assert all(b"tok-search" not in v for r in upstream.received for _, v in r.raw_headers)
