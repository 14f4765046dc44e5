"""The cost event: one per proxied request, metadata only (never keys, prompts, responses or query strings)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, fields
from datetime import UTC, datetime
from typing import Any

import orjson

from .usage import Usage

_pool = b""


def _new_pool_after_fork() -> None:
    global _pool
    _pool = b""  # a forked worker must never repeat its parent's ids


os.register_at_fork(after_in_child=_new_pool_after_fork)


def new_request_id() -> str:
    """``req_`` + 24 hex chars (96 random bits from the OS), so Firestore document ids spread (no monotonically
    increasing keys). Randomness is fetched 4 KiB at a time: one syscall per 341 ids; the pool is emptied in a
    forked child (``os.register_at_fork``), so no process-id check (a syscall) is needed per id."""
    global _pool
    if len(_pool) < 12:
        _pool = os.urandom(4092)
    rid, _pool = _pool[:12], _pool[12:]
    return "req_" + rid.hex()


_second = -1  # the whole second last formatted, and its "YYYY-MM-DDTHH:MM:SS" prefix: one datetime a second
_prefix = ""
_MILLIS = tuple(f".{ms:03d}Z" for ms in range(1000))  # ".000Z" … ".999Z": no format spec parsed per event


def rfc3339(ts: float) -> str:
    """``2026-11-29T07:25:36.485Z``. Events arrive in time order, so the date part is formatted once a second."""
    global _second, _prefix
    sec = int(ts)
    us = round((ts - sec) * 1e6)  # as datetime.fromtimestamp rounds, then truncate to milliseconds
    if us >= 1_000_000:
        sec, us = sec + 1, us - 1_000_000
    if sec != _second:
        _prefix = datetime.fromtimestamp(sec, UTC).strftime("%Y-%m-%dT%H:%M:%S")
        _second = sec
    return _prefix + _MILLIS[us // 1000]


@dataclass(slots=True, init=False)
class CostEvent:
    # Compiled with the request path (scripts/compile), one is built and encoded per request. The dataclasses
    # module's ``__init__`` is written at run time, so mypyc cannot compile it, and orjson cannot read a mypyc
    # class's unboxed fields (it crashes: never pass a CostEvent to orjson yourself; use ``to_json``). So both are
    # written out below, in field order (test_events.py holds them to the fields). Built and encoded that way, an
    # event costs ~40,000 fewer CPU instructions (callgrind, bench/README.md).

    timestamp: str
    request_id: str
    upstream_request_id: str | None
    provider: str
    endpoint: str
    model: str | None
    status: int
    stream: bool
    input_tokens: int
    output_tokens: int
    cache_read_tokens: int
    cache_write_tokens: int
    reasoning_tokens: int
    cost_usd: float | None
    latency_ms: float
    ttft_ms: float | None
    team: str | None
    app: str | None
    feature: str | None
    session_id: str | None
    cache_hit: bool
    routed: bool
    usage_source: str
    error: str | None
    # Audit fields beyond the public example event.
    requested_model: str | None = None
    cache_write_1h_tokens: int = 0
    web_search_requests: int = 0
    service_tier: str | None = None
    cost_source: str | None = None
    """``priced`` (our price table), ``provider`` (provider-reported), ``zero`` (free endpoint),
    ``unpriced`` (unknown model: cost_usd is null, never a silent 0), ``no_usage``."""
    stream_usage_injected: bool = False
    user: str | None = None
    """The end user or customer (``X-ModelTrack-User``), for per-user spend."""
    saved_usd: float | None = None
    """On a response-cache hit (``cache_hit``): what the cached response cost when it was first served."""
    route_rule: str | None = None
    """The routing rule that changed the model (``routed``), or blocked the request."""
    prompt_id: str | None = None
    """The prompt template (``X-ModelTrack-Prompt``), for cost per template."""
    properties: dict[str, str] | None = None
    """Custom properties (``X-ModelTrack-Property-<name>``), capped in number and length; never metric labels."""
    key_id: str | None = None
    """The ModelTrack key's public id (``key_…``) when the request carried one; never the key itself."""
    org: str | None = None
    """The organisation (``org_…``) of the request's ModelTrack key: in multi-tenant mode every event has one, and
    every reader an org's member uses is narrowed to it (query.scoped)."""
    traceparent: str | None = None
    """The client's W3C ``traceparent`` (recorded only when OpenTelemetry export is on): the proxy's span for
    this event is its child, in the application's trace."""
    batch_id: str | None = None
    """The async job this event is about: a Batch API job (one of its items, ``processing: batch``, or a free call
    on it: creating it, polling it, downloading its results), or a video job (Sora's ``video_…``, a Veo
    operation: the completion that bills it, or a free call on it)."""
    processing: str | None = None
    """``batch`` for an item of a Batch API job, priced at the batch rate (modeltrack.batches); None for an
    interactive request. A rollup dimension: breakdowns split batch spend from interactive spend."""

    def __init__(
        self,
        timestamp: str,
        request_id: str,
        upstream_request_id: str | None,
        provider: str,
        endpoint: str,
        model: str | None,
        status: int,
        stream: bool,
        input_tokens: int,
        output_tokens: int,
        cache_read_tokens: int,
        cache_write_tokens: int,
        reasoning_tokens: int,
        cost_usd: float | None,
        latency_ms: float,
        ttft_ms: float | None,
        team: str | None,
        app: str | None,
        feature: str | None,
        session_id: str | None,
        cache_hit: bool,
        routed: bool,
        usage_source: str,
        error: str | None,
        requested_model: str | None = None,
        cache_write_1h_tokens: int = 0,
        web_search_requests: int = 0,
        service_tier: str | None = None,
        cost_source: str | None = None,
        stream_usage_injected: bool = False,
        user: str | None = None,
        saved_usd: float | None = None,
        route_rule: str | None = None,
        prompt_id: str | None = None,
        properties: dict[str, str] | None = None,
        key_id: str | None = None,
        org: str | None = None,
        traceparent: str | None = None,
        batch_id: str | None = None,
        processing: str | None = None,
    ) -> None:
        self.timestamp = timestamp
        self.request_id = request_id
        self.upstream_request_id = upstream_request_id
        self.provider = provider
        self.endpoint = endpoint
        self.model = model
        self.status = status
        self.stream = stream
        self.input_tokens = input_tokens
        self.output_tokens = output_tokens
        self.cache_read_tokens = cache_read_tokens
        self.cache_write_tokens = cache_write_tokens
        self.reasoning_tokens = reasoning_tokens
        self.cost_usd = cost_usd
        self.latency_ms = latency_ms
        self.ttft_ms = ttft_ms
        self.team = team
        self.app = app
        self.feature = feature
        self.session_id = session_id
        self.cache_hit = cache_hit
        self.routed = routed
        self.usage_source = usage_source
        self.error = error
        self.requested_model = requested_model
        self.cache_write_1h_tokens = cache_write_1h_tokens
        self.web_search_requests = web_search_requests
        self.service_tier = service_tier
        self.cost_source = cost_source
        self.stream_usage_injected = stream_usage_injected
        self.user = user
        self.saved_usd = saved_usd
        self.route_rule = route_rule
        self.prompt_id = prompt_id
        self.properties = properties
        self.key_id = key_id
        self.org = org
        self.traceparent = traceparent
        self.batch_id = batch_id
        self.processing = processing

    def usage(self) -> Usage:
        """The stored token counts by kind, as the pricing module takes them (what-if re-prices events)."""
        return Usage(
            input_tokens=self.input_tokens,
            output_tokens=self.output_tokens,
            cache_read_tokens=self.cache_read_tokens,
            cache_write_tokens=self.cache_write_tokens,
            cache_write_1h_tokens=self.cache_write_1h_tokens,
            reasoning_tokens=self.reasoning_tokens,
            web_search_requests=self.web_search_requests,
        )

    def to_dict(self) -> dict[str, Any]:
        """The fields by name, in field order; ``properties`` is a copy (``dataclasses.asdict`` made one too)."""
        d = self._values()
        if self.properties is not None:
            d["properties"] = dict(self.properties)
        return d

    def to_json(self) -> bytes:
        return orjson.dumps(self._values())

    def to_line(self) -> bytes:
        """``to_json`` and a newline, as the journal, the spool and the sinks store an event.

        Not ``OPT_APPEND_NEWLINE``: orjson returns its whole working buffer (4 KiB or more; 16 KiB for an event,
        by tracemalloc), and a line is kept while it is queued and batched. The concatenation copies it into a
        ``bytes`` of its own size; with the option, the proxy's heap under 32-connection wrk runs grew from ~48 to
        80-114 MB (test_monitoring.py's flood holds it)."""
        return orjson.dumps(self._values()) + b"\n"

    def _values(self) -> dict[str, Any]:
        return {
            "timestamp": self.timestamp,
            "request_id": self.request_id,
            "upstream_request_id": self.upstream_request_id,
            "provider": self.provider,
            "endpoint": self.endpoint,
            "model": self.model,
            "status": self.status,
            "stream": self.stream,
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "cache_read_tokens": self.cache_read_tokens,
            "cache_write_tokens": self.cache_write_tokens,
            "reasoning_tokens": self.reasoning_tokens,
            "cost_usd": self.cost_usd,
            "latency_ms": self.latency_ms,
            "ttft_ms": self.ttft_ms,
            "team": self.team,
            "app": self.app,
            "feature": self.feature,
            "session_id": self.session_id,
            "cache_hit": self.cache_hit,
            "routed": self.routed,
            "usage_source": self.usage_source,
            "error": self.error,
            "requested_model": self.requested_model,
            "cache_write_1h_tokens": self.cache_write_1h_tokens,
            "web_search_requests": self.web_search_requests,
            "service_tier": self.service_tier,
            "cost_source": self.cost_source,
            "stream_usage_injected": self.stream_usage_injected,
            "user": self.user,
            "saved_usd": self.saved_usd,
            "route_rule": self.route_rule,
            "prompt_id": self.prompt_id,
            "properties": self.properties,
            "key_id": self.key_id,
            "org": self.org,
            "traceparent": self.traceparent,
            "batch_id": self.batch_id,
            "processing": self.processing,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CostEvent:
        names = FIELD_NAMES
        return cls(**{k: v for k, v in data.items() if k in names})


def json_lines(events: Sequence[CostEvent]) -> list[bytes]:
    """Each event's JSON and a newline. Events from the pipeline carry the bytes they were journaled as
    (``sinks.Batch.docs``), which every sink and the span exporter take as they are, so no event is encoded
    twice; a list without them (a replayed batch) is encoded here."""
    docs: list[bytes] | None = getattr(events, "docs", None)
    if docs is not None and len(docs) == len(events):
        return docs
    return [ev.to_line() for ev in events]


FIELD_ORDER = tuple(f.name for f in fields(CostEvent))
FIELD_NAMES = frozenset(FIELD_ORDER)
