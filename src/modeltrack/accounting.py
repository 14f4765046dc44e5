"""One exchange becomes one cost event: meter result → usage → price → event → pipeline, metrics, access log.

This is the only place an event is built, whatever happened to the request (success, upstream error, timeout,
client disconnect, refusal), so every path is accounted for the same way, and a bug here never breaks a
response: :meth:`Recorder.record` logs and swallows.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Final, Protocol

from .batches import KEPT as BATCH_KEPT
from .batches import BatchRegistry, item_request_id
from .events import CostEvent, rfc3339
from .logs import log_exception_safely
from .metrics import Metrics
from .pipeline import Pipeline
from .pricing import Pricing
from .providers import Meter, MeterResult, RequestInfo
from .providers.batches import BatchItem
from .rollups import TOKENS
from .rounding import nearest
from .spent import Spent, limit_tokens
from .usage import Usage

# The clocks as C statics: compiled, a call is then one indirect call, not an attribute lookup on the module
# (~30 ns a call, several a request).
perf_counter: Final = time.perf_counter
log: Final = logging.getLogger("modeltrack.proxy")
access: Final = logging.getLogger("modeltrack.access")


class Outcome(Protocol):
    """What the proxy knows of one request when it is over (the exchange carries it); the recorder turns it
    into the event."""

    rid: str
    provider_name: str
    endpoint: str
    info: RequestInfo
    wall: float
    start: float
    attrs: dict[str, Any]
    status: int
    error: str | None
    upstream_id: str | None
    meter: Meter | None
    complete: bool
    first_byte: float | None
    own: float  # seconds spent in our own code (the overhead histogram)
    # Spend controls:
    routed_from: str | None  # the model asked for, when a routing rule replaced it
    route_rule: str | None
    blocked: bool  # refused by a budget or a routing rule (cost 0)
    cached: Any  # a response-cache Entry when the cache answered (cost 0, saved_usd = the original's cost)


class Recorder:
    def __init__(
        self,
        pipeline: Pipeline,
        metrics: Metrics,
        pricing: Pricing,
        access_log: bool = False,
        batches: BatchRegistry | None = None,
    ) -> None:
        self.pipeline = pipeline
        self.metrics = metrics
        self.pricing = pricing
        self.access_log = access_log
        self.batches = batches

    def record(self, o: Outcome, endpoint_kind: str) -> CostEvent | None:
        """Build, price, count and enqueue the event. Never raises: a bug here must not break the response."""
        return self.record_spent(o, endpoint_kind, False)[0]

    def record_spent(self, o: Outcome, endpoint_kind: str, spent: bool) -> tuple[CostEvent | None, Spent | None]:
        """:meth:`record`, and when ``spent``, what the controls read of it (:mod:`modeltrack.spent`), from the
        values at hand rather than read back off the event."""
        try:
            return self._record(o, endpoint_kind, spent)
        except Exception as exc:  # noqa: BLE001 - recording must never break the response
            log_exception_safely(f"{o.rid} failed to record the cost event", exc, log.name)
            return None, None

    def _record(self, o: Outcome, endpoint_kind: str, want_spent: bool) -> tuple[CostEvent, Spent | None]:
        end = perf_counter()
        provider = o.provider_name
        info, meter = o.info, o.meter
        # A client that hangs up right after the stream's own end marker ([DONE], message_stop, ...) — the sync
        # OpenAI SDK does — has had the whole answer: its usage is complete, not partial.
        ended = meter is not None and meter.ended
        complete = o.complete or ended
        error = None if ended and o.error in ("client_disconnected", "shutdown") else o.error
        saved: float | None = None
        cost: float | None
        cached = o.cached
        if cached is not None:
            # Answered from the response cache: the original's model and tokens, for reference; nothing billed.
            meta = cached.meta
            original = Usage()
            for k in TOKENS:
                setattr(original, k, int(meta.get(k) or 0))
            result = MeterResult(model=meta.get("model"), usage=original, usage_source="cache")
            cost, cost_source, saved = 0.0, "cache", meta.get("cost_usd")
        elif o.blocked:
            result = MeterResult(model=info.model, usage_source="none")
            cost, cost_source = 0.0, "blocked"
        else:
            try:
                result = meter.finish(complete) if meter is not None else MeterResult(model=info.model)
            except Exception as exc:  # noqa: BLE001 - a meter bug costs the usage, never the event
                log_exception_safely(f"{o.rid} meter failed", exc, log.name)
                result = MeterResult(model=info.model, error="meter_error")
            cost, cost_source = self.pricing.cost(provider, result, info.model, o.wall)
            if cost_source == "unpriced":
                self.pricing.warn_unpriced(provider, result.model or info.model)
        usage = result.usage
        attrs = o.attrs
        job = info.extra.get("batch")  # the batch whose results this download is (modeltrack.batches)
        rid = o.rid
        if result.settles is not None:
            # An async job's completion (a video): billed once, to its creator, under the job's own event id.
            rid = item_request_id(provider, result.settles, "job")
            if job is not None and job.get("attrs"):
                attrs = {**attrs, **job["attrs"]}
        if result.batch and self.batches is not None:
            self.batches.note(attrs.get("org"), provider, result.batch, attrs)
        stamp, model, status = rfc3339(o.wall), result.model or info.model, o.status
        team, app, feature, user = attrs.get("team"), attrs.get("app"), attrs.get("feature"), attrs.get("user")
        org, key_id = attrs.get("org"), attrs.get("key_id")
        usage_source = result.usage_source if usage or o.blocked else "missing"
        latency_ms = nearest((end - o.start) * 1e6) / 1000
        first_byte = o.first_byte
        ttft_ms = nearest((first_byte - o.start) * 1e6) / 1000 if first_byte is not None and info.stream else None
        tokens = (0, 0, 0, 0, 0)
        if usage is not None:
            tokens = (
                usage.input_tokens,
                usage.output_tokens,
                usage.cache_read_tokens,
                usage.cache_write_tokens,
                usage.reasoning_tokens,
            )
        ev = CostEvent(
            timestamp=stamp,
            request_id=rid,
            upstream_request_id=o.upstream_id,
            provider=provider,
            endpoint=o.endpoint,
            model=model,
            status=status,
            stream=info.stream,
            input_tokens=tokens[0],
            output_tokens=tokens[1],
            cache_read_tokens=tokens[2],
            cache_write_tokens=tokens[3],
            reasoning_tokens=tokens[4],
            cost_usd=cost,
            latency_ms=latency_ms,
            ttft_ms=ttft_ms,
            team=team,
            app=app,
            feature=feature,
            session_id=attrs.get("session_id"),
            cache_hit=cached is not None,
            routed=o.routed_from is not None,
            usage_source=usage_source,
            error=error or result.error,
            requested_model=o.routed_from
            if o.routed_from is not None
            else (cached.meta.get("requested_model") if cached is not None else info.model),
            cache_write_1h_tokens=usage.cache_write_1h_tokens if usage else 0,
            web_search_requests=usage.web_search_requests if usage else 0,
            service_tier=usage.service_tier if usage else None,
            cost_source=cost_source,
            stream_usage_injected=bool(info.extra.get("stream_usage_injected")),
            user=user,
            prompt_id=attrs.get("prompt_id"),
            properties=attrs.get("properties"),
            key_id=key_id,
            org=org,
            traceparent=attrs.get("traceparent"),
            saved_usd=saved,
            route_rule=o.route_rule,
            batch_id=job["batch_id"] if job else (result.batch[0].batch_id if result.batch else None),
        )
        self.pipeline.enqueue(ev)
        spent: Spent | None = None
        if want_spent:
            total = tokens[0] + tokens[1] + tokens[2] + tokens[3]
            limited = limit_tokens(status, cached is not None, usage_source, total)
            key = (team, app, feature, user, provider, model, org, key_id)  # controls.match.DIMENSIONS
            spent = Spent(key, cost, status, limited, stamp, rid, o.wall)
        if result.settles is not None and self.batches is not None and cost_source != "unpriced":
            self.batches.priced(attrs.get("org"), provider, result.settles)
        if result.items and job is not None and not job["priced"]:
            self._items(o, result.items, job, endpoint_kind)
            if complete and ev.error is None and self.batches is not None:
                self.batches.priced(attrs.get("org"), provider, job["file_id"])
        overhead = o.own + (perf_counter() - end)
        prompt_savings = 0.0
        if tokens[2] and cached is None:
            prompt_savings = self.pricing.cache_savings(provider, result, info.model, o.wall)
        # (The event's values as this function holds them: read back off the event, 22 generic lookups.)
        self.metrics.count(
            provider,
            model,
            team,
            app,
            feature,
            org,
            endpoint_kind,
            status,
            info.stream,
            tokens,
            cost,
            prompt_savings,
            saved,
            cost_source == "unpriced",
            latency_ms,
            ttft_ms,
            overhead,
        )
        if self.access_log:
            self._access(ev, info.method)
        if log.isEnabledFor(logging.DEBUG):
            log.debug(
                "%s provider=%s endpoint=%s status=%s model=%s in=%d out=%d cost=%s source=%s error=%s",
                o.rid,
                ev.provider,
                endpoint_kind,
                ev.status,
                ev.model,
                ev.input_tokens,
                ev.output_tokens,
                ev.cost_usd,
                ev.usage_source,
                ev.error,
            )
        return ev, spent

    def _items(self, o: Outcome, items: list[BatchItem], job: dict[str, Any], endpoint_kind: str) -> None:
        """One event per item of a batch's results, at the batch rate, with its creator's attribution (the
        downloader's when the batch's creation was never seen). Ids are stable: a second read stores nothing."""
        provider = o.provider_name
        attrs = job.get("attrs") or {k: o.attrs.get(k) for k in BATCH_KEPT}
        stamp = rfc3339(o.wall)
        for i, item in enumerate(items):
            cost: float | None
            if item.usage is None:
                cost, cost_source = None, "no_usage"
            elif item.error is not None and item.usage == Usage():
                cost, cost_source = 0.0, "zero"  # an item that failed or expired is not billed
            else:
                result = MeterResult(model=item.model, usage=item.usage, usage_source="batch")
                cost, cost_source = self.pricing.cost(provider, result, None, o.wall, batch=True)
                if cost_source == "unpriced":
                    self.pricing.warn_unpriced(provider, item.model)
            u = item.usage or Usage()
            ev = CostEvent(
                timestamp=stamp,
                request_id=item_request_id(provider, job["batch_id"], item.custom_id or f"#{i}"),
                upstream_request_id=item.upstream_request_id,
                provider=provider,
                endpoint=job.get("endpoint") or o.endpoint,
                model=item.model,
                status=item.status,
                stream=False,
                input_tokens=u.input_tokens,
                output_tokens=u.output_tokens,
                cache_read_tokens=u.cache_read_tokens,
                cache_write_tokens=u.cache_write_tokens,
                reasoning_tokens=u.reasoning_tokens,
                cost_usd=cost,
                latency_ms=0.0,
                ttft_ms=None,
                team=attrs.get("team"),
                app=attrs.get("app"),
                feature=attrs.get("feature"),
                session_id=attrs.get("session_id"),
                cache_hit=False,
                routed=False,
                usage_source="batch" if item.usage is not None else "missing",
                error=item.error,
                requested_model=item.model,
                cache_write_1h_tokens=u.cache_write_1h_tokens,
                web_search_requests=u.web_search_requests,
                service_tier=u.service_tier,
                cost_source=cost_source,
                user=attrs.get("user"),
                prompt_id=attrs.get("prompt_id"),
                properties=attrs.get("properties"),
                key_id=attrs.get("key_id"),
                org=attrs.get("org"),
                batch_id=job["batch_id"],
                processing="batch",
            )
            self.pipeline.enqueue(ev)
            self.metrics.observe(ev, 0.0, endpoint_kind, 0.0)

    @staticmethod
    def _access(ev: CostEvent, method: str) -> None:
        """One line per request: method, route, status, model, tokens, cost, latency. Never a header value, a
        query string, a prompt or a body (the route is the endpoint path, which has no query)."""
        access.info(
            "%s %s %s status=%d model=%s in=%d out=%d cache_read=%d cache_write=%d cost=%s latency_ms=%.1f%s",
            method,
            ev.provider,
            ev.endpoint,
            ev.status,
            ev.model or "-",
            ev.input_tokens,
            ev.output_tokens,
            ev.cache_read_tokens,
            ev.cache_write_tokens,
            f"{ev.cost_usd:.9f}" if ev.cost_usd is not None else "unpriced",
            ev.latency_ms,
            f" error={ev.error}" if ev.error else "",
        )
