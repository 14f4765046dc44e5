"""The WebSocket tee: one upgraded connection through the proxy (OpenAI Realtime, Responses over WebSocket,
Gemini Live), the WebSocket counterpart of :mod:`modeltrack.exchange`.

Flow: the proxy has admitted the upgrade request (route, key, budgets, rate limits) and calls :func:`serve`.
A connection outside the pool is opened to the configured origin, the client's upgrade request goes out (its
headers as for any request, less ``Sec-WebSocket-Extensions``: compressed messages could not be metered), and:

* the upstream refuses (401, 404...): its answer goes back as an HTTP response and one event records it;
* the upstream answers ``101``: the client gets that head, the client connection switches to the tunnel, and
  from then on each direction's bytes are written to the other side in the callback that received them, as they
  came, with no task, queue or copy per chunk. Copies are read by a :class:`~modeltrack.wire.websocket.
  MessageReader` per direction and the provider's socket meter (:mod:`modeltrack.providers.realtime`), which
  reports one :class:`Turn` per response; each becomes one cost event, with the connection's ``session_id``
  (the client's ``X-ModelTrack-Session-Id``, else one made for the connection) tying them together.

Guarantees (tests/test_realtime.py): a message larger than ``websocket_max_message`` or a protocol violation
closes both sides; no byte either way for ``websocket_idle_timeout`` closes both sides; a full buffer on either
side pauses reading from the other; a response under way when the connection ends is recorded (usage
``missing``, cost null), never dropped; after each response the key's rate limits and the budgets are checked
again, and a session past them is closed (``rate_limited``, ``budget_exceeded``). Keys (the ``Authorization``
header, ``?key=``, an ``openai-insecure-api-key`` subprotocol) are forwarded and never logged or recorded.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from time import perf_counter
from typing import Any

from .events import CostEvent, new_request_id
from .http.headers import HOP_BY_HOP
from .http.message import REASONS
from .http.server import Connection
from .http.upgrade import UpstreamUpgrade
from .providers import Meter, MeterResult, Provider, RequestInfo
from .providers.realtime import SocketMeter, Turn
from .wire.websocket import MessageReader

log = logging.getLogger("modeltrack.proxy")

_NOT_SENT_UP = frozenset({b"sec-websocket-extensions"})
_NOT_SENT_BACK = HOP_BY_HOP - {b"upgrade", b"connection"} | {b"content-length"}  # a 101: the switch is named
_NOT_SENT_BACK_REFUSED = HOP_BY_HOP | {b"content-length"}  # a refusal is a response like any other


class _Done:
    """A meter whose result is already known (one response of a session)."""

    __slots__ = ("_result",)

    @property
    def ended(self) -> bool:
        return True

    def __init__(self, result: MeterResult) -> None:
        self._result = result

    def feed(self, chunk: bytes) -> None:
        return None

    def finish(self, complete: bool) -> MeterResult:
        return self._result


class TurnOutcome:
    """One response of a session as the recorder takes it (an :class:`~modeltrack.accounting.Outcome`)."""

    __slots__ = (
        "attrs",
        "blocked",
        "cached",
        "complete",
        "endpoint",
        "error",
        "first_byte",
        "info",
        "meter",
        "own",
        "provider_name",
        "rid",
        "route_rule",
        "routed_from",
        "start",
        "status",
        "upstream_id",
        "wall",
    )

    def __init__(
        self, tunnel: Tunnel, result: MeterResult, upstream_id: str | None, start: float, first: float | None
    ) -> None:
        self.rid = new_request_id()
        self.provider_name = tunnel.provider.name
        self.endpoint = tunnel.endpoint
        self.info = tunnel.info
        self.start = start
        self.wall = tunnel.wall + (start - tunnel.start)
        self.attrs = tunnel.attrs
        self.status = 200 if tunnel.switched else tunnel.status  # a response of an open session succeeded
        self.error = result.error
        self.upstream_id = upstream_id
        self.meter: Meter | None = _Done(result)
        self.complete = result.usage is not None
        self.first_byte = first
        self.own = 0.0
        self.routed_from: str | None = None
        self.route_rule: str | None = None
        self.cached: Any = None
        self.blocked = False


class Tunnel:
    """Both ends of one WebSocket connection; the upstream's receiver, the client's tunnel end and its flow
    listener."""

    def __init__(
        self,
        client: Connection,
        provider: Provider,
        info: RequestInfo,
        endpoint: str,
        attrs: dict[str, Any],
        meter: SocketMeter,
        *,
        record: Callable[[TurnOutcome], CostEvent | None],
        max_message: int,
        idle_timeout: float,
        start: float,
        wall: float,
    ) -> None:
        self.client = client
        self.provider = provider
        self.info = info
        self.endpoint = endpoint
        self.attrs = attrs
        self.meter = meter
        self._record = record
        self.start, self.wall = start, wall
        self.status = 0
        self.error: str | None = None
        self.upstream: UpstreamUpgrade | None = None
        self.switched = False
        self.events: list[CostEvent] = []  # recorded, not yet checked against limits and budgets
        self.checked = asyncio.Event()  # set when an event waits to be checked, or when the tunnel ends
        self.done: asyncio.Future[None] = client.loop.create_future()
        self._from_client = MessageReader(from_client=True, max_message=max_message)
        self._from_upstream = MessageReader(from_client=False, max_message=max_message)
        self._idle = idle_timeout
        self._last = client.loop.time()
        self._timer: asyncio.TimerHandle | None = None
        self._arm()  # from the start: an upstream that never answers the upgrade is timed out as an idle one
        self.refusal: tuple[int, bytes, bytes, bytes] | None = None  # (status, reason, header block, body)
        self.policed = False  # responses are checked against limits and budgets (run() does it)
        self._checking = False  # the client is not read until the last response's check is done
        self._full = False  # the upstream's buffer is full: the client is not read

    # -- the upstream's answer to the upgrade ---------------------------------------------------------------
    def on_switched(self, headers: list[tuple[bytes, bytes]], rest: bytes) -> None:
        self.status = 101
        if any(k.lower() == b"sec-websocket-extensions" for k, _ in headers):
            # Never offered, so never valid (RFC 6455 §9.1); compressed messages could not be metered either.
            return self._end("upstream_bad_response", close_client=True)
        block = b"".join(b"%s: %s\r\n" % (k, v) for k, v in headers if k.lower() not in _NOT_SENT_BACK)
        early = self.client.switch(b"HTTP/1.1 101 Switching Protocols\r\n%s\r\n" % block, self)
        self.switched = True
        if early:
            self.from_client(early)
        if rest:
            self.from_upstream(rest)

    def on_refused(self, status: int, reason: bytes, headers: list[tuple[bytes, bytes]], body: bytes) -> None:
        self.status = status
        block = b"".join(b"%s: %s\r\n" % (k, v) for k, v in headers if k.lower() not in _NOT_SENT_BACK_REFUSED)
        self.refusal = (status, reason or REASONS.get(status, b"Unknown"), block, body)
        self._end(None)

    # -- bytes --------------------------------------------------------------------------------------------
    def from_client(self, data: bytes) -> None:
        up = self.upstream
        if up is None:
            return
        self._last = self.client.loop.time()
        reader = self._from_client
        for msg in reader.feed(data):
            self.meter.from_client(msg, perf_counter())
        if reader.failed is not None or self.meter.refused is not None:
            # (what failed the bound, or a message the rules refuse, is never sent on)
            return self._end(reader.failed or self.meter.refused, close_client=True)
        up.write(data)

    def from_upstream(self, data: bytes) -> None:
        self._last = self.client.loop.time()
        reader = self._from_upstream
        for msg in reader.feed(data):
            turn = self.meter.from_server(msg, perf_counter())
            if turn is not None:
                self._turn(turn)  # recorded before the client has the message's last byte
        if reader.failed is not None:
            return self._end(reader.failed, close_client=True)
        self.client.write_raw(data)

    def _turn(self, turn: Turn) -> None:
        now = perf_counter()
        start = turn.started if turn.started is not None else now
        ev = self._record(TurnOutcome(self, turn.result, turn.response_id, start, turn.first_output))
        if ev is not None and self.policed:
            # Nothing more of the client's reaches the provider until this response is checked: a session cannot
            # start another response past a spent budget while the check is under way.
            self.events.append(ev)
            self._checking = True
            self.client.pause_reading()
            self.checked.set()

    def checks_done(self) -> None:
        self._checking = False
        if not self._full:
            self.client.resume_reading()

    # -- ends ---------------------------------------------------------------------------------------------
    def client_lost(self) -> None:
        self._end(self.error or "client_disconnected")

    def upstream_lost(self, bad: bool) -> None:
        if bad:
            self._end("upstream_bad_response")
        else:
            self._end(None, close_client=True)

    def fail(self, error: str) -> None:
        """The upgrade failed before a session began (the caller answers the client)."""
        self._end(error)

    def cut(self, why: str) -> None:
        """End the session from our side (a limit, a budget, the shutdown): both connections are closed."""
        if not self.done.done():
            log.warning("websocket session closed provider=%s reason=%s", self.provider.name, why)
        self._end(why, close_client=True)

    def _end(self, error: str | None, close_client: bool = False) -> None:
        if self.done.done():
            return
        self.error = self.error or error
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        up, self.upstream = self.upstream, None
        if up is not None:
            up.abort() if error is not None else up.close()
        if self.meter.under_way():
            # A response that was started and never reported its usage: recorded, cost unknown, never dropped.
            now = perf_counter()
            started = min(
                [*self.meter.open.values(), *([self.meter.pending] if self.meter.pending else [])], default=now
            )
            # A session the client closed (its Close frame went first) was cut by the client, not the provider.
            why = "client_disconnected" if self._from_client.closed else "upstream_closed"
            result = MeterResult(model=self.meter.model, error=self.error or why)
            self._record(TurnOutcome(self, result, None, started, None))
        if close_client and self.switched:
            self.client.abort() if error is not None else self.client.close()
        self.checked.set()
        self.done.set_result(None)

    def _arm(self) -> None:
        loop = self.client.loop
        self._timer = loop.call_at(self._last + self._idle, self._check_idle)

    def _check_idle(self) -> None:
        self._timer = None
        if self.client.loop.time() - self._last >= self._idle:
            self.cut("idle_timeout")
        else:
            self._arm()

    # -- flow control -------------------------------------------------------------------------------------
    def pause(self) -> None:  # the client's buffer is full: stop reading the upstream
        if self.upstream is not None:
            self.upstream.pause()

    def resume(self) -> None:
        if self.upstream is not None:
            self.upstream.resume()

    def upstream_full(self, full: bool) -> None:
        self._full = full
        if full:
            self.client.pause_reading()
        elif not self._checking:
            self.client.resume_reading()


Check = Callable[[CostEvent], Awaitable[str | None]]


def upgrade_head(method: str, target: bytes, host: bytes, lines: list[tuple[bytes, bytes]]) -> bytes:
    """The upgrade request for the upstream: the client's header lines as forwarded for any request (keys
    included, ``X-ModelTrack-*`` and hop-by-hop fields not), less ``Sec-WebSocket-Extensions``, plus the
    ``Upgrade``/``Connection`` pair the hop-by-hop rule removed."""
    parts = [b"%s %s HTTP/1.1\r\nHost: %s\r\n" % (method.encode("ascii"), target, host)]
    parts.extend(b"%s: %s\r\n" % kv for kv in lines if kv[0].lower() not in _NOT_SENT_UP)
    parts.append(b"Upgrade: websocket\r\nConnection: Upgrade\r\n\r\n")
    return b"".join(parts)


async def run(tunnel: Tunnel, check: Check | None) -> None:
    """Until the tunnel ends: check each recorded response against the limits and budgets (``check`` returns
    why the session must end, or None); the client is read again once every response is checked."""
    tunnel.policed = check is not None
    while not tunnel.done.done():
        await tunnel.checked.wait()
        tunnel.checked.clear()
        while tunnel.events and check is not None:
            why = await check(tunnel.events.pop(0))
            if why is not None:
                tunnel.cut(why)
        if not tunnel.done.done():
            tunnel.checks_done()
