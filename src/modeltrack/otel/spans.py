"""One OpenTelemetry span per stored cost event, with the GenAI semantic conventions, exported over OTLP/HTTP by
the OpenTelemetry SDK's own exporter.

Guarantees (tests/test_otel.py, against a receiver built on the official ``opentelemetry-proto`` messages):

* **Exactly the stored events.** Spans are made from the batches the pipeline's store accepted (``on_stored``),
  so what a trace backend holds equals what the store holds, field by field (:func:`attributes`).
* **The application's trace continues.** A client's W3C ``traceparent`` (recorded on its event) is the span's
  parent: the proxy's span sits in the application's trace.
* **Nothing secret or private.** Attributes come only from the event, which holds metadata: never a prompt, a
  response or a key (the canary test scans what the receiver got).
* **Never in the request's way.** The loop only hands a batch to a bounded queue (``put_nowait``); spans are
  built and exported on the exporter's own thread. A slow or dead receiver fills the queue, and what does not
  fit is dropped and counted (``modeltrack_otel_spans_total{outcome="dropped"}``), never waited for.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..events import CostEvent
    from ..metrics import Metrics

log = logging.getLogger("modeltrack.otel")
EXPORT_CHUNK = 64
"""Spans built and sent per export request: small enough that the exporter's thread never holds the GIL long."""

PROVIDER_NAMES = {
    "openai": "openai",
    "anthropic": "anthropic",
    "gemini": "gcp.gemini",
    "bedrock": "aws.bedrock",
    "azure": "azure.ai.openai",
    "groq": "groq",
    "mistral": "mistral_ai",
    "deepseek": "deepseek",
    "xai": "x_ai",
}
"""``gen_ai.provider.name`` per the GenAI conventions' well-known values; other providers keep their own name."""

_OPERATIONS = {
    "completions": "chat",
    "messages": "chat",
    "responses": "chat",
    "converse": "chat",
    "converse-stream": "chat",
    "generateContent": "generate_content",
    "streamGenerateContent": "generate_content",
    "embeddings": "embeddings",
    "embedContent": "embeddings",
    "batchEmbedContents": "embeddings",
}


def operation(endpoint: str) -> str:
    """``gen_ai.operation.name`` from the endpoint's path (``/v1/chat/completions`` → ``chat``)."""
    last = endpoint.rsplit("/", 1)[-1]
    last = last.rsplit(":", 1)[-1]
    if last == "completions" and not endpoint.endswith("chat/completions"):
        return "text_completion"
    return _OPERATIONS.get(last, last or "request")


def _epoch_ns(timestamp: str) -> int:
    when = datetime.fromisoformat(timestamp.replace("Z", "+00:00"))
    return int(when.timestamp()) * 1_000_000_000 + when.microsecond * 1000


def attributes(ev: CostEvent) -> dict[str, Any]:
    """The span's attributes. ``gen_ai.usage.input_tokens`` counts every input token, cached ones included (as
    the conventions say); ModelTrack's ``input_tokens`` is the uncached part, so both are there. Nulls are left
    out (OpenTelemetry attributes have no null)."""
    provider = PROVIDER_NAMES.get(ev.provider, ev.provider)
    out: dict[str, Any] = {
        "gen_ai.operation.name": operation(ev.endpoint),
        "gen_ai.provider.name": provider,
        "gen_ai.system": provider,
        "gen_ai.request.model": ev.requested_model or ev.model,
        "gen_ai.response.model": ev.model,
        "gen_ai.usage.input_tokens": ev.input_tokens + ev.cache_read_tokens + ev.cache_write_tokens,
        "gen_ai.usage.output_tokens": ev.output_tokens,
        "gen_ai.usage.cache_read.input_tokens": ev.cache_read_tokens,
        "gen_ai.usage.cache_creation.input_tokens": ev.cache_write_tokens,
        "gen_ai.usage.reasoning.output_tokens": ev.reasoning_tokens,
        "http.response.status_code": ev.status,
        "error.type": ev.error,
        "modeltrack.request_id": ev.request_id,
        "modeltrack.upstream_request_id": ev.upstream_request_id,
        "modeltrack.endpoint": ev.endpoint,
        "modeltrack.stream": ev.stream,
        "modeltrack.cost_usd": ev.cost_usd,
        "modeltrack.cost_source": ev.cost_source,
        "modeltrack.usage_source": ev.usage_source,
        "modeltrack.input_tokens": ev.input_tokens,
        "modeltrack.latency_ms": ev.latency_ms,
        "modeltrack.ttft_ms": ev.ttft_ms,
        "modeltrack.team": ev.team,
        "modeltrack.app": ev.app,
        "modeltrack.feature": ev.feature,
        "modeltrack.user": ev.user,
        "modeltrack.session_id": ev.session_id,
        "modeltrack.prompt_id": ev.prompt_id,
        "modeltrack.org": ev.org,
        "modeltrack.key_id": ev.key_id,
        "modeltrack.routed": ev.routed,
        "modeltrack.route_rule": ev.route_rule,
        "modeltrack.cache_hit": ev.cache_hit,
        "modeltrack.saved_usd": ev.saved_usd,
        "modeltrack.service_tier": ev.service_tier,
    }
    for name, value in (ev.properties or {}).items():
        out[f"modeltrack.property.{name}"] = value
    return {k: v for k, v in out.items() if v is not None}


class SpanExport:
    """The exporter's thread and its bounded queue of stored batches."""

    def __init__(
        self,
        endpoint: str,
        metrics: Metrics,
        service_name: str = "modeltrack",
        max_queued_batches: int = 64,
        timeout: float = 10.0,
        exporter: Any = None,
    ) -> None:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor, TracerProvider
        from opentelemetry.trace import SpanKind, Status, StatusCode
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        class Collect(SpanProcessor):
            """Hands each ended span to the list being built (the batch is exported as one request)."""

            def __init__(self) -> None:
                self.ended: list[ReadableSpan] = []

            def on_end(self, span: ReadableSpan) -> None:
                self.ended.append(span)

        self._collect = Collect()
        provider = TracerProvider(resource=Resource.create({"service.name": service_name}))
        provider.add_span_processor(self._collect)
        self._tracer = provider.get_tracer("modeltrack")
        self._kind, self._status, self._error = SpanKind.CLIENT, Status, StatusCode.ERROR
        self._propagator = TraceContextTextMapPropagator()
        traces_url = endpoint.rstrip("/") + "/v1/traces"
        self.exporter = exporter or OTLPSpanExporter(endpoint=traces_url, timeout=timeout)
        self.metrics = metrics
        self.queue: queue.Queue[list[CostEvent] | None] = queue.Queue(max_queued_batches)
        self._thread = threading.Thread(target=self._run, name="modeltrack-otel", daemon=True)
        self._thread.start()

    def offer(self, events: Sequence[CostEvent]) -> None:
        """From the loop (the pipeline's ``on_stored``): never blocks; a full queue drops the batch, counted."""
        try:
            self.queue.put_nowait(list(events))
        except queue.Full:
            self.metrics.otel_spans.labels("dropped").inc(len(events))

    def _span(self, ev: CostEvent) -> None:
        parent = None
        if ev.traceparent:
            parent = self._propagator.extract({"traceparent": ev.traceparent})
        attrs = attributes(ev)
        start = _epoch_ns(ev.timestamp)
        span = self._tracer.start_span(
            f"{attrs['gen_ai.operation.name']} {attrs.get('gen_ai.request.model', '')}".strip(),
            context=parent,
            kind=self._kind,
            attributes=attrs,
            start_time=start,
        )
        if ev.status >= 400 or ev.status == 0 or ev.error is not None:
            span.set_status(self._status(self._error, ev.error or str(ev.status)))
        span.end(end_time=start + int(ev.latency_ms * 1_000_000))

    def _run(self) -> None:
        from opentelemetry.sdk.trace.export import SpanExportResult

        while True:
            batch = self.queue.get()
            if batch is None:
                return
            # A few spans at a time, yielding in between: building and encoding a store batch (up to 2,000
            # events) in one go held the GIL for tens of milliseconds, which the request loop then waited out.
            for i in range(0, len(batch), EXPORT_CHUNK):
                part = batch[i : i + EXPORT_CHUNK]
                try:
                    for ev in part:
                        self._span(ev)
                    spans, self._collect.ended = self._collect.ended, []
                    ok = self.exporter.export(spans) == SpanExportResult.SUCCESS
                except Exception as exc:  # noqa: BLE001 - an export problem never ends the thread
                    log.warning("otel: spans not exported (%s)", type(exc).__name__)
                    self._collect.ended = []
                    ok = False
                self.metrics.otel_spans.labels("exported" if ok else "failed").inc(len(part))
                time.sleep(0)  # let the request loop have the GIL

    def close(self, timeout: float = 5.0) -> None:
        """Export what is queued (up to ``timeout``), then stop the thread."""
        try:
            self.queue.put(None, timeout=timeout)
        except queue.Full:
            return
        self._thread.join(timeout)
        self.exporter.shutdown()
