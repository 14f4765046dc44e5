"""The client-facing HTTP/1.1 server and the upstream client (server.py, upstream.py), over raw sockets.

What an HTTP library would paper over is sent byte by byte here: pipelining, ``Expect: 100-continue``, HTTP/1.0
clients, oversized headers, bodiless statuses and HEAD.
"""

from __future__ import annotations

import asyncio
from typing import Any

from .rawhttp import RawServer, port_of, post, read_request, read_response
from .replay import load

EMBEDDINGS = load("test_embeddings__TestOpenAI.test_documents")


async def test_pipelined_requests_are_answered_in_order(replay: Any, make_proxy: Any) -> None:
    upstream, upstream_url = replay
    upstream.current = EMBEDDINGS
    proxy = await make_proxy(upstream_url)
    r, w = await asyncio.open_connection("127.0.0.1", port_of(proxy.url))
    # Three requests in one write: two proxied ones with a health check between them.
    w.write(post("/v1/embeddings") + b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n" + post("/v1/embeddings"))
    await w.drain()
    answers = [await read_response(r) for _ in range(3)]
    w.close()
    assert [h.split(b" ", 2)[1] for h, _ in answers] == [b"200", b"200", b"200"]
    assert answers[0][1] == answers[2][1] == EMBEDDINGS.body
    assert answers[1][1] == b'{"status":"ok"}'
    assert len(await proxy.events()) == 2


async def test_expect_100_continue(replay: Any, make_proxy: Any) -> None:
    upstream, upstream_url = replay
    upstream.current = EMBEDDINGS
    proxy = await make_proxy(upstream_url, max_body_bytes=10_000)
    r, w = await asyncio.open_connection("127.0.0.1", port_of(proxy.url))
    body = b'{"input":"' + b"a" * 2000 + b'"}'
    head = post("/v1/embeddings", body, b"Expect: 100-continue\r\n")
    w.write(head[: -len(body)])
    await w.drain()
    assert await asyncio.wait_for(r.readuntil(b"\r\n\r\n"), 5) == b"HTTP/1.1 100 Continue\r\n\r\n"
    w.write(body)
    status_head, got = await read_response(r)
    assert status_head.startswith(b"HTTP/1.1 200") and got == EMBEDDINGS.body
    assert upstream.received[-1].body == body
    assert not any(k.lower() == b"expect" for k, _ in upstream.received[-1].raw_headers)
    # Too large: no 100, a 413 straight away, and the body is never read.
    w.write(post("/v1/embeddings", b"x" * 20_000, b"Expect: 100-continue\r\n")[:-20_000])
    await w.drain()
    status_head, got = await read_response(r)
    assert status_head.startswith(b"HTTP/1.1 413") and b"request_too_large" in got
    w.close()


async def test_http10_client_gets_a_close_delimited_stream(replay: Any, make_proxy: Any) -> None:
    upstream, upstream_url = replay
    rec = load("test_openai__test_run_stream_sync_streams_real_model")
    upstream.current = rec
    proxy = await make_proxy(upstream_url)
    r, w = await asyncio.open_connection("127.0.0.1", port_of(proxy.url))
    w.write(post("/v1/chat/completions", b'{"stream":true,"model":"gpt-4o"}', version=b"1.0"))
    await w.drain()
    head = await r.readuntil(b"\r\n\r\n")
    body = await asyncio.wait_for(r.read(), 10)  # until the proxy closes: no chunked framing for HTTP/1.0
    w.close()
    assert head.startswith(b"HTTP/1.1 200") and b"transfer-encoding" not in head.lower()
    assert b"connection: close" in head.lower()
    assert body == rec.body
    (ev,) = await proxy.events()
    assert ev.error is None and ev.output_tokens > 0


async def test_oversized_request_headers_get_431(replay: Any, make_proxy: Any) -> None:
    upstream, upstream_url = replay
    proxy = await make_proxy(upstream_url)
    r, w = await asyncio.open_connection("127.0.0.1", port_of(proxy.url))
    w.write(post("/v1/embeddings", extra=b"X-Big: " + b"a" * 70_000 + b"\r\n"))
    await w.drain()
    head, body = await asyncio.wait_for(read_response(r), 5)
    w.close()
    assert head.startswith(b"HTTP/1.1 431") and b"headers_too_large" in body
    assert upstream.received == []


async def test_bodiless_statuses_and_head_pass_through(make_proxy: Any) -> None:
    async def answer(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        while True:
            req = await read_request(r)
            if req.startswith(b"HEAD"):
                w.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 1234\r\n\r\n")
            else:
                w.write(b"HTTP/1.1 204 No Content\r\nx-request-id: req_204\r\n\r\n")
            await w.drain()

    async with RawServer(answer) as up:
        proxy = await make_proxy(f"http://127.0.0.1:{up.port}")
        r, w = await asyncio.open_connection("127.0.0.1", port_of(proxy.url))
        w.write(b"DELETE /v1/files/file-1 HTTP/1.1\r\nHost: x\r\n\r\n")
        await w.drain()
        head, _ = await asyncio.wait_for(read_response(r), 5)
        assert head.startswith(b"HTTP/1.1 204")
        assert b"content-length" not in head.lower() and b"transfer-encoding" not in head.lower()
        w.write(b"HEAD /v1/models HTTP/1.1\r\nHost: x\r\n\r\n")
        await w.drain()
        head, _ = await asyncio.wait_for(read_response(r, head_request=True), 5)
        assert head.startswith(b"HTTP/1.1 200") and b"content-length: 1234" in head.lower()
        # The connection is still in step: one more request on it works.
        w.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        await w.drain()
        head, body = await asyncio.wait_for(read_response(r), 5)
        assert head.startswith(b"HTTP/1.1 200") and body == b'{"status":"ok"}'
        w.close()
    events = await proxy.events()
    assert [(e.status, e.upstream_request_id) for e in events] == [(204, "req_204"), (200, None)]


async def test_upstream_connections_are_reused(replay: Any, make_proxy: Any) -> None:
    upstream, upstream_url = replay
    upstream.current = EMBEDDINGS
    proxy = await make_proxy(upstream_url)
    pool = proxy.service.pools["openai"]
    r, w = await asyncio.open_connection("127.0.0.1", port_of(proxy.url))

    async def one() -> None:
        w.write(post("/v1/embeddings"))
        await w.drain()
        head, _ = await read_response(r)
        assert head.startswith(b"HTTP/1.1 200")

    for _ in range(10):  # a client with a little think time between requests: one connection serves them all
        await one()
        await asyncio.sleep(0.01)
    assert pool.open_connections == 1, "sequential requests should share one keep-alive upstream connection"
    for _ in range(50):  # back to back: a connection released a moment ago is not reused at once (its FIN may
        await one()  # be on the way), so a burst settles on a few warm connections, not one per request
    w.close()
    assert pool.open_connections <= 8, pool.open_connections
