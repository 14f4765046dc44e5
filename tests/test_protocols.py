"""Protocol-level tests of the client server (``Connection``) and the upstream client (``UpstreamConnection``,
``UpstreamPool``), driven with fake transports as uvicorn's ``tests/protocols/test_http.py`` does: bytes in,
bytes and state out, no sockets. Each test names the request-path guarantee it holds (SECURITY.md, "Upstream
pool and framing")."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import pytest

from modeltrack.http.limits import Limits
from modeltrack.http.message import Request, RequestError
from modeltrack.http.server import Connection
from modeltrack.http.upstream import BUSY, CLOSED, IDLE, Unsent, UpstreamConnection
from modeltrack.http.upstream_pool import Origin, PoolExhausted, UpstreamPool


class FakeTransport:
    def __init__(self) -> None:
        self.buffer = b""
        self.closed = False
        self.aborted = False
        self.read_paused = False
        self.pauses = 0
        self.buffered = 0  # what get_write_buffer_size() reports
        self.eof = False  # write_eof(): a half-close, what a lingering close starts with

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default

    def write(self, data: bytes) -> None:
        assert not self.closed, "write after close"
        self.buffer += data

    def writelines(self, parts: Any) -> None:
        for p in parts:
            self.write(p)

    def close(self) -> None:
        self.closed = True

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        self.eof = True

    @property
    def ending(self) -> bool:
        """Closed, or half-closed for a lingering close."""
        return self.closed or self.eof

    def abort(self) -> None:
        self.closed = self.aborted = True

    def is_closing(self) -> bool:
        return self.closed

    def pause_reading(self) -> None:
        self.read_paused = True
        self.pauses += 1

    def resume_reading(self) -> None:
        self.read_paused = False

    def get_write_buffer_size(self) -> int:
        return self.buffered

    def take(self) -> bytes:
        out, self.buffer = self.buffer, b""
        return out


# --- the client-facing server ------------------------------------------------------------------------------


class Recorder:
    """A handler that records each request and answers 200 with the body it read (or the error it got)."""

    def __init__(self, read: bool = True) -> None:
        self.requests: list[Request] = []
        self.errors: list[RequestError] = []
        self.read = read

    async def __call__(self, req: Request, conn: Connection) -> None:
        self.requests.append(req)
        body = b""
        if self.read:
            try:
                body = await asyncio.wait_for(req.read(), 2)
            except RequestError as exc:
                self.errors.append(exc)
                return conn.respond_error(exc)
        conn.respond(200, b"got:" + body)


def server(handler: Any = None, **kw: Any) -> tuple[Connection, FakeTransport, Recorder]:
    rec = handler or Recorder()
    conn = Connection(rec, max_body=kw.pop("max_body", 1 << 20), header_timeout=5, **kw)
    t = FakeTransport()
    conn.connection_made(t)  # type: ignore[arg-type]
    return conn, t, rec


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


def status_of(raw: bytes) -> int:
    return int(raw.split(b" ", 2)[1])


async def test_chunked_trailers_are_dropped_not_merged_into_headers() -> None:
    conn, t, rec = server()
    conn.data_received(
        b"POST /v1/x HTTP/1.1\r\nHost: h\r\nAuthorization: Bearer mine\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"3\r\nabc\r\n0\r\nAuthorization: Bearer stolen\r\nX-ModelTrack-Team: forged\r\n\r\n"
    )
    await settle()
    (req,) = rec.requests
    assert [k for k, _ in req.headers] == [b"Host", b"Authorization", b"Transfer-Encoding"]
    assert req.header(b"authorization") == b"Bearer mine"
    assert t.take().endswith(b"got:abc")


@pytest.mark.parametrize(
    ("request_line", "status"),
    [
        (b"GET /\r\n\r\n", 400),  # no version (HTTP/0.9 style)
        (b"GET / HTTP/2.0\r\nHost: h\r\n\r\n", 505),
        (b"GET / HTTP/0.9\r\nHost: h\r\n\r\n", 400),
        (b"GET / HTTP/1.2\r\nHost: h\r\n\r\n", 400),  # llhttp refuses it outright
        (b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\n\r\n", 400),  # no Host
        (b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400),
        (b"GET / HTTP/1.0\r\nHost: a\r\nHost: b\r\n\r\n", 400),
        (b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: gzip\r\n\r\nabc", 400),
        (b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: gzip, chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n", 400),
        (b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n", 400),
    ],
)
async def test_strict_request_parsing(request_line: bytes, status: int) -> None:
    conn, t, rec = server()
    conn.data_received(request_line + b"GET /next HTTP/1.1\r\nHost: h\r\n\r\n")
    await settle()
    out = t.take()
    assert status_of(out) == status, out
    assert b'"error"' in out
    assert t.ending, "a refused request closes the connection (a lingering close: FIN, then drain)"
    assert rec.requests == [], "the handler never sees a refused request, nor what follows it"


async def test_http10_without_host_is_fine() -> None:
    conn, t, rec = server()
    conn.data_received(b"GET /ok HTTP/1.0\r\n\r\n")
    await settle()
    assert status_of(t.take()) == 200 and len(rec.requests) == 1


async def test_a_bad_chunk_size_is_a_400_at_once_not_a_408_later() -> None:
    conn, t, rec = server()
    conn.data_received(b"POST /v1/x HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n")
    await settle()
    assert rec.requests and not t.buffer, "the handler is waiting for the rest of the body"
    conn.data_received(b"zz\r\nnot a size\r\n")
    await settle()
    out = t.take()
    assert status_of(out) == 400 and b"malformed_request" in out
    assert [e.status for e in rec.errors] == [400]
    assert t.ending


async def test_a_request_after_a_good_one_with_broken_framing_is_refused_in_turn() -> None:
    conn, t, _rec = server()
    conn.data_received(b"GET /a HTTP/1.1\r\nHost: h\r\n\r\nGARBAGE\x00\r\n\r\n")
    await settle()
    out = t.take()
    assert out.startswith(b"HTTP/1.1 200") and b"HTTP/1.1 400" in out  # answered in order, then closed
    assert t.ending


async def test_post_with_upgrade_keeps_its_body_and_the_connection_stays_in_step() -> None:
    conn, t, rec = server()
    conn.data_received(
        b"POST /v1/x HTTP/1.1\r\nHost: h\r\nUpgrade: h2c\r\nConnection: Upgrade, HTTP2-Settings\r\n"
        b"Content-Length: 5\r\n\r\nhello"
        b"POST /v1/y HTTP/1.1\r\nHost: h\r\nContent-Length: 2\r\n\r\nok"
    )
    await settle()
    await settle()
    out = t.take()
    assert out.count(b"HTTP/1.1 200") == 2
    assert b"got:hello" in out and b"got:ok" in out
    assert [r.target for r in rec.requests] == [b"/v1/x", b"/v1/y"]


async def test_chunked_post_with_upgrade_keeps_its_body() -> None:
    conn, t, _rec = server()
    conn.data_received(
        b"POST /v1/x HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nConnection: upgrade\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
    )
    await settle()
    assert t.take().endswith(b"got:hello")


async def test_no_100_continue_for_http10_clients() -> None:
    for version, expected in ((b"1.1", True), (b"1.0", False)):
        conn, t, _rec = server()
        conn.data_received(b"POST /x HTTP/%s\r\nHost: h\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n" % version)
        await settle()
        assert (b"100 Continue" in t.buffer) is expected
        conn.data_received(b"ok")
        await settle()
        assert t.take().endswith(b"got:ok")


async def test_a_fragment_never_reaches_the_target() -> None:
    conn, _t, rec = server()
    conn.data_received(b"GET /v1/models?a=1#frag?b=2 HTTP/1.1\r\nHost: h\r\n\r\n")
    await settle()
    assert rec.requests[0].target == b"/v1/models?a=1"


async def test_concurrency_ceiling_answers_503_with_retry_after() -> None:
    gate = asyncio.Event()

    async def slow(req: Request, conn: Connection) -> None:
        await gate.wait()
        conn.respond(200, b"ok")

    limits = Limits(max_requests=1)
    c1, t1, _ = server(slow, limits=limits)
    c2, t2, _ = server(slow, limits=limits)
    c1.data_received(b"GET /a HTTP/1.1\r\nHost: h\r\n\r\n")
    c2.data_received(b"GET /b HTTP/1.1\r\nHost: h\r\n\r\n")
    await settle()
    out = t2.take()
    assert status_of(out) == 503 and b"retry-after: 1\r\n" in out.lower() and t2.ending
    gate.set()
    await settle()
    assert status_of(t1.take()) == 200
    assert limits.requests == 0 and limits.buffered == 0, "admitted requests release what they took"


async def test_body_buffer_ceiling_refuses_before_reading_and_while_reading() -> None:
    gate = asyncio.Event()

    async def hold(req: Request, conn: Connection) -> None:
        try:
            await req.read()
        except RequestError as exc:
            return conn.respond_error(exc)
        await gate.wait()
        conn.respond(200, b"ok")

    limits = Limits(max_buffered=1000)
    c1, t1, _ = server(hold, limits=limits)
    c1.data_received(b"POST /a HTTP/1.1\r\nHost: h\r\nContent-Length: 800\r\n\r\n" + b"x" * 800)
    await settle()
    assert limits.buffered == 800
    # A promised size that does not fit: refused before its body is read.
    c2, t2, _ = server(hold, limits=limits)
    c2.data_received(b"POST /b HTTP/1.1\r\nHost: h\r\nContent-Length: 300\r\n\r\n")
    await settle()
    assert status_of(t2.take()) == 503 and t2.ending
    # A chunked body that grows past the ceiling: refused as it arrives.
    c3, t3, _ = server(hold, limits=limits)
    c3.data_received(b"POST /c HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n")
    c3.data_received(b"64\r\n" + b"y" * 100 + b"\r\n")
    c3.data_received(b"c8\r\n" + b"y" * 200 + b"\r\n")
    await settle()
    assert status_of(t3.take()) == 503 and t3.ending
    gate.set()
    await settle()
    assert status_of(t1.take()) == 200
    assert limits.requests == 0 and limits.buffered == 0


async def test_never_writes_past_content_length() -> None:
    async def liar(req: Request, conn: Connection) -> None:
        conn.start(200, b"OK", b"", 5, b"abc")
        conn.write(b"defgh")  # three bytes too many
        conn.finish()

    conn, t, _ = server(liar)
    conn.data_received(b"GET /a HTTP/1.1\r\nHost: h\r\n\r\nGET /b HTTP/1.1\r\nHost: h\r\n\r\n")
    await settle()
    out = t.take()
    head, body = out.split(b"\r\n\r\n", 1)
    assert b"content-length: 5" in head and body == b"abcde"
    assert t.closed, "the connection is closed: the rest would read as the next response"


async def test_103_goes_to_http11_clients_only() -> None:
    async def hints(req: Request, conn: Connection) -> None:
        conn.informational(103, b"Early Hints", b"link: </a.css>; rel=preload\r\n")
        conn.respond(200, b"ok")

    for version, expected in ((b"1.1", True), (b"1.0", False)):
        conn, t, _ = server(hints)
        conn.data_received(b"GET / HTTP/%s\r\nHost: h\r\n\r\n" % version)
        await settle()
        out = t.take()
        assert out.startswith(b"HTTP/1.1 103 Early Hints\r\nlink: </a.css>; rel=preload\r\n\r\n") is expected
        assert b"HTTP/1.1 200" in out


async def test_write_pause_is_idempotent_and_reaches_the_listener_once() -> None:
    class Listener:
        pauses = resumes = 0

        def pause(self) -> None:
            self.pauses += 1

        def resume(self) -> None:
            self.resumes += 1

    conn, _, _ = server()
    conn.flow = listener = Listener()
    conn.pause_writing()
    conn.pause_writing()
    conn.resume_writing()
    conn.resume_writing()
    assert (listener.pauses, listener.resumes) == (1, 1)


class SlowHandler:
    """Answers each request after ``delay`` seconds."""

    def __init__(self, delay: float) -> None:
        self.delay = delay
        self.served = 0

    async def __call__(self, req: Request, conn: Connection) -> None:
        await asyncio.sleep(self.delay)
        self.served += 1
        conn.respond(200, b"ok")


async def test_the_head_timer_restarts_after_each_response_and_closes_an_idle_connection() -> None:
    """The head's clock (slowloris, idle keep-alive) starts when the connection opens and after each response,
    and stops while a request is served. A connection sending a request every 0.2 s outlives several 0.3 s
    timeouts; a request served for 0.5 s is not cut; once idle, a connection is closed 0.3 s after its last
    response, not sooner and not much later (the timer is a deadline, re-armed when it fires early:
    modeltrack.http.reader)."""
    loop = asyncio.get_running_loop()

    async def closed_after(t: FakeTransport, since: float) -> float:
        while not t.closed and loop.time() < since + 2:
            await asyncio.sleep(0.005)
        assert t.closed, "an idle connection must be closed after the header timeout"
        return loop.time() - since

    for delays in ([0.0] * 6, [0.5, 0.0, 0.5]):
        handler = SlowHandler(0.0)
        conn = Connection(handler, max_body=1 << 20, header_timeout=0.3)
        t = FakeTransport()
        conn.connection_made(t)  # type: ignore[arg-type]
        for n, delay in enumerate(delays, 1):
            await asyncio.sleep(0.2)
            handler.delay = delay
            conn.data_received(b"GET /x HTTP/1.1\r\nHost: h\r\n\r\n")
            while handler.served < n:
                await asyncio.sleep(0.005)
            await settle()
            assert not t.closed, "a connection whose requests come in time, however long they take, stays open"
        assert 0.25 <= await closed_after(t, loop.time()) < 0.6
        assert t.take().count(b"HTTP/1.1 200") == len(delays)


# --- the upstream client -----------------------------------------------------------------------------------


class Exchange:
    """A receiver recording what the connection reports."""

    def __init__(self) -> None:
        self.events: list[Any] = []
        self.body = b""

    def on_informational(self, status: int, reason: bytes, headers: list[tuple[bytes, bytes]]) -> None:
        self.events.append(("info", status))

    def on_head(self, status: int, reason: bytes, headers: Any, length: int | None, codings: bytes) -> None:
        self.events.append(("head", status, length, codings))

    def on_body(self, data: bytes) -> None:
        self.body += data

    def on_complete(self) -> None:
        self.events.append("complete")

    def on_error(self, kind: str, retryable: bool) -> None:
        self.events.append(("error", kind, retryable))


async def fake_connect(conn: UpstreamConnection) -> None:
    conn.connection_made(FakeTransport())  # type: ignore[arg-type]


def pool(**kw: Any) -> UpstreamPool:
    return UpstreamPool(
        Origin.parse("http://up.example:80"), None, kw.pop("timeout", 1.0), connector=fake_connect, **kw
    )


async def connected(p: UpstreamPool) -> tuple[UpstreamConnection, FakeTransport]:
    """A new connection, as ``acquire`` hands it out: counted by the pool, connected, busy."""
    conn = await p.acquire(fresh=True)
    assert conn.state == BUSY and not conn.reused
    return conn, conn.transport  # type: ignore[return-value]


def age(conn: UpstreamConnection, seconds: float = 1.0) -> None:
    """Pretend the connection was released ``seconds`` ago (past the fresh-release window)."""
    conn.idle_since -= seconds


def send(conn: UpstreamConnection, method: str = "POST") -> Exchange:
    ex = Exchange()
    conn.send(ex, method, b"%s /v1/x HTTP/1.1\r\nHost: up\r\n\r\n" % method.encode(), b"{}")
    return ex


OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


async def test_an_extra_response_in_the_same_write_closes_the_connection() -> None:
    p = pool()
    conn, t = await connected(p)
    ex = send(conn)
    conn.data_received(OK + b"HTTP/1.1 200 OK\r\nContent-Length: 7\r\n\r\nforeign")
    assert ex.events == [("head", 200, 2, b""), "complete"] and ex.body == b"ok"
    assert conn.state == CLOSED and t.aborted
    assert p.idle_connections == 0, "a connection that sent an unrequested response is never pooled"


async def test_bytes_after_a_complete_response_close_the_connection() -> None:
    p = pool()
    conn, _t = await connected(p)
    ex = send(conn)
    conn.data_received(OK + b"garbage")
    assert ex.events == [("head", 200, 2, b""), "complete"]
    assert conn.state == CLOSED and p.idle_connections == 0


async def test_an_unrequested_response_on_an_idle_connection_closes_it() -> None:
    p = pool()
    conn, t = await connected(p)
    send(conn)
    conn.data_received(OK)
    assert conn.state == IDLE and p.idle_connections == 1
    conn.data_received(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nXX")
    assert conn.state == CLOSED and p.idle_connections == 0 and t.aborted


async def test_release_is_idempotent_and_a_busy_connection_is_never_handed_out() -> None:
    p = pool()
    conn, _ = await connected(p)
    send(conn)
    conn.data_received(OK)
    p.release(conn)
    p.release(conn)
    assert p.idle_connections == 1
    age(conn)
    got = await p.acquire()
    assert got is conn and conn.state == BUSY and conn.reused
    p.release(conn)
    p.release(conn)
    assert p.idle_connections == 1
    age(conn)
    a = await p.acquire()
    p._idle.append(a)  # even if a bug put a busy connection on the idle list ...
    b = await p.acquire()
    assert b is not a and a.state == BUSY, "... it is not handed out"


async def test_a_connection_paused_for_a_slow_client_is_resumed_before_it_is_pooled() -> None:
    p = pool()
    conn, t = await connected(p)

    class PausingExchange(Exchange):
        def on_body(self, data: bytes) -> None:
            super().on_body(data)
            conn.pause()  # the client's buffer filled while the last piece was written

    ex = PausingExchange()
    conn.send(ex, "POST", b"POST / HTTP/1.1\r\nHost: up\r\n\r\n", b"")
    conn.data_received(OK)
    assert ex.events[-1] == "complete"
    assert conn.state == IDLE and not conn.reading_paused and not t.read_paused
    conn.pause()
    conn.pause()
    conn.resume()
    assert t.pauses == 2 and not t.read_paused, "pause and resume are idempotent"


async def test_eof_on_an_idle_connection_drops_it_from_the_pool_at_once() -> None:
    p = pool()
    conn, _t = await connected(p)
    send(conn)
    conn.data_received(OK)
    assert p.idle_connections == 1
    assert conn.eof_received() is False
    assert conn.state == CLOSED and p.idle_connections == 0 and p.open_connections == 0


async def test_an_idle_connection_whose_peer_closed_unseen_is_swept_before_reuse() -> None:
    """The upstream's FIN is in the socket but the loop has not read it yet (it was busy elsewhere): the pool's
    sweep, one epoll wait over every open socket, finds it and closes the connection instead of handing it out.
    Real sockets (socket pairs), since the sweep asks the kernel; 300 idle connections, the oldest one closed."""
    loop = asyncio.get_running_loop()
    peers: list[socket.socket] = []

    async def connect(conn: UpstreamConnection) -> None:
        ours, theirs = socket.socketpair()
        peers.append(theirs)
        await loop.create_connection(lambda: conn, sock=ours)

    p = UpstreamPool(Origin.parse("http://up.example:80"), None, 1.0, connector=connect, max_idle=1000)
    conns = [await p.acquire(fresh=True) for _ in range(300)]
    try:
        for conn in conns:
            send(conn)
            conn.data_received(OK)
            age(conn)
        assert p.idle_connections == 300 and conns[0].state == IDLE
        peers[0].close()  # no await between this and the acquire: the loop never runs in between
        again = await p.acquire()
        assert again is conns[1], "the oldest idle connection had a pending EOF: it must not be handed out"
        assert conns[0].state == CLOSED and p.idle_connections == 298 and p.open_connections == 299
    finally:
        p.close()
        for conn in conns:
            conn.close()
        for peer in peers:
            peer.close()


async def test_idle_connections_past_the_idle_timeout_are_closed_not_reused() -> None:
    """The two oldest idle connections are past the idle timeout: both are closed and taken off the list, the
    third is handed out; a busy connection that closes meanwhile leaves the idle list as it was."""
    p = pool(idle_timeout=30.0)
    a, _ = await connected(p)
    b, _ = await connected(p)
    c, _ = await connected(p)
    busy, _ = await connected(p)
    for conn, seconds in ((a, 40.0), (b, 31.0), (c, 1.0)):
        send(conn)
        conn.data_received(OK)
        age(conn, seconds)
    busy.close()
    assert p.idle_connections == 3 and p.open_connections == 3
    assert await p.acquire() is c
    assert a.state == CLOSED and b.state == CLOSED
    assert p.idle_connections == 0 and p.open_connections == 1


async def test_a_closing_connection_is_never_handed_out() -> None:
    p = pool()
    conn, t = await connected(p)
    send(conn)
    conn.data_received(OK)
    t.closed = True  # the transport is closing (e.g. an error was seen) before we noticed
    age(conn)
    assert await p.acquire() is not conn
    assert conn.state == CLOSED


async def test_a_connection_released_a_moment_ago_is_not_reused_while_a_new_one_can_be_opened() -> None:
    """An upstream that closes right after answering has its FIN on the way: a busy proxy that reused the
    connection at once would write a POST into a closed connection, and that POST cannot be sent again."""
    p = pool()
    conn, _ = await connected(p)
    send(conn)
    conn.data_received(OK)
    other = await p.acquire()
    assert other is not conn and not other.reused, "a fresh release: a new connection instead"
    age(conn)
    assert await p.acquire() is conn, "once past the window, the idle connection is reused"


async def test_idle_connections_are_reused_oldest_first() -> None:
    p = pool()
    a, _ = await connected(p)
    b, _ = await connected(p)
    for c in (a, b):
        send(c)
        c.data_received(OK)
        age(c)
    assert await p.acquire() is a and await p.acquire() is b


async def test_at_the_connection_cap_a_fresh_release_is_reused_after_one_more_read() -> None:
    p = pool(max_connections=1)
    conn, _t = await connected(p)
    send(conn)
    conn.data_received(OK)
    assert await p.acquire() is conn  # nothing else may be opened: checked once more, then reused
    send(conn)
    conn.data_received(OK)
    # the upstream's FIN is read during that one more loop turn:
    asyncio.get_running_loop().call_soon(conn.eof_received)
    other = await p.acquire()
    assert other is not conn and conn.state == CLOSED


async def test_unsent_when_the_connection_is_already_closing() -> None:
    p = pool()
    conn, t = await connected(p)
    t.closed = True
    with pytest.raises(Unsent):
        send(conn)


@pytest.mark.parametrize(
    ("method", "reused", "still_buffered", "retryable"),
    [
        ("POST", True, False, False),  # may have reached the provider: never sent twice
        ("POST", True, True, True),  # every byte still in our buffer: provably never left
        ("GET", True, False, True),  # idempotent, nothing came back on a reused connection
        ("GET", False, False, False),  # a fresh connection that fails is a real failure
    ],
)
async def test_retry_only_when_the_request_provably_never_left(
    method: str, reused: bool, still_buffered: bool, retryable: bool
) -> None:
    p = pool()
    conn, t = await connected(p)
    conn.reused = reused
    ex = send(conn, method)
    if still_buffered:
        t.buffered = len(t.buffer)
    conn.connection_lost(None)
    assert ex.events == [("error", "bad_response", retryable)]


async def test_no_retry_once_any_byte_came_back() -> None:
    p = pool()
    conn, _t = await connected(p)
    conn.reused = True
    ex = send(conn, "GET")
    conn.data_received(b"HTTP/1.1 200")
    conn.connection_lost(None)
    assert ex.events == [("error", "bad_response", False)]


async def test_per_origin_connection_cap_waits_then_gives_up() -> None:
    p = pool(timeout=0.2, max_connections=1)
    conn, _ = await connected(p)
    waiter = asyncio.create_task(p.acquire())
    await asyncio.sleep(0.05)
    assert not waiter.done(), "the second acquire waits for the only connection"
    send(conn)
    conn.data_received(OK)  # released: the waiter takes it
    assert await asyncio.wait_for(waiter, 1) is conn
    with pytest.raises(PoolExhausted):
        await p.acquire()


async def test_idle_cap_closes_the_surplus() -> None:
    p = pool(max_idle=1)
    a, _ = await connected(p)
    b, tb = await connected(p)
    for c in (a, b):
        send(c)
        c.data_received(OK)
    assert p.idle_connections == 1 and b.state == CLOSED and tb.aborted


async def test_a_1xx_with_a_body_is_a_bad_response_and_nothing_of_it_is_delivered() -> None:
    p = pool()
    conn, _t = await connected(p)
    ex = send(conn)
    conn.data_received(b"HTTP/1.1 150 X\r\nContent-Length: 5\r\n\r\nHELLO" + OK)
    assert ex.events == [("error", "bad_response", False)] and ex.body == b""
    assert conn.state == CLOSED


async def test_101_is_a_bad_response() -> None:
    p = pool()
    conn, _ = await connected(p)
    ex = send(conn)
    conn.data_received(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\nConnection: upgrade\r\n\r\nraw")
    assert ex.events == [("error", "bad_response", False)]


async def test_interim_responses_are_reported_and_state_is_cleared_per_message() -> None:
    p = pool()
    conn, _ = await connected(p)
    ex = send(conn)
    conn.data_received(
        b"HTTP/1.1 103 Early Hints\r\nLink: </a>; rel=preload\r\n\r\n"
        b"HTTP/1.1 100 Continue\r\n\r\n"
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
    )
    assert ex.events == [("info", 103), ("info", 100), ("head", 200, 2, b""), "complete"]
    assert ex.body == b"ok"
    assert conn._headers == [(b"Content-Length", b"2")], "the final response's headers only"


@pytest.mark.parametrize("status_line", [b"HTTP/1.1 099 Odd", b"HTTP/1.1 000 Zero"])
async def test_status_codes_below_100_are_bad_responses(status_line: bytes) -> None:
    p = pool()
    conn, _ = await connected(p)
    ex = send(conn)
    conn.data_received(status_line + b"\r\nContent-Length: 2\r\n\r\nok")
    assert ex.events == [("error", "bad_response", False)]


async def test_a_transfer_coding_other_than_chunked_is_close_delimited_and_named() -> None:
    p = pool()
    conn, _ = await connected(p)
    ex = send(conn)
    conn.data_received(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n\x1f\x8bpart")
    conn.data_received(b"rest")
    assert ex.events == [("head", 200, None, b"gzip")]
    conn.connection_lost(None)
    assert ex.events[-1] == "complete" and ex.body == b"\x1f\x8bpartrest", "not truncated"
    # gzip then chunked: llhttp de-chunks, the gzip coding is still on the body and must be named
    conn2, _ = await connected(p)
    ex2 = send(conn2)
    conn2.data_received(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n2\r\nab\r\n0\r\n\r\n")
    assert ex2.events == [("head", 200, None, b"gzip"), "complete"] and ex2.body == b"ab"


async def test_chunked_that_is_not_the_last_coding_is_a_bad_response() -> None:
    p = pool()
    conn, _ = await connected(p)
    ex = send(conn)
    conn.data_received(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, gzip\r\n\r\n2\r\nab\r\n0\r\n\r\n")
    assert ex.events == [("error", "bad_response", False)]


async def test_head_answers_report_the_upstream_framing_not_a_zero_length() -> None:
    p = pool()
    conn, _ = await connected(p)
    ex = send(conn, "HEAD")
    conn.data_received(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
    assert ex.events == [("head", 200, None, b""), "complete"]
    assert conn.state == CLOSED, "a HEAD's connection is not reused (httptools cannot skip its body)"


async def test_an_answer_that_completes_after_the_client_left_is_dropped_quietly() -> None:
    """Seen in the bench at the end of each wrk run: the client closes while its request is in flight, and the
    upstream's answer completes in the same loop turn, before the handler's cancellation has run. The answer
    has no one to go to: it is dropped, not raised into the upstream connection's data_received."""
    gate = asyncio.Event()

    async def slow(req: Request, conn: Connection) -> None:
        await gate.wait()

    conn, t, _ = server(slow)
    conn.data_received(b"POST /v1/x HTTP/1.1\r\nHost: h\r\nContent-Length: 0\r\n\r\n")
    await settle()
    conn.connection_lost(None)
    conn.start(200, b"OK", b"content-type: application/json\r\n", 2, b"{}")  # must not raise
    conn.write(b"more")
    conn.finish()
    assert b"HTTP/1.1 200" not in t.take()
