"""All Prometheus instruments, in one place, on a registry owned by the app (so tests can run many apps).

Label values are bounded: each attribution label keeps at most ``label_cap`` distinct values; later values are
folded into ``__other__`` and counted in ``modeltrack_label_values_folded_total``. Values are sanitised
(control characters removed, length capped) before they can reach the exposition.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest, multiprocess

if TYPE_CHECKING:
    from .events import CostEvent

OTHER = "__other__"
MAX_LABEL_LEN = 64

_OVERHEAD_BUCKETS = (25e-6, 50e-6, 100e-6, 250e-6, 500e-6, 1e-3, 2.5e-3, 5e-3, 10e-3, 25e-3, 50e-3, 0.1)
_DURATION_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300, 600)
_TTFT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60)


def exposition(registry: CollectorRegistry) -> bytes:
    """The /metrics body: this process's registry, or — with ``--workers`` (``PROMETHEUS_MULTIPROC_DIR`` set) —
    every worker's values summed by prometheus-client's multiprocess collector."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        combined = CollectorRegistry()
        multiprocess.MultiProcessCollector(combined)  # type: ignore[no-untyped-call]
        return generate_latest(combined)
    return generate_latest(registry)


def sanitize(value: str | None, limit: int = MAX_LABEL_LEN) -> str:
    if not value:
        return ""
    clean = "".join(ch for ch in value[: limit * 2] if ch.isprintable())
    return clean[:limit]


class LabelCap:
    """Bounded set of seen values for one label."""

    __slots__ = ("cap", "folded", "seen")

    def __init__(self, cap: int, folded: Counter, label: str) -> None:
        self.cap = cap
        self.seen: set[str] = set()
        self.folded = folded.labels(label=label)

    def __call__(self, value: str | None) -> str:
        v = sanitize(value)
        if v in self.seen:
            return v
        if len(self.seen) < self.cap:
            self.seen.add(v)
            return v
        self.folded.inc()
        return OTHER


class Metrics:
    def __init__(self, label_cap: int = 100, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        attr = ("provider", "model", "team", "app", "feature")
        self.requests = Counter(
            "modeltrack_requests", "Proxied requests.", (*attr, "endpoint", "status_class", "stream"), registry=r
        )
        self.tokens = Counter("modeltrack_tokens", "Tokens by kind.", (*attr, "kind"), registry=r)
        self.cost = Counter("modeltrack_cost_usd", "Cost in USD (priced requests only).", attr, registry=r)
        self.cache_savings = Counter(
            "modeltrack_cache_savings_usd", "USD saved by prompt-cache reads vs. uncached input.", attr, registry=r
        )
        self.unpriced = Counter(
            "modeltrack_unpriced_requests", "Requests with usage but no known price.", ("provider", "model"), registry=r
        )
        self.duration = Histogram(
            "modeltrack_request_duration_seconds",
            "Total request time.",
            ("provider", "stream"),
            buckets=_DURATION_BUCKETS,
            registry=r,
        )
        self.ttft = Histogram(
            "modeltrack_time_to_first_token_seconds",
            "Time to the first upstream body byte (streams).",
            ("provider",),
            buckets=_TTFT_BUCKETS,
            registry=r,
        )
        self.overhead = Histogram(
            "modeltrack_proxy_overhead_seconds",
            "Request time not spent waiting on the upstream or the client.",
            ("provider",),
            buckets=_OVERHEAD_BUCKETS,
            registry=r,
        )
        self.upstream_errors = Counter(
            "modeltrack_upstream_errors", "Upstream failures by type.", ("provider", "type"), registry=r
        )
        self.folded = Counter(
            "modeltrack_label_values_folded",
            "Label values folded into __other__ by the cardinality cap.",
            ("label",),
            registry=r,
        )
        # multiprocess_mode only matters with --workers (PROMETHEUS_MULTIPROC_DIR): sum live workers, worst store.
        self.queue_depth = Gauge(
            "modeltrack_queue_depth", "Events waiting in the pipeline queue.", registry=r, multiprocess_mode="livesum"
        )
        self.queue_capacity = Gauge(
            "modeltrack_queue_capacity",
            "Pipeline queue bound (overflow spools).",
            registry=r,
            multiprocess_mode="livesum",
        )
        self.store_up = Gauge(
            "modeltrack_store_up", "1 when the last store write succeeded.", registry=r, multiprocess_mode="livemin"
        )
        self.batches = Counter("modeltrack_batches_written", "Batches written to the store.", registry=r)
        self.events_written = Counter("modeltrack_events_written", "Events written to the store.", registry=r)
        self.batch_size = Histogram(
            "modeltrack_batch_size", "Events per written batch.", buckets=(1, 10, 50, 100, 250, 500, 1000), registry=r
        )
        self.flush_latency = Histogram(
            "modeltrack_flush_duration_seconds",
            "Time to write one batch.",
            buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 30),
            registry=r,
        )
        self.write_errors = Counter("modeltrack_store_write_errors", "Failed batch writes.", ("type",), registry=r)
        self.retries = Counter("modeltrack_store_retries", "Batch write retries.", registry=r)
        self.spooled = Counter("modeltrack_events_spooled", "Events written to the local spool.", registry=r)
        self.replayed = Counter("modeltrack_events_replayed", "Events replayed from the spool.", registry=r)
        self.dropped = Counter("modeltrack_events_dropped", "Events lost (spool unwritable).", registry=r)
        self.journal_errors = Counter(
            "modeltrack_journal_write_errors", "Events that could not be journaled (not crash-safe).", registry=r
        )
        self.dead_lettered = Counter("modeltrack_events_dead_lettered", "Events rejected by the store.", registry=r)
        self.cap_model = LabelCap(label_cap, self.folded, "model")
        self.cap_team = LabelCap(label_cap, self.folded, "team")
        self.cap_app = LabelCap(label_cap, self.folded, "app")
        self.cap_feature = LabelCap(label_cap, self.folded, "feature")
        self.cap_endpoint = LabelCap(label_cap, self.folded, "endpoint")
        self._children: dict[tuple[Any, ...], Any] = {}

    def _child(self, metric: Any, *labels: str) -> Any:
        """``metric.labels(...)`` validates and hashes on every call; the children are cached here instead.
        The cache is bounded because every label value went through a ``LabelCap``."""
        key = (id(metric), *labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child

    def observe(self, ev: CostEvent, overhead_s: float, endpoint_kind: str, savings_usd: float = 0.0) -> None:
        model = self.cap_model(ev.model or "unknown")
        labels = (ev.provider, model, self.cap_team(ev.team), self.cap_app(ev.app), self.cap_feature(ev.feature))
        status_class = f"{ev.status // 100}xx" if ev.status else "error"
        stream = "true" if ev.stream else "false"
        child = self._child
        child(self.requests, *labels, self.cap_endpoint(endpoint_kind), status_class, stream).inc()
        for kind, n in (
            ("input", ev.input_tokens),
            ("output", ev.output_tokens),
            ("cache_read", ev.cache_read_tokens),
            ("cache_write", ev.cache_write_tokens),
            ("reasoning", ev.reasoning_tokens),
        ):
            if n:
                child(self.tokens, *labels, kind).inc(n)
        if ev.cost_usd:
            child(self.cost, *labels).inc(ev.cost_usd)
        if savings_usd:
            child(self.cache_savings, *labels).inc(savings_usd)
        if ev.cost_source == "unpriced":
            child(self.unpriced, ev.provider, model).inc()
        child(self.duration, ev.provider, stream).observe(ev.latency_ms / 1000.0)
        if ev.ttft_ms is not None:
            child(self.ttft, ev.provider).observe(ev.ttft_ms / 1000.0)
        child(self.overhead, ev.provider).observe(max(overhead_s, 0.0))
