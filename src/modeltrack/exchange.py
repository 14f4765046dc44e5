"""The streaming tee: one request's trip through the proxy, driven by the upstream connection's callbacks.

Each chunk the upstream sends is fed to the provider's meter and written to the client in the callback that
received it (no task, queue or await per chunk). The exchange also carries the request's outcome to the recorder
(:class:`~modeltrack.accounting.Outcome`), and is the client connection's flow listener: when the client's buffer
is full, the upstream is paused.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Any, Final, Protocol

from .events import new_request_id
from .http.headers import HeaderView, ResponseHead, clean_reason
from .http.server import Connection
from .http.upstream import UpstreamConnection
from .http.watchdog import IdleWatchdog
from .logs import log_exception_safely
from .metrics import Metrics
from .providers import Meter, Provider, RequestInfo
from .providers.base import BodyView
from .wire.codec import metering_view

if TYPE_CHECKING:
    from .controls import Decision
    from .controls.cache import Capture, Entry
    from .controls.ratelimit import Ticket

# The clocks as C statics: compiled, a call is then one indirect call, not an attribute lookup on the module
# (~30 ns a call, several a request).
perf_counter: Final = time.perf_counter
log: Final = logging.getLogger("modeltrack.proxy")


class Owner(Protocol):
    """What an exchange reports to (the :class:`~modeltrack.proxy.Proxy`), handed in at construction so the
    exchange never imports the proxy back."""

    metrics: Metrics

    def record(self, ex: Exchange) -> None: ...

    def store_capture(self, ex: Exchange) -> None: ...


class Exchange:
    """One request's trip through the proxy, driven by the upstream connection's callbacks; it also carries the
    request's outcome (an :class:`~modeltrack.accounting.Outcome`) to the recorder.

    Also the client connection's flow listener: when the client's buffer is full we stop reading the upstream.
    """

    __slots__ = (
        "attrs",
        "blocked",
        "cached",
        "capture",
        "client",
        "complete",
        "decision",
        "done",
        "endpoint",
        "error",
        "event",
        "first_byte",
        "headed",
        "info",
        "meter",
        "own",
        "pending_head",
        "provider",
        "provider_name",
        "proxy",
        "rate_ticket",
        "recorded",
        "remaining",
        "retryable",
        "rid",
        "route_rule",
        "routed_from",
        "start",
        "status",
        "tail",
        "upstream",
        "upstream_id",
        "view",
        "wall",
        "watchdog",
    )

    def __init__(
        self,
        proxy: Owner,
        client: Connection,
        provider: Provider,
        info: RequestInfo,
        endpoint: str,
        attrs: dict[str, Any],
        start: float,
        wall: float,
    ) -> None:
        self.proxy = proxy
        self.client = client
        self.provider = provider
        self.provider_name = provider.name
        self.info = info
        self.endpoint = endpoint
        self.attrs = attrs
        self.start = start
        self.wall = wall
        self.rid = new_request_id()
        self.status = 0
        self.error: str | None = None
        self.upstream_id: str | None = None
        self.meter: Meter | None = None
        self.complete = False
        self.first_byte: float | None = None
        self.own = 0.0
        self.recorded = False
        self.headed = False
        self.retryable = False
        self.pending_head: tuple[int, bytes, bytes, int] | None = None
        self.remaining = -1  # bytes still due of a sized body (-1: a stream)
        self.tail = b""  # a sized body's last bytes: written only after the event is journaled
        self.upstream: UpstreamConnection | None = None
        self.watchdog: IdleWatchdog | None = None
        self.view: BodyView | None = None
        self.done: asyncio.Future[None] = client.loop.create_future()
        # Spend controls (all None unless a controls file is loaded):
        self.decision: Decision | None = None
        self.routed_from: str | None = None  # the model asked for, when a routing rule replaced it
        self.route_rule: str | None = None
        self.blocked = False  # refused by a budget or a routing rule: cost 0
        self.rate_ticket: Ticket | None = None  # what the request took from its key's rate limits
        self.cached: Entry | None = None  # answered from the response cache
        self.capture: Capture | None = None  # the client's bytes, kept for the response cache
        self.event: Any = None

    def retry(self) -> None:
        """Ready for a second attempt on a fresh connection (the first provably never reached the upstream)."""
        self.retryable = False
        self.error = None
        self.done = self.client.loop.create_future()

    # -- from the upstream connection ---------------------------------------------------------------------
    def on_informational(self, status: int, reason: bytes, headers: list[tuple[bytes, bytes]]) -> None:
        if status == 103:  # Early Hints are for the client (RFC 9110 §15.2); 100 and 102 were for us
            self.client.informational(103, clean_reason(reason) or b"Early Hints", ResponseHead(headers).block)

    def on_head(
        self, status: int, reason: bytes, headers: list[tuple[bytes, bytes]], length: int | None, codings: bytes
    ) -> None:
        t = perf_counter()
        self.status = status
        self.headed = True
        head = ResponseHead(headers, codings)
        self.upstream_id = head.upstream_id
        try:
            self.meter = metering_view(self.provider.meter(self.info, status, HeaderView(headers)), head.encoding)
        except Exception as exc:  # noqa: BLE001 - a meter bug costs the usage, never the response
            log_exception_safely(f"{self.rid} meter failed to start", exc, log.name)
        self.view = self.provider.client_view(self.info, status, head.encoding) if self.info.extra else None
        reason = clean_reason(reason)
        block = head.block
        d = self.decision
        if d is not None:
            block += d.head
            if d.cache_key is not None and 200 <= status < 300:
                self._start_capture(status, reason, head.block, length if self.view is None else None)
        if length is not None and self.view is None:
            # A sized body: send the headers with the first body bytes, one write instead of two.
            self.pending_head = (status, reason, block, length)
            self.remaining = length
        else:
            # A stream: headers at once, so clients see them as early as the upstream sent them.
            self.client.start(status, reason, block, None)
        self.own += perf_counter() - t

    def on_body(self, data: bytes) -> None:
        t = perf_counter()
        if self.first_byte is None:
            self.first_byte = t
        wd = self.watchdog
        if wd is not None:
            wd.progress += 1
        meter = self.meter
        if meter is not None:
            try:
                meter.feed(data)
            except Exception as exc:  # noqa: BLE001
                log_exception_safely(f"{self.rid} meter failed", exc, log.name)
                self.meter = None
        if self.view is not None:
            data = self.view.feed(data)
        if self.capture is not None:
            self._keep(data)
        if self.remaining >= 0:
            self.remaining -= len(data)
            if self.remaining <= 0:
                self.tail = data  # the last bytes wait for the event (on_complete)
                self.own += perf_counter() - t
                return
        head = self.pending_head
        if head is not None:
            self.pending_head = None
            self.client.start(head[0], head[1], head[2], head[3], data)
        elif data:
            self.client.write(data)
        self.own += perf_counter() - t

    def on_complete(self) -> None:
        self.upstream = None
        self.complete = True
        # Record (journal) the event *before* the final bytes: a client that has seen the response complete can
        # rely on its event surviving even a kill -9 of the proxy.
        self.proxy.record(self)
        t = perf_counter()
        head = self.pending_head
        if head is not None:
            self.pending_head = None
            self.client.start(head[0], head[1], head[2], head[3], self.tail)
        elif self.tail:
            self.client.write(self.tail)
        if self.view is not None:
            rest = self.view.flush()
            if rest:
                if self.capture is not None:
                    self._keep(rest)
                self.client.write(rest)
        self.client.finish()
        if self.capture is not None:
            self.proxy.store_capture(self)
        self.own += perf_counter() - t
        self._settle()

    # -- the response cache's copy ------------------------------------------------------------------------
    def _start_capture(self, status: int, reason: bytes, block: bytes, length: int | None) -> None:
        from .controls.cache import Capture, Entry

        assert self.decision is not None
        entry = Entry(status, reason, block, b"", length is not None, {})
        self.capture = Capture(entry, length, self.decision.capture_limit)

    def _keep(self, data: bytes) -> None:
        assert self.capture is not None
        if not self.capture.keep(data):
            self.capture = None  # too large for the cache: the response itself is unaffected
            self.proxy.metrics.response_cache.labels("not_stored").inc()

    def on_error(self, kind: str, retryable: bool) -> None:
        self.upstream = None
        if not self.headed:
            self.retryable = retryable
            self.error = "upstream_bad_response"  # closed or garbled before a response head: a 502 follows
        else:
            self.error = "upstream_reset"
            self.proxy.metrics.upstream_errors.labels(self.provider_name, "reset").inc()
            log.warning("%s upstream stream broke", self.rid)
            self.client.abort()
        self._settle()

    def on_idle(self) -> None:
        """The idle watchdog fired: the upstream went silent."""
        if self.upstream is not None:
            self.upstream.close()
            self.upstream = None
        if not self.headed:
            self.error = "upstream_timeout"
        else:
            self.error = "upstream_idle_timeout"
            self.proxy.metrics.upstream_errors.labels(self.provider_name, "idle_timeout").inc()
            self.client.abort()
        self._settle()

    def _settle(self) -> None:
        if not self.done.done():
            self.done.set_result(None)

    # -- flow control from the client connection ----------------------------------------------------------
    def pause(self) -> None:
        if self.watchdog is not None:
            self.watchdog.waiting = False
        if self.upstream is not None:
            self.upstream.pause()

    def resume(self) -> None:
        if self.watchdog is not None:
            self.watchdog.waiting = True
        if self.upstream is not None:
            self.upstream.resume()
