"""Security and failure behaviour (SECURITY.md maps each promise to these tests)."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Awaitable, Iterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from modeltrack.http.headers import forward_headers
from modeltrack.providers import Router, build_providers
from modeltrack.query import EventFilter, open_reader

from .rawhttp import Handler, RawServer, chunk, port_of, raw, read_request
from .replay import ReplayUpstream, load

# --- access control ----------------------------------------------------------------------------------------


async def test_client_tokens_required_and_stripped(replay: Any, make_proxy: Any) -> None:
    upstream, upstream_url = replay
    upstream.current = load("test_embeddings__TestOpenAI.test_documents")
    proxy = await make_proxy(upstream_url, client_tokens="tok-alpha, tok-beta")
    async with aiohttp.ClientSession() as s:
        for headers, status in (
            ({}, 401),
            ({"X-ModelTrack-Key": "tok-alph"}, 401),
            ({"X-ModelTrack-Key": "tok-beta"}, 200),
        ):
            async with s.post(proxy.url + "/v1/embeddings", data=b"{}", headers=headers) as r:
                body = await r.json()
                assert r.status == status, body
                if status == 401:
                    assert body["error"]["type"] == "invalid_client_token"
    assert len(upstream.received) == 1
    assert not any(k.lower() == b"x-modeltrack-key" for k, _ in upstream.received[0].raw_headers)


# --- no SSRF / open relay ----------------------------------------------------------------------------------


async def test_request_targets_never_reach_another_host(replay: Any, make_proxy: Any) -> None:
    upstream, upstream_url = replay
    upstream.current = load("test_embeddings__TestOpenAI.test_documents")
    async with RawServer() as canary:
        c = f"127.0.0.1:{canary.port}"
        proxy = await make_proxy(upstream_url)
        port = port_of(proxy.url)
        attempts = [
            f"POST http://{c}/v1/embeddings HTTP/1.1\r\nHost: {c}\r\n",
            f"POST /v1/embeddings HTTP/1.1\r\nHost: {c}\r\nX-Forwarded-Host: {c}\r\n",
            f"POST //{c}/v1/embeddings HTTP/1.1\r\nHost: x\r\n",
            f"POST /openai//{c}/v1/embeddings HTTP/1.1\r\nHost: x\r\n",
            f"POST /openai@{c}/v1/embeddings HTTP/1.1\r\nHost: x\r\n",
            f"POST /openai/..%2f..%2f{c}/v1 HTTP/1.1\r\nHost: x\r\n",
            f"POST /v1/../../{c}/ HTTP/1.1\r\nHost: x\r\n",
            f"POST /%2F%2F{c}/v1/embeddings HTTP/1.1\r\nHost: x\r\n",
            f"POST /v1/chat%0d%0aHost:%20{c}/completions HTTP/1.1\r\nHost: x\r\n",
            f"POST /openai\\\\{c}/v1 HTTP/1.1\r\nHost: x\r\n",
            f"CONNECT {c} HTTP/1.1\r\nHost: {c}\r\n",
            "TRACE /v1/embeddings HTTP/1.1\r\nHost: x\r\n",
        ]
        statuses = []
        for a in attempts:
            resp = await raw(port, a.encode() + b"Content-Length: 2\r\nConnection: close\r\n\r\n{}")
            statuses.append(resp.split(b" ", 2)[1])
        await asyncio.sleep(0.2)
        assert canary.connections == 0, "the proxy connected somewhere it was not configured to"
        # Whatever was forwarded went to the configured upstream (same origin), nowhere else.
        assert all(s in (b"200", b"400", b"404", b"405") for s in statuses), statuses


async def test_redirects_are_returned_not_followed(make_proxy: Any, aiohttp_server: Any) -> None:
    async with RawServer() as canary:

        async def redirect(request: web.Request) -> web.Response:
            return web.Response(status=307, headers={"Location": f"http://127.0.0.1:{canary.port}/steal"})

        app = web.Application()
        app.router.add_route("*", "/{t:.*}", redirect)
        server = await aiohttp_server(app)
        proxy = await make_proxy(str(server.make_url("")).rstrip("/"))
        async with (
            aiohttp.ClientSession() as s,
            s.post(proxy.url + "/v1/chat/completions", data=b"{}", allow_redirects=False) as r,
        ):
            assert r.status == 307 and r.headers["Location"].endswith("/steal")
        assert canary.connections == 0


# --- bad input ---------------------------------------------------------------------------------------------


async def test_bad_input_gets_clear_errors(replay: Any, make_proxy: Any) -> None:
    upstream, upstream_url = replay
    upstream.current = load("test_anthropic__test_anthropic_cache_real_api")
    proxy = await make_proxy(upstream_url, max_body_bytes=1000, body_timeout=0.5)
    port = port_of(proxy.url)
    async with aiohttp.ClientSession() as s:
        async with s.post(proxy.url + "/v1/messages", data=b"x" * 5000) as r:
            body = await r.json()
            assert r.status == 413 and body["type"] == "error" and body["error"]["type"] == "request_too_large"
        async with s.get(proxy.url + "/nope/v9/x") as r:
            assert r.status == 404 and (await r.json())["error"]["type"] == "unknown_route"
    # Slow body: headers promise 100 bytes, only 5 arrive.
    resp = await raw(port, b"POST /v1/messages HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nhello", timeout=5)
    assert resp.startswith(b"HTTP/1.1 408") and b"request_timeout" in resp
    # A control character in a header is a malformed request: 400 from the server, before any routing.
    resp = await raw(port, b"POST /v1/messages HTTP/1.1\r\nHost: x\r\nX-ModelTrack-Team: a\x01b\r\n\r\n")
    assert resp.startswith(b"HTTP/1.1 400") and b"malformed_request" in resp
    # Oversize and non-UTF-8 attribution: sanitised and capped, the request still served.
    team = b"\xff\xfe" + b"t" * 5000
    resp = await raw(
        port,
        b"POST /v1/messages HTTP/1.1\r\nHost: x\r\nX-ModelTrack-Team: "
        + team
        + b"\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}",
    )
    assert resp.startswith(b"HTTP/1.1 200")
    events = await proxy.events()
    stored = [e.team for e in events if e.team]
    assert stored and all(len(t) <= 128 and t.isprintable() for t in stored)


# --- garbage and faults from the upstream ------------------------------------------------------------------

SSE = load("test_openai__test_run_stream_sync_streams_real_model").body
HEAD_SSE = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"


async def evil_non_json(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
    await read_request(r)
    w.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 9\r\n\r\nnot json!")
    await w.drain()


async def evil_wrong_type(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
    await read_request(r)
    w.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(SSE), SSE))
    await w.drain()


async def evil_reset_mid_stream(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
    await read_request(r)
    w.write(HEAD_SSE + chunk(SSE[: len(SSE) // 2]))
    await w.drain()
    await asyncio.sleep(0.05)
    w.transport.abort()  # RST, no terminating chunk


async def evil_bad_chunking(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
    await read_request(r)
    w.write(HEAD_SSE + chunk(SSE[:300]))
    await w.drain()
    await asyncio.sleep(0.05)  # the client has the headers and the first event by now
    w.write(b"zz\r\nnot a chunk size\r\n")
    await w.drain()
    await asyncio.sleep(0.1)


async def evil_huge_headers(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
    await read_request(r)
    w.write(b"HTTP/1.1 200 OK\r\nX-Big: " + b"a" * 200_000 + b"\r\nContent-Length: 2\r\n\r\n{}")
    await w.drain()


async def evil_hang_after_first_event(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
    await read_request(r)
    w.write(HEAD_SSE + chunk(SSE[:400]))
    await w.drain()
    await asyncio.sleep(5)


async def evil_never_answers(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
    await read_request(r)
    await asyncio.sleep(5)


async def evil_bad_crc(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
    await read_request(r)
    frames = bytearray(load("test_bedrock__test_bedrock_model_stream").body)
    frames[-3] ^= 0xFF  # corrupt the last frame (the metadata event)
    w.write(
        b"HTTP/1.1 200 OK\r\nContent-Type: application/vnd.amazon.eventstream\r\nContent-Length: %d\r\n\r\n"
        % len(frames)
        + bytes(frames)
    )
    await w.drain()


@pytest.mark.parametrize(
    ("handler", "path", "client_sees", "event_error"),
    [
        (evil_non_json, "/v1/chat/completions", "same", "invalid_json"),
        (evil_wrong_type, "/v1/chat/completions", "same", "invalid_json"),
        (evil_reset_mid_stream, "/v1/chat/completions", "truncated", "upstream_reset"),
        # Unparseable chunk framing mid-stream: the parser fails at once and the stream is cut (no wait for the
        # idle deadline, the hang that aiohttp's reader had).
        (evil_bad_chunking, "/v1/chat/completions", "truncated", "upstream_reset"),
        (evil_huge_headers, "/v1/chat/completions", "502", "upstream_bad_response"),
        (evil_hang_after_first_event, "/v1/chat/completions", "truncated", "upstream_idle_timeout"),
        (evil_never_answers, "/v1/chat/completions", "504", "upstream_timeout"),
        (evil_bad_crc, "/bedrock/model/us.amazon.nova-micro-v1%3A0/converse-stream", "same", "message_crc_mismatch"),
    ],
    ids=lambda x: getattr(x, "__name__", None),
)
async def test_garbage_from_upstream(
    handler: Handler, path: str, client_sees: str, event_error: str, make_proxy: Any
) -> None:
    async with RawServer(handler) as evil:
        proxy = await make_proxy(f"http://127.0.0.1:{evil.port}", read_timeout=0.5)
        t0 = time.monotonic()
        async with aiohttp.ClientSession() as s:
            try:
                async with s.post(proxy.url + path, data=b'{"stream":true}') as r:
                    status = r.status
                    body = await r.read()
                    outcome = str(status) if status in (502, 504) else "same"
                    if status in (502, 504):
                        assert event_error.encode() in body  # a clear JSON error in the provider's shape
            except aiohttp.ClientPayloadError:
                outcome = "truncated"
        assert outcome == client_sees
        assert time.monotonic() - t0 < 4, "an idle upstream must hit the idle timeout, not hang the client"
        (ev,) = await proxy.events()
        assert ev.error in event_error.split("|"), ev
        assert ev.usage_source in ("missing", "partial")
        async with aiohttp.ClientSession() as s, s.get(proxy.url + "/healthz") as r:
            assert r.status == 200  # still serving


async def test_client_disconnect_closes_upstream_within_a_second(replay: Any, make_proxy: Any) -> None:
    upstream, upstream_url = replay
    upstream.current = load("test_anthropic__test_anthropic_model_web_search_tool_stream")
    upstream.delay = 0.02  # ~600 chunks: a 12 s stream
    proxy = await make_proxy(upstream_url)
    async with aiohttp.ClientSession() as s:
        r = await s.post(proxy.url + "/v1/messages", data=b'{"stream":true}')
        seen = b""
        while b'"message_start"' not in seen or not seen.split(b'"message_start"', 1)[1].count(b"\n\n"):
            seen += await r.content.readany()  # until the whole first event (with its usage) has passed
        r.close()  # the client goes away mid-stream
        t_close = time.monotonic()
    deadline = t_close + 1.0
    while not upstream.finished and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    assert upstream.finished and upstream.finished[-1] - t_close < 1.0, "upstream request not closed within 1 s"
    await asyncio.sleep(0.1)
    (ev,) = await proxy.events()
    assert ev.error == "client_disconnected" and ev.usage_source in ("partial", "missing")
    assert ev.input_tokens == 2068  # message_start arrived before the disconnect: partial usage is kept


async def test_a_stream_cut_by_shutdown_is_recorded_as_shutdown(replay: Any, make_proxy: Any) -> None:
    """Issue M, item 17: Ctrl-C (SIGINT) or SIGTERM past the grace period cuts the streams in flight; their
    events say ``shutdown``, not ``client_disconnected``: the client did nothing wrong."""
    upstream, upstream_url = replay
    upstream.current = load("test_anthropic__test_anthropic_model_web_search_tool_stream")
    upstream.delay = 0.02  # a 12 s stream
    proxy = await make_proxy(upstream_url)
    async with aiohttp.ClientSession() as s:
        r = await s.post(proxy.url + "/v1/messages", data=b'{"stream":true}')
        seen = b""
        while b'"message_start"' not in seen or not seen.split(b'"message_start"', 1)[1].count(b"\n\n"):
            seen += await r.content.readany()
        await proxy.service.close(grace=0)  # what the second half of a graceful stop does to what is left
        r.close()
    reader = open_reader(proxy.settings.store)
    try:
        (ev,) = await reader.events(EventFilter())
    finally:
        await reader.close()
    assert ev.error == "shutdown" and ev.usage_source in ("partial", "missing")
    assert ev.input_tokens == 2068  # what was metered before the cut is kept


# --- untouched pass-through (property test) ----------------------------------------------------------------


class Harness:
    """Replay upstream + proxy on an event loop in a background thread, so hypothesis can drive it."""

    def __init__(self, tmp: str) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.upstream = ReplayUpstream()
        self.upstream.current = load("test_embeddings__TestOpenAI.test_documents")
        self.tmp = tmp
        self.call(self._start())

    def call(self, coro: Awaitable[Any]) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(30)  # type: ignore[arg-type]

    async def _start(self) -> None:
        from modeltrack.app import ModelTrack
        from modeltrack.config import PROVIDERS, Settings

        self.r1 = web.AppRunner(self.upstream.app())
        await self.r1.setup()
        site = web.TCPSite(self.r1, "127.0.0.1", 0)
        await site.start()
        up = f"http://127.0.0.1:{self.r1.addresses[0][1]}"
        settings_ = Settings.load(
            env={},
            overrides={
                "store": f"sqlite:///{self.tmp}/e.db",
                "spool_dir": f"{self.tmp}/spool",
                "base_urls": {p: up for p in PROVIDERS},
            },
        )
        self.service = ModelTrack(settings_)
        await self.service.start()
        server = await self.service.listen("127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"

    async def send(self, headers: list[tuple[str, str]], body: bytes) -> None:
        """A raw HTTP/1.1 request, so what was sent is exactly these bytes (an HTTP client library may merge
        or reorder fields before they reach the proxy)."""
        port = int(self.url.rsplit(":", 1)[1])
        head = "".join(f"{k}: {v}\r\n" for k, v in headers)
        request = (
            f"POST /v1/embeddings?x=1&y=%20 HTTP/1.1\r\nHost: 127.0.0.1\r\n{head}Content-Length: {len(body)}\r\n\r\n"
        ).encode("latin-1") + body
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(request)
        await writer.drain()
        status = await reader.readline()
        assert status.startswith(b"HTTP/1.1 200"), status
        writer.close()

    def close(self) -> None:
        async def stop() -> None:
            await self.service.close(grace=0)
            await self.r1.cleanup()

        self.call(stop())
        self.loop.call_soon_threadsafe(self.loop.stop)


@pytest.fixture(scope="module")
def harness(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Harness]:
    h = Harness(str(tmp_path_factory.mktemp("prop")))
    yield h
    h.close()


TOKEN = st.text(alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_", min_size=1, max_size=20)
VALUE = st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=60).map(str.strip)
DROPPED = {
    "host",
    "content-length",
    "connection",
    "keep-alive",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "proxy-authorization",
    "proxy-authenticate",
    "proxy-connection",
    "expect",
}


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    headers=st.lists(st.tuples(TOKEN.map(lambda t: "X-" + t), VALUE), max_size=12),
    auth=VALUE.filter(bool),
    body=st.binary(max_size=2000).filter(lambda b: not b.startswith((b"{", b"["))),
    modeltrack=st.lists(
        st.sampled_from(["X-ModelTrack-Team", "X-ModelTrack-App", "X-ModelTrack-Session-Id"]), max_size=3
    ),
)
def test_upstream_receives_exactly_what_the_client_sent(
    harness: Harness, headers: list[tuple[str, str]], auth: str, body: bytes, modeltrack: list[str]
) -> None:
    sent = [
        ("Authorization", f"Bearer {auth}"),
        *headers,
        *[(m, "v") for m in modeltrack],
        ("Connection", "keep-alive"),
        ("x-dup", "1"),
        ("x-dup", "2"),
    ]
    harness.call(harness.send(sent, body))
    got = harness.upstream.received[-1]
    forwarded = [
        (k.decode("latin-1"), v.decode("latin-1"))
        for k, v in got.raw_headers
        if k.decode("latin-1").lower() not in DROPPED
    ]
    expected = [(k, v) for k, v in sent if k.lower() not in DROPPED and not k.lower().startswith("x-modeltrack-")]

    assert forwarded == expected  # same names (spelling too), values, order and duplicates
    assert got.body == body
    assert got.raw_path == "/v1/embeddings?x=1&y=%20"
    assert (b"Authorization", f"Bearer {auth}".encode()) in got.raw_headers


# --- fuzzing the route and header parsing ------------------------------------------------------------------

ROUTER = Router(build_providers({"azure": "https://r.openai.azure.com"}))


@settings(max_examples=500, deadline=None)
@given(path=st.text(max_size=80).map(lambda p: "/" + p), anthropic=st.booleans())
def test_router_never_raises_and_never_changes_origin(path: str, anthropic: bool) -> None:
    res = ROUTER.resolve(path, {"anthropic-version": "1"} if anthropic else {})
    if res is not None:
        provider, rest = res
        assert rest.startswith("/")
        from yarl import URL

        assert URL(provider.base_url + rest, encoded=True).host == URL(provider.base_url).host


_NAMES = st.one_of(st.binary(min_size=1, max_size=30), st.sampled_from([b"X-ModelTrack-Key", b"x-modeltrack-KEY"]))


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(_NAMES, st.one_of(st.just(b""), st.binary(max_size=60))), max_size=20))
def test_header_splitting_never_raises(pairs: list[tuple[bytes, bytes]]) -> None:
    out, attrs, key = forward_headers(pairs)
    assert key == next((v for k, v in pairs if k.lower() == b"x-modeltrack-key"), b"")
    assert all(not k.lower().startswith(b"x-modeltrack-") for k, _ in out)
    assert all((k, v) in pairs for k, v in out)
    props = attrs.pop("properties", {})
    assert all(len(v) <= 128 and v.isprintable() for v in attrs.values())
    assert len(props) <= 16 and all(len(k) <= 64 and len(v) <= 128 for k, v in props.items())


def test_custom_properties_are_read_capped_and_never_forwarded() -> None:
    pairs = [(b"X-ModelTrack-Property-Exp-%d" % i, b"arm-%d" % i) for i in range(40)]
    pairs += [(b"x-modeltrack-prompt", b"summary-v3\x00"), (b"X-ModelTrack-Property-", b"nameless"), (b"A", b"1")]
    pairs.append((b"X-ModelTrack-Property-Long", b"v" * 500))
    out, attrs, key = forward_headers(pairs)
    assert out == [(b"A", b"1")] and key == b""
    assert attrs["prompt_id"] == "summary-v3"
    assert attrs["properties"] == {f"exp-{i}": f"arm-{i}" for i in range(16)}  # the first 16 names, lower-cased


async def test_slowloris_headers_are_cut_off(tmp_path: Any) -> None:
    from .proc import ProxyProcess

    proxy = ProxyProcess(tmp_path, {"MODELTRACK_HEADER_TIMEOUT": "1"})
    await proxy.start()
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        t0 = time.monotonic()
        writer.write(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n")
        for i in range(10):  # one header line every 0.4 s, never finishing
            await asyncio.sleep(0.4)
            try:
                writer.write(b"X-Slow-%d: y\r\n" % i)
                await writer.drain()
                if await asyncio.wait_for(reader.read(1), 0.01) == b"":
                    break
            except (ConnectionError, TimeoutError):
                if reader.at_eof() or writer.is_closing():
                    break
        closed_after = time.monotonic() - t0
        writer.close()
        assert closed_after < 2.5, "a client trickling headers must be disconnected after MODELTRACK_HEADER_TIMEOUT"
        async with aiohttp.ClientSession() as s, s.get(proxy.url + "/healthz") as r:
            assert r.status == 200
    finally:
        assert await proxy.stop() == 0


async def test_upstream_tls_is_verified_and_a_custom_ca_can_be_added(make_proxy: Any, tmp_path: Any) -> None:
    import ssl

    import trustme

    ca = trustme.CA()
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost").configure_cert(server_ctx)
    upstream = ReplayUpstream()
    upstream.current = load("test_embeddings__TestOpenAI.test_documents")
    runner = web.AppRunner(upstream.app())
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0, ssl_context=server_ctx).start()
    url = f"https://localhost:{runner.addresses[0][1]}"
    bundle = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(bundle))
    try:
        untrusted = await make_proxy(url)
        trusted = await make_proxy(url, ca_bundle=str(bundle))
        async with aiohttp.ClientSession() as s:
            async with s.post(untrusted.url + "/v1/embeddings", data=b"{}") as r:
                assert r.status == 502 and (await r.json())["error"]["type"] == "upstream_unreachable"
            async with s.post(trusted.url + "/v1/embeddings", data=b"{}") as r:
                assert r.status == 200 and await r.read() == upstream.current.body
        assert len(upstream.received) == 1  # the unverified connection never sent the request
    finally:
        await runner.cleanup()


async def test_read_timeout_per_provider(make_proxy: Any) -> None:
    async with RawServer(evil_hang_after_first_event) as hang:
        proxy = await make_proxy(f"http://127.0.0.1:{hang.port}", read_timeout=30.0, read_timeouts={"groq": 0.3})
        t0 = time.monotonic()
        async with aiohttp.ClientSession() as s:
            with contextlib.suppress(aiohttp.ClientPayloadError):
                async with s.post(proxy.url + "/groq/v1/chat/completions", data=b'{"stream":true}') as r:
                    await r.read()
        assert time.monotonic() - t0 < 3, "groq's own 0.3 s idle timeout applies, not the global 30 s"
        (ev,) = await proxy.events()
        assert ev.error == "upstream_idle_timeout"


def test_header_names_are_lower_cased_through_a_bounded_memo() -> None:
    """modeltrack.http.names: the memo answers as ``bytes.lower`` does, for names of any case, and stops growing at
    its bound (a client sending made-up names cannot grow it); names past the bound are still lower-cased."""
    from modeltrack.http.names import MEMO_MAX, length_mask, lower, memo_size

    names = [b"X-Made-Up-%d-Name" % i for i in range(MEMO_MAX * 2)]
    assert [lower(n) for n in names] == [n.lower() for n in names]
    assert memo_size() <= MEMO_MAX
    assert lower(b"CONTENT-Length") == b"content-length" and lower(b"X-MODELTRACK-TEAM") == b"x-modeltrack-team"
    # Fields are dropped whatever their case; a name of another length passes untouched, spelling kept.
    pairs = [(b"HOST", b"h"), (b"Content-LENGTH", b"3"), (b"TE", b"trailers"), (b"X-Stainless-Lang", b"python")]
    pairs += [(b"x-MODELTRACK-team", b"ml"), (b"X-Mine-Is-Longer", b"1"), (b"Accept", b"*/*")]
    out, attrs, key = forward_headers(pairs)
    assert out == [(b"X-Stainless-Lang", b"python"), (b"X-Mine-Is-Longer", b"1"), (b"Accept", b"*/*")]
    assert attrs == {"team": "ml"} and key == b""
    # The ModelTrack key: read in any case (the first one), never forwarded, never attribution; also when the
    # Connection header names it.
    canary = b"mt_canary_key_5f2a"
    for connection in ([], [(b"Connection", b"X-ModelTrack-Key, keep-alive")]):
        pairs = [*connection, (b"X-MODELTRACK-key", canary), (b"x-modeltrack-key", b"mt_second"), (b"A", b"1")]
        out, attrs, key = forward_headers(pairs)
        assert key == canary and out == [(b"A", b"1")] and attrs == {}
    # The first one counts even when it is empty (no key, as a header scan reads it): a second is not tried.
    assert forward_headers([(b"X-ModelTrack-Key", b""), (b"X-ModelTrack-Key", canary)])[2] == b""
    assert length_mask([b"ab", b"x" * 80]) == (1 << 2) | (1 << 61)
