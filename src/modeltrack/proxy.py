"""Forwarding and the streaming tee: the only module that touches both the client and the upstream socket.

Flow for one request: resolve the provider from the path → read the body (bounded) → write the upstream request
(same method, raw path and query, body bytes; the client's header lines byte-for-byte minus hop-by-hop, ``Host``
and ``X-ModelTrack-*``) → the upstream connection calls the :class:`Exchange` as the response arrives: status and
headers are copied, every chunk is fed to the meter and written to the client in the same callback → one cost
event is recorded, whatever happened (success, upstream error, timeout, disconnect).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from time import perf_counter
from typing import Any

from .codec import metering_view
from .events import CostEvent, new_request_id, rfc3339
from .logs import log_exception_safely
from .metrics import Metrics, sanitize
from .pipeline import Pipeline
from .pricing import Pricing
from .providers import Meter, MeterResult, Provider, RequestInfo, Router
from .providers.base import loads
from .server import BodyTooLarge, Connection, Request
from .upstream import UpstreamConnection, UpstreamPool

log = logging.getLogger("modeltrack.proxy")

HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"te",
        b"trailer",
        b"trailers",
        b"transfer-encoding",
        b"upgrade",
    }
)
_DROP_REQUEST = HOP_BY_HOP | {b"host", b"content-length", b"expect"}
_DROP_RESPONSE = HOP_BY_HOP | {b"content-length"}  # the server writes the framing headers itself
_UPSTREAM_ID_HEADERS = (b"x-request-id", b"request-id", b"x-amzn-requestid", b"apim-request-id", b"x-goog-request-id")
ATTR_HEADERS = {
    b"x-modeltrack-team": "team",
    b"x-modeltrack-app": "app",
    b"x-modeltrack-feature": "feature",
    b"x-modeltrack-session-id": "session_id",
}
MAX_ATTR_LEN = 128
_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})


def forward_headers(raw_headers: Iterable[tuple[bytes, bytes]]) -> tuple[list[tuple[bytes, bytes]], dict[str, str]]:
    """Split the client's headers into (header lines for the upstream, attribution values).

    Lines pass through byte-for-byte, in order, duplicates and spelling kept. Header names listed in
    ``Connection`` are hop-by-hop too (RFC 9110 §7.6.1). ``X-ModelTrack-*`` lines are ours: never forwarded.
    """
    out: list[tuple[bytes, bytes]] = []
    attrs: dict[str, str] = {}
    extra_hop: set[bytes] = set()
    pairs = raw_headers if isinstance(raw_headers, list) else list(raw_headers)
    for k, v in pairs:
        if len(k) == 10 and k.lower() == b"connection":
            extra_hop.update(t.strip().lower() for t in v.split(b","))
    for k, v in pairs:
        lk = k.lower()
        if lk in _DROP_REQUEST or lk in extra_hop:
            continue
        if lk.startswith(b"x-modeltrack-"):
            field = ATTR_HEADERS.get(lk)
            if field is not None:
                attrs[field] = sanitize(v.decode("latin-1"), MAX_ATTR_LEN)
            continue
        out.append((k, v))
    return out, attrs


class HeaderView(Mapping[str, str]):
    """Case-insensitive, read-only view of raw header pairs (first value wins), built on first use: what the
    router and the meters ask (``"x-goog-api-key" in h``, ``h.get("Content-Type")``)."""

    __slots__ = ("_map", "_pairs")

    def __init__(self, pairs: list[tuple[bytes, bytes]]) -> None:
        self._pairs = pairs
        self._map: dict[str, bytes] | None = None

    def _lookup(self) -> dict[str, bytes]:
        m = self._map
        if m is None:
            m = self._map = {}
            for k, v in self._pairs:
                m.setdefault(k.decode("latin-1").lower(), v)
        return m

    def __getitem__(self, name: str) -> str:
        return self._lookup()[name.lower()].decode("latin-1")

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name.lower() in self._lookup()

    def __iter__(self) -> Any:
        return iter(self._lookup())

    def __len__(self) -> int:
        return len(self._lookup())


_KINDS: dict[str, str] = {}


def endpoint_kind(path: str) -> str:
    """A bounded name for the operation: ``chat/completions``, ``messages``, ``generateContent``, ``converse``.
    Memoised (bounded): a service sees a handful of distinct paths over and over."""
    kind = _KINDS.get(path)
    if kind is None:
        if len(_KINDS) >= 4096:
            _KINDS.clear()
        kind = _KINDS[path] = _endpoint_kind(path)
    return kind


def _endpoint_kind(path: str) -> str:
    if ":" in path.rsplit("/", 1)[-1]:
        return path.rsplit(":", 1)[-1]
    parts = [p for p in path.split("/") if p]
    if len(parts) >= 3 and parts[0] == "model":  # bedrock: /model/{id}/{op}
        return parts[-1]
    if "deployments" in parts:  # azure: /openai/deployments/{d}/{op...}
        parts = parts[parts.index("deployments") + 2 :]
    while parts and (parts[0] in ("v1", "v1beta", "openai", "api", "inference") or parts[0].startswith("v1")):
        parts = parts[1:]
    return "/".join(parts[:2]) or "/"


class IdleWatchdog:
    """Calls ``on_idle`` when the upstream has been silent for ``timeout`` seconds while we wait on it.

    One timer per request that re-arms itself four times per period, instead of rescheduling a timer for every
    chunk (a per-chunk ``sock_read`` timer cost ~13% of the proxy's CPU on streams). It also catches an upstream
    that sent unparseable bytes and went quiet. The upstream only counts as idle while ``waiting`` is set, so a
    slow *client* (we paused reading the upstream for it) is never taken for an idle upstream.
    """

    __slots__ = ("_handle", "_idle", "_loop", "_on_idle", "_seen", "_timeout", "fired", "progress", "waiting")

    def __init__(self, timeout: float, on_idle: Callable[[], None]) -> None:
        self._loop = asyncio.get_running_loop()
        self._on_idle = on_idle
        self._timeout = timeout
        self._idle = 0.0
        self._seen = 0
        self.progress = 0  # bumped for every chunk: activity between two ticks resets the idle count
        self.waiting = True
        self.fired = False
        self._handle: asyncio.TimerHandle | None = self._loop.call_later(timeout / 4, self._tick)

    def _tick(self) -> None:
        step = self._timeout / 4
        if self.waiting and self.progress == self._seen:
            self._idle += step
        else:
            self._idle = 0.0
        self._seen = self.progress
        if self._idle >= self._timeout:
            self.fired = True
            self._handle = None
            self._on_idle()
            return
        self._handle = self._loop.call_later(step, self._tick)

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None


class Exchange:
    """One request's trip through the proxy, driven by the upstream connection's callbacks.

    Also the client connection's flow listener: when the client's buffer is full we stop reading the upstream.
    """

    __slots__ = (
        "attrs",
        "client",
        "complete",
        "done",
        "error",
        "first_byte",
        "headed",
        "info",
        "meter",
        "own",
        "pending_head",
        "provider",
        "proxy",
        "recorded",
        "remaining",
        "rid",
        "start",
        "status",
        "tail",
        "up_path",
        "upstream",
        "upstream_id",
        "wall",
        "watchdog",
    )

    def __init__(
        self,
        proxy: Proxy,
        client: Connection,
        provider: Provider,
        info: RequestInfo,
        up_path: str,
        attrs: dict[str, str],
        start: float,
        wall: float,
    ) -> None:
        self.proxy = proxy
        self.client = client
        self.provider = provider
        self.info = info
        self.up_path = up_path
        self.attrs = attrs
        self.start = start
        self.wall = wall
        self.rid = new_request_id()
        self.status = 0
        self.error: str | None = None
        self.upstream_id: str | None = None
        self.meter: Meter | None = None
        self.complete = False
        self.recorded = False
        self.headed = False
        self.first_byte: float | None = None
        self.own = 0.0  # seconds spent in our own code (the overhead histogram)
        self.pending_head: tuple[int, bytes, bytes, int] | None = None
        self.remaining = -1  # bytes still due of a sized body (-1: a stream)
        self.tail = b""  # a sized body's last bytes: written only after the event is journaled
        self.upstream: UpstreamConnection | None = None
        self.watchdog: IdleWatchdog | None = None
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    # -- from the upstream connection ---------------------------------------------------------------------
    def on_head(self, status: int, reason: bytes, headers: list[tuple[bytes, bytes]], length: int | None) -> None:
        t = perf_counter()
        self.status = status
        self.headed = True
        block = []
        encoding: str | None = None
        ids: dict[bytes, bytes] = {}
        for k, v in headers:
            lk = k.lower()
            if lk in _DROP_RESPONSE:
                continue
            if lk == b"content-encoding":
                encoding = v.decode("latin-1")
            elif lk in _UPSTREAM_ID_HEADERS and v:
                ids.setdefault(lk, v)
            block.append(b"%s: %s\r\n" % (k, v))
        for name in _UPSTREAM_ID_HEADERS:  # in order of preference, not of arrival
            if name in ids:
                self.upstream_id = sanitize(ids[name].decode("latin-1"), 128)
                break
        try:
            self.meter = metering_view(self.provider.meter(self.info, status, HeaderView(headers)), encoding)
        except Exception as exc:  # noqa: BLE001 - a meter bug costs the usage, never the response
            log_exception_safely(f"{self.rid} meter failed to start", exc, log.name)
        header_block = b"".join(block)
        if length is not None:
            # A sized body: send the headers with the first body bytes, one write instead of two.
            self.pending_head = (status, reason, header_block, length)
            self.remaining = length
        else:
            # A stream: headers at once, so clients see them as early as the upstream sent them.
            self.client.start(status, reason, header_block, None)
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
        else:
            self.client.write(data)
        self.own += perf_counter() - t

    def on_complete(self) -> None:
        self.upstream = None
        self.complete = True
        # Record (journal) the event *before* the final bytes: a client that has seen the response complete can
        # rely on its event surviving even a kill -9 of the proxy.
        self.proxy._record(self)
        t = perf_counter()
        head = self.pending_head
        if head is not None:
            self.pending_head = None
            self.client.start(head[0], head[1], head[2], head[3], self.tail)
        elif self.tail:
            self.client.write(self.tail)
        self.client.finish()
        self.own += perf_counter() - t
        self._settle()

    def on_error(self, kind: str) -> None:
        self.upstream = None
        metrics = self.proxy.metrics
        if not self.headed:
            self.error = "upstream_bad_response"  # closed or garbled before a response head: a 502 follows
        else:
            self.error = "upstream_reset"
            metrics.upstream_errors.labels(self.provider.name, "reset").inc()
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
            self.proxy.metrics.upstream_errors.labels(self.provider.name, "idle_timeout").inc()
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


class Proxy:
    def __init__(
        self,
        router: Router,
        pipeline: Pipeline,
        metrics: Metrics,
        pricing: Pricing,
        pools: Mapping[str, UpstreamPool],
    ) -> None:
        self.router = router
        self.pipeline = pipeline
        self.metrics = metrics
        self.pricing = pricing
        self.pools = pools
        self.inflight = 0
        self.drained: asyncio.Event | None = None  # set by a shutdown waiting for in-flight requests
        self.client_tokens: frozenset[bytes] = frozenset()  # sha256 digests; empty = access control off
        self.body_timeout = 60.0
        self.read_timeout = 600.0
        self.read_timeouts: dict[str, float] = {}  # per provider (MODELTRACK_<PROVIDER>_READ_TIMEOUT)

    # -- errors the proxy itself generates ----------------------------------------------------------------
    @staticmethod
    def error(conn: Connection, provider: Provider | None, status: int, kind: str, message: str) -> None:
        conn.respond(status, (provider or Provider()).error_body(status, kind, message))

    async def handle(self, req: Request, conn: Connection) -> None:
        self.inflight += 1
        try:
            await self._handle(req, conn)
        finally:
            self.inflight -= 1
            if self.inflight == 0 and self.drained is not None:
                self.drained.set()

    async def _handle(self, req: Request, conn: Connection) -> None:
        start = perf_counter()
        wall = time.time()
        target = req.target.decode("latin-1")
        if not target.startswith("/"):
            return self.error(
                conn, None, 400, "invalid_request_target", "Only origin-form request targets are accepted."
            )
        if req.method in ("CONNECT", "TRACE"):
            return self.error(conn, None, 405, "method_not_allowed", f"{req.method} is not proxied.")
        if self.client_tokens and not self._authorized(req):
            return self.error(conn, None, 401, "invalid_client_token", "A valid X-ModelTrack-Key header is required.")
        path, _, query = target.partition("?")
        route = self.router.resolve(path, HeaderView(req.headers))
        if route is None:
            return self.error(
                conn,
                None,
                404,
                "unknown_route",
                "No provider for this path. Use /openai/..., /anthropic/..., /gemini/..., /v1/... (see README).",
            )
        provider, up_path = route
        pool = self.pools.get(provider.name)
        if pool is None:
            return self.error(
                conn,
                provider,
                503,
                "provider_not_configured",
                f"Set MODELTRACK_{provider.name.upper()}_BASE_URL to use the /{provider.name} route.",
            )
        try:
            if req.complete:
                raw = await req.read()
            else:
                async with asyncio.timeout(self.body_timeout):
                    raw = await req.read()
        except BodyTooLarge:
            return self.error(
                conn, provider, 413, "request_too_large", "Request body exceeds MODELTRACK_MAX_BODY_BYTES."
            )
        except TimeoutError:
            return self.error(conn, provider, 408, "request_timeout", "The request body was not received in time.")
        body = loads(raw) if raw[:1] in (b"{", b"[") and provider.name != "bedrock" else None
        info = provider.request_info(req.method, up_path, query, body)
        send = provider.rewrite_body(info, raw, body)
        lines, attrs = forward_headers(req.headers)
        origin = pool.origin
        up_target = (origin.base_path + up_path + ("?" + query if query else "")).encode("latin-1")
        parts = [b"%s %s HTTP/1.1\r\nHost: %s\r\n" % (req.method.encode("ascii"), up_target, origin.host_header)]
        parts.extend(b"%s: %s\r\n" % kv for kv in lines)
        if send or req.method in _BODY_METHODS:
            parts.append(b"Content-Length: %d\r\n" % len(send))
        parts.append(b"\r\n")
        head = b"".join(parts)

        ex = Exchange(self, conn, provider, info, up_path, attrs, start, wall)
        ex.watchdog = IdleWatchdog(self.read_timeouts.get(provider.name, self.read_timeout), ex.on_idle)
        try:
            try:
                upstream = await pool.acquire()
            except TimeoutError:
                return self._fail(conn, ex, 504, "upstream_timeout", "The upstream did not answer in time.")
            except OSError as exc:
                log.warning("upstream unreachable provider=%s exc=%s", provider.name, type(exc).__name__)
                return self._fail(conn, ex, 502, "upstream_unreachable", "The upstream could not be reached.")
            ex.upstream = upstream
            conn.flow = ex
            upstream.send(ex, head, send, req.method == "HEAD")
            ex.own += perf_counter() - start
            await ex.done
            if ex.error == "upstream_bad_response":
                return self._fail(conn, ex, 502, "upstream_bad_response", "The upstream sent an invalid response.")
            if ex.error == "upstream_timeout":
                return self._fail(conn, ex, 504, "upstream_timeout", "The upstream did not answer in time.")
        except asyncio.CancelledError:
            # The client went away (the server cancels the handler): stop the upstream too, keep what was metered.
            ex.error = ex.error or "client_disconnected"
            if ex.upstream is not None:
                ex.upstream.close()
                ex.upstream = None
            raise
        finally:
            conn.flow = None
            if ex.watchdog is not None:
                ex.watchdog.stop()
            if not ex.recorded:
                self._record(ex)

    def _authorized(self, req: Request) -> bool:
        """Constant-time check of ``X-ModelTrack-Key`` against the configured token digests. Comparing digests
        (not tokens) keeps the comparison length-independent and lets operators configure hashes only."""
        given = req.header(b"x-modeltrack-key") or b""
        digest = hashlib.sha256(given).digest()
        ok = False
        for expected in self.client_tokens:
            ok |= hmac.compare_digest(digest, expected)
        return ok

    def _fail(self, conn: Connection, ex: Exchange, status: int, kind: str, message: str) -> None:
        # Only the kind is logged: exception messages can contain URLs (with ?key=) or upstream text.
        ex.error = kind
        ex.status = status
        self.metrics.upstream_errors.labels(ex.provider.name, kind).inc()
        log.warning("upstream failure provider=%s kind=%s", ex.provider.name, kind)
        self.error(conn, ex.provider, status, kind, message)

    def _record(self, ex: Exchange) -> None:
        """Build, price, count and enqueue the event. Never raises: a bug here must not break the response."""
        ex.recorded = True
        rid, provider, info, up_path, wall, attrs = ex.rid, ex.provider, ex.info, ex.up_path, ex.wall, ex.attrs
        meter, complete = ex.meter, ex.complete
        try:
            end = perf_counter()
            try:
                result: MeterResult = meter.finish(complete) if meter is not None else MeterResult(model=info.model)
            except Exception as exc:  # noqa: BLE001 - a meter bug costs the usage, never the event
                log_exception_safely(f"{rid} meter failed", exc, log.name)
                result = MeterResult(model=info.model, error="meter_error")
            usage = result.usage
            cost, cost_source = self.pricing.cost(provider.name, result, info.model, wall)
            if cost_source == "unpriced":
                self.pricing.warn_unpriced(provider.name, result.model or info.model)
            ev = CostEvent(
                timestamp=rfc3339(wall),
                request_id=rid,
                upstream_request_id=ex.upstream_id,
                provider=provider.name,
                endpoint=up_path,
                model=result.model or info.model,
                status=ex.status,
                stream=info.stream,
                input_tokens=usage.input_tokens if usage else 0,
                output_tokens=usage.output_tokens if usage else 0,
                cache_read_tokens=usage.cache_read_tokens if usage else 0,
                cache_write_tokens=usage.cache_write_tokens if usage else 0,
                reasoning_tokens=usage.reasoning_tokens if usage else 0,
                cost_usd=cost,
                latency_ms=round((end - ex.start) * 1000, 3),
                ttft_ms=round((ex.first_byte - ex.start) * 1000, 3)
                if ex.first_byte is not None and info.stream
                else None,
                team=attrs.get("team"),
                app=attrs.get("app"),
                feature=attrs.get("feature"),
                session_id=attrs.get("session_id"),
                cache_hit=bool(usage and usage.cache_read_tokens),
                routed=False,
                usage_source=result.usage_source if usage else "missing",
                error=ex.error or result.error,
                requested_model=info.model,
                cache_write_1h_tokens=usage.cache_write_1h_tokens if usage else 0,
                web_search_requests=usage.web_search_requests if usage else 0,
                service_tier=usage.service_tier if usage else None,
                cost_source=cost_source,
                stream_usage_injected=bool(info.extra.get("stream_usage_injected")),
            )
            self.pipeline.enqueue(ev)
            overhead = ex.own + (perf_counter() - end)
            savings = self.pricing.cache_savings(provider.name, result, info.model, wall) if ev.cache_hit else 0.0
            self.metrics.observe(ev, overhead, endpoint_kind(up_path), savings)
            if log.isEnabledFor(logging.DEBUG):
                log.debug(
                    "%s provider=%s endpoint=%s status=%s model=%s in=%d out=%d cost=%s source=%s error=%s",
                    rid,
                    ev.provider,
                    endpoint_kind(up_path),
                    ev.status,
                    ev.model,
                    ev.input_tokens,
                    ev.output_tokens,
                    ev.cost_usd,
                    ev.usage_source,
                    ev.error,
                )
        except Exception as exc:  # noqa: BLE001 - recording must never break the response
            log_exception_safely(f"{rid} failed to record the cost event", exc, log.name)
