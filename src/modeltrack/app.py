"""aiohttp application factory: routes, the upstream sessions, the pipeline, startup and graceful shutdown."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import os
import signal
import socket
import ssl
import time
from typing import Any

import aiohttp
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from .config import ConfigError, Settings
from .metrics import Metrics, exposition
from .pipeline import Pipeline
from .pricing import Pricing
from .providers import Router, build_providers
from .proxy import Proxy
from .sinks import open_sink

log = logging.getLogger("modeltrack")

SETTINGS: web.AppKey[Settings] = web.AppKey("settings", Settings)
PROXY: web.AppKey[Proxy] = web.AppKey("proxy", Proxy)
PIPELINE: web.AppKey[Pipeline] = web.AppKey("pipeline", Pipeline)
METRICS: web.AppKey[Metrics] = web.AppKey("metrics", Metrics)
SESSIONS: web.AppKey[dict[str, aiohttp.ClientSession]] = web.AppKey("sessions", dict)


def _session(settings: Settings, tls: ssl.SSLContext) -> aiohttp.ClientSession:
    """One long-lived session per upstream family: its own keep-alive pool, no cookie jar (cookies from one
    caller's upstream response must never be replayed on another caller's request), no env proxies, and
    ``auto_decompress=False`` so compressed bodies pass through byte-for-byte."""
    connector = aiohttp.TCPConnector(
        limit=0,
        limit_per_host=0,
        ttl_dns_cache=300,
        keepalive_timeout=60,
        enable_cleanup_closed=True,
        ssl=tls,
    )
    timeout = aiohttp.ClientTimeout(
        total=None,
        connect=settings.connect_timeout,
        sock_connect=settings.connect_timeout,
        sock_read=None,  # streams: the proxy's own IdleWatchdog (one timer per request, not one per chunk)
    )
    return aiohttp.ClientSession(
        connector=connector,
        timeout=timeout,
        auto_decompress=False,
        cookie_jar=aiohttp.DummyCookieJar(),
        trust_env=False,
        requote_redirect_url=False,
        read_bufsize=2**16,
    )


def load_client_tokens(spec: str) -> frozenset[bytes]:
    """``tok1,tok2`` (plain tokens) or ``@/path/file`` with one sha256 hex digest per line (``#`` comments)."""
    if not spec:
        return frozenset()
    if not spec.startswith("@"):
        return frozenset(hashlib.sha256(t.strip().encode()).digest() for t in spec.split(",") if t.strip())
    digests = set()
    with open(spec[1:]) as f:
        for line in f:
            line = line.split("#", 1)[0].strip()
            if not line:
                continue
            try:
                raw = bytes.fromhex(line)
            except ValueError:
                raw = b""
            if len(raw) != 32:
                raise ConfigError("MODELTRACK_CLIENT_TOKENS file: every line must be a sha256 hex digest")
            digests.add(raw)
    return frozenset(digests)


def create_app(settings: Settings, pricing: Pricing | None = None) -> web.Application:
    app = web.Application(client_max_size=settings.max_body_bytes)
    metrics = Metrics(label_cap=settings.metrics_label_cap)
    pipeline = Pipeline(
        open_sink(settings.store),
        metrics,
        spool_dir=settings.spool_dir,
        batch_size=settings.batch_size,
        flush_interval=settings.flush_interval_ms / 1000.0,
        max_queue=settings.queue_size,
        journal=settings.journal,
    )
    providers = build_providers(settings.base_urls, settings.inject_stream_usage, settings.azure_deployments)
    sessions: dict[str, aiohttp.ClientSession] = {}
    proxy = Proxy(
        Router(providers), pipeline, metrics, pricing or Pricing.load(settings.pricing_file or None), sessions
    )
    proxy.client_tokens = load_client_tokens(settings.client_tokens)
    proxy.body_timeout = settings.body_timeout
    proxy.read_timeout = settings.read_timeout
    proxy.read_timeouts = dict(settings.read_timeouts)
    app[SETTINGS] = settings
    app[PROXY] = proxy
    app[PIPELINE] = pipeline
    app[METRICS] = metrics
    app[SESSIONS] = sessions

    async def startup(app: web.Application) -> None:
        # Verification is always on; a custom bundle adds to (never replaces) the system store.
        tls = ssl.create_default_context()
        if settings.ca_bundle:
            tls.load_verify_locations(cafile=settings.ca_bundle)
        for name in providers:
            sessions[name] = _session(settings, tls)
        await pipeline.start()
        log.info("modeltrack ready: store=%s providers=%s", pipeline.sink.name, ",".join(sorted(providers)))

    async def cleanup(app: web.Application) -> None:
        await asyncio.gather(*(s.close() for s in sessions.values()), return_exceptions=True)
        await pipeline.close(grace=max(settings.shutdown_grace, 1.0))

    app.on_startup.append(startup)
    app.on_cleanup.append(cleanup)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    metrics.queue_capacity.set(settings.queue_size)
    if not settings.metrics_port:
        app.router.add_get("/metrics", metrics_view)
    app.router.add_route("*", "/{tail:.*}", proxy.handle)
    return app


def metrics_app(main: web.Application) -> web.Application:
    """/metrics alone, for ``MODELTRACK_METRICS_PORT`` (scrape on a port the LLM clients cannot reach)."""
    app = web.Application()
    app[SETTINGS] = main[SETTINGS]
    app[METRICS] = main[METRICS]
    app[PIPELINE] = main[PIPELINE]
    app.router.add_get("/metrics", metrics_view)
    return app


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    pipeline = request.app[PIPELINE]
    settings = request.app[SETTINGS]
    problems = []
    if pipeline.depth > settings.queue_size * settings.ready_queue_fraction:
        problems.append("queue_saturated")
    failing = pipeline.failing_since
    if failing is not None and time.monotonic() - failing > settings.ready_store_fail_seconds:
        problems.append("store_failing")
    if not await pipeline.sink.ping():
        problems.append("store_unreachable")
    body: dict[str, Any] = {"status": "ok" if not problems else "unready", "queue_depth": pipeline.depth}
    if problems:
        body["problems"] = problems
    return web.json_response(body, status=200 if not problems else 503)


async def metrics_view(request: web.Request) -> web.Response:
    token = request.app[SETTINGS].metrics_token
    if token:
        given = request.headers.get("Authorization", "")
        if not hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
            return web.json_response(
                {"error": {"type": "unauthorized", "message": "metrics need a bearer token"}}, status=401
            )
    metrics = request.app[METRICS]
    pipeline = request.app[PIPELINE]
    metrics.queue_depth.set(pipeline.depth)
    metrics.store_up.set(0 if pipeline.failing_since is not None else 1)
    resp = web.Response(body=exposition(metrics.registry))
    resp.headers["Content-Type"] = CONTENT_TYPE_LATEST
    return resp


async def serve(settings: Settings, announce: Any = None) -> int:
    """Run until SIGTERM/SIGINT, then shut down gracefully; a second signal spools the queue and exits at once.

    Graceful = stop accepting connections, let in-flight requests (streams included) finish for up to
    ``shutdown_grace`` seconds, drain the event queue to the store, spool what could not be written, exit 0.
    """
    app = create_app(settings)
    # aiohttp's keep-alive timer also runs while a request's headers trickle in, so it bounds slowloris clients.
    runner = web.AppRunner(
        app,
        handler_cancellation=True,
        access_log=None,
        shutdown_timeout=settings.shutdown_grace,
        keepalive_timeout=settings.header_timeout,
    )
    await runner.setup()
    site = web.TCPSite(
        runner, settings.host, settings.port, reuse_port=hasattr(socket, "SO_REUSEPORT") or None, backlog=1024
    )
    await site.start()
    metrics_runner = None
    if settings.metrics_port:
        metrics_runner = web.AppRunner(metrics_app(app), access_log=None)
        await metrics_runner.setup()
        await web.TCPSite(metrics_runner, settings.host, settings.metrics_port, reuse_port=True).start()
    if announce is not None:
        announce()
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    received = 0

    def on_signal() -> None:
        nonlocal received
        received += 1
        if received == 1:
            log.info("signal received: draining (grace %.1fs); send again to exit at once", settings.shutdown_grace)
            stop.set()
            return
        pipeline = app[PIPELINE]
        n = pipeline.spool_queue()
        if pipeline.journal is not None:
            pipeline.journal.close()
        log.warning("second signal: spooled %d queued events, exiting now", n)
        logging.shutdown()
        os._exit(0)

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal)
    await stop.wait()
    await runner.cleanup()
    if metrics_runner is not None:
        await metrics_runner.cleanup()
    log.info("shutdown complete")
    return 0
