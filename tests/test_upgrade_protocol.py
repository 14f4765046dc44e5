"""The WebSocket upgrade at the protocol level, with fake transports (as tests/test_protocols.py): the server's
held bytes and its switch to a tunnel, and the upstream end's answers (``modeltrack.http.upgrade``)."""

from __future__ import annotations

from typing import Any

from modeltrack.http.message import Request
from modeltrack.http.server import Connection
from modeltrack.http.upgrade import MAX_REFUSAL_BODY, UpstreamUpgrade

from .test_protocols import FakeTransport, server, settle

UPGRADE = (
    b"GET /v1/realtime?model=m HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
)
FRAME = b"\x81\x85\x01\x02\x03\x04" + bytes(b ^ k for b, k in zip(b"hello", b"\x01\x02\x03\x04\x01", strict=True))


class Tunnel:
    """A tunnel end that records what the client sent through it."""

    def __init__(self) -> None:
        self.got = b""
        self.lost = False

    def from_client(self, data: bytes) -> None:
        self.got += data

    def client_lost(self) -> None:
        self.lost = True


class Switcher:
    """A handler that switches every WebSocket upgrade to a :class:`Tunnel` (and answers anything else 200)."""

    def __init__(self) -> None:
        self.tunnel = Tunnel()
        self.early = b""
        self.requests: list[Request] = []

    async def __call__(self, req: Request, conn: Connection) -> None:
        self.requests.append(req)
        if not req.websocket:
            return conn.respond(200, b"plain")
        self.early = conn.switch(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n", self.tunnel)
        return None


async def test_a_switched_connection_hands_every_later_byte_to_the_tunnel_unparsed() -> None:
    handler = Switcher()
    conn, t, _ = server(handler)
    conn.data_received(UPGRADE + FRAME[:4])  # frames sent ahead of the 101 are held, never parsed
    await settle()
    assert t.take().startswith(b"HTTP/1.1 101 Switching Protocols\r\n")
    assert handler.early == FRAME[:4]
    conn.data_received(FRAME[4:] + b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
    assert handler.tunnel.got == FRAME[4:] + b"GET / HTTP/1.1\r\nHost: h\r\n\r\n"
    assert len(handler.requests) == 1, "bytes after the switch are the tunnel's, never a request"
    await settle()
    assert t.closed, "the connection ends with the handler (the tunnel)"
    conn.connection_lost(None)
    assert handler.tunnel.lost


async def test_bytes_after_a_refused_websocket_upgrade_are_never_parsed() -> None:
    """A handler that answers an upgrade with a normal response (here: a 200 to a path that does not upgrade):
    what the client sent after the upgrade's head is read and dropped, never parsed as the next request."""

    async def refuse(req: Request, conn: Connection) -> None:
        requests.append(req)
        conn.respond(400, b'{"error":{"type":"websocket_not_served"}}')

    requests: list[Request] = []
    conn, t, _ = server(refuse)
    conn.data_received(UPGRADE + b"POST /v1/chat/completions HTTP/1.1\r\nHost: h\r\nContent-Length: 2\r\n\r\n{}")
    await settle()
    assert len(requests) == 1 and requests[0].websocket
    assert t.take().startswith(b"HTTP/1.1 400 ")
    assert t.ending, "closed (lingering) after the refusal"
    conn.data_received(b"GET /v1/models HTTP/1.1\r\nHost: h\r\n\r\n")
    await settle()
    assert len(requests) == 1 and t.take() == b""


async def test_a_post_or_a_non_websocket_upgrade_is_not_held() -> None:
    """Only a GET asking for ``websocket`` is held: ``Upgrade: h2c`` on a GET is ignored as before (RFC 9110 §7.8),
    and the connection serves the next request."""
    handler = Switcher()
    conn, t, _ = server(handler)
    conn.data_received(
        b"GET /v1/models HTTP/1.1\r\nHost: h\r\nUpgrade: h2c\r\nConnection: Upgrade\r\n\r\n"
        b"GET /v1/models HTTP/1.1\r\nHost: h\r\n\r\n"
    )
    await settle()
    assert [r.websocket for r in handler.requests] == [False, False]
    assert t.take().count(b"HTTP/1.1 200 ") == 2


class Receiver:
    def __init__(self) -> None:
        self.events: list[Any] = []

    def on_switched(self, headers: list[tuple[bytes, bytes]], rest: bytes) -> None:
        self.events.append(("switched", dict(headers).get(b"Upgrade"), rest))

    def on_refused(self, status: int, reason: bytes, headers: list[tuple[bytes, bytes]], body: bytes) -> None:
        self.events.append(("refused", status, len(body)))

    def from_upstream(self, data: bytes) -> None:
        self.events.append(("data", data))

    def upstream_lost(self, bad: bool) -> None:
        self.events.append(("lost", bad))

    def upstream_full(self, full: bool) -> None:
        self.events.append(("full", full))


def upstream() -> tuple[UpstreamUpgrade, FakeTransport, Receiver]:
    rec = Receiver()
    up = UpstreamUpgrade(rec)
    t = FakeTransport()
    up.connection_made(t)  # type: ignore[arg-type]
    return up, t, rec


def test_a_101_switches_and_the_bytes_after_it_are_raw() -> None:
    up, _, rec = upstream()
    up.data_received(
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n\x81\x02hi"
    )
    up.data_received(b"HTTP/1.1 200 OK\r\n\r\n")  # after the switch, even this is frame bytes
    assert rec.events == [("switched", b"websocket", b"\x81\x02hi"), ("data", b"HTTP/1.1 200 OK\r\n\r\n")]


def test_a_refusal_is_handed_over_whole_and_bounded() -> None:
    up, t, rec = upstream()
    body = b"x" * (MAX_REFUSAL_BODY * 2)
    up.data_received(b"HTTP/1.1 401 Unauthorized\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
    assert rec.events == [("refused", 401, MAX_REFUSAL_BODY)]
    assert t.closed


def test_a_101_that_names_no_upgrade_is_a_bad_response() -> None:
    up, t, rec = upstream()
    up.data_received(b"HTTP/1.1 101 Switching Protocols\r\n\r\n")
    assert rec.events == [("lost", True)] and t.aborted


def test_garbage_is_a_bad_response() -> None:
    up, t, rec = upstream()
    up.data_received(b"SSH-2.0-OpenSSH_9.2\r\n")
    assert rec.events == [("lost", True)] and t.aborted
