"""Cost events to OpenTelemetry SDK spans, exported by the SDK's own OTLP exporter (HTTP or gRPC, :mod:`.target`).

Runs in the exporter's process (:mod:`.worker`), never in the proxy's. A client's W3C ``traceparent``, recorded
on its event, is the span's parent: the proxy's span sits in the application's trace; a malformed one is not
continued. Held by tests/test_otel.py::test_one_span_per_stored_event_equal_field_by_field_in_the_clients_trace.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from .attributes import attributes, epoch_ns, span_name

if TYPE_CHECKING:
    from ..events import CostEvent
    from .target import Target

EXPORT_CHUNK = 256
"""Spans per export request."""


class SpanBuilder:
    def __init__(self, target: Target) -> None:
        from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor, TracerProvider
        from opentelemetry.trace import SpanKind, Status, StatusCode
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        class Collect(SpanProcessor):
            """Hands each ended span to the list being built (a chunk is exported as one request)."""

            def __init__(self) -> None:
                self.ended: list[ReadableSpan] = []

            def on_end(self, span: ReadableSpan) -> None:
                self.ended.append(span)

        self._collect = Collect()
        provider = TracerProvider(resource=target.resource())
        provider.add_span_processor(self._collect)
        self._tracer = provider.get_tracer("modeltrack")
        self._kind, self._status, self._error = SpanKind.CLIENT, Status, StatusCode.ERROR
        self._propagator = TraceContextTextMapPropagator()

    def spans(self, events: Sequence[CostEvent]) -> list[Any]:
        """One ended span per event, in order."""
        for ev in events:
            parent = self._propagator.extract({"traceparent": ev.traceparent}) if ev.traceparent else None
            attrs = attributes(ev)
            start = epoch_ns(ev.timestamp)
            span = self._tracer.start_span(
                span_name(attrs), context=parent, kind=self._kind, attributes=attrs, start_time=start
            )
            if ev.status >= 400 or ev.status == 0 or ev.error is not None:
                span.set_status(self._status(self._error, ev.error or str(ev.status)))
            span.end(end_time=start + int(ev.latency_ms * 1_000_000))
        spans, self._collect.ended = self._collect.ended, []
        return spans
