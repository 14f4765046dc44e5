"""``modeltrack serve | events | pricing`` — the command-line contract from DESIGN.md."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Sequence

from . import __version__, logs
from .config import ConfigError, Settings, add_arguments
from .pricing import PricingError
from .sinks import StoreURLError


def _serve(args: argparse.Namespace) -> int:
    from .app import serve

    overrides = {k: v for k, v in vars(args).items() if k not in ("cmd", "func")}
    try:
        settings = Settings.load(overrides=overrides)
    except ConfigError as exc:
        print(f"modeltrack: configuration error: {exc}", file=sys.stderr)
        return 2
    logs.setup(settings.log_level)
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass

    if settings.workers > 1 and not os.environ.get("MODELTRACK_WORKER"):
        return _supervise(settings)

    def announce(app: object) -> None:
        scheme = "https" if settings.tls_cert else "http"
        print(
            f"modeltrack {__version__} listening on {scheme}://{settings.host}:{settings.port}",
            file=sys.stderr,
            flush=True,
        )

    try:
        return asyncio.run(serve(settings, announce))
    except (ConfigError, PricingError, StoreURLError) as exc:
        print(f"modeltrack: configuration error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"modeltrack: cannot listen on {settings.host}:{settings.port}: {exc.strerror}", file=sys.stderr)
        return 1


def _port_free(host: str, port: int) -> str | None:
    """None if ``host:port`` can be bound by a process that does not share it; else why not. The workers of
    ``--workers N`` share their port (SO_REUSEPORT), which would also let them join another server's group on a
    busy port without a word: this check, without SO_REUSEPORT, refuses that before any worker starts."""
    import socket

    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except OSError as exc:
        return str(exc.strerror or exc)
    for family, kind, proto, _, addr in infos[:1]:
        with socket.socket(family, kind, proto) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind(addr)
            except OSError as exc:
                return str(exc.strerror or exc)
    return None


def _supervise(settings: Settings) -> int:
    """``--workers N``: run N copies of this command on the same port (SO_REUSEPORT: the kernel spreads
    connections), with Prometheus multiprocess mode so /metrics on any worker reports the sum of all. Signals
    are forwarded; the exit code is the worst of the workers'."""
    import shutil
    import signal
    import subprocess
    import tempfile

    for port in (settings.port, settings.metrics_port):
        why = _port_free(settings.host, port) if port else None
        if why is not None:
            print(f"modeltrack: cannot listen on {settings.host}:{port}: {why}", file=sys.stderr)
            return 1
    metrics_dir = tempfile.mkdtemp(prefix="modeltrack-metrics-")
    env = {**os.environ, "MODELTRACK_WORKER": "1", "PROMETHEUS_MULTIPROC_DIR": metrics_dir}
    argv = [sys.executable, "-m", "modeltrack", *sys.argv[1:]]
    children = [subprocess.Popen(argv, env=env) for _ in range(settings.workers)]

    def forward(signum: int, _frame: object) -> None:
        for child in children:
            if child.poll() is None:
                child.send_signal(signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    try:
        codes = [child.wait() for child in children]
    finally:
        shutil.rmtree(metrics_dir, ignore_errors=True)
    return max((abs(c) for c in codes), default=0)


def _events(args: argparse.Namespace) -> int:
    from .sinks import open_sink

    store = args.store or os.environ.get("MODELTRACK_STORE") or Settings().store

    async def run() -> int:
        sink = open_sink(store)
        await sink.open()
        try:
            events = await sink.read(since=args.since, limit=args.limit)
        finally:
            await sink.close()
        out = sys.stdout.buffer
        for ev in events:
            out.write(ev.to_json() + b"\n")
        out.flush()
        return 0

    return asyncio.run(run())


def _pricing(args: argparse.Namespace) -> int:
    from . import pricing

    return pricing.cli(args)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="modeltrack", description="LLM cost-tracking proxy.")
    parser.add_argument("--version", action="version", version=__version__)
    sub = parser.add_subparsers(dest="cmd")

    serve = sub.add_parser("serve", help="run the proxy (default)")
    add_arguments(serve)
    serve.set_defaults(func=_serve)

    events = sub.add_parser("events", help="print stored cost events as JSON Lines (newest last)")
    events.add_argument("--store", help="store URL (default: $MODELTRACK_STORE)")
    events.add_argument("--since", help="RFC 3339 timestamp, e.g. 2026-11-01T00:00:00Z")
    events.add_argument("--limit", type=int, help="print only the newest N events")
    events.set_defaults(func=_events)

    pr = sub.add_parser("pricing", help="inspect and regenerate price data")
    prs = pr.add_subparsers(dest="pricing_cmd", required=True)
    show = prs.add_parser("show", help="print the resolved prices for a model")
    show.add_argument("model")
    show.add_argument("--provider", help="modeltrack provider name (openai, anthropic, gemini, bedrock, ...)")
    prs.add_parser("check", help="validate the price data and MODELTRACK_PRICING_FILE overrides")
    upd = prs.add_parser("update", help="regenerate pricing/prices.json from the installed genai-prices")
    upd.add_argument("--output", help="where to write (default: pricing/prices.json)")
    pr.set_defaults(func=_pricing)

    args = parser.parse_args(argv)
    if args.cmd is None:
        args = parser.parse_args(["serve", *(argv or sys.argv[1:])])
    return int(args.func(args))


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
