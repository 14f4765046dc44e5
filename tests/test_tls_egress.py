"""TLS from the app to the proxy (MODELTRACK_TLS_CERT/KEY) with the three real SDKs, and egress through a real
forward proxy (tinyproxy from apt): CONNECT tunnels for HTTPS upstreams, absolute-form for HTTP ones,
NO_PROXY, proxy credentials, and keys that never reach the proxy's log through a tunnel."""

from __future__ import annotations

import asyncio
import contextlib
import re
import ssl
import subprocess
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import anthropic
import httpx2
import openai
import pytest
import trustme
from aiohttp import web
from bench.sysinfo import free_port
from google import genai
from google.genai import types as gtypes

from .faults import Tinyproxy
from .proc import ProxyProcess
from .replay import ReplayUpstream, load

KEY = "sk-test-not-a-real-key"
EMBEDDINGS = load("test_embeddings__TestOpenAI.test_documents")


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def ca_file(ca: trustme.CA, tmp_path: Path) -> str:
    path = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return str(path)


@contextlib.asynccontextmanager
async def tls_upstream(ca: trustme.CA, upstream: ReplayUpstream) -> AsyncIterator[str]:
    """The replay upstream behind TLS with a certificate for ``localhost`` from the throwaway CA."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost").configure_cert(ctx)
    runner = web.AppRunner(upstream.app())
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0, ssl_context=ctx).start()
    try:
        yield f"https://localhost:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


@contextlib.asynccontextmanager
async def plain_upstream(upstream: ReplayUpstream) -> AsyncIterator[str]:
    runner = web.AppRunner(upstream.app())
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


async def post(url: str, key: str, path: str = "/v1/embeddings") -> tuple[int, bytes]:
    async with (
        aiohttp.ClientSession() as s,
        s.post(url + path, data=b'{"input":"a"}', headers={"Authorization": f"Bearer {key}"}) as r,
    ):
        return r.status, await r.read()


# --- egress ------------------------------------------------------------------------------------------------


async def test_https_upstreams_are_reached_through_a_connect_tunnel(
    tmp_path: Path, ca: trustme.CA, ca_file: str, tinyproxy: Tinyproxy
) -> None:
    upstream = ReplayUpstream(current=EMBEDDINGS)
    canary = f"CANARY-{uuid.uuid4().hex}"
    async with tls_upstream(ca, upstream) as url:
        proxy = ProxyProcess(
            tmp_path,
            {"MODELTRACK_OPENAI_BASE_URL": url, "MODELTRACK_CA_BUNDLE": ca_file, "HTTPS_PROXY": tinyproxy.url},
        )
        await proxy.start()
        try:
            status, body = await post(proxy.url, canary)
        finally:
            assert await proxy.stop() == 0
    assert status == 200 and body == EMBEDDINGS.body
    assert upstream.received[-1].raw_headers.count((b"Authorization", f"Bearer {canary}".encode())) == 1
    log = tinyproxy.text()
    assert f"CONNECT localhost:{url.rsplit(':', 1)[1]}" in log, log[-2000:]
    assert canary not in log, "a tunnelled request's key never reaches the forward proxy"
    started = proxy.log_path.read_text()
    assert f"openai={url}" in started and f"via {tinyproxy.url}" in started


async def test_http_upstreams_go_through_http_proxy_and_no_proxy_bypasses_it(
    tmp_path: Path, tinyproxy: Tinyproxy
) -> None:
    upstream = ReplayUpstream(current=EMBEDDINGS)
    async with plain_upstream(upstream) as url:
        port = url.rsplit(":", 1)[1]
        proxied = ProxyProcess(tmp_path / "p", {"MODELTRACK_OPENAI_BASE_URL": url, "HTTP_PROXY": tinyproxy.url})
        (tmp_path / "p").mkdir()
        await proxied.start()
        try:
            assert (await post(proxied.url, KEY))[0] == 200
        finally:
            assert await proxied.stop() == 0
        assert f"127.0.0.1:{port}/v1/embeddings" in tinyproxy.text()
        before = tinyproxy.text().count(f"127.0.0.1:{port}")
        bypassed = ProxyProcess(
            tmp_path / "b",
            {"MODELTRACK_OPENAI_BASE_URL": url, "HTTP_PROXY": tinyproxy.url, "NO_PROXY": "localhost,127.0.0.1"},
        )
        (tmp_path / "b").mkdir()
        await bypassed.start()
        try:
            assert (await post(bypassed.url, KEY))[0] == 200
        finally:
            assert await bypassed.stop() == 0
    assert tinyproxy.text().count(f"127.0.0.1:{port}") == before, "NO_PROXY hosts are reached directly"
    assert len(upstream.received) == 2


async def test_proxy_credentials_are_sent_and_never_shown(tmp_path: Path, ca: trustme.CA, ca_file: str) -> None:
    password = f"pw{uuid.uuid4().hex[:12]}"
    tp = Tinyproxy(tmp_path, auth=("modeltrack", password))
    upstream = ReplayUpstream(current=EMBEDDINGS)
    try:
        async with tls_upstream(ca, upstream) as url:
            env = {"MODELTRACK_OPENAI_BASE_URL": url, "MODELTRACK_CA_BUNDLE": ca_file}
            wrong = ProxyProcess(tmp_path / "w", {**env, "HTTPS_PROXY": f"http://modeltrack:nope@127.0.0.1:{tp.port}"})
            (tmp_path / "w").mkdir()
            await wrong.start()
            try:
                status, body = await post(wrong.url, KEY)
                # tinyproxy answers bad credentials with 401 (RFC 9110 says 407): either is the proxy's refusal
                assert status == 502 and re.search(rb"egress proxy refused the tunnel \(40[17]\)", body), body
            finally:
                assert await wrong.stop() == 0
            right = ProxyProcess(
                tmp_path / "r", {**env, "HTTPS_PROXY": f"http://modeltrack:{password}@127.0.0.1:{tp.port}"}
            )
            (tmp_path / "r").mkdir()
            await right.start()
            try:
                assert (await post(right.url, KEY))[0] == 200
            finally:
                assert await right.stop() == 0
    finally:
        tp.stop()
    for p in (wrong, right):
        text = p.log_path.read_text()
        assert password not in text and "nope" not in text
        assert "(with credentials)" in text


async def test_an_unreachable_egress_proxy_is_a_clear_502(tmp_path: Path, ca_file: str) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    proxy = ProxyProcess(
        tmp_path,
        {
            "MODELTRACK_OPENAI_BASE_URL": "https://api.example.invalid",
            "HTTPS_PROXY": dead,
            "MODELTRACK_CA_BUNDLE": ca_file,
        },
    )
    await proxy.start()
    try:
        status, body = await post(proxy.url, KEY)
    finally:
        assert await proxy.stop() == 0
    assert status == 502 and b"HTTPS_PROXY" in body and b"connection refused" in body
    assert "HTTPS_PROXY/NO_PROXY" in proxy.log_path.read_text()


# --- TLS from the app to the proxy --------------------------------------------------------------------------


@pytest.fixture
def tls_files(ca: trustme.CA, tmp_path: Path) -> dict[str, str]:
    cert = ca.issue_cert("localhost", "127.0.0.1")
    chain, key = tmp_path / "proxy-chain.pem", tmp_path / "proxy-key.pem"
    cert.private_key_pem.write_to_path(str(key))
    chain.write_bytes(b"".join(blob.bytes() for blob in cert.cert_chain_pems))
    return {"MODELTRACK_TLS_CERT": str(chain), "MODELTRACK_TLS_KEY": str(key)}


async def test_the_three_sdks_over_tls_to_the_proxy(
    tmp_path: Path, replay: Any, ca_file: str, tls_files: dict[str, str]
) -> None:
    upstream, upstream_url = replay
    env = {f"MODELTRACK_{p}_BASE_URL": upstream_url for p in ("OPENAI", "ANTHROPIC", "GEMINI")}
    proxy = ProxyProcess(tmp_path, {**env, **tls_files, "MODELTRACK_METRICS_PORT": str(free_port())}, ca=ca_file)
    await proxy.start()
    base = proxy.url
    try:
        upstream.current = load("test_openai__test_run_stream_sync_streams_real_model")
        oa = openai.AsyncOpenAI(
            base_url=base + "/v1", api_key=KEY, http_client=openai.DefaultAsyncHttpxClient(verify=ca_file)
        )
        chunks = [
            c
            async for c in await oa.chat.completions.create(
                model="gpt-4o-mini",
                messages=[{"role": "user", "content": "hi"}],
                stream=True,
                stream_options={"include_usage": True},
            )
        ]
        await oa.close()
        assert chunks and chunks[-1].usage is not None

        upstream.current = load("test_anthropic__test_anthropic_cache_real_api", 1)
        an = anthropic.AsyncAnthropic(
            base_url=base, api_key=KEY, http_client=anthropic.DefaultAsyncHttpxClient(verify=ca_file)
        )
        msg = await an.messages.create(
            model="claude-sonnet-4-5", max_tokens=10, messages=[{"role": "user", "content": "hi"}]
        )
        await an.close()
        assert msg.usage.output_tokens > 0

        upstream.current = load("test_google__test_google_stream_usage_is_live_mid_stream")
        gm = genai.Client(
            api_key=KEY,
            http_options=gtypes.HttpOptions(
                base_url=base, httpx_async_client=httpx2.AsyncClient(verify=ca_file, timeout=30)
            ),
        )
        parts = [c async for c in await gm.aio.models.generate_content_stream(model="gemini-2.5-flash", contents="1")]
        assert parts and parts[-1].usage_metadata is not None

        # /metrics is served over TLS too (here on its own port); plain HTTP to the TLS port is refused.
        ssl_ctx = ssl.create_default_context(cafile=ca_file)
        async with aiohttp.ClientSession() as s:
            async with s.get(f"https://localhost:{proxy.metrics_port}/metrics", ssl=ssl_ctx) as r:
                assert r.status == 200 and b"modeltrack_requests_total" in await r.read()
            with pytest.raises(aiohttp.ClientError):
                async with s.get(f"http://localhost:{proxy.port}/healthz") as r:
                    await r.read()
            # A client that does not trust the CA cannot talk to the proxy at all.
            with pytest.raises(aiohttp.ClientConnectorCertificateError):
                async with s.get(base + "/healthz") as r:
                    await r.read()
    finally:
        assert await proxy.stop() == 0
    events = proxy.events_cli().splitlines()
    assert len(events) == 3
    assert f"listen=https://127.0.0.1:{proxy.port}" in proxy.log_path.read_text()


async def test_a_bad_certificate_or_bundle_is_refused_at_start_up(tmp_path: Path, tls_files: dict[str, str]) -> None:
    (tmp_path / "not-a-key.pem").write_text("not a key")
    for env, expected in (
        ({"MODELTRACK_TLS_CERT": tls_files["MODELTRACK_TLS_CERT"]}, "go together"),
        ({**tls_files, "MODELTRACK_TLS_KEY": str(tmp_path / "not-a-key.pem")}, "cannot load the certificate"),
        ({"MODELTRACK_CA_BUNDLE": str(tmp_path / "not-a-key.pem")}, "write the path of a PEM file of CA certificates"),
    ):
        proxy = ProxyProcess(tmp_path, env)
        t0 = time.monotonic()
        done = await asyncio.to_thread(
            subprocess.run,
            [proxy.python, "-m", "modeltrack", "serve"],
            env=proxy.env,
            capture_output=True,
            timeout=30,
        )
        assert done.returncode == 2 and expected in done.stderr.decode(), done.stderr
        assert time.monotonic() - t0 < 20
