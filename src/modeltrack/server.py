"""The client-facing HTTP/1.1 server: one small asyncio protocol per connection, parsing with httptools (llhttp).

Why not aiohttp's web server: on the proxy's hot path its per-request machinery (Request/StreamResponse objects,
router, middleware chain, a task and a payload stream per request) cost more than everything ModelTrack does
itself — a bare aiohttp forward hop topped out at ~1,500 req/s on the benchmark box, against ~14,000 for a
protocol-level hop (bench/README.md). Here a connection is a protocol object, a request is a slotted record, and
flow control is explicit: when the client's socket buffer fills, ``pause_writing`` tells the exchange to pause
reading from the upstream socket, so a slow client slows its upstream down instead of growing a buffer.

What this server promises (and tests/test_security.py checks): bounded header size and header time (slowloris),
bounded body size (413, before the body is read when ``Content-Length`` says so), HTTP/1.0 and 1.1 keep-alive,
pipelined requests answered in order, ``Expect: 100-continue``, malformed requests answered 400 and closed, a
client disconnect cancels the request's handler, and no request or header bytes in any log line.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Protocol, cast

import httptools

from .logs import log_exception_safely

log = logging.getLogger("modeltrack.server")

MAX_HEADER_BYTES = 64 * 1024
MAX_HEADERS = 200
MAX_PIPELINED = 32  # requests parsed ahead of the one being answered, per connection
_REASONS = {
    200: b"OK",
    400: b"Bad Request",
    401: b"Unauthorized",
    404: b"Not Found",
    405: b"Method Not Allowed",
    408: b"Request Timeout",
    413: b"Content Too Large",
    431: b"Request Header Fields Too Large",
    500: b"Internal Server Error",
    502: b"Bad Gateway",
    503: b"Service Unavailable",
    504: b"Gateway Timeout",
}


class BodyTooLarge(Exception):
    """The request body exceeded the server's limit (answered 413 by the handler)."""


class FlowListener(Protocol):
    """Who to tell when the client's socket buffer fills up or drains (the exchange pausing its upstream)."""

    def pause(self) -> None: ...

    def resume(self) -> None: ...


class Request:
    """One parsed request. Headers are the raw ``(name, value)`` byte pairs in arrival order; the body arrives
    in the background and is awaited with :meth:`read`."""

    __slots__ = (
        "_done",
        "_parts",
        "_size",
        "_waiter",
        "expect_continue",
        "headers",
        "keep_alive",
        "method",
        "target",
        "too_large",
        "version",
    )

    def __init__(self, method: str, target: bytes, headers: list[tuple[bytes, bytes]], version: str) -> None:
        self.method = method
        self.target = target
        self.headers = headers
        self.version = version
        self.keep_alive = True
        self.expect_continue = False
        self.too_large = False
        self._parts: list[bytes] = []
        self._size = 0
        self._done = False
        self._waiter: asyncio.Future[None] | None = None

    @property
    def complete(self) -> bool:
        """The whole body has arrived (or overflowed the limit): :meth:`read` will not wait."""
        return self._done or self.too_large

    def header(self, lname: bytes) -> bytes | None:
        """The first value of a header, by lower-case name (a linear scan: requests carry ~10 headers)."""
        for k, v in self.headers:
            if len(k) == len(lname) and k.lower() == lname:
                return v
        return None

    def _feed(self, data: bytes, limit: int) -> None:
        self._size += len(data)
        if self._size > limit:
            self.too_large = True
            self._parts.clear()
        elif not self.too_large:
            self._parts.append(data)

    def _finish(self) -> None:
        self._done = True
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def read(self) -> bytes:
        """The whole body. Raises :class:`BodyTooLarge` past the limit; callers bound the wait (slow bodies)."""
        if not self._done and not self.too_large:
            self._waiter = asyncio.get_running_loop().create_future()
            await self._waiter
        if self.too_large:
            raise BodyTooLarge
        parts = self._parts
        return parts[0] if len(parts) == 1 else b"".join(parts)


Handler = Callable[[Request, "Connection"], Awaitable[None]]


class Connection(asyncio.Protocol):
    """The server side of one client connection; also the response writer handed to the handler."""

    def __init__(
        self,
        handler: Handler,
        *,
        max_body: int,
        header_timeout: float,
        on_close: Callable[[Connection], None] | None = None,
    ) -> None:
        self._handler = handler
        self._max_body = max_body
        self._header_timeout = header_timeout
        self._on_close = on_close
        self._loop = asyncio.get_running_loop()
        self._parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self._queue: deque[Request] = deque()
        self._current: Request | None = None  # the request being parsed
        self._url = b""
        self._headers: list[tuple[bytes, bytes]] = []
        self._header_bytes = 0
        self._timer: asyncio.TimerHandle | None = None
        self._too_big = False
        self._reading_paused = False
        self._task: asyncio.Task[None] | None = None
        self._closing_after = False  # close once the current response is done (no keep-alive / parse error)
        self.closed = False
        self.paused = False
        self.flow: FlowListener | None = None
        # per-response state
        self._started = False
        self._chunked = False
        self._finished = False
        self._head_only = False

    # -- asyncio.Protocol ---------------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self._arm_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._cancel_timer()
        if self._task is not None and not self._task.done():
            self._task.cancel()  # the client is gone: stop the handler (it records what it has)
        for req in self._queue:
            req._finish()
        if self._current is not None:
            self._current._finish()
        if self.flow is not None:
            self.flow.resume()
        if self._on_close is not None:
            self._on_close(self)

    def pause_writing(self) -> None:
        self.paused = True
        if self.flow is not None:
            self.flow.pause()

    def resume_writing(self) -> None:
        self.paused = False
        if self.flow is not None:
            self.flow.resume()

    def data_received(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            # Upgrades (WebSocket, h2c) and CONNECT are not proxied; what was parsed is served, then we close.
            self._closing_after = True
            if self.transport is not None:
                self.transport.pause_reading()
        except httptools.HttpParserError as exc:
            # The parser's message can quote request bytes: log the type only.
            if self._too_big:
                self._parse_failed(431, b"headers_too_large", b"The request headers are too large.")
                return
            log.info("malformed request from client: %s", type(exc).__name__)
            self._parse_failed(400, b"malformed_request", b"The request is not valid HTTP/1.1.")

    # -- httptools callbacks ------------------------------------------------------------------------------
    def on_message_begin(self) -> None:
        self._url = b""
        self._headers = []
        self._header_bytes = 0
        self._arm_timer()

    def on_url(self, url: bytes) -> None:
        self._url += url
        self._header_bytes += len(url)
        if self._header_bytes > MAX_HEADER_BYTES:
            self._too_big = True
            raise _HeadersTooLarge

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_bytes += len(name) + len(value) + 4
        if self._header_bytes > MAX_HEADER_BYTES or len(self._headers) >= MAX_HEADERS:
            self._too_big = True
            raise _HeadersTooLarge
        self._headers.append((name, value))

    def on_headers_complete(self) -> None:
        self._cancel_timer()
        p = self._parser
        method = p.get_method().decode("ascii", "replace")
        req = Request(method, self._url, self._headers, p.get_http_version())
        req.keep_alive = p.should_keep_alive()
        self._current = req
        length = req.header(b"content-length")
        if length is not None and length.strip().isdigit() and int(length) > self._max_body:
            req.too_large = True
        elif (req.header(b"expect") or b"").lower() == b"100-continue":
            req.expect_continue = True
        self._queue.append(req)
        if len(self._queue) >= MAX_PIPELINED and self.transport is not None:
            self.transport.pause_reading()  # a client pipelining faster than we answer waits in its own buffers
            self._reading_paused = True
        if self._task is None:
            self._task = self._loop.create_task(self._serve())

    def on_body(self, body: bytes) -> None:
        if self._current is not None:
            self._current._feed(body, self._max_body)

    def on_message_complete(self) -> None:
        if self._current is not None:
            self._current._finish()
            self._current = None

    # -- serving ------------------------------------------------------------------------------------------
    async def _serve(self) -> None:
        """Answer queued requests one at a time, in order (HTTP/1.1 pipelining)."""
        try:
            while self._queue and not self.closed:
                req = self._queue[0]
                self._started = self._finished = self._chunked = False
                self._head_only = req.method == "HEAD"
                if req.expect_continue and not req.too_large and self.transport is not None:
                    self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")
                try:
                    await self._handler(req, self)
                except asyncio.CancelledError:
                    if self.closed:
                        return
                    raise
                except Exception as exc:  # noqa: BLE001 - a handler bug must not take the connection's peers down
                    log_exception_safely("request handler failed", exc, log.name)
                    if not self._started:
                        self.respond(500, b'{"error":{"type":"internal_error","message":"ModelTrack failed."}}')
                    else:
                        self.abort()
                        return
                self._queue.popleft()
                if self._reading_paused and len(self._queue) < MAX_PIPELINED // 2 and not self._closing_after:
                    self._reading_paused = False
                    if self.transport is not None:
                        self.transport.resume_reading()
                if not self._finished:
                    self.abort()
                    return
                if not req.keep_alive or self._closing_after or req.too_large or not req._done:
                    # A body we did not read to the end leaves the connection unparseable: close it.
                    self.close()
                    return
            if not self.closed:
                self._arm_timer()
        finally:
            self._task = None

    def _parse_failed(self, status: int, kind: bytes, message: bytes) -> None:
        if self.transport is None or self.closed:
            return
        if self._task is not None:
            # A request is being answered: finish it, then close (the rest of the stream is unparseable).
            self._closing_after = True
            self.transport.pause_reading()
            return
        body = b'{"error":{"type":"%s","message":"%s"}}' % (kind, message)
        head = _head(status, _REASONS[status], b"content-type: application/json\r\n", len(body), False)
        self.transport.write(head + body)
        self.close()

    # -- the response writer ------------------------------------------------------------------------------
    def start(self, status: int, reason: bytes, header_block: bytes, length: int | None, first: bytes = b"") -> None:
        """Send the status line and headers (``header_block``: ``name: value\\r\\n`` lines, no framing headers).
        ``length`` None means the body's size is unknown: chunked for HTTP/1.1 clients, close-delimited for
        HTTP/1.0. ``first`` (body bytes) rides along in the same write."""
        req = self._queue[0]
        self._started = True
        if status in (204, 304) or status < 200:
            length = None  # no body and no framing header (RFC 9110 §8.6)
            self._head_only = True
        if length is None and not self._head_only:
            if req.version == "1.0":
                req.keep_alive = False
            else:
                self._chunked = True
        head = _head(status, reason, header_block, length, self._chunked, req.keep_alive, req.version == "1.0")
        if first and not self._head_only:
            head += b"%x\r\n%s\r\n" % (len(first), first) if self._chunked else first
        self._write(head)

    def write(self, data: bytes) -> None:
        if self._head_only or not data:
            return
        if self._chunked:
            self._write(b"%x\r\n%s\r\n" % (len(data), data))
        else:
            self._write(data)

    def finish(self) -> None:
        """The response is complete (the terminating chunk for chunked bodies)."""
        if self._chunked and not self._head_only:
            self._write(b"0\r\n\r\n")
        self._finished = True

    def respond(self, status: int, body: bytes, content_type: bytes = b"application/json", extra: bytes = b"") -> None:
        """A complete small response in one write."""
        self.start(
            status,
            _REASONS.get(status, b"Unknown"),
            b"content-type: " + content_type + b"\r\n" + extra,
            len(body),
            body,
        )
        self._finished = True

    def abort(self) -> None:
        """End the connection without completing the response: the client sees the truncation it would see from
        the upstream."""
        self._finished = True
        if self.transport is not None and not self.closed:
            self.transport.abort() if self._started else self.transport.close()

    def keep_alive_off(self) -> None:
        """Close once the current response is done (shutdown); an idle connection closes now."""
        self._closing_after = True
        if self._task is None:
            self.close()

    def close(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()

    def _write(self, data: bytes) -> None:
        t = self.transport
        if t is not None and not self.closed and not t.is_closing():
            t.write(data)

    # -- timers -------------------------------------------------------------------------------------------
    def _arm_timer(self) -> None:
        self._cancel_timer()
        self._timer = self._loop.call_later(self._header_timeout, self._timed_out)

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _timed_out(self) -> None:
        """No complete request head within the header timeout: idle keep-alive or a slowloris client."""
        self._timer = None
        if self._task is None:
            self.close()


class _HeadersTooLarge(Exception):
    pass


def _head(
    status: int,
    reason: bytes,
    header_block: bytes,
    length: int | None,
    chunked: bool,
    keep_alive: bool = False,
    http10: bool = False,
) -> bytes:
    if chunked:
        framing = b"transfer-encoding: chunked\r\n"
    else:
        framing = b"" if length is None else b"content-length: %d\r\n" % length
    if keep_alive:
        conn = b"connection: keep-alive\r\n" if http10 else b""
    else:
        conn = b"connection: close\r\n"
    return b"HTTP/1.1 %d %s\r\n%s%s%s\r\n" % (status, reason, header_block, framing, conn)
