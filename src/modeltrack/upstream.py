"""Upstream connections: one keep-alive pool per provider origin, one small response-parsing protocol each.

The response is not read by a coroutine: the connection's parser calls the exchange that owns the request
(``on_head``, ``on_body``, ``on_complete``, ``on_error``) straight from ``data_received``, so a streamed chunk is
metered and written to the client in the same callback that received it — no task switch, no queue, no copy.
Backpressure is explicit: the exchange calls :meth:`UpstreamConnection.pause` when the client's socket buffer is
full, which stops reading this socket, so the upstream's TCP window closes instead of our memory growing.

Connections are only ever opened to the configured origin (scheme, host, port): the request path goes into the
request line, never into the choice of host, so no request target can make the proxy connect elsewhere.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from dataclasses import dataclass
from typing import Protocol, cast
from urllib.parse import urlsplit

import httptools

MAX_HEADER_BYTES = 64 * 1024


class Receiver(Protocol):
    """The exchange a connection reports to while it carries that exchange's response."""

    def on_head(self, status: int, reason: bytes, headers: list[tuple[bytes, bytes]], length: int | None) -> None: ...

    def on_body(self, data: bytes) -> None: ...

    def on_complete(self) -> None: ...

    def on_error(self, kind: str) -> None: ...


@dataclass(frozen=True, slots=True)
class Origin:
    """Where one provider's requests go: fixed at start-up from its base URL."""

    scheme: str
    host: str
    port: int
    base_path: str
    host_header: bytes

    @classmethod
    def parse(cls, base_url: str) -> Origin:
        u = urlsplit(base_url)
        if u.scheme not in ("http", "https") or not u.hostname:
            raise ValueError("base URL must be http(s)://host[:port][/path]")
        default = 443 if u.scheme == "https" else 80
        port = u.port or default
        host = u.hostname
        shown = f"[{host}]" if ":" in host else host
        header = shown if port == default else f"{shown}:{port}"
        return cls(u.scheme, host, port, u.path.rstrip("/"), header.encode("idna"))


class UpstreamConnection(asyncio.Protocol):
    """One HTTP/1.1 connection to an upstream. Carries one exchange at a time."""

    def __init__(self, pool: UpstreamPool) -> None:
        self._pool = pool
        self._parser = httptools.HttpResponseParser(self)
        self.transport: asyncio.Transport | None = None
        self.receiver: Receiver | None = None
        self.closed = False
        self.idle_since = 0.0
        self._headers: list[tuple[bytes, bytes]] = []
        self._reason = b""
        self._status = 0
        self._head_request = False
        self._headed = False  # the current response's head was delivered
        self._close_delimited = False
        self._reusable = True
        self._header_bytes = 0
        self._body: list[bytes] = []  # body pieces parsed from the current read, not yet handed on

    # -- sending ------------------------------------------------------------------------------------------
    def send(self, receiver: Receiver, head: bytes, body: bytes, head_request: bool) -> None:
        self.receiver = receiver
        self._head_request = head_request
        self._headed = False
        t = self.transport
        assert t is not None
        if body:
            t.writelines((head, body))
        else:
            t.write(head)

    def pause(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.pause_reading()

    def resume(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.resume_reading()

    def close(self) -> None:
        """Drop the connection (an abandoned or failed exchange: what is left on it is unusable)."""
        self.receiver = None
        self._reusable = False
        if self.transport is not None and not self.closed:
            self.transport.abort()

    # -- asyncio.Protocol ---------------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        if self.receiver is None:
            self.close()  # bytes nobody asked for: the connection is out of step
            return
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError:
            receiver = self.receiver
            self._body.clear()
            self.close()
            if receiver is not None:
                receiver.on_error("bad_response" if not self._headed else "reset")
            return
        if self._body:
            self._flush_body()

    def _flush_body(self) -> None:
        """Hand the body bytes parsed from one read to the exchange in one piece: a chunked stream often has one
        HTTP chunk per SSE event, and one client write per chunk would be one syscall per event."""
        parts = self._body
        data = parts[0] if len(parts) == 1 else b"".join(parts)
        parts.clear()
        receiver = self.receiver
        if receiver is not None:
            receiver.on_body(data)

    def eof_received(self) -> bool | None:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._pool._forget(self)
        receiver, self.receiver = self.receiver, None
        if receiver is None:
            return
        if self._headed and self._close_delimited and exc is None:
            receiver.on_complete()  # a body delimited by the end of the connection
        else:
            receiver.on_error("reset" if self._headed else "bad_response")

    # -- httptools callbacks ------------------------------------------------------------------------------
    def on_message_begin(self) -> None:
        self._headers = []
        self._reason = b""
        self._header_bytes = 0

    def on_status(self, reason: bytes) -> None:
        self._reason += reason

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_bytes += len(name) + len(value)
        if self._header_bytes > MAX_HEADER_BYTES:
            raise ValueError("upstream response headers too large")  # the parser reports it: a 502
        self._headers.append((name, value))

    def on_headers_complete(self) -> None:
        status = self._parser.get_status_code()
        self._status = status
        if 100 <= status < 200:
            return  # informational: the real response follows on the same connection
        length: int | None = None
        chunked = False
        for k, v in self._headers:
            lk = k.lower()
            if lk == b"content-length":
                length = int(v) if v.strip().isdigit() else None
            elif lk == b"transfer-encoding":
                chunked = b"chunked" in v.lower()
        if chunked:
            length = None
        no_body = self._head_request or status in (204, 304)
        self._close_delimited = length is None and not chunked and not no_body
        if not self._parser.should_keep_alive():
            self._reusable = False
        self._headed = True
        receiver = self.receiver
        if receiver is not None:
            receiver.on_head(status, self._reason or b"", self._headers, 0 if no_body and length is None else length)
        if self._head_request:
            # httptools cannot be told the response answers a HEAD (no body follows a Content-Length), so the
            # exchange ends here and the connection is not reused.
            self._reusable = False
            self._done()

    def on_body(self, body: bytes) -> None:
        self._body.append(body)

    def on_message_complete(self) -> None:
        if 100 <= self._status < 200 or self._head_request:
            return
        self._done()

    def _done(self) -> None:
        if self._body:
            self._flush_body()
        receiver, self.receiver = self.receiver, None
        if self._reusable and not self.closed:
            self._pool._release(self)
        elif self.transport is not None and not self.closed:
            self.transport.close()
        if receiver is not None:
            receiver.on_complete()


class UpstreamPool:
    """Keep-alive connections to one origin, reused most-recently-released first (warm sockets, and the idle
    ones at the bottom age out). No limit on the number of connections: concurrency is bounded by the clients."""

    def __init__(self, origin: Origin, tls: ssl.SSLContext | None, connect_timeout: float, idle_timeout: float = 30.0):
        self.origin = origin
        self._tls = tls if origin.scheme == "https" else None
        self._connect_timeout = connect_timeout
        self._idle_timeout = idle_timeout
        self._idle: list[UpstreamConnection] = []
        self._all: set[UpstreamConnection] = set()

    async def acquire(self) -> UpstreamConnection:
        """A ready connection: an idle pooled one if any, else a new one (``OSError``/``TimeoutError`` if the
        origin cannot be reached; TLS verification failures are ``ssl.SSLError``, an ``OSError``)."""
        idle = self._idle
        now = time.monotonic()
        while idle:
            conn = idle.pop()
            if not conn.closed and now - conn.idle_since < self._idle_timeout:
                return conn
            conn.close()
        loop = asyncio.get_running_loop()
        o = self.origin
        connect = loop.create_connection(
            lambda: UpstreamConnection(self),
            o.host,
            o.port,
            ssl=self._tls,
            server_hostname=o.host if self._tls is not None else None,
        )
        async with asyncio.timeout(self._connect_timeout):  # no extra task, unlike wait_for
            _, proto = await connect
        self._all.add(proto)
        return proto

    def _release(self, conn: UpstreamConnection) -> None:
        conn.idle_since = time.monotonic()
        self._idle.append(conn)

    def _forget(self, conn: UpstreamConnection) -> None:
        self._all.discard(conn)
        if conn in self._idle:
            self._idle.remove(conn)

    def close(self) -> None:
        for conn in list(self._all):
            conn.close()
        self._idle.clear()
