"""Upstream connections: one small response-parsing protocol per connection (the pool that hands them out is
:mod:`modeltrack.http.upstream_pool`).

The response is not read by a coroutine: the connection's parser calls the exchange that owns the request
(``on_head``, ``on_body``, ``on_complete``, ``on_error``) straight from ``data_received``, so a streamed chunk is
metered and written to the client in the same callback that received it — no task switch, no queue, no copy.
Backpressure is explicit: the exchange calls :meth:`UpstreamConnection.pause` when the client's socket buffer is
full, which stops reading this socket, so the upstream's TCP window closes instead of our memory growing.

One answer, one client. A pooled connection is the easiest place for one client's bytes to reach another, so
the rules are strict (aiohttp's ``client_proto`` is the model: never reuse an unclean connection):

* a connection is ``IDLE``, ``BUSY`` or ``CLOSED``; only ``IDLE → BUSY`` hands it out and only ``BUSY → IDLE``
  pools it, so releasing twice is a no-op and a busy connection is never handed out;
* a response is finished only after the whole read that completed it has been parsed: any byte after a
  complete response, or any response nobody asked for, closes the connection instead of pooling it;
* a connection whose reading was paused for a slow client is resumed before it is pooled;
* a connection the upstream closed (EOF) leaves the pool at once, and one about to be handed out is checked for
  pending EOF or stray bytes first (urllib3's ``is_connection_dropped``);
* a request that provably never left (the connection was already closing, or every byte was still in our write
  buffer when it closed) is retried once on a fresh connection; so is an idempotent request that got no byte
  back on a reused connection. A POST that may have reached the provider is never sent twice.

Connections are only ever opened to the configured origin (scheme, host, port), directly or through the egress
proxy the environment names for it (:mod:`modeltrack.http.egress`): the request path goes into the request line,
never into the choice of host, so no request target can make the proxy connect elsewhere.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Final, Protocol, cast

import httptools

from .coalesce import Coalescer
from .limits import MAX_HEADER_BYTES
from .names import lower

IDLE, BUSY, CLOSED = "idle", "busy", "closed"
_IDEMPOTENT: Final = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"})


class Pool(Protocol):
    """What a connection reports to (the :class:`~.upstream_pool.UpstreamPool`), handed in at construction so
    this module never imports the pool back."""

    def watch(self, conn: UpstreamConnection) -> None: ...

    def release(self, conn: UpstreamConnection) -> None: ...

    def forget(self, conn: UpstreamConnection, was_idle: bool) -> None: ...


class Receiver(Protocol):
    """The exchange a connection reports to while it carries that exchange's response."""

    def on_informational(self, status: int, reason: bytes, headers: list[tuple[bytes, bytes]]) -> None: ...

    def on_head(
        self, status: int, reason: bytes, headers: list[tuple[bytes, bytes]], length: int | None, codings: bytes
    ) -> None:
        """``length``: the body's size, or None when it is chunked or delimited by the end of the connection.
        ``codings``: transfer codings other than ``chunked`` that llhttp left on the body (``b"gzip"``); the
        client must be told of them in ``Content-Encoding``, since the framing header itself is hop-by-hop."""
        ...

    def on_body(self, data: bytes) -> None: ...

    def on_complete(self) -> None: ...

    def on_error(self, kind: str, retryable: bool) -> None:
        """``kind``: ``bad_response`` (no valid head), ``reset`` (broken mid-body). ``retryable``: the request
        provably never reached the upstream, or it is idempotent and got nothing back on a reused connection."""
        ...


class Unsent(Exception):
    """The connection was closing before the request was written: nothing left, send it on another one."""


class _OutOfStep(Exception):
    """Bytes followed the response that was asked for, in the read that completed it."""


class UpstreamConnection(asyncio.Protocol):
    """One HTTP/1.1 connection to an upstream. Carries one exchange at a time."""

    def __init__(self, pool: Pool, coalescer: Coalescer | None = None) -> None:
        """``coalescer``: counted in while a read is delivered, so the client writes it causes may be held to
        the end of the loop's turn, and asked whether a request should wait for the rest of its turn's
        (:mod:`modeltrack.http.coalesce`)."""
        self._pool = pool
        self._coalescer = coalescer
        self._parser = httptools.HttpResponseParser(self)
        self.transport: asyncio.Transport | None = None
        self.receiver: Receiver | None = None
        self.state = IDLE
        self.reused = False  # has carried an exchange before the current one
        self.idle_since = 0.0
        self.reading_paused = False
        self.fd = -1
        # per exchange
        self._method = ""
        self._head_request = False
        self._request_bytes = 0
        self._held: tuple[bytes, bytes] | None = None  # the request, held to the end of the turn
        self._received = False  # any byte of the response arrived
        self._complete = False  # the final response's last byte was parsed
        self._headed = False  # the final response's head was delivered
        self._close_delimited = False
        self._keep_alive = True
        # per message (a 1xx, then the final response)
        self._headers: list[tuple[bytes, bytes]] = []
        self._reason = b""
        self._status = 0
        self._header_bytes = 0
        self._body: list[bytes] = []  # body pieces parsed from the current read, not yet handed on

    # -- sending ------------------------------------------------------------------------------------------
    def send(self, receiver: Receiver, method: str, head: bytes, body: bytes) -> None:
        """Write one request. Raises :class:`Unsent` when the connection is already closing."""
        t = self.transport
        if t is None or t.is_closing() or self.state != BUSY:
            self.close()
            raise Unsent
        self.receiver = receiver
        self._method = method
        self._head_request = method == "HEAD"
        self._received = self._complete = self._headed = False
        self._close_delimited = False
        self._keep_alive = True
        self._request_bytes = len(head) + len(body)
        coalescer = self._coalescer
        if coalescer is not None and coalescer.hold_request(self):
            self._held = (head, body)  # written with the rest of the turn's requests (http.coalesce)
        elif body:
            t.writelines((head, body))
        else:
            t.write(head)

    def flush_held(self) -> None:
        """Write the held request (the turn's last handler started); nothing if the connection closed since."""
        held, self._held = self._held, None
        t = self.transport
        if held is None or t is None or t.is_closing():
            return
        head, body = held
        if body:
            t.writelines((head, body))
        else:
            t.write(head)

    def pause(self) -> None:
        """Stop reading (the client cannot take more). Idempotent, as uvicorn's ``FlowControl``."""
        if not self.reading_paused and self.transport is not None and self.state != CLOSED:
            self.reading_paused = True
            self.transport.pause_reading()

    def resume(self) -> None:
        if self.reading_paused and self.transport is not None and self.state != CLOSED:
            self.reading_paused = False
            self.transport.resume_reading()

    def close(self) -> None:
        """Drop the connection (an abandoned or failed exchange: what is left on it is unusable)."""
        self.receiver = None
        if self.state != CLOSED:
            was_idle = self.state == IDLE
            self.state = CLOSED
            self._pool.forget(self, was_idle)
        if self.transport is not None and not self.transport.is_closing():
            self.transport.abort()

    # -- asyncio.Protocol ---------------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError, ValueError):
                self.fd = sock.fileno()
        self._pool.watch(self)

    def data_received(self, data: bytes) -> None:
        if self.receiver is None or self._complete:
            self.close()  # bytes nobody asked for: the connection is out of step
            return
        self._received = True
        coalescer = self._coalescer
        if coalescer is None:
            return self._deliver(data)
        coalescer.holding += 1
        try:
            self._deliver(data)
        finally:
            coalescer.holding -= 1

    def _deliver(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError:
            if not self._complete:
                self._fail()
                return
            # Bytes after a complete response: an extra response nobody asked for, or garbage. What was asked
            # for is complete and is delivered; the connection is not reused.
            self._keep_alive = False
        if self._body:
            self._flush_body()
        if self._complete:
            self._finish()

    def _fail(self) -> None:
        receiver = self.receiver
        self._body.clear()
        headed = self._headed
        self.close()
        if receiver is not None:
            receiver.on_error("reset" if headed else "bad_response", False)

    def _flush_body(self) -> None:
        """Hand the body bytes parsed from one read to the exchange in one piece: a chunked stream often has one
        HTTP chunk per SSE event, and one client write per chunk would be one syscall per event."""
        parts = self._body
        data = parts[0] if len(parts) == 1 else b"".join(parts)
        parts.clear()
        receiver = self.receiver
        if receiver is not None:
            receiver.on_body(data)

    def _finish(self) -> None:
        """The response is complete and nothing followed it in this read: pool the connection if it is clean,
        then let the exchange finish (it writes the client's last bytes and records the event)."""
        receiver, self.receiver = self.receiver, None
        if self._keep_alive and not self._head_request and self.state == BUSY:
            if self.reading_paused:
                self.resume()  # a pause belonged to the exchange that just ended
            self._pool.release(self)
        else:
            self.close()
        if receiver is not None:
            receiver.on_complete()

    def eof_received(self) -> bool | None:
        if self.receiver is None:
            self.close()  # an idle connection the upstream closed: out of the pool now, not at the next request
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        if self.state != CLOSED:
            was_idle = self.state == IDLE
            self.state = CLOSED
            self._pool.forget(self, was_idle)
        receiver, self.receiver = self.receiver, None
        if receiver is None or self._complete:
            return
        if self._headed and self._close_delimited and exc is None:
            if self._body:
                self._body.clear()
            receiver.on_complete()  # a body delimited by the end of the connection
        elif self._headed:
            receiver.on_error("reset", False)
        else:
            receiver.on_error("bad_response", self._retryable())

    def _retryable(self) -> bool:
        """Nothing came back. Safe to send again only if nothing left (every byte still in our buffer), or the
        method is idempotent and the connection was a reused one the upstream had quietly closed."""
        if self._received:
            return False
        t = self.transport
        unsent = self._held is not None or (t is not None and t.get_write_buffer_size() >= self._request_bytes > 0)
        return unsent or (self.reused and self._method in _IDEMPOTENT)

    # -- httptools callbacks ------------------------------------------------------------------------------
    def on_message_begin(self) -> None:
        if self._complete:
            raise _OutOfStep
        self._headers = []
        self._reason = b""
        self._status = 0
        self._header_bytes = 0
        self._body.clear()

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
        if status < 100:
            raise ValueError("status code out of range")  # a 502
        length: int | None = None
        codings: list[bytes] = []
        for k, v in self._headers:
            n = len(k)
            if n != 14 and n != 17:
                continue  # neither Content-Length nor Transfer-Encoding: not lower-cased
            lk = lower(k)
            if lk == b"content-length":
                length = int(v) if v.strip().isdigit() else None
            elif lk == b"transfer-encoding":
                codings.extend(c.strip().lower() for c in v.split(b",") if c.strip())
        if status < 200:
            # An interim response has no body (RFC 9110 §15.2); llhttp reads one for 1xx codes above 103 when a
            # length or coding says so, and those bytes must never reach the client as if they were a response.
            if status == 101 or length or codings:
                raise ValueError("informational response with a body or a protocol switch")
            receiver = self.receiver
            if receiver is not None:
                receiver.on_informational(status, self._reason, self._headers)
            return
        chunked = bool(codings) and codings[-1] == b"chunked"
        if codings:
            # Framed the way llhttp framed it: chunked when chunked is the final coding, otherwise delimited by
            # the end of the connection (and Content-Length, if any, is not the framing).
            length = None
            if chunked:
                codings.pop()
            if b"chunked" in codings:
                raise ValueError("chunked applied twice or not last")
        no_body = self._head_request or status in (204, 304)
        self._close_delimited = length is None and not chunked and not no_body
        if not self._parser.should_keep_alive() or self._close_delimited:
            self._keep_alive = False
        self._headed = True
        receiver = self.receiver
        if receiver is not None:
            receiver.on_head(status, self._reason, self._headers, length, b", ".join(codings))
        if self._head_request:
            # The head is all a HEAD gets, whatever its framing headers say; httptools cannot be told the
            # response answers a HEAD, so the exchange ends here and the connection is not reused.
            self._complete = True

    def on_body(self, body: bytes) -> None:
        if self._complete:
            raise _OutOfStep
        if self._status < 200 or not self._headed:
            raise ValueError("body before a final response head")
        self._body.append(body)

    def on_message_complete(self) -> None:
        if self._status >= 200:
            self._complete = True
