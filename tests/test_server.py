"""The client-facing HTTP/1.1 server and the upstream client (server.py, upstream.py), over raw sockets.

What an HTTP library would paper over is sent byte by byte here: pipelining, ``Expect: 100-continue``, HTTP/1.0
clients, oversized headers, bodiless statuses and HEAD.
"""

from __future__ import annotations

import asyncio
import os
import resource
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from bench.sysinfo import free_port, rss_kb

from .proc import ProxyProcess, wait_http_ok
from .rawhttp import RawServer, port_of, post, raw, read_request, read_response
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
    asks = b'{"stream":true,"stream_options":{"include_usage":true},"model":"gpt-4o"}'  # nothing injected
    w.write(post("/v1/chat/completions", asks, version=b"1.0"))
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


async def test_chunked_trailers_never_reach_the_upstream_or_the_event(replay: Any, make_proxy: Any) -> None:
    upstream, upstream_url = replay
    upstream.current = EMBEDDINGS
    proxy = await make_proxy(upstream_url)
    r, w = await asyncio.open_connection("127.0.0.1", port_of(proxy.url))
    w.write(
        b"POST /v1/embeddings HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer mine\r\nX-ModelTrack-Team: real\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n"
        b"Authorization: Bearer stolen\r\nX-ModelTrack-Team: forged\r\n\r\n"
    )
    await w.drain()
    head, _ = await asyncio.wait_for(read_response(r), 5)
    w.close()
    assert head.startswith(b"HTTP/1.1 200")
    auth = [v for k, v in upstream.received[-1].raw_headers if k.lower() == b"authorization"]
    assert auth == [b"Bearer mine"]
    (ev,) = await proxy.events()
    assert ev.team == "real"


async def test_strict_parsing_through_the_proxy(replay: Any, make_proxy: Any) -> None:
    upstream, upstream_url = replay
    upstream.current = EMBEDDINGS
    proxy = await make_proxy(upstream_url)
    port = port_of(proxy.url)
    for request, status in (
        (b"GET /v1/models\r\n\r\n", b"400"),
        (b"GET /v1/models HTTP/2.0\r\nHost: x\r\n\r\n", b"505"),
        (b"POST /v1/embeddings HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n", b"400"),
        (b"POST /v1/embeddings HTTP/1.1\r\nContent-Length: 2\r\n\r\n{}", b"400"),
        (b"POST /v1/embeddings HTTP/1.1\r\nHost: a\r\nHost: b\r\nContent-Length: 2\r\n\r\n{}", b"400"),
        (b"POST /v1/embeddings HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n{}\r\n", b"400"),
    ):
        t0 = asyncio.get_running_loop().time()
        out = await raw(port, request)
        assert out.split(b" ", 2)[1] == status, (request, out)
        assert asyncio.get_running_loop().time() - t0 < 2, "answered at once, not after a timeout"
    assert upstream.received == [], "nothing refused reaches the upstream"
    # A POST that asks for an Upgrade is served as HTTP/1.1, body and all.
    out = await raw(
        port,
        b"POST /v1/embeddings HTTP/1.1\r\nHost: x\r\nUpgrade: h2c\r\nConnection: Upgrade\r\nContent-Length: 9\r\n"
        b'\r\n{"a": 1}\n',
    )
    assert out.startswith(b"HTTP/1.1 200") and upstream.received[-1].body == b'{"a": 1}\n'


async def test_a_flood_of_large_bodies_is_bounded_by_the_buffer_ceiling(tmp_path: Path) -> None:
    """40 clients each send a 4 MiB body to an upstream that takes its time: without a ceiling the proxy would
    hold them all at once (a request holds its body about twice while it is forwarded: ~320 MiB); with
    MODELTRACK_MAX_BUFFERED_BODY_BYTES=16 MiB the surplus gets 503 + Retry-After at once, every client gets
    its answer (a lingering close: the refusal is not reset away), and RSS stays bounded."""
    body = b'{"input":"' + b"x" * (4 * 1024 * 1024) + b'"}'

    async def slow_answer(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        while True:
            await read_request(r)
            await asyncio.sleep(0.3)
            w.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}")
            await w.drain()

    async with RawServer(slow_answer) as up:
        proxy = ProxyProcess(
            tmp_path,
            {
                "MODELTRACK_OPENAI_BASE_URL": up.url,
                "MODELTRACK_MAX_BODY_BYTES": str(8 * 1024 * 1024),
                "MODELTRACK_MAX_BUFFERED_BODY_BYTES": str(16 * 1024 * 1024),
            },
        )
        await proxy.start()
        assert proxy.proc is not None
        before = rss_kb(proxy.proc.pid)
        peak = before
        statuses: list[bytes] = []

        async def client() -> None:
            r, w = await asyncio.open_connection("127.0.0.1", proxy.port)
            try:
                w.write(post("/v1/embeddings", body))
                await w.drain()
            except ConnectionError:
                pass  # refused before the body was read: the server closed its side
            head = await asyncio.wait_for(r.readuntil(b"\r\n\r\n"), 20)
            statuses.append(head.split(b" ", 2)[1])
            if b"503" in head[:12]:
                assert b"retry-after: 1" in head.lower()
            w.close()

        async def sample() -> None:
            nonlocal peak
            while True:
                peak = max(peak, rss_kb(proxy.proc.pid))  # type: ignore[union-attr]
                await asyncio.sleep(0.02)

        sampler = asyncio.create_task(sample())
        await asyncio.gather(*(client() for _ in range(40)))
        sampler.cancel()
        assert await proxy.stop() == 0
    served, refused = statuses.count(b"200"), statuses.count(b"503")
    print(f"\nflood: {served} served, {refused} refused with 503, RSS {before // 1024} -> peak {peak // 1024} MB")
    assert served >= 3 and refused >= 10 and served + refused == 40, statuses
    assert peak - before < 3 * 16 * 1024, f"RSS grew by {(peak - before) // 1024} MB"


async def test_a_second_server_on_a_busy_port_fails_before_saying_ready(tmp_path: Path) -> None:
    first = ProxyProcess(tmp_path / "a", {})
    (tmp_path / "a").mkdir()
    await first.start()
    try:
        for args in ([], ["--workers", "2"]):
            env = {**first.env, "MODELTRACK_SPOOL_DIR": str(tmp_path / "b-spool")}
            done = subprocess.run(
                [sys.executable, "-m", "modeltrack", "serve", *args],
                env=env,
                capture_output=True,
                timeout=30,
            )
            err = done.stderr.decode()
            assert done.returncode != 0, err
            assert "cannot listen" in err and "listening on" not in err and "modeltrack ready" not in err, err
        async with aiohttp.ClientSession() as s, s.get(first.url + "/healthz") as r:
            assert r.status == 200
    finally:
        assert await first.stop() == 0


async def test_a_busy_dashboard_port_fails_before_saying_ready(tmp_path: Path) -> None:
    """Issue M, item 16: `serve --ui true` with the dashboard's port taken stops, as a busy proxy port does,
    instead of serving without a dashboard under a banner that says it is up."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = taken.getsockname()[1]
        proxy = ProxyProcess(tmp_path, {})
        env = {**proxy.env, "MODELTRACK_UI_PORT": str(busy)}
        done = subprocess.run(
            [sys.executable, "-m", "modeltrack", "serve", "--ui", "true"], env=env, capture_output=True, timeout=30
        )
    err = done.stderr.decode()
    assert done.returncode == 1, err
    assert f"cannot listen on 127.0.0.1:{busy} (dashboard)" in err, err
    assert "listening on" not in err and "dashboard on" not in err, err


async def test_serve_with_the_dashboard_says_ready_only_when_both_answer(tmp_path: Path) -> None:
    """`make run`'s command: the dashboard answers before the proxy says it listens, and stops with it."""
    ui_port = free_port()
    proxy = ProxyProcess(tmp_path, {"MODELTRACK_UI_PORT": str(ui_port)}, args=["--ui", "true"])
    await proxy.start()
    try:
        async with aiohttp.ClientSession() as s:
            async with s.get(f"http://127.0.0.1:{ui_port}/healthz") as r:
                assert r.status == 200
            async with s.get(proxy.url + "/healthz") as r:
                assert r.status == 200
    finally:
        assert await proxy.stop() == 0
    log = proxy.log_path.read_text()
    assert log.index("dashboard on") < log.index("listening on")
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", ui_port))  # the dashboard stopped with the proxy


async def test_the_open_files_limit_is_raised_to_the_hard_limit(tmp_path: Path) -> None:
    """Started with a soft limit of 256 open files (as many systems start a service with 1,024), the proxy raises
    it to the hard limit before it listens: a burst of streams holds two sockets each, and the pool keeps its idle
    upstream connections."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard <= 256:
        pytest.skip(f"this machine's hard limit on open files is {hard}")
    port = free_port()
    env = {**os.environ, "MODELTRACK_PORT": str(port), "MODELTRACK_STORE": f"sqlite:///{tmp_path}/events.db"}
    env["MODELTRACK_SPOOL_DIR"] = str(tmp_path / "spool")
    proc = subprocess.Popen(
        [sys.executable, "-m", "modeltrack", "serve"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard)),
    )
    try:
        assert await wait_http_ok(f"http://127.0.0.1:{port}/healthz", 20, alive=lambda: proc.poll() is None)
        limits = Path(f"/proc/{proc.pid}/limits").read_text()
        (line,) = [line for line in limits.splitlines() if line.startswith("Max open files")]
        soft = line.split()[3]
        if hard == resource.RLIM_INFINITY:
            assert int(soft) > 256, line
        else:
            assert soft == str(hard), line
    finally:
        proc.terminate()
        proc.wait(20)
