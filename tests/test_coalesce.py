"""The client writes held to the end of a loop turn (:mod:`modeltrack.http.coalesce`), driven with fake transports
as tests/test_protocols.py is: real ``Connection``, ``UpstreamPool`` and ``UpstreamConnection`` objects, bytes in,
bytes out. Each test is one of the module's guarantees: held while requests share the turn and written when it
ends, a connection's bytes in order, nothing held with one request in flight, closing writes what is held first,
and a client that left gets nothing and costs the others nothing. Every byte-for-byte test through real servers
(tests/test_passthrough.py, tests/test_upstream.py, tests/test_sdks.py) runs with it too."""

from __future__ import annotations

import asyncio
from typing import Any

from modeltrack.http.coalesce import Coalescer
from modeltrack.http.limits import Limits
from modeltrack.http.server import Connection
from modeltrack.http.upstream import UpstreamConnection
from modeltrack.http.upstream_pool import Origin, UpstreamPool

from .test_protocols import OK, FakeTransport, send, settle


class Relay:
    """The part of an exchange that matters here: what the upstream connection reports goes to the client."""

    def __init__(self, client: Connection) -> None:
        self.client = client

    def on_informational(self, status: int, reason: bytes, headers: Any) -> None:
        return None

    def on_head(self, status: int, reason: bytes, headers: Any, length: int | None, codings: bytes) -> None:
        self.client.start(status, reason, b"", length)

    def on_body(self, data: bytes) -> None:
        self.client.write(data)

    def on_complete(self) -> None:
        self.client.finish()

    def on_error(self, kind: str, retryable: bool) -> None:
        self.client.abort()


class Rig:
    """``n`` client connections of one process, each with a request in flight (its handler waits), and an
    upstream connection per client."""

    def __init__(self) -> None:
        self.limits = Limits()
        self.coalescer = Coalescer(self.limits)
        self.release = asyncio.Event()
        self.pool = UpstreamPool(
            Origin.parse("http://up.example:80"),
            None,
            1.0,
            connector=self._connect,
            coalescer=self.coalescer,
        )

    async def _connect(self, conn: UpstreamConnection) -> None:
        conn.connection_made(FakeTransport())  # type: ignore[arg-type]

    async def _handler(self, req: Any, conn: Connection) -> None:
        await self.release.wait()

    async def pairs(self, n: int) -> list[tuple[Connection, FakeTransport, UpstreamConnection]]:
        out = []
        for _ in range(n):
            conn = Connection(
                self._handler, max_body=1 << 20, header_timeout=5, limits=self.limits, coalescer=self.coalescer
            )
            t = FakeTransport()
            conn.connection_made(t)  # type: ignore[arg-type]
            conn.data_received(b"POST /v1/x HTTP/1.1\r\nHost: h\r\nContent-Length: 2\r\n\r\n{}")
            up = await self.pool.acquire(fresh=True)
            up.send(Relay(conn), "POST", b"POST /v1/x HTTP/1.1\r\nHost: up\r\n\r\n", b"{}")
            out.append((conn, t, up))
        await settle()  # the handlers are waiting: every request is in flight
        return out


ANSWER = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"


async def test_writes_made_inside_upstream_reads_leave_together_when_the_turn_ends() -> None:
    rig = Rig()
    (_c1, t1, u1), (_c2, t2, u2) = await rig.pairs(2)
    assert rig.limits.requests == 2
    u1.data_received(OK)
    u2.data_received(OK)
    assert t1.buffer == t2.buffer == b"", "held while the loop delivers this turn's reads"
    await asyncio.sleep(0)
    assert t1.take() == t2.take() == ANSWER, "written, whole, once the turn ended"
    rig.release.set()


async def test_a_connections_later_writes_queue_behind_what_is_held() -> None:
    rig = Rig()
    (c1, t1, u1), _ = await rig.pairs(2)
    u1.data_received(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nab\r\n")
    c1.write(b"cd")  # outside any upstream read: it would go at once, but something of c1 is held
    assert t1.buffer == b""
    await asyncio.sleep(0)
    out = t1.take()
    assert out.endswith(b"2\r\nab\r\n2\r\ncd\r\n"), out
    c1.write(b"ef")  # nothing held any more: at once
    assert t1.take() == b"2\r\nef\r\n"
    rig.release.set()


async def test_one_request_in_flight_is_written_at_once() -> None:
    rig = Rig()
    ((_c1, t1, u1),) = await rig.pairs(1)
    assert rig.limits.requests == 1
    u1.data_received(OK)
    assert t1.take() == ANSWER, "nothing shares the turn: no write is held (concurrency 1 pays nothing)"
    rig.release.set()


async def test_closing_or_aborting_writes_what_is_held_first() -> None:
    rig = Rig()
    (c1, t1, u1), (c2, t2, u2) = await rig.pairs(2)
    u1.data_received(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\npart")
    u2.data_received(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nhalf")
    assert t1.buffer == t2.buffer == b""
    c1.abort()  # the upstream broke mid-body: the client gets what came, then the cut
    c2.close()
    assert t1.aborted and t1.buffer.endswith(b"\r\n\r\npart")
    assert t2.closed and t2.buffer.endswith(b"\r\n\r\nhalf")
    await asyncio.sleep(0)  # the turn's flush finds nothing left to write (a write after close would fail)
    rig.release.set()


async def test_a_client_that_left_gets_nothing_and_the_others_get_theirs() -> None:
    rig = Rig()
    (c1, t1, u1), (_c2, t2, u2) = await rig.pairs(2)
    u1.data_received(OK)
    u2.data_received(OK)
    c1.connection_lost(None)
    t1.closed = True
    await asyncio.sleep(0)
    assert t1.buffer == b"" and t2.take() == ANSWER
    rig.release.set()


# --- requests, held until the last handler of the turn has started -------------------------------------------


class Senders:
    """Client connections whose handlers each take an upstream connection and send their request at once, as the
    proxy does when nothing awaits; each notes whether its request had left when ``send`` returned."""

    def __init__(self) -> None:
        self.rig = Rig()
        self.left_at_once: list[bool] = []
        self.upstreams: list[FakeTransport] = []

    async def _handler(self, req: Any, conn: Connection) -> None:
        up = await self.rig.pool.acquire(fresh=True)
        t: FakeTransport = up.transport  # type: ignore[assignment]
        self.upstreams.append(t)
        up.send(Relay(conn), "POST", b"POST /v1/x HTTP/1.1\r\nHost: up\r\n\r\n", b"{}")
        self.left_at_once.append(t.buffer != b"")
        await self.rig.release.wait()

    def clients(self, n: int) -> list[Connection]:
        """``n`` requests arriving in one read phase: their handlers are created, none has started."""
        out = []
        for _ in range(n):
            conn = Connection(
                self._handler, max_body=1 << 20, header_timeout=5, limits=self.rig.limits, coalescer=self.rig.coalescer
            )
            conn.connection_made(FakeTransport())  # type: ignore[arg-type]
            conn.data_received(b"POST /v1/x HTTP/1.1\r\nHost: h\r\nContent-Length: 2\r\n\r\n{}")
            out.append(conn)
        return out


async def test_a_turns_requests_wait_for_its_last_handler_then_leave_together() -> None:
    s = Senders()
    s.clients(3)
    await asyncio.sleep(0)  # the three handlers run their first steps, in order
    assert s.left_at_once == [False, False, True], "held while a handler of the turn had yet to start"
    assert all(t.buffer.startswith(b"POST /v1/x HTTP/1.1\r\n") for t in s.upstreams), "all written by then"
    assert s.rig.coalescer.starting == 0
    s.rig.release.set()


async def test_a_lone_request_is_written_at_once() -> None:
    s = Senders()
    s.clients(1)
    await asyncio.sleep(0)
    assert s.left_at_once == [True]
    s.rig.release.set()


async def test_a_handler_cancelled_before_it_started_does_not_keep_the_others_waiting() -> None:
    s = Senders()
    _, _, gone = s.clients(3)
    gone.connection_lost(None)  # the client left before its handler ran: that handler never starts
    await asyncio.sleep(0)
    assert s.left_at_once == [False, True]
    assert len(s.upstreams) == 2 and all(t.buffer for t in s.upstreams), "the held request went with the last"
    assert s.rig.coalescer.starting == 0
    s.rig.release.set()


async def test_a_held_request_whose_connection_closed_was_never_sent_and_may_be_retried() -> None:
    rig = Rig()
    rig.limits.admit(0)
    rig.limits.admit(0)  # two requests in flight
    rig.coalescer.created()  # and a handler of this turn yet to start
    up = await rig.pool.acquire(fresh=True)
    t: FakeTransport = up.transport  # type: ignore[assignment]
    ex = send(up)
    assert t.buffer == b""
    up.connection_lost(None)  # the upstream closed it (an idle keep-alive timeout) before the turn ended
    t.closed = True
    assert ex.events == [("error", "bad_response", True)], "provably unsent: the proxy sends it on a fresh one"
    rig.coalescer.started()  # the turn's flush finds it closed and writes nothing (a write would fail)
    assert t.buffer == b""
