"""The client-facing HTTP/1.1 server: one small asyncio protocol per connection, parsing with httptools (llhttp).

Why not aiohttp's web server on this path: its per-request machinery (Request/StreamResponse objects, router,
middleware chain, a task and a payload stream per request) cost more than everything ModelTrack does itself
(bench/README.md). Here a connection is a protocol object, a request is a slotted record, and flow control is
explicit: when the client's socket buffer fills, ``pause_writing`` tells the exchange to pause reading from the
upstream socket, so a slow client slows its upstream down instead of growing a buffer.

A connection is one object made of three classes, one module each, so that no method call on the hot path goes
through a second object: :class:`~modeltrack.http.writer.ResponseWriter` (the response half),
:class:`~modeltrack.http.reader.RequestReader` (httptools' callbacks, the checks and the queue) and
:class:`Connection` here (the connection's life, flow control, the WebSocket switch, the task that serves the
queue in order).

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
from collections.abc import Awaitable, Callable
from typing import Final, Protocol, cast

from ..logs import log_exception_safely
from .coalesce import Coalescer
from .limits import Limits
from .message import Request
from .reader import MAX_PIPELINED, RequestReader, TunnelEnd

log: Final = logging.getLogger("modeltrack.http.server")

LINGER_SECONDS: Final = 2.0
"""After refusing a request whose body is still arriving, keep reading (and discarding) for this long before
closing, as nginx's lingering close does: closing a socket with unread data makes the kernel send a reset,
which can destroy the refusal before the client has read it."""


class FlowListener(Protocol):
    """Who to tell when the client's socket buffer fills up or drains (the exchange pausing its upstream)."""

    def pause(self) -> None: ...

    def resume(self) -> None: ...


Handler = Callable[[Request, "Connection"], Awaitable[None]]


class Connection(RequestReader):
    """The server side of one client connection; also the response writer handed to the handler. Parsing is
    :class:`~modeltrack.http.reader.RequestReader`'s, writing :class:`~modeltrack.http.writer.ResponseWriter`'s;
    here are the connection's life, its flow control, the tunnel switch and the task that serves the queue."""

    def __init__(
        self,
        handler: Handler,
        *,
        max_body: int,
        header_timeout: float,
        limits: Limits | None = None,
        on_close: Callable[[Connection], None] | None = None,
        coalescer: Coalescer | None = None,
    ) -> None:
        """``coalescer``: the process's, which holds the writes made inside upstream reads to the end of the
        turn, and counts this connection's handler from its creation to its start, for the requests it holds
        (:mod:`modeltrack.http.coalesce`); None writes each at once."""
        super().__init__(max_body=max_body, header_timeout=header_timeout, limits=limits)
        self._coalescer = coalescer
        self._handler = handler
        self._on_close = on_close
        self.write_paused = False
        self.flow: FlowListener | None = None

    # -- asyncio.Protocol ---------------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self._arm_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._stop_timer()
        if self.tunnel is not None:
            self.tunnel.client_lost()
        if self._task is not None and not self._task.done():
            self._task.cancel()  # the client is gone: stop the handler (it records what it has)
            if self._unstarted and self._coalescer is not None:
                self._unstarted = False
                self._coalescer.started()  # it never will start: the requests held for it go now
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
    def _release(self, req: Request) -> None:
        if req._admitted or req._reserved:
            self._limits.release(1 if req._admitted else 0, req._reserved)
            req._admitted = False
            req._reserved = 0

    async def _serve(self) -> None:
        """Answer queued requests one at a time, in order (HTTP/1.1 pipelining)."""
        coalescer = self._coalescer
        if self._unstarted and coalescer is not None:
            self._unstarted = False
            coalescer.started()
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
                        self._write(b"HTTP/1.1 100 Continue\r\n\r\n")
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

    def keep_alive_off(self) -> None:
        """Close once the current response is done (shutdown); an idle connection closes now."""
        self._closing_after = True
        if self._task is None:
            self.close()

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
        self.flush_held()
        t.write_eof()
        self._stop_timer()
        self._timer = self.loop.call_later(LINGER_SECONDS, self.close)

    def eof_received(self) -> bool | None:
        return False  # the client is done sending: close (after a lingering close, that is its end)
