"""The response half of a client connection (:class:`ResponseWriter`, a base of
:class:`modeltrack.http.server.Connection`): what the handler calls to answer the request at the head of the
connection's queue.

Its guarantees (tests/test_protocols.py, tests/test_server.py): a body of unknown size is chunked for HTTP/1.1
clients and close-delimited for HTTP/1.0 ones; nothing is written after a sized response's ``Content-Length``
(the rest is cut and the connection closed, or the client would read it as the next response); no body and no
framing header for 1xx, 204 and 304, or for ``HEAD``; ``103 Early Hints`` only to HTTP/1.1 clients; a response
started after the client left is dropped, never written to a closed transport.

Writes made while upstream reads are delivered may be held to the end of the loop's turn
(:mod:`modeltrack.http.coalesce`); closing, aborting and half-closing write what is held first.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from typing import Final

from .coalesce import Coalescer
from .message import REASONS, Request, RequestError, response_head

log: Final = logging.getLogger("modeltrack.http.server")


class ResponseWriter(asyncio.Protocol):
    """Writes the response to the request at the head of ``_queue``; the connection resets the per-response
    state before each request it serves."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self._queue: deque[Request] = deque()
        self._close_now = False  # close after the current response (it was cut short)
        # per-response state
        self._started = False
        self._chunked = False
        self._finished = False
        self._head_only = False
        self._left = -1  # bytes still allowed by a sized response's Content-Length (-1: not sized)
        self._coalescer: Coalescer | None = None
        self._unsent: list[bytes | memoryview] | None = None  # writes held to the end of the turn, in order

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
            self.flush_held()
            self.transport.abort() if self._started else self.transport.close()

    def _write(self, data: bytes | memoryview) -> None:
        t = self.transport
        if t is None or self.closed or t.is_closing():
            return
        unsent = self._unsent
        if unsent is not None:
            unsent.append(data)  # behind what is held: a connection's bytes leave in order
        elif self._coalescer is not None and self._coalescer.hold_response(self):
            self._unsent = [data]
        else:
            t.write(data)

    def flush_held(self) -> None:
        """Write what is held (the turn ended, or the connection is about to close)."""
        unsent = self._unsent
        if unsent is None:
            return
        self._unsent = None
        t = self.transport
        if t is not None and not self.closed and not t.is_closing():
            if len(unsent) == 1:
                t.write(unsent[0])
            else:
                t.writelines(unsent)
