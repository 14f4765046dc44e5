"""Forwarding and the streaming tee: the only module that touches both the client and the upstream socket.

Flow for one request: resolve the provider from the path → read the body (bounded) → build the upstream request
(same method, raw path, query, body bytes; headers minus hop-by-hop, ``Host`` and ``X-ModelTrack-*``) → copy the
upstream status and headers → for every chunk: feed the meter, write the same bytes to the client (``write``
awaits the client's drain, which is the backpressure) → record one cost event, whatever happened.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import time
import traceback
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from time import perf_counter
from typing import Any

import aiohttp
from aiohttp import web
from multidict import CIMultiDict
from yarl import URL

from .codec import metering_view
from .events import CostEvent, new_request_id, rfc3339
from .metrics import Metrics, sanitize
from .pipeline import Pipeline
from .pricing import Pricing
from .providers import MeterResult, Provider, Router
from .providers.base import loads

log = logging.getLogger("modeltrack.proxy")

HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "trailers",
        "transfer-encoding",
        "upgrade",
    }
)
_DROP_REQUEST = HOP_BY_HOP | {"host", "content-length", "expect"}
_DROP_RESPONSE = HOP_BY_HOP
_SKIP_AUTO = ("User-Agent", "Accept", "Accept-Encoding", "Content-Type")
_UPSTREAM_ID_HEADERS = ("x-request-id", "request-id", "x-amzn-requestid", "apim-request-id", "x-goog-request-id")
ATTR_HEADERS = {
    "x-modeltrack-team": "team",
    "x-modeltrack-app": "app",
    "x-modeltrack-feature": "feature",
    "x-modeltrack-session-id": "session_id",
}
MAX_ATTR_LEN = 128


def log_exception_safely(what: str, exc: BaseException) -> None:
    """Log where it failed (type and stack frames) but never the exception's message: messages of parse errors
    can quote response bytes, and those may hold model output."""
    frames = "".join(traceback.format_tb(exc.__traceback__))
    log.error("%s: %s\n%s", what, type(exc).__name__, frames)


def forward_headers(raw_headers: Iterable[tuple[bytes, bytes]]) -> tuple[CIMultiDict[str], dict[str, str]]:
    """Split the client's headers into (headers for the upstream, attribution values).

    Order and duplicates are preserved; values pass through byte-for-byte (latin-1 round-trips every byte).
    Header names listed in ``Connection`` are hop-by-hop too (RFC 9110 §7.6.1). A repeated field name is sent
    with the spelling of its first occurrence: names are case-insensitive in HTTP, and aiohttp's client would
    otherwise replace ``X-A: 1`` with a following ``x-a: 2`` instead of sending both.
    """
    out: CIMultiDict[str] = CIMultiDict()
    attrs: dict[str, str] = {}
    spelling: dict[str, str] = {}
    pairs = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in raw_headers]
    extra_hop: set[str] = set()
    for k, v in pairs:
        if k.lower() == "connection":
            extra_hop.update(t.strip().lower() for t in v.split(","))
    for k, v in pairs:
        lk = k.lower()
        if lk in _DROP_REQUEST or lk in extra_hop:
            continue
        if lk.startswith("x-modeltrack-"):
            field = ATTR_HEADERS.get(lk)
            if field is not None:
                attrs[field] = sanitize(v, MAX_ATTR_LEN)
            continue
        out.add(spelling.setdefault(lk, k), v)
    return out, attrs


def endpoint_kind(path: str) -> str:
    """A bounded name for the operation: ``chat/completions``, ``messages``, ``generateContent``, ``converse``."""
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
    """Ends a stream whose upstream has been silent for ``timeout`` seconds while we wait on it.

    One timer per request that re-arms itself four times per period, instead of rescheduling a timer for every
    chunk (aiohttp's ``sock_read`` does that, and it cost ~13% of the proxy's CPU on streams). It also catches
    what ``sock_read`` misses: an upstream that sent unparseable bytes and went quiet never wakes aiohttp's
    reader. The reader only counts as idle while ``waiting`` is set, so a slow *client* (we are blocked in the
    write) is never taken for an idle upstream.
    """

    __slots__ = ("_handle", "_idle", "_loop", "_seen", "_task", "_timeout", "fired", "progress", "waiting")

    def __init__(self, timeout: float) -> None:
        self._loop = asyncio.get_running_loop()
        self._task = asyncio.current_task()
        self._timeout = timeout
        self._idle = 0.0
        self._seen = 0
        self.progress = 0  # bumped for every chunk: activity between two ticks resets the idle count
        self.waiting = False
        self.fired = False
        self._handle: asyncio.TimerHandle | None = self._loop.call_later(timeout / 4, self._tick)

    def _tick(self) -> None:
        step = self._timeout / 4
        if self.waiting and self.progress == self._seen:
            self._idle += step
        else:
            self._idle = 0.0
        self._seen = self.progress
        if self._idle >= self._timeout and self._task is not None:
            self.fired = True
            self._handle = None
            self._task.cancel()
            return
        self._handle = self._loop.call_later(step, self._tick)

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        if self.fired and self._task is not None:
            self._task.uncancel()


@dataclass(slots=True)
class _Timing:
    start: float
    upstream_wait: float = 0.0
    client_wait: float = 0.0
    first_byte: float | None = None


class Proxy:
    def __init__(
        self,
        router: Router,
        pipeline: Pipeline,
        metrics: Metrics,
        pricing: Pricing,
        sessions: Mapping[str, aiohttp.ClientSession],
    ) -> None:
        self.router = router
        self.pipeline = pipeline
        self.metrics = metrics
        self.pricing = pricing
        self.sessions = sessions
        self.inflight = 0
        self.client_tokens: frozenset[bytes] = frozenset()  # sha256 digests; empty = access control off
        self.body_timeout = 60.0
        self.read_timeout = 600.0
        self.read_timeouts: dict[str, float] = {}  # per provider (MODELTRACK_<PROVIDER>_READ_TIMEOUT)

    # -- errors the proxy itself generates ----------------------------------------------------------------
    @staticmethod
    def error(provider: Provider | None, status: int, kind: str, message: str) -> web.Response:
        body = (provider or Provider()).error_body(status, kind, message)
        return web.Response(status=status, body=body, content_type="application/json")

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.inflight += 1
        try:
            return await self._handle(request)
        finally:
            self.inflight -= 1

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        timing = _Timing(perf_counter())
        wall = time.time()
        target = request.raw_path
        if not target.startswith("/"):
            return self.error(None, 400, "invalid_request_target", "Only origin-form request targets are accepted.")
        if request.method in ("CONNECT", "TRACE"):
            return self.error(None, 405, "method_not_allowed", f"{request.method} is not proxied.")
        if self.client_tokens and not self._authorized(request):
            return self.error(None, 401, "invalid_client_token", "A valid X-ModelTrack-Key header is required.")
        path, _, query = target.partition("?")
        route = self.router.resolve(path, request.headers)
        if route is None:
            return self.error(
                None,
                404,
                "unknown_route",
                "No provider for this path. Use /openai/..., /anthropic/..., /gemini/..., /v1/... (see README).",
            )
        provider, up_path = route
        if not provider.base_url:
            return self.error(
                provider,
                503,
                "provider_not_configured",
                f"Set MODELTRACK_{provider.name.upper()}_BASE_URL to use the /{provider.name} route.",
            )
        try:
            raw = await asyncio.wait_for(request.read(), self.body_timeout)
        except web.HTTPRequestEntityTooLarge:
            return self.error(provider, 413, "request_too_large", "Request body exceeds MODELTRACK_MAX_BODY_BYTES.")
        except TimeoutError:
            return self.error(provider, 408, "request_timeout", "The request body was not received in time.")
        body = loads(raw) if raw[:1] in (b"{", b"[") and provider.name != "bedrock" else None
        info = provider.request_info(request.method, up_path, query, body)
        send = provider.rewrite_body(info, raw, body)
        headers, attrs = forward_headers(request.raw_headers)
        url = URL(provider.base_url + up_path + ("?" + query if query else ""), encoded=True)
        expected_host = URL(provider.base_url).host
        if url.host != expected_host:
            return self.error(provider, 400, "invalid_path", "The request path is not valid for this provider.")

        rid = new_request_id()
        state: dict[str, Any] = {"status": 0, "error": None, "upstream_id": None}
        meter = None
        complete = False
        recorded = False
        watchdog: IdleWatchdog | None = None
        try:
            session = self.sessions[provider.name]
            watchdog = IdleWatchdog(self.read_timeouts.get(provider.name, self.read_timeout))
            watchdog.waiting = True  # until the response headers arrive
            try:
                t = perf_counter()
                async with session.request(
                    request.method,
                    url,
                    headers=headers,
                    data=send if send else None,
                    allow_redirects=False,
                    skip_auto_headers=_SKIP_AUTO,
                ) as up:
                    watchdog.waiting = False
                    timing.upstream_wait += perf_counter() - t
                    state["status"] = up.status
                    for h in _UPSTREAM_ID_HEADERS:
                        upstream_id = up.headers.get(h)
                        if upstream_id:
                            state["upstream_id"] = sanitize(upstream_id, 128)
                            break
                    meter = metering_view(
                        provider.meter(info, up.status, up.headers), up.headers.get("Content-Encoding")
                    )
                    resp = web.StreamResponse(status=up.status, reason=up.reason)
                    if up.headers.get("Content-Length") is not None:
                        # A sized (non-streaming) body: send the headers with the first body bytes, one write
                        # instead of two. Streams keep aiohttp's default (headers at once) so clients see them
                        # as early as the upstream sent them.
                        resp._send_headers_immediately = False
                    for k, v in up.raw_headers:
                        name = k.decode("latin-1")
                        if name.lower() not in _DROP_RESPONSE:
                            resp.headers.add(name, v.decode("latin-1"))
                    await resp.prepare(request)
                    content = up.content
                    try:
                        while True:
                            t = perf_counter()
                            watchdog.waiting = True
                            chunk = await content.readany()
                            watchdog.waiting = False
                            watchdog.progress += 1
                            now = perf_counter()
                            timing.upstream_wait += now - t
                            if not chunk:
                                break
                            if timing.first_byte is None:
                                timing.first_byte = now
                            meter.feed(chunk)
                            t = perf_counter()
                            await resp.write(chunk)
                            timing.client_wait += perf_counter() - t
                    except asyncio.CancelledError:
                        if not watchdog.fired:
                            raise
                        state["error"] = "upstream_idle_timeout"
                        self.metrics.upstream_errors.labels(provider.name, "idle_timeout").inc()
                        self._truncate(request)
                        return resp
                    except (aiohttp.ClientPayloadError, aiohttp.ServerDisconnectedError, aiohttp.ClientOSError) as exc:
                        state["error"] = "upstream_reset"
                        self.metrics.upstream_errors.labels(provider.name, "reset").inc()
                        log.warning("%s upstream stream broke (%s)", rid, type(exc).__name__)
                        self._truncate(request)
                        return resp
                    except (TimeoutError, aiohttp.ServerTimeoutError):
                        state["error"] = "upstream_idle_timeout"
                        self.metrics.upstream_errors.labels(provider.name, "idle_timeout").inc()
                        self._truncate(request)
                        return resp
                    except (ConnectionResetError, aiohttp.ClientConnectionResetError):
                        state["error"] = "client_disconnected"
                        return resp
                    complete = True
                    # Record (journal) the event *before* the final chunk: a client that has seen the response
                    # complete can rely on its event surviving even a kill -9 of the proxy.
                    recorded = True
                    self._record(rid, provider, info, up_path, state, meter, complete, timing, wall, attrs)
                    await resp.write_eof()
                    return resp
            except (aiohttp.ClientConnectorError, aiohttp.ClientOSError) as exc:
                return self._fail(
                    provider, state, 502, "upstream_unreachable", "The upstream could not be reached.", exc
                )
            except (TimeoutError, aiohttp.ServerTimeoutError) as exc:
                return self._fail(provider, state, 504, "upstream_timeout", "The upstream did not answer in time.", exc)
            except (aiohttp.ServerDisconnectedError, aiohttp.ClientResponseError, aiohttp.ClientPayloadError) as exc:
                return self._fail(
                    provider, state, 502, "upstream_bad_response", "The upstream sent an invalid response.", exc
                )
        except asyncio.CancelledError:
            if watchdog is not None and watchdog.fired and not state["status"]:
                # No response headers within the idle timeout.
                return self._fail(
                    provider, state, 504, "upstream_timeout", "The upstream did not answer in time.", TimeoutError()
                )
            state["error"] = state["error"] or "client_disconnected"
            raise
        finally:
            if watchdog is not None:
                watchdog.stop()
            if not recorded:
                self._record(
                    rid,
                    provider,
                    info,
                    up_path,
                    state,
                    meter,
                    complete,
                    timing,
                    wall,
                    attrs,
                )

    def _authorized(self, request: web.Request) -> bool:
        """Constant-time check of ``X-ModelTrack-Key`` against the configured token digests. Comparing digests
        (not tokens) keeps the comparison length-independent and lets operators configure hashes only."""
        given = request.headers.get("X-ModelTrack-Key", "")
        digest = hashlib.sha256(given.encode("utf-8", "surrogateescape")).digest()
        ok = False
        for expected in self.client_tokens:
            ok |= hmac.compare_digest(digest, expected)
        return ok

    def _fail(
        self, provider: Provider, state: dict[str, Any], status: int, kind: str, message: str, exc: BaseException
    ) -> web.Response:
        # Only the exception *type* is logged: messages can contain URLs (with ?key=) or upstream text.
        state["error"] = kind
        state["status"] = status
        self.metrics.upstream_errors.labels(provider.name, kind).inc()
        log.warning("upstream failure provider=%s kind=%s exc=%s", provider.name, kind, type(exc).__name__)
        return self.error(provider, status, kind, message)

    @staticmethod
    def _truncate(request: web.Request) -> None:
        """Make the client see the same truncation it would see directly: close without the final chunk."""
        transport = request.transport
        if transport is not None:
            transport.close()

    def _record(
        self,
        rid: str,
        provider: Provider,
        info: Any,
        up_path: str,
        state: dict[str, Any],
        meter: Any,
        complete: bool,
        timing: _Timing,
        wall: float,
        attrs: dict[str, str],
    ) -> None:
        """Build, price, count and enqueue the event. Never raises: a bug here must not break the response."""
        try:
            end = perf_counter()
            try:
                result: MeterResult = meter.finish(complete) if meter is not None else MeterResult(model=info.model)
            except Exception as exc:  # noqa: BLE001 - a meter bug costs the usage, never the event
                log_exception_safely(f"{rid} meter failed", exc)
                result = MeterResult(model=info.model, error="meter_error")
            usage = result.usage
            cost, cost_source = self.pricing.cost(provider.name, result, info.model, wall)
            if cost_source == "unpriced":
                self.pricing.warn_unpriced(provider.name, result.model or info.model)
            ev = CostEvent(
                timestamp=rfc3339(wall),
                request_id=rid,
                upstream_request_id=state["upstream_id"],
                provider=provider.name,
                endpoint=up_path,
                model=result.model or info.model,
                status=state["status"],
                stream=info.stream,
                input_tokens=usage.input_tokens if usage else 0,
                output_tokens=usage.output_tokens if usage else 0,
                cache_read_tokens=usage.cache_read_tokens if usage else 0,
                cache_write_tokens=usage.cache_write_tokens if usage else 0,
                reasoning_tokens=usage.reasoning_tokens if usage else 0,
                cost_usd=cost,
                latency_ms=round((end - timing.start) * 1000, 3),
                ttft_ms=round((timing.first_byte - timing.start) * 1000, 3)
                if timing.first_byte is not None and info.stream
                else None,
                team=attrs.get("team"),
                app=attrs.get("app"),
                feature=attrs.get("feature"),
                session_id=attrs.get("session_id"),
                cache_hit=bool(usage and usage.cache_read_tokens),
                routed=False,
                usage_source=result.usage_source if usage else "missing",
                error=state["error"] or result.error,
                requested_model=info.model,
                cache_write_1h_tokens=usage.cache_write_1h_tokens if usage else 0,
                web_search_requests=usage.web_search_requests if usage else 0,
                service_tier=usage.service_tier if usage else None,
                cost_source=cost_source,
                stream_usage_injected=bool(info.extra.get("stream_usage_injected")),
            )
            self.pipeline.enqueue(ev)
            overhead = (end - timing.start) - timing.upstream_wait - timing.client_wait
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
            log_exception_safely(f"{rid} failed to record the cost event", exc)
