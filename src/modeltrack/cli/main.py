"""``modeltrack serve | ui | events | report | pricing | controls``: the command-line contract.

Every command that reads the store resolves it exactly as ``serve`` does (``--store``, else
``MODELTRACK_STORE``), never creates one, and answers a user's mistake with one line that says what to do.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from .. import __version__


def build_parser() -> argparse.ArgumentParser:
    from . import admin, controls, events, pricing, report, serve, ui

    parser = argparse.ArgumentParser(prog="modeltrack", description="LLM cost-tracking proxy.")
    parser.add_argument("--version", action="version", version=__version__)
    sub = parser.add_subparsers(dest="cmd")
    serve.add_parser(sub)
    ui.add_parser(sub)
    events.add_parser(sub)
    report.add_parser(sub)
    pricing.add_parser(sub)
    controls.add_parser(sub)
    admin.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    try:
        parser = build_parser()
    except ImportError as exc:
        # `pip install modeltrack-proxy` is the app-side client only; the proxy and its commands are the extra.
        print(
            f"modeltrack: the proxy and its commands need the server extra: pip install 'modeltrack-proxy[server]' "
            f"(missing: {exc.name})",
            file=sys.stderr,
        )
        return 2
    from .common import run

    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or (argv[0].startswith("-") and argv[0] not in ("-h", "--help", "--version")):
        argv = ["serve", *argv]  # `modeltrack` alone (or with serve's flags) serves
    args = parser.parse_args(argv)
    return run(args.func, args)


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
