"""The upstream end of a WebSocket tunnel: one connection outside the pool (an upgraded connection is never
reused), opened to the configured origin by :meth:`~.upstream_pool.UpstreamPool.open_raw`.

It writes the client's upgrade request, reads the answer's head with httptools, and then either:

* the answer is ``101`` with ``Upgrade``: llhttp stops at the end of the head, and every byte after it, in that
  read and all later ones, goes to the tunnel unparsed (:meth:`Receiver.on_switched`,
  :meth:`Receiver.from_upstream`);
* the answer is anything else (401, 403, 404...): its body is read, bounded, and handed over whole
  (:meth:`Receiver.on_refused`), to be answered to the client as an HTTP response; the connection is closed;
* a ``101`` that does not name the upgrade, or anything that is not HTTP, is a bad response (a 502).

Backpressure both ways: the tunnel pauses this socket when the client cannot take more, and this protocol tells
the tunnel when the upstream cannot (``pause_writing``), so neither direction grows a buffer.
(tests/test_realtime.py, tests/test_upgrade_protocol.py)
"""

from __future__ import annotations

import asyncio
from typing import Protocol, cast

import httptools

from .limits import MAX_HEADER_BYTES

MAX_REFUSAL_BODY = 1 << 16
"""The most of a refused upgrade's body that is kept (an error JSON): more is cut, and the refusal still sent."""


class Receiver(Protocol):
    def on_switched(self, headers: list[tuple[bytes, bytes]], rest: bytes) -> None: ...

    def on_refused(self, status: int, reason: bytes, headers: list[tuple[bytes, bytes]], body: bytes) -> None: ...

    def from_upstream(self, data: bytes) -> None: ...

    def upstream_lost(self, bad: bool) -> None:
        """The connection ended; ``bad``: before a valid answer's head (a 502)."""
        ...

    def upstream_full(self, full: bool) -> None: ...


class UpstreamUpgrade(asyncio.Protocol):
    def __init__(self, receiver: Receiver) -> None:
        self.receiver: Receiver | None = receiver
        self._parser = httptools.HttpResponseParser(self)
        self.transport: asyncio.Transport | None = None
        self.switched = False
        self._answered = False
        self._complete = False
        self._status = 0
        self._reason = b""
        self._headers: list[tuple[bytes, bytes]] = []
        self._header_bytes = 0
        self._body: list[bytes] = []
        self._body_size = 0
        self._paused = False

    # -- used by the tunnel -------------------------------------------------------------------------------
    def write(self, data: bytes | memoryview) -> None:
        t = self.transport
        if t is not None and not t.is_closing():
            t.write(data)

    def pause(self) -> None:
        if not self._paused and self.transport is not None and not self.transport.is_closing():
            self._paused = True
            self.transport.pause_reading()

    def resume(self) -> None:
        if self._paused and self.transport is not None and not self.transport.is_closing():
            self._paused = False
            self.transport.resume_reading()

    def close(self) -> None:
        self.receiver = None
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()

    def abort(self) -> None:
        self.receiver = None
        if self.transport is not None:
            self.transport.abort()

    # -- asyncio.Protocol ---------------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        receiver = self.receiver
        if receiver is None:
            return
        if self.switched:
            receiver.from_upstream(data)
            return
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            if self._status != 101:
                self._bad()
                return
            self.switched = True
            receiver.on_switched(self._headers, data[exc.args[0] :])
            return
        except (httptools.HttpParserError, ValueError):
            self._bad()
            return
        if self._status == 101 and self._complete:
            self._bad()  # a 101 without Upgrade/Connection: llhttp completed it as a message, switched nothing

    def _bad(self) -> None:
        receiver = self.receiver
        self.abort()
        if receiver is not None and not self._answered:
            receiver.upstream_lost(True)

    def connection_lost(self, exc: Exception | None) -> None:
        receiver, self.receiver = self.receiver, None
        if receiver is not None:
            receiver.upstream_lost(not self.switched and not self._answered)

    def pause_writing(self) -> None:
        if self.receiver is not None:
            self.receiver.upstream_full(True)

    def resume_writing(self) -> None:
        if self.receiver is not None:
            self.receiver.upstream_full(False)

    # -- httptools callbacks ------------------------------------------------------------------------------
    def on_message_begin(self) -> None:
        self._headers = []
        self._header_bytes = 0
        self._reason = b""

    def on_status(self, reason: bytes) -> None:
        self._reason += reason

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_bytes += len(name) + len(value)
        if self._header_bytes > MAX_HEADER_BYTES:
            raise ValueError("upstream response headers too large")
        self._headers.append((name, value))

    def on_headers_complete(self) -> None:
        self._status = self._parser.get_status_code()

    def on_body(self, body: bytes) -> None:
        if self._body_size < MAX_REFUSAL_BODY:
            self._body.append(body[: MAX_REFUSAL_BODY - self._body_size])
            self._body_size += len(body)

    def on_message_complete(self) -> None:
        status = self._status
        if status < 200 and status != 101:
            return  # an interim answer (100, 103): the final one follows
        if status == 101:
            self._complete = True  # valid, llhttp raises the upgrade right after this; invalid, nothing follows
            return
        self._answered = True
        receiver = self.receiver
        self.close()
        if receiver is not None:
            receiver.on_refused(status, self._reason, self._headers, b"".join(self._body))
