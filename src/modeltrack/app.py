"""The service: wiring (pipeline, pricing, providers, upstream pools, proxy), the few endpoints of its own
(``/healthz``, ``/readyz``, ``/metrics``), listening sockets (plain or TLS), and graceful shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import hmac
import logging
import os
import signal
import time
from collections.abc import Callable
from typing import Any, Final

import orjson
from prometheus_client import CONTENT_TYPE_LATEST

from . import native
from .access import ClientTokens
from .accounting import Recorder
from .accounts import KeyRing, open_accounts
from .accounts.credentials import ProviderKeys
from .batches import BatchRegistry
from .config import ConfigError, Settings, checks
from .controls import Controls, ControlsSpec
from .controls.ratelimit import RateLimiter, open_rate_ledger
from .events import CostEvent
from .http.coalesce import Coalescer
from .http.egress import EgressError, route_for
from .http.limits import Limits
from .http.message import Request
from .http.server import Connection
from .http.tls import server_tls_context, tls_context
from .http.upstream_pool import Origin, UpstreamPool
from .metrics import WORKER_FOLD_SECONDS, Metrics, exposition
from .otel import MetricsMirror, SpanExport
from .pipeline import Pipeline
from .pricing import Pricing
from .providers import Router, build_providers
from .proxy import Proxy
from .sinks import ProcessWriter, Sink, describe_store, open_sink

log: Final = logging.getLogger("modeltrack")

_METRICS_TYPE: Final = CONTENT_TYPE_LATEST.encode()
READY_PING_SECONDS: Final = 3.0  # /readyz answers within this even if the store hangs (probes have their own timeouts)


class ModelTrack:
    """One proxy process: owns the pipeline, the upstream pools and every client connection."""

    def __init__(self, settings: Settings, pricing: Pricing | None = None) -> None:
        self.settings = settings
        checks.proxy(settings)
        self.metrics = Metrics(label_cap=settings.metrics_label_cap, by_org=settings.multi_tenant)
        pricing = pricing or Pricing.load(settings.pricing_file or None)
        sink = open_sink(settings.store)
        self.controls: Controls | None = None
        if settings.controls_file:
            self.controls = Controls.from_file(
                settings.controls_file,
                store_url=settings.store,
                sink=sink,
                pricing=pricing,
                metrics=self.metrics,
                egress=settings.egress,
                multi_tenant=settings.multi_tenant,
            )
        accounts = open_accounts(settings.store, sink)
        if self.controls is None and accounts is not None:
            # Budgets can be created at runtime (admin API, CLI): the controls run with no file, so they apply
            # within the keys' refresh period, without a restart. With no rule they cost one dict lookup.
            self.controls = Controls(
                ControlsSpec(),
                store_url=settings.store,
                sink=sink,
                pricing=pricing,
                metrics=self.metrics,
                egress=settings.egress,
            )
        self.spans: SpanExport | None = None
        self.metrics_mirror: MetricsMirror | None = None
        self._fold_task: asyncio.Task[None] | None = None
        if settings.otel is not None:
            self.spans = SpanExport(settings.otel, self.metrics)
            if settings.otel_metrics:
                self.metrics_mirror = MetricsMirror(settings.otel, self.metrics.registry)
        writer: Sink = sink
        if settings.store_writer == "process":
            writer = ProcessWriter(
                sink, settings.store, backlog=lambda: self.pipeline.depth, behind_after=4 * settings.batch_size
            )
        self.pipeline = Pipeline.from_settings(writer, self.metrics, settings, on_stored=self._on_stored())
        self.providers = build_providers(
            settings.base_urls,
            settings.inject_stream_usage,
            settings.azure_deployments,
            settings.vertex(),
            settings.azure_resources,
            settings.bedrock(),
        )
        self.limits = Limits(settings.max_concurrent_requests, settings.max_buffered_body_bytes)
        self.coalescer = Coalescer(self.limits)  # one loop turn's writes leave together (http.coalesce)
        self.pools = self._pools(settings)
        self.batches = BatchRegistry(sink)
        self.recorder = Recorder(self.pipeline, self.metrics, pricing, settings.access_log, self.batches)
        self.keyring = (
            KeyRing(
                accounts,
                settings.keys_refresh_seconds,
                settings.keys_on_store_error,
                multi_tenant=settings.multi_tenant,
            )
            if accounts is not None
            else None
        )
        if self.keyring is not None and self.controls is not None:
            self.keyring.on_budgets = self.controls.set_store_budgets
        self.ratelimiter = RateLimiter(open_rate_ledger(settings.store, sink))
        self.proxy = Proxy(
            Router(self.providers),
            self.recorder,
            self.pools,
            settings,
            client_tokens=ClientTokens.from_setting(settings.client_tokens),
            controls=self.controls,
            keyring=self.keyring,
            ratelimiter=self.ratelimiter,
            provider_keys=ProviderKeys.from_file(settings.provider_keys_file, tuple(self.providers)),
        )
        self.server_tls = server_tls_context(settings.tls_cert, settings.tls_key)
        self.metrics.queue_capacity.set(settings.queue_size)
        self.connections: set[Connection] = set()
        self.servers: list[asyncio.Server] = []
        self.draining = False

    def _pools(self, settings: Settings) -> dict[str, UpstreamPool]:
        tls = tls_context(settings.ca_bundle)
        variables = settings.egress
        pools = {}
        for provider in self.providers.values():
            for name, url in provider.origins().items():
                origin = Origin.parse(url)
                try:
                    egress = route_for(origin.scheme, origin.host, origin.port, variables)
                except EgressError as exc:
                    raise ConfigError(str(exc)) from None
                pools[name] = UpstreamPool(
                    origin,
                    tls,
                    settings.connect_timeout,
                    max_connections=settings.upstream_max_connections,
                    max_idle=settings.upstream_max_idle,
                    egress=egress,
                    coalescer=self.coalescer,
                )
        return pools

    async def start(self) -> None:
        await self.pipeline.start()
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            self._fold_task = asyncio.create_task(
                self.metrics.fold_every(WORKER_FOLD_SECONDS), name="modeltrack-metrics-fold"
            )
        if self.keyring is not None:
            await self.keyring.start()
        self.ratelimiter.start()
        if self.controls is not None:
            await self.controls.start()

    def reload_controls(self) -> None:
        """SIGHUP: load the controls file again (the old rules stay if the new file is invalid)."""
        if self.controls is not None and self.controls.reload():
            self.proxy.reload_tokens()

    def _controls_summary(self) -> str:
        c = self.controls
        if c is None:
            return "off"
        if s_file := self.settings.controls_file:
            return f"{c.spec.summary()} from {s_file}"
        return (
            f"store budgets only ({len(c.store_budgets)})" if c.store_budgets else "off (no file; store budgets apply)"
        )

    def summary(self) -> str:
        """What is in effect, for the start-up line: never a secret (tokens show as set/unset, URLs without
        credentials)."""
        s = self.settings
        scheme = "https" if self.server_tls else "http"
        upstreams = []
        for name in sorted(self.pools):
            pool = self.pools[name]
            via = f" via {pool.egress.describe()}" if pool.egress is not None else ""
            upstreams.append(f"{name}={pool.origin.url}{pool.origin.base_path}{via}")
        parts = [
            f"listen={scheme}://{s.host}:{s.port}",
            f"metrics={'port ' + str(s.metrics_port) if s.metrics_port else 'main port'}"
            + (" (token)" if s.metrics_token else ""),
            f"ui_port={s.ui_port}",
            f"workers={s.workers}",
            f"compiled={len(native.compiled())} modules (scripts/compile)",
            f"store={describe_store(s.store)}",
            f"journal={'on' if s.journal else 'off'}",
            f"client_tokens={'on' if self.proxy.gate.client_tokens else 'off'}",
            f"controls={self._controls_summary()}",
            f"access_log={'on' if s.access_log else 'off'}",
            "upstreams=" + ", ".join(upstreams),
        ]
        return " ".join(parts)

    # -- serving ------------------------------------------------------------------------------------------
    def _connection(self, handler: Any) -> Connection:
        conn = Connection(
            handler,
            max_body=self.settings.max_body_bytes,
            header_timeout=self.settings.header_timeout,
            limits=self.limits,
            on_close=self.connections.discard,
            coalescer=self.coalescer,
        )
        self.connections.add(conn)
        return conn

    async def listen(
        self, host: str, port: int, *, metrics_only: bool = False, reuse_port: bool = False
    ) -> asyncio.Server:
        """Bind and listen. ``reuse_port`` only for ``--workers N`` (the workers share the port on purpose); a
        single process never shares one, so a second ``modeltrack serve`` on a busy port fails here."""
        handler = self.handle_metrics_port if metrics_only else self.handle
        server = await asyncio.get_running_loop().create_server(
            lambda: self._connection(handler),
            host,
            port,
            reuse_port=reuse_port or None,
            backlog=1024,
            ssl=self.server_tls,
        )
        self.servers.append(server)
        return server

    async def handle(self, req: Request, conn: Connection) -> None:
        if self.draining:
            conn.keep_alive_off()
        target = req.target
        if req.method == "GET" and target[:2] != b"//":
            path = target.partition(b"?")[0]
            if path == b"/healthz":
                return conn.respond(200, b'{"status":"ok"}')
            if path == b"/readyz":
                return await self.readyz(conn)
            if path == b"/metrics" and not self.settings.metrics_port:
                return self.metrics_view(req, conn)
        await self.proxy.handle(req, conn)

    async def handle_metrics_port(self, req: Request, conn: Connection) -> None:
        if req.method == "GET" and req.target.partition(b"?")[0] == b"/metrics":
            return self.metrics_view(req, conn)
        conn.respond(404, b'{"error":{"type":"not_found","message":"Only /metrics is served on this port."}}')

    async def readyz(self, conn: Connection) -> None:
        settings, pipeline = self.settings, self.pipeline
        problems = []
        if pipeline.depth > settings.queue_size * settings.ready_queue_fraction:
            problems.append("queue_saturated")
        failing = pipeline.failing_since
        if failing is not None and time.monotonic() - failing > settings.ready_store_fail_seconds:
            problems.append("store_failing")
        try:
            async with asyncio.timeout(READY_PING_SECONDS):
                reachable = await pipeline.sink.ping()
        except TimeoutError:
            reachable = False
        if not reachable:
            problems.append("store_unreachable")
        body: dict[str, Any] = {"status": "ok" if not problems else "unready", "queue_depth": pipeline.depth}
        if problems:
            body["problems"] = problems
        conn.respond(200 if not problems else 503, orjson.dumps(body))

    def metrics_view(self, req: Request, conn: Connection) -> None:
        token = self.settings.metrics_token
        if token:
            given = req.header(b"authorization") or b""
            if not hmac.compare_digest(given, f"Bearer {token}".encode()):
                return conn.respond(401, b'{"error":{"type":"unauthorized","message":"metrics need a bearer token"}}')
        self.metrics.queue_depth.set(self.pipeline.depth)
        self.metrics.store_up.set(0 if self.pipeline.failing_since is not None else 1)
        conn.respond(200, exposition(self.metrics), _METRICS_TYPE)

    # -- shutdown -----------------------------------------------------------------------------------------
    def stop_accepting(self) -> None:
        """Close the listeners and end keep-alive: from here on no new request starts. Idempotent, and called
        from the signal handler itself, so a SIGTERM that comes while :meth:`start` still reads the store (the
        port already answers then) stops new connections at once rather than after the start-up."""
        self.draining = True
        for server in self.servers:
            server.close()
        for conn in list(self.connections):
            conn.keep_alive_off()

    async def close(self, grace: float | None = None) -> None:
        """Stop accepting, let in-flight requests (streams included) finish for up to ``grace`` seconds, then cut
        what is left (their events are recorded as ``shutdown``), drain the queue to the store, and try
        to store what is in the spool too (on Cloud Run, /tmp is memory: a spool left there is lost)."""
        grace = self.settings.shutdown_grace if grace is None else grace
        self.stop_accepting()
        if self.proxy.inflight:
            self.proxy.drained = asyncio.Event()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.proxy.drained.wait(), grace)
        self.proxy.cut_reason = "shutdown"  # what is cut from here on is not the client's doing
        for conn in list(self.connections):
            conn.abort()
        await asyncio.sleep(0.1)  # let the cancelled handlers record their events
        for pool in self.pools.values():
            pool.close()
        if self.controls is not None:
            await self.controls.close()
        if self.keyring is not None:
            await self.keyring.close()
        await self.ratelimiter.close()
        await self.batches.drain()
        await self.pipeline.close(grace=max(self.settings.shutdown_grace, 1.0))
        if self.spans is not None:
            await asyncio.to_thread(self.spans.close)
        if self.metrics_mirror is not None:
            await asyncio.to_thread(self.metrics_mirror.close)
        if self._fold_task is not None:
            self._fold_task.cancel()  # (it folds once more as it ends: a worker's last requests are counted)
            with contextlib.suppress(asyncio.CancelledError):
                await self._fold_task

    def _on_stored(self) -> Callable[[list[CostEvent]], None] | None:
        """Who hears of each batch the store accepted: the budgets (their spend between two reads of the store)
        and the span export (spans equal to the stored events)."""
        hooks = [h for h in (self.controls.on_stored if self.controls else None, self.spans and self.spans.offer) if h]
        if len(hooks) < 2:
            return hooks[0] if hooks else None

        def both(events: list[CostEvent]) -> None:
            for hook in hooks:
                hook(events)

        return both


async def serve(settings: Settings, announce: Any = None) -> int:
    """Run until SIGTERM/SIGINT, then shut down gracefully; a second signal spools the queue and exits at once.

    Graceful = stop accepting connections, let in-flight requests (streams included) finish for up to
    ``shutdown_grace`` seconds, drain the event queue to the store, spool what could not be written, exit 0.
    """
    app = ModelTrack(settings)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    received = 0

    def on_signal() -> None:
        nonlocal received
        received += 1
        if received == 1:
            log.info("signal received: draining (grace %.1fs); send again to exit at once", settings.shutdown_grace)
            app.stop_accepting()
            stop.set()
            return
        pipeline = app.pipeline
        n = pipeline.spool_queue()
        if pipeline.journal is not None:
            pipeline.journal.close()
        log.warning("second signal: spooled %d queued events, exiting now", n)
        logging.shutdown()
        os._exit(0)

    # Signals first: from the moment the port answers, a SIGTERM means "drain", never the default "die".
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal)
    loop.add_signal_handler(signal.SIGHUP, app.reload_controls)
    reuse = settings.workers > 1
    # Bind next: a busy port fails before anything says "ready" (and before the store is opened).
    await app.listen(settings.host, settings.port, reuse_port=reuse)
    if settings.metrics_port:
        await app.listen(settings.host, settings.metrics_port, metrics_only=True, reuse_port=reuse)
    await app.start()
    # Everything allocated so far (price tables, provider plug-ins, metrics) lives as long as the process: move
    # it out of the collector's sight, so a full collection no longer walks it in the middle of a request.
    gc.collect()
    gc.freeze()
    log.info("modeltrack ready: %s", app.summary())
    if announce is not None:
        announce(app)
    await stop.wait()
    await app.close()
    log.info("shutdown complete")
    return 0
