"""Canary keys in every auth style, through success, upstream errors and connection failures, with debug
logging on: the keys reach the upstream unchanged and appear nowhere else."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from bench.sysinfo import free_port

from .proc import ProxyProcess
from .replay import load


async def test_canary_keys_never_leak(replay: Any, tmp_path: Path) -> None:
    upstream, upstream_url = replay
    tag = uuid.uuid4().hex[:12]
    canary = {
        name: f"CANARY{i}x{tag}"
        for i, name in enumerate(["bearer", "x-api-key", "api-key", "goog", "query", "sigv4", "amz-token", "prompt"])
    }
    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens: connection refused
    env = {f"MODELTRACK_{p}_BASE_URL": upstream_url for p in ("OPENAI", "ANTHROPIC", "GEMINI", "BEDROCK", "AZURE")}
    env |= {"MODELTRACK_MISTRAL_BASE_URL": dead, "MODELTRACK_LOG_LEVEL": "debug", "MODELTRACK_ACCESS_LOG": "true"}
    proxy = ProxyProcess(tmp_path, env)
    await proxy.start()
    generated: list[bytes] = []  # bodies of responses the proxy generated itself
    prompt = orjson.dumps({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": canary["prompt"]}]})
    try:
        async with aiohttp.ClientSession() as s:

            async def post(path: str, headers: dict[str, str], rec: Any, body: bytes = prompt) -> int:
                upstream.current = rec
                async with s.post(proxy.url + path, data=body, headers=headers) as r:
                    data = await r.read()
                    if rec is None or r.status in (404, 413, 502, 503, 504):
                        generated.append(data)
                    return r.status

            ok = load("test_openai__test_run_stream_sync_streams_real_model")
            err = load("test_openai__test_openai_web_search_tool_model_not_supported")
            anth = load("test_anthropic__test_anthropic_cache_real_api")
            gem = load("test_google__test_google_model_stream")
            bed = load("test_bedrock__test_bedrock_model_stream")
            sigv4 = (
                f"AWS4-HMAC-SHA256 Credential={canary['sigv4']}/20261129/us-east-1/bedrock/aws4_request, "
                f"SignedHeaders=host;x-amz-date, Signature={canary['sigv4']}"
            )

            assert await post("/v1/chat/completions", {"Authorization": f"Bearer {canary['bearer']}"}, ok) == 200
            assert (
                upstream.received[-1].raw_headers.count((b"Authorization", f"Bearer {canary['bearer']}".encode())) == 1
            )
            assert await post("/v1/chat/completions", {"Authorization": f"Bearer {canary['bearer']}"}, err) == 400
            assert await post("/v1/messages", {"x-api-key": canary["x-api-key"]}, anth) == 200
            assert (b"x-api-key", canary["x-api-key"].encode()) in upstream.received[-1].raw_headers
            assert (
                await post(
                    "/azure/openai/deployments/gpt-4o/chat/completions?api-version=2024-12-01-preview",
                    {"api-key": canary["api-key"]},
                    ok,
                )
                == 200
            )
            assert (
                await post(
                    "/v1beta/models/gemini-2.0-flash-exp:streamGenerateContent?alt=sse",
                    {"x-goog-api-key": canary["goog"]},
                    gem,
                )
                == 200
            )
            q = f"/v1beta/models/gemini-2.0-flash-exp:streamGenerateContent?alt=sse&key={canary['query']}"
            assert await post(q, {}, gem) == 200
            assert upstream.received[-1].raw_path.endswith(f"key={canary['query']}")
            assert (
                await post(
                    "/bedrock/model/us.amazon.nova-micro-v1%3A0/converse-stream",
                    {"Authorization": sigv4, "X-Amz-Security-Token": canary["amz-token"]},
                    bed,
                )
                == 200
            )
            assert (b"Authorization", sigv4.encode()) in upstream.received[-1].raw_headers
            # Connection refused, unknown route, malformed body, upstream garbage: all with keys attached.
            assert (
                await post("/mistral/v1/chat/completions", {"Authorization": f"Bearer {canary['bearer']}"}, None) == 502
            )
            assert await post(f"/nowhere?key={canary['query']}", {"x-api-key": canary["x-api-key"]}, None) == 404
            assert (
                await post(
                    "/v1/chat/completions",
                    {"Authorization": f"Bearer {canary['bearer']}"},
                    ok,
                    body=b"{not json " + canary["prompt"].encode(),
                )
                == 200
            )
            async with s.get(proxy.url + "/metrics") as r:
                metrics = await r.read()
    finally:
        code = await proxy.stop()
    assert code == 0

    events = proxy.events_cli()
    assert len(events.splitlines()) == 9  # one per proxied request (the 404 never reached a provider)
    db = b"".join(p.read_bytes() for p in tmp_path.glob("events.db*"))
    spool = b"".join(p.read_bytes() for p in (tmp_path / "spool").glob("*")) if (tmp_path / "spool").exists() else b""
    logs = proxy.log_path.read_bytes()
    assert b"DEBUG" in logs, "debug logging must be on for this test to mean anything"
    access = [x for x in logs.splitlines() if b"modeltrack.access" in x]
    assert len(access) == 9, "one access line per proxied request"  # the access log is scanned below too
    assert b"POST openai /v1/chat/completions status=200 model=gpt-4o-mini" in b"\n".join(access)
    assert all(b"latency_ms=" in x and b"cost=" in x and b" in=" in x for x in access)
    assert len(generated) == 2 and all(b"error" in g for g in generated)
    # Response content (from the recordings the upstream replayed) must not be stored or logged either.
    # (taken from the replayed recordings at run time, so no response text is written into this repository)
    canary["response-text"] = json.loads(err.body)["error"]["message"]
    canary["response-delta"] = "".join(
        json.loads(line[6:])["candidates"][0]["content"]["parts"][0]["text"]
        for line in gem.body.decode().splitlines()
        if line.startswith("data: ")
    ).strip()
    for name, value in canary.items():
        for where, blob in (
            ("logs", logs),
            ("store", db),
            ("events", events),
            ("metrics", metrics),
            ("spool", spool),
            ("proxy responses", b"".join(generated)),
        ):
            assert value.encode() not in blob, f"{name} canary leaked into {where}"


async def test_canaries_through_timeouts_disconnects_and_a_spooled_shutdown(replay: Any, tmp_path: Path) -> None:
    """More leak paths: an upstream that hangs (idle timeout), a client that disconnects mid-stream, and a
    shutdown while the store has been unusable since start-up (every event ends up in the spool)."""
    from .rawhttp import RawServer
    from .test_security import evil_hang_after_first_event

    upstream, upstream_url = replay
    upstream.current = load("test_anthropic__test_anthropic_model_web_search_tool_stream")
    upstream.delay = 0.01
    key = f"CANARY-{uuid.uuid4().hex}"
    (tmp_path / "not-a-dir").write_text("a file where the store's directory should be")
    async with RawServer(evil_hang_after_first_event) as hang:
        env = {
            "MODELTRACK_ANTHROPIC_BASE_URL": upstream_url,
            "MODELTRACK_OPENAI_BASE_URL": f"http://127.0.0.1:{hang.port}",
            "MODELTRACK_READ_TIMEOUT": "0.5",
            "MODELTRACK_LOG_LEVEL": "debug",
            "MODELTRACK_STORE": f"sqlite:///{tmp_path}/not-a-dir/events.db",  # unusable: everything spools
        }
        proxy = ProxyProcess(tmp_path, env)
        await proxy.start()
        async with aiohttp.ClientSession() as s:
            with contextlib.suppress(aiohttp.ClientPayloadError):
                async with s.post(
                    proxy.url + "/v1/chat/completions",
                    data=b'{"stream":true}',
                    headers={"Authorization": f"Bearer {key}"},
                ) as r:
                    await r.read()  # truncated after the idle timeout
            r2 = await s.post(proxy.url + "/v1/messages", data=b'{"stream":true}', headers={"x-api-key": key})
            await r2.content.readany()
            r2.close()  # client disconnect mid-stream
            await asyncio.sleep(0.3)
            async with s.get(proxy.url + "/readyz") as r:
                assert r.status == 503 and "store_unreachable" in (await r.json())["problems"]
        assert await proxy.stop() == 0
    spooled = b"".join(p.read_bytes() for p in (tmp_path / "spool").glob("*.jsonl"))
    errors = sorted(json.loads(line)["error"] for line in spooled.splitlines())
    assert errors == ["client_disconnected", "upstream_idle_timeout"], errors  # both events kept, in the spool
    for where, blob in (("logs", proxy.log_path.read_bytes()), ("spool", spooled)):
        assert key.encode() not in blob, f"key leaked into {where}"


async def test_a_crashing_meter_costs_the_usage_not_the_event(
    replay: Any, make_proxy: Any, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # Anthropic's stream meter: an interpreted class (OpenAI's is compiled by scripts/compile, and a compiled
    # class's methods cannot be replaced).
    from modeltrack.providers.anthropic import AnthropicStreamMeter

    secret_output = "response text that must never be logged"

    def explode(self: AnthropicStreamMeter, complete: bool) -> None:
        raise ValueError(f"cannot parse {secret_output!r}")

    monkeypatch.setattr(AnthropicStreamMeter, "finish", explode)
    upstream, upstream_url = replay
    upstream.current = load("test_anthropic__test_anthropic_model_web_search_tool_stream")
    proxy = await make_proxy(upstream_url)
    with caplog.at_level(logging.DEBUG):
        async with (
            aiohttp.ClientSession() as s,
            s.post(proxy.url + "/v1/messages", data=b'{"stream":true}') as r,
        ):
            body = await r.read()
    assert r.status == 200 and body == upstream.current.body  # the client is unaffected
    (ev,) = await proxy.events()
    assert ev.error == "meter_error" and ev.usage_source == "missing" and ev.cost_usd is None
    assert "ValueError" in caplog.text and secret_output not in caplog.text
