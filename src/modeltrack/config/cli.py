"""``--flags`` from the settings table (one per setting a command reads), and the per-provider help."""

from __future__ import annotations

import argparse
from dataclasses import fields

from .options import PER_PROVIDER, PROVIDERS, _shown_default, convert, env_name
from .settings import Settings


def add_arguments(parser: argparse.ArgumentParser, command: str = "serve") -> None:
    """One ``--flag`` per setting the command reads, with its variable, default and range in the help."""
    for f in fields(Settings):
        if f.metadata.get("env") is False or command not in f.metadata.get("commands", ("serve",)):
            continue
        lo, hi = f.metadata.get("lo"), f.metadata.get("hi")
        rng = f"; {lo:g}..{hi:g}" if lo is not None and hi is not None else ""
        parser.add_argument(
            "--" + f.name.replace("_", "-"),
            dest=f.name,
            default=None,
            type=lambda raw, _f=f: convert(_f, raw),  # type: ignore[misc]
            help=f"{f.metadata.get('help', '')} [env {env_name(f)}; default {_shown_default(f)}{rng}]",
        )


def provider_epilog() -> str:
    lines = ["per-provider variables (PROVIDER: " + ", ".join(p.upper() for p in PROVIDERS) + "):"]
    for suffix, text in PER_PROVIDER.items():
        lines.append(f"  MODELTRACK_<PROVIDER>_{suffix}: {text}")
    lines.append("egress: HTTPS_PROXY / HTTP_PROXY / ALL_PROXY / NO_PROXY are honoured for upstream connections")
    return "\n".join(lines)
