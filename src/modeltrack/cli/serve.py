"""``modeltrack serve``: the proxy, one process or ``--workers N`` sharing the port."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys
from typing import Any

from .. import __version__, logs
from ..config import ConfigError, Settings, add_arguments, provider_epilog
from ..controls.parse import load as load_controls
from ..controls.spec import ControlsError
from ..pricing import PricingError
from ..sinks import StoreURLError


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "serve",
        help="run the proxy (the default command)",
        epilog=provider_epilog(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_arguments(p, "serve")
    p.set_defaults(func=run_serve)


def run_serve(args: argparse.Namespace) -> int:
    from .. import native

    if changed := native.stale():
        print(f"modeltrack: {native.stale_message(changed)}", file=sys.stderr)
        return 2
    overrides = {k: v for k, v in vars(args).items() if k not in ("cmd", "func", "sub")}
    try:
        settings = Settings.load(overrides=overrides)
        if settings.controls_file:
            load_controls(settings.controls_file)  # refused here, before a worker starts or a port is bound
        if settings.ui:
            from ..access import ClientTokens
            from ..ui.auth import UIAuth
            from ..ui.exposure import check_exposure

            check_exposure(
                settings.ui_host, UIAuth(ClientTokens.from_setting(settings.ui_tokens, "MODELTRACK_UI_TOKENS"))
            )
    except (ConfigError, ControlsError) as exc:
        print(f"modeltrack: configuration error: {exc}", file=sys.stderr)
        return 2
    logs.setup(settings.log_level)
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass

    dashboard = None
    if settings.ui and not os.environ.get("MODELTRACK_WORKER"):
        dashboard = _start_dashboard(settings)
        if dashboard is None:
            return 1
    try:
        return _serve(settings)
    finally:
        if dashboard is not None and dashboard.poll() is None:
            dashboard.terminate()
            dashboard.wait(10)


def _start_dashboard(settings: Settings) -> Any:
    """``--ui`` (what ``make run`` uses): ``modeltrack ui`` in a child process, on the same store and settings,
    stopped with the proxy. A process of its own, so dashboard queries never take CPU from the request path.

    The dashboard is up (its ``/healthz`` answers) before the proxy starts or anything says ready; a busy port
    or a dashboard that exits is an error, as the proxy's own busy port is, and None is returned
    (tests/test_server.py::test_a_busy_dashboard_port_fails_before_saying_ready)."""
    import subprocess
    import time
    import urllib.request

    why = _port_free(settings.ui_host, settings.ui_port)
    if why is not None:
        print(f"modeltrack: cannot listen on {settings.ui_host}:{settings.ui_port} (dashboard): {why}", file=sys.stderr)
        return None
    # The settings as this process resolved them (flags included), through the environment: tokens never
    # appear on a command line that `ps` shows.
    passed = {
        "STORE": settings.store,
        "PORT": str(settings.port),
        "UI_HOST": settings.ui_host,
        "UI_PORT": str(settings.ui_port),
        "UI_TOKENS": settings.ui_tokens,
        "ADMIN_TOKENS": settings.admin_tokens,
        "OIDC_ISSUER": settings.oidc_issuer,
        "OIDC_CLIENT_ID": settings.oidc_client_id,
        "OIDC_CLIENT_SECRET": settings.oidc_client_secret,
        "OIDC_REDIRECT_URL": settings.oidc_redirect_url,
        "CONTROLS_FILE": settings.controls_file,
        "PRICING_FILE": settings.pricing_file,
        "LOG_LEVEL": settings.log_level,
    }
    env = {**os.environ, **{f"MODELTRACK_{k}": v for k, v in passed.items()}}
    child = subprocess.Popen([sys.executable, "-m", "modeltrack", "ui"], env=env)
    host = f"[{settings.ui_host}]" if ":" in settings.ui_host else settings.ui_host
    url = f"http://{host}:{settings.ui_port}/healthz"
    deadline = time.monotonic() + 30
    while child.poll() is None and time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=1) as r:
                if r.status == 200:
                    print(f"modeltrack dashboard on http://{host}:{settings.ui_port}", file=sys.stderr, flush=True)
                    return child
        except OSError:
            time.sleep(0.05)
    if child.poll() is None:
        child.terminate()
        child.wait(10)
    print(f"modeltrack: the dashboard did not start on {settings.ui_host}:{settings.ui_port}", file=sys.stderr)
    return None


# The most open files a process may ask for on Linux by default (/proc/sys/fs/nr_open), for an unlimited hard limit.
_NR_OPEN = 1 << 20


def raise_open_files_limit() -> None:
    """Raise this process's soft limit on open files to its hard limit, as Go's runtime does at start. Why: a
    stream holds two sockets, the pool keeps up to ``MODELTRACK_UPSTREAM_MAX_IDLE`` idle
    ones per origin, and many systems start a service with a soft limit of 1,024 (and a hard one far above it),
    where a burst would make ``accept`` fail. The hard limit is the administrator's, and is left as it is. The
    workers of ``--workers N`` inherit the raised limit.

    Held by tests/test_server.py::test_the_open_files_limit_is_raised_to_the_hard_limit."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = _NR_OPEN if hard == resource.RLIM_INFINITY else hard
    if soft != resource.RLIM_INFINITY and soft < want:
        # Refused in a sandbox, or where nr_open is below the hard limit: the soft limit then stays as it was.
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))


def _serve(settings: Settings) -> int:
    from ..app import serve

    raise_open_files_limit()
    if settings.workers > 1 and not os.environ.get("MODELTRACK_WORKER"):
        return _supervise(settings)

    listening = False

    def announce(app: object) -> None:
        nonlocal listening
        listening = True
        scheme = "https" if settings.tls_cert else "http"
        print(
            f"modeltrack {__version__} listening on {scheme}://{settings.host}:{settings.port}",
            file=sys.stderr,
            flush=True,
        )

    try:
        return asyncio.run(serve(settings, announce))
    except (ConfigError, PricingError, StoreURLError, ControlsError) as exc:
        print(f"modeltrack: configuration error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        if listening:  # not a bind failure: say what it was, without its text (it can name paths or peers)
            print(f"modeltrack: stopped by an error ({type(exc).__name__}: {exc.strerror})", file=sys.stderr)
        else:
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
