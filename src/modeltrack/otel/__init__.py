"""OpenTelemetry export (``MODELTRACK_OTEL_ENDPOINT``): spans per cost event, and optionally the metrics."""

from .metrics import MetricsMirror
from .spans import SpanExport, attributes, operation

__all__ = ["MetricsMirror", "SpanExport", "attributes", "operation"]
