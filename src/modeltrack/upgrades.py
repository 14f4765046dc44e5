"""The proxy's WebSocket path: an upgrade the route, key, rate limits and budgets admitted becomes a
:class:`~modeltrack.tunnel.Tunnel` to the configured origin (issue L, item 4; README, "WebSocket APIs").

Called by :meth:`modeltrack.proxy.Proxy.handle` at one defined point, after the controls' decision, in place of
forwarding: the upgrade is the one request the key's RPM and the budgets' admission counted (its reservation is
given back at once: a handshake costs nothing); after that, each response is recorded as its own event and
checked against the limits and budgets before anything more of the client's reaches the provider.
(tests/test_realtime.py)
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any, Protocol

from .accounting import Recorder
from .accounts.keyring import Grant
from .controls.longway import decide
from .controls.ratelimit import RateLimiter, RateRefusal, Ticket, real_tokens
from .events import CostEvent, new_request_id
from .http.message import Request
from .http.server import Connection
from .http.upgrade import UpstreamUpgrade
from .http.upstream_pool import UpstreamPool
from .metrics import Metrics
from .providers import MeterResult, Provider, RequestInfo
from .providers.realtime import SocketMeter
from .tunnel import Tunnel, TurnOutcome, run, upgrade_head

if TYPE_CHECKING:
    from .controls import Controls, Decision


class Owner(Protocol):
    """What the WebSocket path needs of the :class:`~modeltrack.proxy.Proxy` (handed in, never imported)."""

    recorder: Recorder
    controls: Controls | None
    ratelimiter: RateLimiter
    metrics: Metrics
    cut_reason: str
    ws_max_message: int
    ws_idle_timeout: float

    def error(self, conn: Connection, provider: Provider | None, status: int, kind: str, message: str) -> None: ...


async def serve(
    owner: Owner,
    req: Request,
    conn: Connection,
    provider: Provider,
    info: RequestInfo,
    pool: UpstreamPool,
    up_path: str,
    query: str,
    lines: list[tuple[bytes, bytes]],
    attrs: dict[str, Any],
    meter: SocketMeter,
    decision: Decision | None,
    ticket: Ticket | None,
    grant: Grant | None,
    start: float,
    wall: float,
    kind: str,
) -> None:
    """A WebSocket upgrade the route, key, limits and budgets admitted: tunnelled (:mod:`modeltrack.tunnel`).
    The upgrade itself is the one request the key's RPM and the budgets' admission counted; after that, each
    response is checked when it is recorded."""
    attrs.setdefault("session_id", "ws_" + new_request_id())
    tunnel = Tunnel(
        conn,
        provider,
        info,
        up_path,
        attrs,
        meter,
        record=lambda o: record_turn(owner, o, kind),
        max_message=owner.ws_max_message,
        idle_timeout=owner.ws_idle_timeout,
        start=start,
        wall=wall,
    )
    if decision is not None and owner.controls is not None:
        owner.controls.finished(decision, None, None)  # the handshake costs nothing: its reservation goes back
    if ticket is not None:
        owner.ratelimiter.settle(ticket, 0)
    origin = pool.origin
    path = origin.join(up_path) if origin.base_path else up_path
    head = upgrade_head(
        req.method, (path + "?" + query if query else path).encode("latin-1"), origin.host_header, lines
    )
    upstream = UpstreamUpgrade(tunnel)
    try:
        await pool.open_raw(upstream)
    except TimeoutError:
        return _failed(owner, conn, tunnel, 504, "upstream_timeout", "The upstream did not answer in time.", kind)
    except OSError as exc:
        message = pool.unreachable(provider.name, exc)
        return _failed(owner, conn, tunnel, 502, "upstream_unreachable", message, kind)
    if tunnel.done.done():  # timed out while connecting
        upstream.abort()
    else:
        tunnel.upstream = upstream
        upstream.write(head)
    conn.flow = tunnel
    limits = grant.limits if grant is not None else ()
    controls = owner.controls

    async def check(ev: CostEvent) -> str | None:
        if limits:
            taken = await owner.ratelimiter.admit(limits, real_tokens(ev) or 0)
            if isinstance(taken, RateRefusal):
                return "rate_limited"
        # The plan of the model the response named (Gemini Live names its model only in the session's first
        # message, after the upgrade was admitted).
        plan = controls.plan(provider.name, ev.model, attrs) if controls is not None else None
        if plan is not None and plan.blocks and controls is not None:
            d = await decide(
                controls,
                plan,
                provider=provider.name,
                method="GET",
                path=up_path,
                query=query,
                headers=req.headers,
                client_key=b"",  # (the cache is off for a socket: the key would not be read)
                body=b"",
                parsed=None,
                model=ev.model,
                attrs={**attrs, "cache": "off"},
                wall=time.time(),
            )
            if d.refused:
                return "budget_exceeded"
            controls.finished(d, None, None)
        return None

    opened = owner.metrics.websocket_open.labels(provider.name)
    opened.inc()
    try:
        await run(tunnel, check if limits or controls is not None else None)
    except asyncio.CancelledError:
        tunnel.cut(tunnel.error or owner.cut_reason)
        raise
    finally:
        conn.flow = None
        if not tunnel.done.done():
            tunnel.cut("closed")
        opened.dec()
        if tunnel.switched:
            owner.metrics.websocket_closed.labels(provider.name, tunnel.error or "closed").inc()
    if tunnel.refusal is not None:
        status, reason, block, body = tunnel.refusal
        record_turn(owner, TurnOutcome(tunnel, _refused(provider, info, status, block, body), None, start, None), kind)
        conn.start(status, reason, block, len(body), body)
        conn.finish()
    elif not tunnel.switched and tunnel.error == "idle_timeout":
        _failed(owner, conn, tunnel, 504, "upstream_timeout", "The upstream did not answer the upgrade in time.", kind)
    elif not tunnel.switched:
        _failed(owner, conn, tunnel, 502, "upstream_bad_response", "The upstream sent an invalid response.", kind)


def record_turn(owner: Owner, o: TurnOutcome, kind: str) -> CostEvent | None:
    ev = owner.recorder.record(o, kind)
    if ev is not None and owner.controls is not None:
        owner.controls.on_recorded(ev)
    return ev


def _failed(owner: Owner, conn: Connection, tunnel: Tunnel, status: int, error: str, message: str, kind: str) -> None:
    tunnel.fail(error)  # (its idle timer stops)
    tunnel.status = status
    result = MeterResult(model=tunnel.info.model, error=error)
    record_turn(owner, TurnOutcome(tunnel, result, None, tunnel.start, None), kind)
    owner.metrics.upstream_errors.labels(tunnel.provider.name, error).inc()
    owner.error(conn, tunnel.provider, status, error, message)


def _refused(provider: Provider, info: RequestInfo, status: int, block: bytes, body: bytes) -> MeterResult:
    """The upstream's refusal of an upgrade, metered as any error answer is (its error code, never its text)."""
    try:
        meter = provider.meter(RequestInfo(info.method, info.path, info.query, info.model), status, {})
        meter.feed(body)
        result = meter.finish(True)
    except Exception:  # noqa: BLE001 - a meter bug costs the error code, never the event
        result = MeterResult(model=info.model)
    result.error = result.error or f"http_{status}"
    return result
