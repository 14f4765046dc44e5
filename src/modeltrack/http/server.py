"""The client-facing HTTP/1.1 server: one small asyncio protocol per connection, parsing with httptools (llhttp).

Why not aiohttp's web server on this path: its per-request machinery (Request/StreamResponse objects, router,
middleware chain, a task and a payload stream per request) cost more than everything ModelTrack does itself
(bench/README.md). Here a connection is a protocol object, a request is a slotted record, and flow control is
explicit: when the client's socket buffer fills, ``pause_writing`` tells the exchange to pause reading from the
upstream socket, so a slow client slows its upstream down instead of growing a buffer.

What this server promises, held to nginx's and aiohttp's standard (tests/test_server.py, tests/test_protocols.py):

* bounded header size and time (431, slowloris), bounded body size (413, decided before the body is read when
  ``Content-Length`` says so), and process-wide ceilings on requests in flight and body bytes buffered (503 with
  ``Retry-After``, :mod:`modeltrack.http.limits`);
* strict requests: HTTP/1.0 or 1.1 only (400 for a request line without a version, 505 for others), exactly one
  ``Host`` on HTTP/1.1 and at most one on 1.0, no ``Transfer-Encoding`` on 1.0 and nothing but ``chunked`` on
  1.1, framing errors in a body answered 400 at once; a refused request is answered in its turn and the
  connection closed;
* chunked trailers are dropped, never merged into the headers (they would be forwarded, or set attribution);
  a ``#fragment`` never reaches the target; an ``Upgrade:`` is ignored (RFC 9110 §7.8: a server may), so a POST
  that carries one keeps its body; ``CONNECT`` is parsed and refused by the handler;
* a ``GET`` that asks for ``Upgrade: websocket`` is the one exception: nothing the client sends after its head is
  parsed as HTTP. The handler either switches the connection to a tunnel (:meth:`Connection.switch`: the held
  bytes and all that follow go to the tunnel, unparsed) or answers it, after which the connection closes with
  those bytes unread (tests/test_protocols.py::test_bytes_after_a_refused_websocket_upgrade_are_never_parsed);
* HTTP/1.0 and 1.1 keep-alive, pipelined requests answered in order, ``Expect: 100-continue`` (1.1 clients
  only), ``103 Early Hints`` passed on to 1.1 clients;
* nothing is written after a sized response's ``Content-Length``; a client disconnect cancels the request's
  handler; no request or header bytes in any log line.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Protocol, cast

import httptools

from ..logs import log_exception_safely
from .limits import MAX_HEADER_BYTES, MAX_HEADERS, Limits
from .message import REASONS, Request, RequestError, overloaded, response_head, too_large

log = logging.getLogger("modeltrack.http.server")

MAX_PIPELINED = 32  # requests parsed ahead of the one being answered, per connection
LINGER_SECONDS = 2.0
"""After refusing a request whose body is still arriving, keep reading (and discarding) for this long before
closing, as nginx's lingering close does: closing a socket with unread data makes the kernel send a reset,
which can destroy the refusal before the client has read it."""


MAX_HELD = 1 << 16
"""Bytes a client may send after a WebSocket upgrade's head before it is answered (frames sent ahead of the
``101``): past this, reading pauses until the handler decides."""


class TunnelEnd(Protocol):
    """What a switched connection hands the client's bytes to (:class:`modeltrack.tunnel.Tunnel`)."""

    def from_client(self, data: bytes) -> None: ...

    def client_lost(self) -> None: ...


class FlowListener(Protocol):
    """Who to tell when the client's socket buffer fills up or drains (the exchange pausing its upstream)."""

    def pause(self) -> None: ...

    def resume(self) -> None: ...


Handler = Callable[[Request, "Connection"], Awaitable[None]]


class _StopParsing(Exception):
    """Raised from a parser callback: nothing after a refused request is parsed."""


_SYNTHETIC = {
    False: b"POST / HTTP/1.1\r\nContent-Length: %d\r\n\r\n",
    True: b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
}


class Connection(asyncio.Protocol):
    """The server side of one client connection; also the response writer handed to the handler."""

    def __init__(
        self,
        handler: Handler,
        *,
        max_body: int,
        header_timeout: float,
        limits: Limits | None = None,
        on_close: Callable[[Connection], None] | None = None,
    ) -> None:
        self._handler = handler
        self._max_body = max_body
        self._header_timeout = header_timeout
        self._limits = limits or Limits()
        self._on_close = on_close
        self.loop = asyncio.get_running_loop()  # looked up once: each lookup checks the process id (a syscall)
        self._parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self._queue: deque[Request] = deque()
        self._current: Request | None = None  # the request whose body is being parsed
        self._url = b""
        self._headers: list[tuple[bytes, bytes]] = []
        self._in_head = False  # between message begin and headers complete: later "headers" are trailers
        self._synthetic = False  # feeding the synthetic head that resumes a body after an ignored Upgrade
        self._upgraded: Request | None = None  # a request whose body llhttp left unparsed (Upgrade)
        self._held: list[bytes] | None = None  # after a WebSocket upgrade's head: not parsed, kept for a tunnel
        self._held_size = 0
        self.tunnel: TunnelEnd | None = None  # switched: every byte from the client goes here
        self._header_bytes = 0
        # fields the server itself reads, noted as they are parsed (no second scan of the headers)
        self._hosts = 0
        self._length: bytes | None = None
        self._coding: bytes | None = None
        self._expect: bytes | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._too_big = False
        self._reading_paused = False
        self._task: asyncio.Task[None] | None = None
        self._closing_after = False  # parse nothing more; close once the queued responses are done
        self._close_now = False  # close after the current response (it was cut short)
        self._broken = False  # the parser failed: what the client sends next is not read
        self._lingering = False  # closing: what the client still sends is read and dropped
        self._discarded = 0
        self.closed = False
        self.write_paused = False
        self.flow: FlowListener | None = None
        # per-response state
        self._started = False
        self._chunked = False
        self._finished = False
        self._head_only = False
        self._left = -1  # bytes still allowed by a sized response's Content-Length (-1: not sized)

    # -- asyncio.Protocol ---------------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self._arm_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._cancel_timer()
        if self.tunnel is not None:
            self.tunnel.client_lost()
        if self._task is not None and not self._task.done():
            self._task.cancel()  # the client is gone: stop the handler (it records what it has)
        for req in self._queue:
            self._release(req)
            req._finish()
        self._queue.clear()
        if self._current is not None:
            self._current._finish()
        if self.flow is not None:
            self.flow.resume()
        if self._on_close is not None:
            self._on_close(self)
        # The parser holds this protocol's callbacks: a cycle that would keep the connection (and the last
        # request's headers) until the garbage collector ran. asyncio calls nothing on a protocol after this.
        del self._parser

    def pause_writing(self) -> None:
        if not self.write_paused:
            self.write_paused = True
            if self.flow is not None:
                self.flow.pause()

    def resume_writing(self) -> None:
        if self.write_paused:
            self.write_paused = False
            if self.flow is not None:
                self.flow.resume()

    def data_received(self, data: bytes) -> None:
        if self.tunnel is not None:
            self.tunnel.from_client(data)
            return
        if self._held is not None:
            self._hold(data)
            return
        if self._broken:
            if self._lingering:
                self._discarded += len(data)
                if self._discarded > self._max_body:
                    self.abort()
            return
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            self._resume_after_upgrade(data[exc.args[0] :])
        except httptools.HttpParserCallbackError as exc:
            if isinstance(exc.__context__, _StopParsing):
                return
            self._parse_error()
        except httptools.HttpParserError:
            self._parse_error()

    def _parse_error(self) -> None:
        # The parser's message can quote request bytes: it is never logged, and neither is its type's detail.
        self._broken = True
        if self._too_big:
            error = RequestError(431, "headers_too_large", "The request headers are too large.")
        else:
            log.info("malformed request from client")
            error = RequestError(400, "malformed_request", "The request is not valid HTTP/1.1.")
        current = self._current
        if current is not None and not current._done:
            # Bad framing in a body (a chunk size, a coding): that request fails now, not at the body timeout.
            current._fail(error)
            self._current = None
            self._close_after_queue()
        else:
            self._refuse(Request("", b"", [], "1.1"), error)

    def _resume_after_upgrade(self, rest: bytes) -> None:
        """llhttp stops at the end of a head that asks for ``Upgrade``; we do not upgrade, so parsing goes on as
        HTTP/1.1 with a fresh parser. A body the upgrading request announced is parsed by feeding the new parser
        a synthetic head with the same framing, whose callbacks route the body into that request."""
        self._parser = httptools.HttpRequestParser(self)
        req, self._upgraded = self._upgraded, None
        if req is None:
            self._close_after_queue()  # CONNECT: refused by the handler; what follows is not HTTP
            return
        if req.websocket:
            # What follows is WebSocket frames if the handler tunnels, and is never read if it refuses.
            req._finish()
            self._held = []
            self._close_after_queue()
            if rest:
                self._hold(rest)
            return
        length = req.header(b"content-length")
        chunked = req.header(b"transfer-encoding") is not None
        if req._size == 0 and (chunked or (length is not None and length.strip() not in (b"", b"0"))):
            self._current = req
            self._synthetic = True
            self._parser.feed_data(_SYNTHETIC[True] if chunked else _SYNTHETIC[False] % int(length or b"0"))
            self._synthetic = False
        else:
            req._finish()
        if rest:
            self.data_received(rest)

    # -- httptools callbacks ------------------------------------------------------------------------------
    def on_message_begin(self) -> None:
        if self._synthetic:
            return
        if self._closing_after:
            raise _StopParsing
        self._url = b""
        self._headers = []
        self._header_bytes = 0
        self._hosts = 0
        self._length = self._coding = self._expect = None
        self._in_head = True
        self._arm_timer()

    def on_url(self, url: bytes) -> None:
        if self._synthetic:
            return
        self._url += url
        self._header_bytes += len(url)
        if self._header_bytes > MAX_HEADER_BYTES:
            self._too_big = True
            raise _HeadersTooLarge

    def on_header(self, name: bytes, value: bytes) -> None:
        if not self._in_head:
            return  # a chunked trailer: dropped, never merged into the request's headers
        self._header_bytes += len(name) + len(value) + 4
        if self._header_bytes > MAX_HEADER_BYTES or len(self._headers) >= MAX_HEADERS:
            self._too_big = True
            raise _HeadersTooLarge
        self._headers.append((name, value))
        n = len(name)
        if n == 4 or n == 6 or n == 14 or n == 17:
            lname = name.lower()
            if lname == b"host":
                self._hosts += 1
            elif lname == b"content-length":
                self._length = value
            elif lname == b"transfer-encoding":
                self._coding = value
            elif lname == b"expect":
                self._expect = value

    def on_headers_complete(self) -> None:
        if self._synthetic:
            return
        self._in_head = False
        self._cancel_timer()
        p = self._parser
        method = p.get_method().decode("ascii", "replace")
        target = self._url
        hash_at = target.find(b"#")
        if hash_at >= 0:
            target = target[:hash_at]  # a fragment is the client's business, never the upstream's
        version = p.get_http_version()
        req = Request(method, target, self._headers, version)
        req.keep_alive = p.should_keep_alive()
        if version != "1.1" or self._hosts != 1 or self._coding is not None:
            error = self._check(version)
            if error is not None:
                self._refuse(req, error)
                return
        length = self._length
        declared = int(length) if length is not None and length.strip().isdigit() else 0
        if declared > self._max_body:
            req.error = too_large()  # answered 413 without reading the body (and without a 100 Continue)
        elif not self._limits.admit(declared):
            self._refuse(req, overloaded())
            return
        else:
            req._admitted = True
            req._reserved = declared
            if self._expect is not None and version == "1.1" and self._expect.lower() == b"100-continue":
                req.expect_continue = True
        if p.should_upgrade():
            self._upgraded = req if method != "CONNECT" else None
            if method == "GET" and not declared and self._coding is None:
                upgrade = req.header(b"upgrade")
                req.websocket = upgrade is not None and b"websocket" in upgrade.lower()
        self._current = req
        queue = self._queue
        queue.append(req)
        if len(queue) >= MAX_PIPELINED:
            self._pause_reading()  # a client pipelining faster than we answer waits in its own buffers
        if self._task is None:
            self._task = self.loop.create_task(self._serve())

    def _check(self, version: str) -> RequestError | None:
        """Requests refused as nginx and aiohttp refuse them, before a byte of their body is read."""
        if version != "1.1" and version != "1.0":
            if version == "0.9":
                return RequestError(400, "malformed_request", "The request line has no HTTP version.")
            return RequestError(505, "http_version_not_supported", "Only HTTP/1.0 and HTTP/1.1 are supported.")
        hosts = self._hosts
        if hosts != 1 and (hosts > 1 or version == "1.1"):
            return RequestError(400, "invalid_host", "An HTTP/1.1 request needs exactly one Host header.")
        coding = self._coding
        if coding is not None:
            if version == "1.0":
                return RequestError(400, "malformed_request", "Transfer-Encoding is not allowed in HTTP/1.0.")
            if coding.strip().lower() != b"chunked":
                return RequestError(400, "malformed_request", "The only request transfer coding accepted is chunked.")
        return None

    def on_body(self, body: bytes) -> None:
        req = self._current
        if req is None or req.error is not None:
            return
        req._size += len(body)
        if req._size > self._max_body:
            req._fail(too_large())
        elif req._size > req._reserved and not self._limits.take(len(body)):
            req._reserved += len(body)
            req._fail(overloaded())
            self._close_after_queue()
        else:
            if req._size > req._reserved:
                req._reserved = req._size
            req._parts.append(body)

    def on_message_complete(self) -> None:
        if self._upgraded is not None and self._current is self._upgraded:
            return  # llhttp completes an upgrading request at its head; its body is resumed after the exception
        if self._current is not None:
            self._current._finish()
            self._current = None

    def _hold(self, data: bytes) -> None:
        held = self._held
        assert held is not None
        held.append(data)
        self._held_size += len(data)
        if self._held_size > MAX_HELD:
            self._pause_reading()

    # -- the WebSocket tunnel -----------------------------------------------------------------------------
    def switch(self, head: bytes, tunnel: TunnelEnd) -> bytes:
        """Answer the upgrade with ``head`` (the upstream's ``101``, as the client should see it) and hand the
        connection to ``tunnel``; returns the bytes the client sent ahead of the answer, for the tunnel to send
        on. The connection closes when the handler returns."""
        self._write(head)
        self._started = self._finished = self._close_now = True
        self._head_only = True  # nothing more of an HTTP response is written
        held, self._held = self._held or [], None
        self._held_size = 0
        self.tunnel = tunnel
        self.resume_reading()
        return b"".join(held)

    def write_raw(self, data: bytes | memoryview) -> None:
        """Tunnel bytes for the client, as they came."""
        self._write(data)

    def pause_reading(self) -> None:
        """The tunnel's upstream cannot take more: stop reading the client (its TCP window closes)."""
        self._pause_reading()

    def resume_reading(self) -> None:
        if self._reading_paused and self.transport is not None and not self.closed:
            self._reading_paused = False
            self.transport.resume_reading()

    # -- serving ------------------------------------------------------------------------------------------
    def _enqueue(self, req: Request) -> None:
        self._queue.append(req)
        if len(self._queue) >= MAX_PIPELINED:
            self._pause_reading()  # a client pipelining faster than we answer waits in its own buffers
        if self._task is None and not self.closed:
            self._task = self.loop.create_task(self._serve())

    def _refuse(self, req: Request, error: RequestError) -> None:
        """Answer ``req`` with ``error`` in its turn (after what is already queued), then close."""
        req.error = error
        req.refused = True
        req._done = True
        self._close_after_queue()
        self._enqueue(req)

    def _close_after_queue(self) -> None:
        self._closing_after = True
        self._pause_reading()

    def _pause_reading(self) -> None:
        if not self._reading_paused and self.transport is not None:
            self._reading_paused = True
            self.transport.pause_reading()

    def _release(self, req: Request) -> None:
        if req._admitted or req._reserved:
            self._limits.release(1 if req._admitted else 0, req._reserved)
            req._admitted = False
            req._reserved = 0

    async def _serve(self) -> None:
        """Answer queued requests one at a time, in order (HTTP/1.1 pipelining)."""
        try:
            while self._queue and not self.closed:
                req = self._queue[0]
                self._started = self._finished = self._chunked = self._close_now = False
                self._left = -1
                self._head_only = req.method == "HEAD"
                if req.refused and req.error is not None:
                    self.respond_error(req.error)
                else:
                    if req.expect_continue and req.error is None and self.transport is not None:
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
                self._release(req)
                if self._reading_paused and len(self._queue) < MAX_PIPELINED // 2 and not self._closing_after:
                    self._reading_paused = False
                    if self.transport is not None:
                        self.transport.resume_reading()
                if not self._finished:
                    self.abort()
                    return
                if not req._done or req.error is not None or self._held is not None:
                    # A body we did not read to the end leaves the connection unparseable: close it, but let the
                    # client finish sending first, or its unread bytes would reset our answer away.
                    self._linger()
                    return
                if (
                    not req.keep_alive
                    or req.error is not None
                    or self._close_now
                    or (self._closing_after and not self._queue)
                ):
                    self.close()
                    return
            if not self.closed:
                self._arm_timer()
        finally:
            self._task = None

    # -- the response writer ------------------------------------------------------------------------------
    def informational(self, status: int, reason: bytes, header_block: bytes) -> None:
        """An interim response (``103 Early Hints``) before the final one; HTTP/1.0 clients never get one
        (RFC 9110 §15.2)."""
        req = self._queue[0] if self._queue else None
        if req is None or req.version != "1.1" or self._started:
            return
        self._write(b"HTTP/1.1 %d %s\r\n%s\r\n" % (status, reason, header_block))

    def start(self, status: int, reason: bytes, header_block: bytes, length: int | None, first: bytes = b"") -> None:
        """Send the status line and headers (``header_block``: ``name: value\\r\\n`` lines, no framing headers).
        ``length`` None means the body's size is unknown: chunked for HTTP/1.1 clients, close-delimited for
        HTTP/1.0. ``first`` (body bytes) rides along in the same write."""
        self._started = True
        if not self._queue:
            # The client left (connection_lost cleared the queue) and the upstream's answer completed in the same
            # loop turn, before the handler's cancellation ran: nobody to answer; what follows is dropped too.
            self._head_only = True
            return
        req = self._queue[0]
        if status in (204, 304) or status < 200:
            length = None  # no body and no framing header (RFC 9110 §8.6)
            self._head_only = True
        if length is None and not self._head_only:
            if req.version == "1.0":
                req.keep_alive = False
            else:
                self._chunked = True
        head = response_head(status, reason, header_block, length, self._chunked, req.keep_alive, req.version == "1.0")
        if length is not None and not self._head_only:
            self._left = length
        if first and not self._head_only:
            if self._chunked:
                head += b"%x\r\n%s\r\n" % (len(first), first)
            elif self._left >= len(first):
                self._left -= len(first)
                head += first
            else:
                head += self._clip(first)
        self._write(head)

    def write(self, data: bytes | memoryview) -> None:
        if self._head_only or not data:
            return
        if self._chunked:
            self._write(b"%x\r\n%s\r\n" % (len(data), data))
        elif self._left < 0:
            self._write(data)
        elif self._left >= len(data):
            self._left -= len(data)
            self._write(data)
        else:
            self._write(self._clip(data))

    def _clip(self, data: bytes | memoryview) -> bytes | memoryview:
        """Never past a sized response's ``Content-Length``: more would be read by the client as the start of
        the next response."""
        left = self._left
        if len(data) > left:
            log.warning("response body longer than its Content-Length: truncated and closed")
            data = data[:left]
            self._close_now = True
        self._left = left - len(data)
        return data

    def finish(self) -> None:
        """The response is complete (the terminating chunk for chunked bodies)."""
        if self._chunked and not self._head_only:
            self._write(b"0\r\n\r\n")
        self._finished = True

    def respond(self, status: int, body: bytes, content_type: bytes = b"application/json", extra: bytes = b"") -> None:
        """A complete small response in one write."""
        self.start(
            status,
            REASONS.get(status, b"Unknown"),
            b"content-type: " + content_type + b"\r\n" + extra,
            len(body),
            body,
        )
        self._finished = True

    def respond_error(self, error: RequestError, body: bytes | None = None) -> None:
        """A refusal: the provider's error shape when the caller knows the provider, a generic one otherwise."""
        if body is None:
            body = b'{"error":{"type":"%s","message":"%s"}}' % (error.kind.encode(), error.message.encode())
        self.respond(error.status, body, extra=error.extra_headers)

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

    def _linger(self) -> None:
        """Half-close after the last response: send FIN, drop what the client still sends, close on its EOF or
        after ``LINGER_SECONDS`` (nginx's ``lingering_close``)."""
        t = self.transport
        if t is None or t.is_closing() or not t.can_write_eof():
            self.close()
            return
        self._broken = self._lingering = True
        self._held = None  # a refused WebSocket upgrade's frames: read and dropped like any unread body
        self._discarded = 0
        self._reading_paused = False
        t.resume_reading()
        t.write_eof()
        self._cancel_timer()
        self._timer = self.loop.call_later(LINGER_SECONDS, self.close)

    def eof_received(self) -> bool | None:
        return False  # the client is done sending: close (after a lingering close, that is its end)

    def _write(self, data: bytes | memoryview) -> None:
        t = self.transport
        if t is not None and not self.closed and not t.is_closing():
            t.write(data)

    # -- timers -------------------------------------------------------------------------------------------
    def _arm_timer(self) -> None:
        self._cancel_timer()
        self._timer = self.loop.call_later(self._header_timeout, self._timed_out)

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
