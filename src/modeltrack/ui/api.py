"""The JSON API under ``/api/v1/``: thin handlers that validate parameters (a 400 that says what is wrong) and
call the store-agnostic views (:mod:`modeltrack.query.views`)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import orjson
from aiohttp import web

from ..query import DIMENSIONS, Reader, StoreMissing, open_reader
from ..query.breakdown import breakdown
from ..query.errors import errors
from ..query.forecast import forecast
from ..query.overview import overview
from ..query.requests import EventOnly, parse_cursor, property_breakdown, request_detail, request_log
from ..query.scoped import ScopedReader
from ..query.times import TimeError, zone
from ..query.views import (
    GRANULARITIES,
    QueryError,
    Range,
    make_range,
    parse_filters,
    series,
    session_steps,
    sessions,
    values,
)
from ..query.whatif import whatif

if TYPE_CHECKING:
    from ..config import Settings
    from ..pricing import Pricing


SCOPE = web.RequestKey("scope_team", str)
"""Where the app's guard leaves a team-scoped member's team, for :meth:`Api.reader`."""
ORG_SCOPE = web.RequestKey("scope_org", str)
"""Where the app's guard leaves a member's org in multi-tenant mode, for :meth:`Api.reader`."""


def json_response(data: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(data), status=status, content_type="application/json")


def error(status: int, kind: str, message: str) -> web.Response:
    return json_response({"error": {"type": kind, "message": message}}, status)


class Params:
    """Query parameters, read with validation: every mistake is a :class:`QueryError` naming the parameter."""

    KNOWN = frozenset(
        {
            "since",
            "until",
            "tz",
            "granularity",
            "split",
            "dimension",
            "limit",
            "sort",
            "compare",
            "horizon",
            "provider",
            "model",
            "days",
            "to_model",
            "to_provider",
            "kind",
            "format",
            "top",
            "latency",
            *DIMENSIONS,
        }
    )
    LOG = frozenset({"before", "session_id", "routed", "stream", "unpriced", "batch_id"})
    """The request log's own parameters (with ``property.NAME``): filters only an event answers."""

    def __init__(self, request: web.Request, log: bool = False) -> None:
        self.q = request.query
        known = self.KNOWN | self.LOG if log else self.KNOWN
        unknown = sorted(k for k in set(self.q) - known if not (log and k.startswith("property.")))
        if unknown:
            raise QueryError(f"unknown parameter {unknown[0]!r}; known: {', '.join(sorted(self.KNOWN))}")

    def get(self, name: str, default: str | None = None) -> str | None:
        v = self.q.get(name)
        return default if v is None else v

    def number(self, name: str, default: int | None = None, lo: int = 1, hi: int = 1000) -> int | None:
        raw = self.q.get(name)
        if raw is None:
            return default
        try:
            v = int(raw)
        except ValueError:
            raise QueryError(f"{name} {raw!r} is not a whole number") from None
        if not lo <= v <= hi:
            raise QueryError(f"{name} must be from {lo} to {hi}, got {v}")
        return v

    def range(self, default_days: int = 30) -> Range:
        return make_range(self.get("since"), self.get("until"), self.get("tz"), default_days=default_days)


class Api:
    def __init__(self, settings: Settings, pricing: Pricing) -> None:
        self.settings = settings
        self.pricing = pricing
        self._reader: Reader | None = None
        self._lock = asyncio.Lock()

    async def reader(self, request: web.Request | None = None) -> Reader:
        """The store, opened on first use (the proxy may start after the dashboard; until then: a 503); for a
        team-scoped member (``request["scope_team"]``, set by the app's guard), narrowed to that team; in
        multi-tenant mode, for any member (``request["scope_org"]``), narrowed to its org."""
        if self._reader is None:
            async with self._lock:
                if self._reader is None:
                    self._reader = open_reader(self.settings.store)
        team = request.get(SCOPE) if request is not None else None
        org = request.get(ORG_SCOPE) if request is not None else None
        return self._reader if team is None and org is None else ScopedReader(self._reader, team, org)

    async def close(self) -> None:
        if self._reader is not None:
            await self._reader.close()

    def routes(self) -> list[web.RouteDef]:
        return [
            web.get("/api/v1/meta", self.meta),
            web.get("/api/v1/overview", self.overview),
            web.get("/api/v1/series", self.series),
            web.get("/api/v1/breakdown", self.breakdown),
            web.get("/api/v1/values", self.values),
            web.get("/api/v1/sessions", self.sessions),
            web.get("/api/v1/requests", self.requests),
            web.get("/api/v1/requests/{request_id}", self.request),
            web.get("/api/v1/errors", self.errors),
            web.get("/api/v1/sessions/{session_id}", self.session),
            web.get("/api/v1/budgets", self.budgets),
            web.get("/api/v1/forecast", self.forecast),
            web.get("/api/v1/whatif", self.whatif),
            web.get("/api/v1/models", self.models),
        ]

    # -- handlers ---------------------------------------------------------------------------------------------
    async def meta(self, request: web.Request) -> web.Response:
        from ..sinks import describe_store

        s = self.settings
        try:
            await self.reader(request)
            exists, problem = True, None
        except StoreMissing as exc:
            exists, problem = False, str(exc)
        return json_response(
            {
                "store": {"kind": s.store.split(":", 1)[0], "where": describe_store(s.store), "exists": exists},
                "problem": problem,
                "proxy_port": s.port,
                "dimensions": list(DIMENSIONS),
                "granularities": list(GRANULARITIES),
                "controls": bool(s.controls_file),
            }
        )

    async def overview(self, request: web.Request) -> web.Response:
        p = Params(request)
        tz_name = p.get("tz") or "UTC"
        tz = _zone(tz_name)
        rng = p.range()  # the Period selector's range: the trend, the period's spend and its top teams and models
        return json_response(
            await overview(await self.reader(request), datetime.now(UTC), tz, tz_name, parse_filters(p.get), rng)
        )

    async def series(self, request: web.Request) -> web.Response:
        p = Params(request)
        rng = p.range()
        split = p.get("split") or None
        top = p.number("top", 8, 1, 50) or 8
        latency = p.get("latency") or "true"
        if latency not in ("true", "false"):
            raise QueryError(f"latency {latency!r}: write true or false (false: no percentiles, a faster answer)")
        granularity = p.get("granularity", "day") or "day"
        reader = await self.reader(request)
        return json_response(
            await series(reader, rng, granularity, parse_filters(p.get), split, top, latency == "true")
        )

    async def breakdown(self, request: web.Request) -> web.Response:
        p = Params(request)
        dim = p.get("dimension") or ""
        if dim.startswith("property."):  # a custom property: read from the events (not a rollup dimension)
            return json_response(
                await property_breakdown(
                    await self.reader(request),
                    p.range(),
                    parse_filters(p.get),
                    dim[len("property.") :],
                    p.number("limit", 10) or 10,
                )
            )
        compare = (p.get("compare") or "true") != "false"
        data = await breakdown(
            await self.reader(request),
            p.range(),
            p.get("dimension") or "",
            parse_filters(p.get),
            p.number("limit", 10) or 10,
            p.get("sort") or "cost",
            compare,
        )
        return json_response(data)

    async def values(self, request: web.Request) -> web.Response:
        p = Params(request)
        dim = p.get("dimension") or ""
        vals = await values(
            await self.reader(request), p.range(90), dim, parse_filters(p.get), p.number("limit", 200) or 200
        )
        return json_response({"dimension": dim, "values": vals})

    async def sessions(self, request: web.Request) -> web.Response:
        p = Params(request)
        return json_response(
            await sessions(await self.reader(request), p.range(), parse_filters(p.get), p.number("limit", 20) or 20)
        )

    async def requests(self, request: web.Request) -> web.Response:
        p = Params(request, log=True)
        only = EventOnly.parse(p.get, request.query.keys())
        return json_response(
            await request_log(
                await self.reader(request),
                p.range(7),
                parse_filters(p.get),
                only,
                parse_cursor(p.get("before")),
                p.number("limit", 50, hi=500) or 50,
            )
        )

    async def request(self, request: web.Request) -> web.Response:
        try:
            return json_response(await request_detail(await self.reader(request), request.match_info["request_id"]))
        except LookupError as exc:
            return error(404, "not_found", str(exc))

    async def errors(self, request: web.Request) -> web.Response:
        p = Params(request)
        return json_response(await errors(await self.reader(request), p.range(), parse_filters(p.get)))

    async def session(self, request: web.Request) -> web.Response:
        try:
            return json_response(await session_steps(await self.reader(request), request.match_info["session_id"]))
        except LookupError as exc:
            return error(404, "not_found", str(exc))

    async def budgets(self, request: web.Request) -> web.Response:
        path = self.settings.controls_file
        if not path:
            return json_response({"budgets": [], "controls_file": None})
        from ..controls.parse import load
        from ..controls.status import budget_status

        spec = load(path)
        budgets = spec.budgets
        team = request.get(SCOPE)
        if team is not None:  # a team's member sees the budgets that are about its team only
            budgets = tuple(b for b in budgets if ("team", team) in b.scope.exact)
        org = request.get(ORG_SCOPE)
        if org is not None:  # an org's member, the budgets of its org only
            budgets = tuple(b for b in budgets if ("org", org) in b.scope.exact)
        rows = await budget_status(await self.reader(request), budgets)
        return json_response({"budgets": rows, "controls_file": path})

    async def forecast(self, request: web.Request) -> web.Response:
        p = Params(request)
        tz_name = p.get("tz") or "UTC"
        data = await forecast(
            await self.reader(request),
            datetime.now(UTC),
            _zone(tz_name),
            tz_name,
            p.get("horizon", "month") or "month",
            parse_filters(p.get),
        )
        return json_response(data)

    async def whatif(self, request: web.Request) -> web.Response:
        """``to_model`` (and ``to_provider`` when the name is ambiguous) re-prices the slice the usual filters
        select, over ``days`` days (or ``since``/``until``)."""
        p = Params(request)
        days = p.number("days", 30, 1, 366) or 30
        rng = p.range() if p.get("since") else make_range(None, None, p.get("tz"), default_days=days)
        to_model = p.get("to_model") or ""
        to_provider = p.get("to_provider") or ""
        if not to_provider:
            homes = self.pricing.home_providers(to_model) if to_model else []
            to_provider = homes[0] if homes else (p.get("provider") or "openai")
        data = await whatif(await self.reader(request), self.pricing, rng, parse_filters(p.get), to_provider, to_model)
        return json_response(data)

    async def models(self, request: web.Request) -> web.Response:
        from ..config import PROVIDERS

        return json_response({p: self.pricing.model_ids(p) for p in PROVIDERS if self.pricing.model_ids(p)})


def _zone(name: str) -> Any:
    try:
        return zone(name)
    except TimeError as exc:
        raise QueryError(str(exc)) from None
