"""The request half of a client connection (:class:`RequestReader`, a base of
:class:`modeltrack.http.server.Connection`): httptools' callbacks, which turn the client's bytes into queued
:class:`~modeltrack.http.message.Request` records, and the checks that refuse a request before its body is read.

Its guarantees (tests/test_protocols.py, tests/test_server.py), as the server's docstring lists them: bounded
header size and time (431, slowloris), bounded body size (413 before the body is read when ``Content-Length`` says
so), the process-wide ceilings of :mod:`.limits` (503), strict versions, ``Host`` and ``Transfer-Encoding``,
trailers dropped, fragments stripped, an ignored ``Upgrade`` that keeps a POST's body, and the bytes after a
WebSocket upgrade's head held unparsed. A refused request is queued with its error and answered in its turn.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Final, Protocol

import httptools

from .limits import MAX_HEADER_BYTES, MAX_HEADERS, Limits
from .message import Request, RequestError, overloaded, too_large
from .names import lower
from .writer import ResponseWriter

log: Final = logging.getLogger("modeltrack.http.server")

MAX_PIPELINED: Final = 32  # requests parsed ahead of the one being answered, per connection

MAX_HELD: Final = 1 << 16
"""Bytes a client may send after a WebSocket upgrade's head before it is answered (frames sent ahead of the
``101``): past this, reading pauses until the handler decides."""


class TunnelEnd(Protocol):
    """What a switched connection hands the client's bytes to (:class:`modeltrack.tunnel.Tunnel`)."""

    def from_client(self, data: bytes) -> None: ...

    def client_lost(self) -> None: ...


class _StopParsing(Exception):
    """Raised from a parser callback: nothing after a refused request is parsed."""


class _HeadersTooLarge(Exception):
    pass


_SYNTHETIC: Final[dict[bool, bytes]] = {
    False: b"POST / HTTP/1.1\r\nContent-Length: %d\r\n\r\n",
    True: b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
}


class RequestReader(ResponseWriter):
    """Parses the client's bytes into ``_queue``; the connection's ``_serve`` task answers what is queued."""

    __deletable__ = ["_parser"]  # (compiled, an attribute can be deleted only if named here: Connection does)

    def __init__(self, *, max_body: int, header_timeout: float, limits: Limits | None) -> None:
        super().__init__()
        self._max_body = max_body
        self._header_timeout = header_timeout
        self._limits = limits or Limits()
        self.loop = asyncio.get_running_loop()  # looked up once: each lookup checks the process id (a syscall)
        self._parser = httptools.HttpRequestParser(self)
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
        self._deadline = 0.0  # when the head timer closes the connection (0: stopped; see _arm_timer)
        self._too_big = False
        self._reading_paused = False
        self._task: asyncio.Task[None] | None = None
        self._closing_after = False  # parse nothing more; close once the queued responses are done
        self._broken = False  # the parser failed: what the client sends next is not read
        self._lingering = False  # closing: what the client still sends is read and dropped
        self._discarded = 0
        self._unstarted = False  # the serving task was created and has not run yet

    async def _serve(self) -> None:
        """Answers the queued requests: the connection's (:meth:`modeltrack.http.server.Connection._serve`)."""
        raise NotImplementedError

    def close(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.flush_held()
            self.transport.close()

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
        except httptools.HttpParserUpgrade as upgrade:
            self._resume_after_upgrade(data[upgrade.args[0] :])
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
            lname = lower(name)
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
        self._disarm_timer()
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
            self._start_serving()

    def _start_serving(self) -> None:
        """The task that answers the queue; the coalescer counts it until it starts (:mod:`.coalesce`)."""
        self._task = self.loop.create_task(self._serve())
        if self._coalescer is not None:
            self._unstarted = True
            self._coalescer.created()

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

    # -- the queue of parsed requests ---------------------------------------------------------------------
    def _enqueue(self, req: Request) -> None:
        self._queue.append(req)
        if len(self._queue) >= MAX_PIPELINED:
            self._pause_reading()  # a client pipelining faster than we answer waits in its own buffers
        if self._task is None and not self.closed:
            self._start_serving()

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

    # -- the head's timer ---------------------------------------------------------------------------------
    # Armed when a connection opens and after each response, stopped when a head is complete: twice a request
    # on a keep-alive connection. A timer made and cancelled each time cost ~2.5 µs a request (perf, bench/README.md
    # "twenty-first session"), so the clock is a deadline: arming it stores a number, and the connection's one
    # timer, when it fires, either finds the deadline passed (the head timed out), moved (it waits again until
    # then) or stopped (it ends). A closed connection's timer is cancelled for real (_stop_timer): nothing keeps a
    # closed connection alive until its timer fires.
    def _arm_timer(self) -> None:
        self._deadline = self.loop.time() + self._header_timeout
        if self._timer is None:
            self._timer = self.loop.call_at(self._deadline, self._timer_fired)

    def _disarm_timer(self) -> None:
        self._deadline = 0.0

    def _stop_timer(self) -> None:
        self._deadline = 0.0
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _timer_fired(self) -> None:
        self._timer = None
        deadline = self._deadline
        if not deadline:
            return
        if self.loop.time() < deadline:
            self._timer = self.loop.call_at(deadline, self._timer_fired)
            return
        self._deadline = 0.0
        self._timed_out()

    def _timed_out(self) -> None:
        """No complete request head within the header timeout: idle keep-alive or a slowloris client."""
        if self._task is None:
            self.close()
