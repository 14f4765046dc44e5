"""``modeltrack ui``: the JSON API and the dashboard (``make run`` starts it with the proxy: ``serve --ui``)."""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Any

from .. import logs
from ..config import ConfigError, Settings, add_arguments


def add_parser(sub: Any) -> None:
    p = sub.add_parser("ui", help="serve the API (/api/v1/) and the dashboard (/)")
    add_arguments(p, "ui")
    p.set_defaults(func=run_ui)


def run_ui(args: argparse.Namespace) -> int:
    from ..ui import serve_ui

    overrides = {k: v for k, v in vars(args).items() if k not in ("cmd", "func", "sub")}
    try:
        settings = Settings.load(overrides=overrides)
    except ConfigError as exc:
        print(f"modeltrack: configuration error: {exc}", file=sys.stderr)
        return 2
    logs.setup(settings.log_level)
    try:
        return asyncio.run(serve_ui(settings))
    except ConfigError as exc:
        print(f"modeltrack: configuration error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"modeltrack: cannot listen on {settings.ui_host}:{settings.ui_port}: {exc.strerror}", file=sys.stderr)
        return 1
