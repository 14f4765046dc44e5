"""Forwarding and the streaming tee: the only module that touches both the client and the upstream socket.

Flow for one request: resolve the provider from the path → read the body (bounded) → write the upstream request
(same method, raw path and query, body bytes; the client's header lines byte-for-byte minus hop-by-hop, ``Host``
and ``X-ModelTrack-*``: :mod:`modeltrack.headers`) → the upstream connection calls the :class:`Exchange` as the
response arrives: status and headers are copied, every chunk is fed to the meter and written to the client in
the same callback → one cost event is recorded (:mod:`modeltrack.accounting`), whatever happened.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import socket
import ssl
import time
from collections.abc import Mapping
from time import perf_counter
from typing import TYPE_CHECKING, Any

from .accounting import Recorder
from .codec import metering_view
from .egress import TunnelRefused
from .events import new_request_id
from .headers import HeaderView, ResponseHead, clean_reason, forward_headers
from .logs import log_exception_safely
from .metrics import Metrics
from .providers import Meter, Provider, RequestInfo, Router
from .providers.base import BodyView, loads
from .server import Connection, Request, RequestError
from .upstream import PoolExhausted, Unsent, UpstreamConnection, UpstreamPool
from .watchdog import IdleWatchdog, Watchdogs

if TYPE_CHECKING:
    from .config import Settings

log = logging.getLogger("modeltrack.proxy")

_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})
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


class Exchange:
    """One request's trip through the proxy, driven by the upstream connection's callbacks; it also carries the
    request's outcome (an :class:`~modeltrack.accounting.Outcome`) to the recorder.

    Also the client connection's flow listener: when the client's buffer is full we stop reading the upstream.
    """

    __slots__ = (
        "attrs",
        "client",
        "complete",
        "done",
        "endpoint",
        "error",
        "first_byte",
        "headed",
        "info",
        "meter",
        "own",
        "pending_head",
        "provider",
        "provider_name",
        "proxy",
        "recorded",
        "remaining",
        "retryable",
        "rid",
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
        proxy: Proxy,
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
        if length is not None and self.view is None:
            # A sized body: send the headers with the first body bytes, one write instead of two.
            self.pending_head = (status, reason, head.block, length)
            self.remaining = length
        else:
            # A stream: headers at once, so clients see them as early as the upstream sent them.
            self.client.start(status, reason, head.block, None)
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
                self.client.write(rest)
        self.client.finish()
        self.own += perf_counter() - t
        self._settle()

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


def _why(exc: BaseException) -> str:
    """A content-free description of a connection failure (exception messages can hold URLs or peer text)."""
    if isinstance(exc, socket.gaierror):
        return "DNS lookup failed"
    if isinstance(exc, TunnelRefused):
        return f"the egress proxy refused the tunnel ({exc.status})"
    if isinstance(exc, ssl.SSLCertVerificationError):
        return "the TLS certificate is not trusted (MODELTRACK_CA_BUNDLE adds CAs)"
    if isinstance(exc, ssl.SSLError):
        return "the TLS handshake failed"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    return f"connection failed ({type(exc).__name__})"


class Proxy:
    def __init__(
        self,
        router: Router,
        recorder: Recorder,
        pools: Mapping[str, UpstreamPool],
        settings: Settings,
        client_tokens: frozenset[bytes] = frozenset(),
    ) -> None:
        self.router = router
        self.recorder = recorder
        self.metrics: Metrics = recorder.metrics
        self.pools = pools
        self.client_tokens = client_tokens  # sha256 digests; empty = access control off
        self.body_timeout = settings.body_timeout
        self.read_timeout = settings.read_timeout
        self.read_timeouts = dict(settings.read_timeouts)  # per provider (MODELTRACK_<PROVIDER>_READ_TIMEOUT)
        self.watchdogs = Watchdogs()
        self.inflight = 0
        self.drained: asyncio.Event | None = None  # set by a shutdown waiting for in-flight requests

    def record(self, ex: Exchange) -> None:
        if not ex.recorded:
            ex.recorded = True
            self.recorder.record(ex, endpoint_kind(ex.endpoint))

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
        except RequestError as exc:
            return conn.respond_error(exc, provider.error_body(exc.status, exc.kind, exc.message))
        except TimeoutError:
            return self.error(conn, provider, 408, "request_timeout", "The request body was not received in time.")
        body = loads(raw) if raw[:1] in (b"{", b"[") and provider.name != "bedrock" else None
        info = provider.request_info(req.method, up_path, query, body)
        send = provider.rewrite_body(info, raw, body)
        del body  # the parsed body can be as large as the request: not kept for the whole exchange
        lines, attrs = forward_headers(req.headers)
        origin = pool.origin
        path = origin.join(up_path) if origin.base_path else up_path
        up_target = pool.target_prefix + (path + "?" + query if query else path).encode("latin-1")
        parts = [b"%s %s HTTP/1.1\r\nHost: %s\r\n" % (req.method.encode("ascii"), up_target, origin.host_header)]
        if pool.proxy_header:
            parts.append(pool.proxy_header)
        parts.extend(b"%s: %s\r\n" % kv for kv in lines)
        if send or req.method in _BODY_METHODS:
            parts.append(b"Content-Length: %d\r\n" % len(send))
        parts.append(b"\r\n")
        head = b"".join(parts)

        ex = Exchange(self, conn, provider, info, up_path, attrs, start, wall)
        ex.watchdog = self.watchdogs.watch(self.read_timeouts.get(provider.name, self.read_timeout), ex.on_idle)
        try:
            # Sent on a pooled connection; once more on a fresh one if the first attempt provably never reached
            # the upstream (modeltrack.upstream says when that is).
            sent = False
            for attempt in range(2):
                sent = False
                try:
                    upstream = await pool.acquire(fresh=attempt > 0)
                except PoolExhausted:
                    return self._fail(conn, ex, 503, "upstream_pool_exhausted", "Every upstream connection is busy.")
                except TimeoutError:
                    return self._fail(conn, ex, 504, "upstream_timeout", "The upstream did not answer in time.")
                except OSError as exc:
                    return self._unreachable(conn, ex, pool, exc)
                ex.upstream = upstream
                conn.flow = ex
                try:
                    upstream.send(ex, req.method, head, send)
                except Unsent:
                    ex.upstream = None
                    continue
                sent = True
                ex.own += perf_counter() - start
                await ex.done
                if ex.retryable and attempt == 0:
                    self.metrics.upstream_errors.labels(provider.name, "retried_unsent").inc()
                    ex.retry()
                    continue
                break
            if ex.error == "upstream_timeout":
                return self._fail(conn, ex, 504, "upstream_timeout", "The upstream did not answer in time.")
            if ex.error == "upstream_bad_response" or not sent:
                return self._fail(conn, ex, 502, "upstream_bad_response", "The upstream sent an invalid response.")
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
            self.record(ex)

    def _unreachable(self, conn: Connection, ex: Exchange, pool: UpstreamPool, exc: BaseException) -> None:
        name = ex.provider.name
        why = _why(exc)
        via = f" through the egress proxy {pool.egress.describe()}" if pool.egress is not None else ""
        fix = f"MODELTRACK_{name.upper()}_BASE_URL" + (" or HTTPS_PROXY/NO_PROXY" if via else "")
        log.warning("upstream %s unreachable at %s%s: %s; check %s", name, pool.origin.url, via, why, fix)
        self._fail(
            conn,
            ex,
            502,
            "upstream_unreachable",
            f"The {name} upstream at {pool.origin.url} could not be reached: {why}. Check {fix}.",
        )

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
        if kind != "upstream_unreachable":
            log.warning("upstream failure provider=%s kind=%s", ex.provider.name, kind)
        self.error(conn, ex.provider, status, kind, message)
