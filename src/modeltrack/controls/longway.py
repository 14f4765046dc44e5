"""The long way to a :class:`~.decision.Decision`, for the requests :meth:`.engine.Controls.decide_now` leaves:
a routing rule that applies, the response cache asked, a model without a price, or budgets that must be read from
the store before they admit. It awaits (the cache's backend, the budgets' store), so the proxy calls it only when
the short way returned None. Both reach the same outcome, and the short way declines whenever this one has more
to do (tests/test_budget_bounds.py::test_deciding_without_awaiting_reaches_the_awaited_decision)."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Final

from ..rounding import nearest
from .budgetstate import Refusal
from .cache import cache_key
from .decision import Decision, Plan, header_value
from .estimate import bound_tokens
from .routing import choose, rewrite
from .spec import ControlsSpec

if TYPE_CHECKING:
    from .engine import Controls

__all__ = ["cache_ttl", "decide"]

log: Final = logging.getLogger("modeltrack.controls")


async def decide(
    c: Controls,
    p: Plan,
    *,
    provider: str,
    method: str,
    path: str,
    query: str,
    headers: list[tuple[bytes, bytes]],
    client_key: bytes,
    body: bytes,
    parsed: Any,
    model: str | None,
    attrs: Mapping[str, Any],
    wall: float,
) -> Decision:
    """The long way to a :class:`Decision`: routing, the response cache, then the budgets. ``client_key``: the
    request's first ``X-ModelTrack-Key`` value (``b""``: none), as :func:`~modeltrack.http.headers.forward_headers`
    read it; it is part of the cache key, so that one client's cached answer is never another's
    (tests/test_spend_controls.py, ``test_each_client_token_has_its_own_cached_answers``)."""
    spec = p.spec
    d = Decision(path, body)
    lines: list[bytes] = []
    matched = p.budgets
    # 1. Routing: refuse, or downgrade to a cheaper model.
    if p.routes and str(attrs.get("no_route", "")).lower() not in ("true", "1", "yes"):
        values = {
            "team": attrs.get("team"),
            "app": attrs.get("app"),
            "feature": attrs.get("feature"),
            "user": attrs.get("user"),
            "provider": provider,
            "model": model,
        }
        route = choose(p.routes, values, wall, c.budget_percent)
        if route is not None:
            if route.action == "block":
                c.metrics.routed.labels(route.name, "block").inc()
                d.route = route
                msg = route.message or f"Routing rule '{route.name}' does not allow model {model} for this request."
                d.refusal = Refusal(route.status, "route_blocked", msg, route.name, 0)
                return d
            sigv4 = any(k.lower() == b"authorization" and v.startswith(b"AWS4-HMAC-SHA256") for k, v in headers)
            assert route.to is not None
            changed = rewrite(provider, path, body, route.to, sigv4) if route.to != model else None
            if changed is not None:
                d.path, d.body = changed
                d.route, d.routed_from = route, model
                values["model"] = route.to
                matched = tuple(c.budgets.matching(values))  # the budgets of the model that will serve it
                c.metrics.routed.labels(route.name, "downgrade").inc()
                lines.append(b"x-modeltrack-routed-from: %s\r\n" % header_value(model or ""))
    # 2. The response cache.
    if c.cache is not None and spec.cache is not None:
        ttl = cache_ttl(spec, p.cache_ttl, attrs)
        if ttl:
            target = (path + "?" + query if query else path).encode("latin-1")
            routed_to = (d.route.to or "") if d.routed_from is not None and d.route is not None else ""
            target += b"\0" + routed_to.encode()
            d.cache_key = cache_key(provider, method, target, headers, body, parsed, client_key, attrs.get("org") or "")
            d.cache_ttl = ttl
            d.capture_limit = spec.cache.max_entry_bytes
            try:
                d.hit = await c.cache.get(d.cache_key)
            except Exception as exc:  # noqa: BLE001 - an unreachable cache is a miss, never an error
                c.metrics.response_cache.labels("error").inc()
                log.warning("response cache unavailable (%s): treated as a miss", type(exc).__name__)
            if d.hit is not None:
                c.metrics.response_cache.labels("hit").inc()
                d.head = b"".join(lines) + b"x-modeltrack-cache: HIT\r\n"
                return d  # costs nothing: no reservation, no budget check
            c.metrics.response_cache.labels("miss").inc()
            lines.append(b"x-modeltrack-cache: MISS\r\n")
    # 3. Budgets: reserve the worst case, or refuse.
    if matched:
        reserve = 0
        if p.blocks if matched is p.budgets else any(b.action == "block" for b in matched):
            inp, out = bound_tokens(len(d.body), parsed, spec.reserve)
            bound = c.bounds.bound(provider, d.route.to if d.routed_from and d.route else model, inp, out, wall)
            if bound is None:  # no price for the model asked for: never reserve zero (README, "Spend controls")
                bound = spec.reserve.unpriced_usd
                if bound is None:
                    bound = c.bounds.dearest_bound(provider, inp, out, wall)
            if bound is not None:
                reserve = nearest(bound * 1e9) + 1
        adm = c.budgets.admit_now(matched, reserve, wall, d) or await c.budgets.admit(matched, reserve)
        if adm.refusal is not None:
            d.refusal = adm.refusal
            return d
        if adm is not d:
            d.adopt(adm)
        for h in d.headers:
            lines.append(b"x-modeltrack-budget: %s\r\n" % header_value(h))
    if lines:
        d.head = b"".join(lines)
    return d


def cache_ttl(spec: ControlsSpec, rule_ttl: float | None, attrs: Mapping[str, Any]) -> float:
    """The TTL to cache this request's answer for (0: not cached): the request's ``X-ModelTrack-Cache``
    (``on``/``off``) and ``X-ModelTrack-Cache-TTL`` over the matching rule over the default."""
    assert spec.cache is not None
    asked = str(attrs.get("cache", "")).lower()
    if asked == "off" or (rule_ttl is None and asked != "on"):
        return 0.0
    ttl = rule_ttl or spec.cache.ttl_seconds
    given = attrs.get("cache_ttl")
    if given:
        with contextlib.suppress(ValueError):
            ttl = min(max(float(given), 1.0), 1e8)
    return ttl
