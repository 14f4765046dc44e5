"""Optional OTLP metrics that mirror the Prometheus ones (``MODELTRACK_OTEL_METRICS=true``): the same names,
labels as attributes, read from this process's Prometheus registry at each export, so the two never disagree
and the request path does no extra work (the OpenTelemetry SDK's periodic reader runs on its own thread).

Counters become cumulative observable counters, gauges observable gauges; a histogram becomes its ``_bucket``
(with ``le``), ``_sum`` and ``_count`` series, as Prometheus exposes it. Held by
tests/test_otel.py::test_metrics_mirror_the_prometheus_ones.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry

if TYPE_CHECKING:
    from .target import Target


class MetricsMirror:
    def __init__(self, target: Target, registry: CollectorRegistry, interval: float = 60.0) -> None:
        from opentelemetry.sdk.metrics import MeterProvider
        from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader

        self.registry = registry
        self._lock = threading.Lock()
        self._snapshot: dict[str, list[tuple[dict[str, str], float]]] = {}
        self._taken = 0.0
        exporter = target.metric_exporter()
        self.reader = PeriodicExportingMetricReader(exporter, export_interval_millis=interval * 1000)
        self.provider = MeterProvider(resource=target.resource(), metric_readers=[self.reader])
        meter = self.provider.get_meter("modeltrack")
        for family in registry.collect():
            for series, kind in self._series(family.name, family.type):
                callback = self._callback(series)
                if kind == "gauge":
                    meter.create_observable_gauge(series, [callback], description=family.documentation)
                else:
                    meter.create_observable_counter(series, [callback], description=family.documentation)

    @staticmethod
    def _series(name: str, kind: str) -> list[tuple[str, str]]:
        if kind == "counter":
            return [(name + "_total", "counter")]
        if kind == "histogram":
            return [(name + "_bucket", "counter"), (name + "_sum", "counter"), (name + "_count", "counter")]
        return [(name, "gauge")]

    def _samples(self) -> dict[str, list[tuple[dict[str, str], float]]]:
        """One collection of the registry per export (every callback of one export reads the same snapshot)."""
        with self._lock:
            if time.monotonic() - self._taken > 1.0:
                snapshot: dict[str, list[tuple[dict[str, str], float]]] = {}
                for family in self.registry.collect():
                    for s in family.samples:
                        snapshot.setdefault(s.name, []).append((dict(s.labels), float(s.value)))
                self._snapshot, self._taken = snapshot, time.monotonic()
            return self._snapshot

    def _callback(self, series: str) -> Any:
        from opentelemetry.metrics import CallbackOptions, Observation

        def observe(options: CallbackOptions) -> Iterable[Observation]:
            return [Observation(value, labels) for labels, value in self._samples().get(series, ())]

        return observe

    def flush(self) -> None:
        self.provider.force_flush()

    def close(self) -> None:
        self.provider.shutdown()
