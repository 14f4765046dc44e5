"""Forwarding: with :mod:`modeltrack.exchange` (the streaming tee), the only code that touches both the client
and the upstream socket.

Flow for one request: resolve the provider from the path → read the body (bounded) → the spend controls, if any
(:mod:`modeltrack.controls`: refuse, route, answer from the cache, reserve) → write the upstream request (same
method, raw path and query, body bytes; the client's header lines byte-for-byte minus hop-by-hop, ``Host`` and
``X-ModelTrack-*``: :mod:`modeltrack.http.headers`) → the upstream connection calls the :class:`Exchange` as the
response arrives → one cost event is recorded (:mod:`modeltrack.accounting`), whatever happened.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Final

from . import upgrades
from .access import ClientTokens
from .accounting import Recorder
from .accounts.credentials import ProviderKeys
from .accounts.gate import LOADING, Gate, Refusal, tokens_in_force
from .accounts.keyring import KeyRing
from .batches import request_context
from .controls.longway import decide
from .controls.ratelimit import MemoryRateLedger, RateLimiter, RateRefusal, Ticket
from .exchange import Exchange
from .http.headers import HeaderView, forward_headers
from .http.message import Request, RequestError
from .http.server import Connection
from .http.upstream import Unsent
from .http.upstream_pool import PoolExhausted, UpstreamPool
from .http.watchdog import Watchdogs
from .metrics import Metrics
from .providers import Provider, Router
from .providers.base import loads
from .providers.realtime import SocketMeter, socket_meter
from .providers.router import endpoint_kind, wrong_base_url

if TYPE_CHECKING:
    from .config import Settings
    from .controls import Controls, Decision

# The clocks as C statics: compiled, a call is then one indirect call, not an attribute lookup on the module
# (~30 ns a call, several a request).
wall_clock: Final = time.time
perf_counter: Final = time.perf_counter
log: Final = logging.getLogger("modeltrack.proxy")

_NO_SOCKET: Final = (
    "This path does not accept a WebSocket upgrade: ModelTrack tunnels OpenAI Realtime (/v1/realtime), Responses "
    "over WebSocket (/v1/responses) and Gemini Live (/ws/google.ai.generativelanguage.*.BidiGenerateContent)."
)

_TRACEPARENT: Final = re.compile(rb"[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}")
"""W3C Trace Context: version, trace id, parent id, flags (anything else is not continued)."""


class Proxy:
    def __init__(
        self,
        router: Router,
        recorder: Recorder,
        pools: Mapping[str, UpstreamPool],
        settings: Settings,
        client_tokens: ClientTokens | None = None,
        controls: Controls | None = None,
        keyring: KeyRing | None = None,
        ratelimiter: RateLimiter | None = None,
        provider_keys: ProviderKeys | None = None,
    ) -> None:
        self.router = router
        self.env_tokens = client_tokens or ClientTokens()
        self.controls = controls
        self.gate = Gate(
            keyring,
            ratelimiter or RateLimiter(MemoryRateLedger()),
            provider_keys or ProviderKeys(),
            self.tokens_in_force(),
            multi_tenant=settings.multi_tenant,
            require_key=settings.require_key,
        )
        self.ratelimiter = self.gate.ratelimiter  # (the WebSocket path settles its tickets: upgrades.Owner)
        self.trace_context = settings.otel is not None  # record the client's traceparent for its span
        self.tls = bool(settings.tls_cert)  # the scheme clients reach us by (Anthropic's results_url)
        self.recorder = recorder
        self.metrics: Metrics = recorder.metrics
        self.pools = pools
        self.body_timeout = settings.body_timeout
        self.ws_max_message = settings.websocket_max_message
        self.ws_idle_timeout = settings.websocket_idle_timeout
        self.read_timeout = settings.read_timeout
        self.read_timeouts = dict(settings.read_timeouts)  # per provider (MODELTRACK_<PROVIDER>_READ_TIMEOUT)
        self.watchdogs = Watchdogs()
        self.inflight = 0
        self.drained: asyncio.Event | None = None  # set by a shutdown waiting for in-flight requests
        # The error of a request whose handler is cancelled: the client went away, unless a shutdown cut it.
        self.cut_reason = "client_disconnected"

    def tokens_in_force(self) -> ClientTokens:
        """``MODELTRACK_CLIENT_TOKENS`` plus the controls file's tokens (empty: access control off)."""
        return tokens_in_force(self.env_tokens, self.controls.token_attribution() if self.controls else None)

    def reload_tokens(self) -> None:
        """The controls file was loaded again: its tokens may have changed."""
        self.gate.client_tokens = self.tokens_in_force()

    def record(self, ex: Exchange) -> None:
        if not ex.recorded:
            ex.recorded = True
            controls = self.controls
            if controls is None and ex.rate_ticket is None:
                ex.event = self.recorder.record(ex, endpoint_kind(ex.endpoint))
                return
            # A control reads the outcome: the recorder hands over its figures (modeltrack.spent).
            ev, spent = self.recorder.record_spent(ex, endpoint_kind(ex.endpoint), True)
            ex.event = ev
            if ex.rate_ticket is not None:
                self.ratelimiter.settle(ex.rate_ticket, None if spent is None else spent.tokens)
            if controls is not None:
                if spent is not None:
                    controls.on_spent(spent)
                if ex.decision is not None:
                    controls.finished(ex.decision, ev, None, spent)

    def store_capture(self, ex: Exchange) -> None:
        """A response captured for the cache ended: kept if it is complete, 2xx, and metered cleanly."""
        capture, ex.capture = ex.capture, None
        if capture is not None and self.controls is not None and ex.decision is not None:
            self.controls.finished(ex.decision, ex.event, capture.finish())

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
        wall = wall_clock()
        target = req.target.decode("latin-1")
        if not target.startswith("/"):
            return self.error(
                conn, None, 400, "invalid_request_target", "Only origin-form request targets are accepted."
            )
        if req.method in ("CONNECT", "TRACE"):
            return self.error(conn, None, 405, "method_not_allowed", f"{req.method} is not proxied.")
        gate = self.gate
        lines, attrs, given = forward_headers(req.headers)  # (the X-ModelTrack-Key value read in the same pass)
        ident = gate.identify(req.headers, given)
        if ident is LOADING:
            if not await gate.loaded():
                return self.error(conn, None, 503, "keys_unavailable", "Keys are still loading; retry in a second.")
            ident = gate.identify(req.headers, given)
        if isinstance(ident, Refusal):
            return self.error(conn, None, *ident)
        grant, fixed = ident.grant, ident.fixed
        path, _, query = target.partition("?")
        routed = self._route(req, conn, path)
        if routed is None:
            return None
        provider, up_path, pool = routed
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
        socket: SocketMeter | None = None
        if req.websocket:
            socket = socket_meter(provider, info)
            if socket is None:
                return self.error(conn, provider, 400, "websocket_not_served", _NO_SOCKET)
            info.model, info.stream = socket.model, True
        send = provider.rewrite_body(info, raw, body)  # (may also read the model of a multipart upload)
        if info.extra:
            await request_context(self.recorder.batches, req, provider.name, info, path, up_path, fixed, self.tls)
        ticket: Ticket | None = None
        bounds: tuple[int, int] | None = None  # the request's worst-case tokens, once for TPM and budgets
        if grant is not None:
            reserve = self.controls.spec.reserve if self.controls is not None else None
            admitted = gate.admit_now(grant, info.model, wall, len(raw), body, reserve) or await gate.admit(
                grant, len(raw), body, reserve
            )
            if isinstance(admitted, RateRefusal):
                return conn.respond(
                    429,
                    provider.error_body(429, "rate_limited", admitted.message),
                    extra=b"retry-after: %d\r\n" % admitted.retry_after,
                )
            if isinstance(admitted, Refusal):
                return self.error(conn, provider, *admitted)
            bounds = admitted.bounds
            ticket = admitted if admitted.limits else None
        if "public_base" in info.extra:
            # Anthropic's batch objects: their results_url is rewritten (providers.batches.ResultsURLView), which
            # needs the JSON as it is; a small answer is asked for uncompressed.
            lines = [kv for kv in lines if kv[0].lower() != b"accept-encoding"]
        if self.trace_context:
            tp = req.header(b"traceparent")
            if tp is not None and _TRACEPARENT.fullmatch(tp):
                attrs["traceparent"] = tp.decode("ascii")
        if ident.as_api_key and grant is not None:
            refused = gate.swap_key(grant, provider.name, lines)
            if refused is not None:
                return self.error(conn, provider, *refused)
        if fixed:
            attrs.update(fixed)  # a token's own attribution beats the headers
        if socket is not None:
            attrs["cache"] = "off"  # a socket is never answered from the response cache (restored below)
        decision: Decision | None = None
        plan = self.controls.plan(provider.name, info.model, attrs) if self.controls is not None else None

        if plan is not None:
            assert self.controls is not None
            decision = self.controls.decide_now(
                plan, provider.name, up_path, send, body, info.model, attrs, wall, bounds if send is raw else None
            ) or await decide(
                self.controls,
                plan,
                provider=provider.name,
                method=req.method,
                path=up_path,
                query=query,
                headers=req.headers,
                client_key=given,
                body=send,
                parsed=body,
                model=info.model,
                attrs=attrs,
                wall=wall,
            )
            if decision.refusal is not None or decision.hit is not None:
                ex = Exchange(self, conn, provider, info, up_path, attrs, start, wall)
                ex.decision, ex.rate_ticket = decision, ticket
                return self._answer_from_controls(conn, ex, decision)
            if decision.routed_from is not None and decision.route is not None:
                up_path, send = decision.path, decision.body
                info.path, info.model = up_path, decision.route.to
        if socket is not None:
            attrs.pop("cache", None)
            return await upgrades.serve(
                self,
                req,
                conn,
                provider,
                info,
                pool,
                up_path,
                query,
                lines,
                attrs,
                socket,
                decision,
                ticket,
                grant,
                start,
                wall,
                kind=endpoint_kind(up_path),
            )
        del body  # the parsed body can be as large as the request: not kept for the whole exchange
        head = pool.request_head(req.method, up_path, query, lines, send)
        ex = Exchange(self, conn, provider, info, up_path, attrs, start, wall)
        ex.rate_ticket = ticket
        if decision is not None:
            ex.decision = decision
            if decision.route is not None:
                ex.route_rule, ex.routed_from = decision.route.name, decision.routed_from
        ex.watchdog = self.watchdogs.watch(self.read_timeouts.get(provider.name, self.read_timeout), ex.on_idle)
        try:
            # Sent on a pooled connection; once more on a fresh one if the first attempt provably never reached
            # the upstream (modeltrack.http.upstream says when that is).
            sent = False
            for attempt in range(2):
                sent = False
                try:
                    upstream = await pool.acquire(fresh=attempt > 0)
                except PoolExhausted:
                    return self._fail(conn, ex, 503, "upstream_pool_exhausted", "Every upstream connection is busy.")
                except TimeoutError:
                    return self._fail(conn, ex, 504, "upstream_timeout", "The upstream did not answer in time.")
                except OSError as unreachable:
                    return self._unreachable(conn, ex, pool, unreachable)
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
            # The client went away (the server cancels the handler), or the shutdown cut what outlived its grace
            # period: stop the upstream too, keep what was metered.
            ex.error = ex.error or self.cut_reason
            if ex.upstream is not None:
                ex.upstream.close()
                ex.upstream = None
            raise
        finally:
            conn.flow = None
            if ex.watchdog is not None:
                ex.watchdog.stop()
                # The watchdog holds ex.on_idle: a cycle that would keep the exchange, and its meter's copy of
                # the body, alive until the garbage collector ran (tests/test_controls_live.py, the flood).
                ex.watchdog = None
            self.record(ex)

    def _route(self, req: Request, conn: Connection, path: str) -> tuple[Provider, str, UpstreamPool] | None:
        """The provider, its path and the pool a request goes to; None when it has none (answered here)."""
        # Only a path with /v1 twice, or with no version at the front, can be a wrong base URL: the usual
        # /v1/... request skips the check.
        suspect = "/v1/v" in path or not path.startswith(("/v1/", "/v1beta/", "/v1alpha/"))
        wrong = wrong_base_url(path, self.router.prefixes) if suspect else None
        if wrong is not None:
            shape, hint = wrong
            return self.error(conn, self.router.providers.get(shape), 404, "wrong_base_url", hint)
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
        if provider.multi_origin:
            # The origin from configuration, chosen by the path (Vertex regions, Azure resources), never a host.
            located = provider.locate(up_path)
            if located is None:
                return self.error(conn, provider, 403, "location_not_allowed", provider.refusal(up_path))
            pool_name, up_path = located
            pool = self.pools.get(pool_name)
        else:
            pool = self.pools.get(provider.name)
        if pool is None:
            return self.error(
                conn,
                provider,
                503,
                "provider_not_configured",
                f"Set MODELTRACK_{provider.name.upper()}_BASE_URL to use the /{provider.name} route.",
            )
        return provider, up_path, pool

    def _unreachable(self, conn: Connection, ex: Exchange, pool: UpstreamPool, exc: BaseException) -> None:
        self._fail(conn, ex, 502, "upstream_unreachable", pool.unreachable(ex.provider.name, exc))

    def _answer_from_controls(self, conn: Connection, ex: Exchange, d: Decision) -> None:
        """A refusal (budget, routing rule) or a response-cache hit: no upstream call. The event is recorded
        (journaled) before the client's last byte, as for any response."""
        refusal, hit = d.refusal, d.hit
        if refusal is not None:
            ex.blocked = True
            ex.status, ex.error = refusal.status, refusal.kind
            if d.route is not None:
                ex.route_rule = d.route.name
            self.record(ex)
            extra = d.head + (b"retry-after: %d\r\n" % refusal.retry_after if refusal.retry_after else b"")
            body = ex.provider.error_body(refusal.status, refusal.kind, refusal.message)
            conn.respond(refusal.status, body, extra=extra)
            return
        assert hit is not None
        ex.cached, ex.status, ex.complete = hit, hit.status, True
        ex.first_byte = perf_counter()
        self.record(ex)
        conn.start(hit.status, hit.reason, hit.block + d.head, len(hit.body) if hit.sized else None)
        conn.write(hit.body)  # a view of the stored bytes: written without a copy
        conn.finish()

    def _fail(self, conn: Connection, ex: Exchange, status: int, kind: str, message: str) -> None:
        # Only the kind is logged: exception messages can contain URLs (with ?key=) or upstream text.
        ex.error = kind
        ex.status = status
        self.metrics.upstream_errors.labels(ex.provider.name, kind).inc()
        if kind != "upstream_unreachable":
            log.warning("upstream failure provider=%s kind=%s", ex.provider.name, kind)
        self.error(conn, ex.provider, status, kind, message)
