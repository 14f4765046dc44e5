"""All Prometheus instruments, in one place, on a registry owned by the app (so tests can run many apps).

Label values are bounded: each attribution label keeps at most ``label_cap`` distinct values; later values are
folded into ``__other__`` and counted in ``modeltrack_label_values_folded_total`` (:mod:`modeltrack.labels`).

The per-request series (requests, tokens, cost, savings, the duration, overhead and TTFT histograms) are tallied
in plain lists (:mod:`modeltrack.tally`) and folded into prometheus-client's instruments when something reads
them (issue O): an instrument's ``inc`` takes a lock per call, eight calls a request. Every reader of the registry
sees the folded values (a :class:`~modeltrack.tally.FoldFirst` is the registry's first collector); with
``--workers`` each worker folds every ``WORKER_FOLD_SECONDS`` and before it exits, so another worker's scrape is at
most that far behind (tests/test_workers.py scrapes 0.5 s after its last request). The folded exposition is the
same, sample for sample, as observing each request directly
(tests/test_metrics.py::test_tallies_fold_into_the_same_exposition).

In hosted multi-tenant mode (``by_org``) the attribution series carry the request's ``org`` too: team names
repeat across orgs, and one org's ``ml`` team must not add up with another's
(tests/test_metrics.py::test_by_org_two_orgs_teams_of_one_name_stay_apart, tests/test_tenants.py).
"""

from __future__ import annotations

import os
import threading
from typing import TYPE_CHECKING, Any, Final

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest, multiprocess

from .labels import OTHER, LabelCap
from .tally import (
    COUNTED,
    DUR,
    DUR_BOUNDS,
    DURATION_BUCKETS,
    OVER,
    OVER_BOUNDS,
    OVERHEAD_BUCKETS,
    SLOTS,
    STATUS_CLASS,
    TTFT,
    TTFT_BOUNDS,
    TTFT_BUCKETS,
    FoldFirst,
    Series,
    fold_histogram,
    slot,
)

if TYPE_CHECKING:
    from .events import CostEvent

WORKER_FOLD_SECONDS: Final = 0.25


def exposition(metrics: Metrics) -> bytes:
    """The /metrics body: this process's registry, or — with ``--workers`` (``PROMETHEUS_MULTIPROC_DIR`` set) —
    every worker's values summed by prometheus-client's multiprocess collector."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        metrics.fold()  # this worker's own tallies, now; the others fold every WORKER_FOLD_SECONDS
        combined = CollectorRegistry()
        multiprocess.MultiProcessCollector(combined)  # type: ignore[no-untyped-call]
        return generate_latest(combined)
    return generate_latest(metrics.registry)


class Metrics:
    def __init__(self, label_cap: int = 100, registry: CollectorRegistry | None = None, by_org: bool = False) -> None:
        self.registry = registry or CollectorRegistry()
        self.by_org = by_org
        r = self.registry
        self._lock = threading.Lock()  # the tallies: written on the loop, folded by any reader's thread
        self._dirty: list[Series] = []
        r.register(FoldFirst(self.fold))  # first, so every collect() of the registry folds before it reads
        attr: tuple[str, ...] = ("provider", "model", "team", "app", "feature")
        if by_org:
            attr = ("org", *attr)
        self.requests = Counter(
            "modeltrack_requests", "Proxied requests.", (*attr, "endpoint", "status_class", "stream"), registry=r
        )
        self.tokens = Counter("modeltrack_tokens", "Tokens by kind.", (*attr, "kind"), registry=r)
        self.cost = Counter("modeltrack_cost_usd", "Cost in USD (priced requests only).", attr, registry=r)
        self.cache_savings = Counter(
            "modeltrack_cache_savings_usd",
            "USD not spent because ModelTrack's response cache answered (what the cached response cost).",
            attr,
            registry=r,
        )
        self.prompt_cache_savings = Counter(
            "modeltrack_prompt_cache_savings_usd",
            "USD saved by the provider's prompt-cache reads vs. uncached input.",
            attr,
            registry=r,
        )
        self.unpriced = Counter(
            "modeltrack_unpriced_requests", "Requests with usage but no known price.", ("provider", "model"), registry=r
        )
        self.duration = Histogram(
            "modeltrack_request_duration_seconds",
            "Total request time.",
            ("provider", "stream"),
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self.ttft = Histogram(
            "modeltrack_time_to_first_token_seconds",
            "Time to the first upstream body byte (streams).",
            ("provider",),
            buckets=TTFT_BUCKETS,
            registry=r,
        )
        self.overhead = Histogram(
            "modeltrack_proxy_overhead_seconds",
            "Request time not spent waiting on the upstream or the client.",
            ("provider",),
            buckets=OVERHEAD_BUCKETS,
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
        self.otel_spans = Counter(
            "modeltrack_otel_spans",
            "Spans for stored events, by outcome: exported, failed (the receiver refused or was down), dropped "
            "(the export queue was full: never waited for).",
            ("outcome",),
            registry=r,
        )
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
        # Spend controls (label values are names from the controls file: bounded by it).
        self.budget_blocked = Counter(
            "modeltrack_budget_blocked_requests", "Requests refused by a budget.", ("budget",), registry=r
        )
        self.budget_store_errors = Counter(
            "modeltrack_budget_store_errors",
            "Budget checks that could not reach the store, by what was done (fail open: admitted; closed: refused).",
            ("budget", "outcome"),
            registry=r,
        )
        self.routed = Counter(
            "modeltrack_routed_requests", "Requests a routing rule changed or blocked.", ("rule", "action"), registry=r
        )
        self.response_cache = Counter(
            "modeltrack_response_cache_requests",
            "Response-cache lookups and stores: hit, miss, stored, not_stored, error.",
            ("result",),
            registry=r,
        )
        self.response_cache_bytes = Gauge(
            "modeltrack_response_cache_bytes",
            "Bytes held by the in-memory response cache (bounded by the controls file's cache.max_bytes).",
            registry=r,
            multiprocess_mode="livesum",
        )
        self.websocket_open = Gauge(
            "modeltrack_websocket_sessions_open",
            "WebSocket tunnels (Realtime, Live) open now.",
            ("provider",),
            registry=r,
            multiprocess_mode="livesum",
        )
        self.websocket_closed = Counter(
            "modeltrack_websocket_sessions_closed",
            "WebSocket tunnels closed, by reason: closed (by either side), client_disconnected, idle_timeout, "
            "message_too_large, websocket_protocol_error, budget_exceeded, rate_limited, shutdown.",
            ("provider", "reason"),
            registry=r,
        )
        self.webhooks = Counter(
            "modeltrack_webhook_deliveries", "Budget alerts and reports posted.", ("webhook", "result"), registry=r
        )
        self.controls_reloads = Counter(
            "modeltrack_controls_reloads",
            "Controls file reloads: ok, or invalid (old rules kept).",
            ("result",),
            registry=r,
        )
        self.cap_model = LabelCap(label_cap, self.folded, "model")
        self.cap_team = LabelCap(label_cap, self.folded, "team")
        self.cap_app = LabelCap(label_cap, self.folded, "app")
        self.cap_feature = LabelCap(label_cap, self.folded, "feature")
        self.cap_endpoint = LabelCap(label_cap, self.folded, "endpoint")
        self.cap_org = LabelCap(label_cap, self.folded, "org") if by_org else None
        self._children: dict[tuple[Any, ...], Any] = {}
        self._series: dict[tuple[Any, ...], Series] = {}

    def _child(self, metric: Any, *labels: str) -> Any:
        """``metric.labels(...)`` validates and hashes on every call; the children are cached here instead.
        The cache is bounded because every label value went through a ``LabelCap``."""
        key = (id(metric), *labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child

    def observe(self, ev: CostEvent, overhead_s: float, endpoint_kind: str, savings_usd: float = 0.0) -> None:
        """Count one event: :meth:`count`, with its values read off the event."""
        self.count(
            ev.provider,
            ev.model,
            ev.team,
            ev.app,
            ev.feature,
            ev.org,
            endpoint_kind,
            ev.status,
            ev.stream,
            (ev.input_tokens, ev.output_tokens, ev.cache_read_tokens, ev.cache_write_tokens, ev.reasoning_tokens),
            ev.cost_usd,
            savings_usd,
            ev.saved_usd,
            ev.cost_source == "unpriced",
            ev.latency_ms,
            ev.ttft_ms,
            overhead_s,
        )

    def count(
        self,
        provider: str,
        model: str | None,
        team: str | None,
        app: str | None,
        feature: str | None,
        org: str | None,
        endpoint_kind: str,
        status: int,
        stream: bool,
        tokens: tuple[int, int, int, int, int],
        cost_usd: float | None,
        savings_usd: float,
        saved_usd: float | None,
        unpriced: bool,
        latency_ms: float,
        ttft_ms: float | None,
        overhead_s: float,
    ) -> None:
        """Count one request, from the values its event is built of. The recorder passes them as it holds them:
        read back off the event (an interpreted class), they were ~22 generic attribute lookups a request, each
        through the type's attribute cache (bench/README.md, "twenty-fifth session"). ``tokens``: input, output,
        cache read, cache write, reasoning. The label work (sanitising, capping, child lookup) is done once per
        distinct label combination and cached; per request this adds to the series' tally (:meth:`fold` moves it
        into the instruments)."""
        status_class = (
            STATUS_CLASS[status // 100] if 100 <= status < 600 else (f"{status // 100}xx" if status else "error")
        )
        key: tuple[Any, ...]
        if self.by_org:
            key = (provider, model, team, app, feature, endpoint_kind, status_class, stream, org)
        else:
            key = (provider, model, team, app, feature, endpoint_kind, status_class, stream)
        series = self._series.get(key)
        if series is None:
            if len(self._series) >= 10_000:
                self.fold()
                self._series.clear()  # bounded: raw values (before capping) could be anything
            labels = (provider, model, team, app, feature, org)
            series = self._series[key] = self._make_series(labels, endpoint_kind, status_class, stream)
        for fold in series.folds:
            fold.inc()
        duration = latency_ms / 1000.0
        overhead = max(overhead_s, 0.0)
        inp, out, cache_read, cache_write, reasoning = tokens
        with self._lock:
            t = series.tally
            t[0] += 1
            if inp:
                t[1] += inp
            if out:
                t[2] += out
            if cache_read:
                t[3] += cache_read
            if cache_write:
                t[4] += cache_write
            if reasoning:
                t[5] += reasoning
            if cost_usd:
                t[6] += cost_usd
            if savings_usd:
                t[7] += savings_usd
            if saved_usd:
                t[8] += saved_usd
            if unpriced:
                t[9] += 1
            t[DUR + slot(DUR_BOUNDS, duration)] += 1
            t[OVER - 1] += duration
            t[OVER + slot(OVER_BOUNDS, overhead)] += 1
            t[TTFT - 1] += overhead
            if ttft_ms is not None:
                ttft = ttft_ms / 1000.0
                t[TTFT + slot(TTFT_BOUNDS, ttft)] += 1
                t[-1] += ttft
            if not series.dirty:
                series.dirty = True
                self._dirty.append(series)

    def fold(self) -> None:
        """Move every tally into its instruments (thread-safe; called by any reader of the registry)."""
        with self._lock:
            dirty, self._dirty = self._dirty, []
            for series in dirty:
                series.dirty = False
                t, series.tally = series.tally, [0.0] * SLOTS
                self._fold(series, t)

    def _fold(self, series: Series, t: list[float]) -> None:
        series.requests.inc(t[0])
        for i, name in enumerate(COUNTED[1:], 1):
            if t[i]:
                (series.children.get(name) or self._lazy(series, name)).inc(t[i])
        fold_histogram(series.duration, t, DUR, len(DUR_BOUNDS))
        fold_histogram(series.overhead, t, OVER, len(OVER_BOUNDS))
        if any(t[TTFT : TTFT + len(TTFT_BOUNDS)]):
            fold_histogram(series.children.get("ttft") or self._lazy(series, "ttft"), t, TTFT, len(TTFT_BOUNDS))

    async def fold_every(self, seconds: float) -> None:
        """With ``--workers``: fold every ``seconds`` (another worker's scrape reads this one's files)."""
        import asyncio

        try:
            while True:
                await asyncio.sleep(seconds)
                self.fold()
        finally:
            self.fold()

    def _lazy(self, series: Series, name: str) -> Any:
        """A child that not every event touches, created on its first use (a child is exported, as 0, from the
        moment it exists) and kept on the series."""
        labels = series.labels
        if name == "cost":
            child = self._child(self.cost, *labels)
        elif name == "savings":
            child = self._child(self.cache_savings, *labels)
        elif name == "prompt_savings":
            child = self._child(self.prompt_cache_savings, *labels)
        elif name == "unpriced":
            child = self._child(self.unpriced, series.provider, series.model)
        elif name == "ttft":
            child = self._child(self.ttft, series.provider)
        else:
            child = self._child(self.tokens, *labels, name)
        series.children[name] = child
        return child

    def _make_series(
        self,
        raw_labels: tuple[str, str | None, str | None, str | None, str | None, str | None],
        endpoint_kind: str,
        status_class: str,
        is_stream: bool,
    ) -> Series:
        provider, raw_model, raw_team, raw_app, raw_feature, raw_org = raw_labels
        caps = (self.cap_model, self.cap_team, self.cap_app, self.cap_feature, self.cap_endpoint)
        raw = (raw_model or "unknown", raw_team, raw_app, raw_feature, endpoint_kind)
        values = [cap.resolve(v) for cap, v in zip(caps, raw, strict=True)]
        folds = tuple(cap.folded for cap, v in zip(caps, values, strict=True) if v is OTHER)  # counted per event
        model, team, app, feature, endpoint = values
        labels: tuple[str, ...] = (provider, model, team, app, feature)
        if self.cap_org is not None:
            org = self.cap_org.resolve(raw_org)
            if org is OTHER:
                folds += (self.cap_org.folded,)
            labels = (org, *labels)
        stream = "true" if is_stream else "false"
        child = self._child
        return Series(
            requests=child(self.requests, *labels, endpoint, status_class, stream),
            duration=child(self.duration, provider, stream),
            overhead=child(self.overhead, provider),
            folds=folds,
            labels=labels,
            provider=provider,
            model=model,
            children={},
        )
