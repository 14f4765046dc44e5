"""OpenTelemetry export: a span per cost event, and optionally the metrics, over OTLP/HTTP or gRPC."""

from .attributes import attributes, operation
from .metrics import MetricsMirror
from .spans import SpanExport
from .target import Target

__all__ = ["MetricsMirror", "SpanExport", "Target", "attributes", "operation"]
