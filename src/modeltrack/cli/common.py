"""What every command shares: the store as ``serve`` resolves it, readers that fail with one line, and the
errors users should see as a sentence, not a traceback."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from ..config import ConfigError, Settings
from ..controls.spec import ControlsError
from ..pricing import PricingError
from ..query import Reader, StoreMissing, open_reader
from ..query.times import TimeError
from ..query.views import QueryError
from ..sinks import StoreURLError


class CommandError(Exception):
    """A one-line answer to a command that cannot do what was asked; exits 2."""


def store_url(args: argparse.Namespace) -> str:
    """``--store``, else the store ``modeltrack serve`` would use: ``MODELTRACK_STORE`` or the default, read
    with the same validation, so a command works from any directory given the store URL."""
    if getattr(args, "store", None):
        return str(args.store)
    return Settings.load().store


def reader(args: argparse.Namespace) -> Reader:
    return open_reader(store_url(args))


def explain(exc: BaseException) -> str | None:
    """The sentence for an error a user can fix, or None for a bug (shown with its traceback)."""
    user_errors = (ConfigError, StoreMissing, StoreURLError, TimeError, PricingError, CommandError, ControlsError)
    if isinstance(exc, (*user_errors, QueryError)):
        return str(exc)
    name = type(exc).__name__
    if name == "DefaultCredentialsError":
        return (
            "no Google credentials for Firestore: run `gcloud auth application-default login`, set "
            "GOOGLE_APPLICATION_CREDENTIALS to a service-account key file, or FIRESTORE_EMULATOR_HOST for the emulator"
        )
    if name in ("PermissionDenied", "Forbidden"):
        return "Firestore refused access: grant the account roles/datastore.user on the project"
    if name in ("ServiceUnavailable", "DeadlineExceeded", "RetryError"):
        return "the store did not answer (Firestore unavailable or unreachable); try again, or check the network"
    return None


def run(func: Any, args: argparse.Namespace) -> int:
    try:
        code = int(func(args))
        sys.stdout.flush()  # inside the try: a reader that has gone (``| head``) is found here, not at exit
        return code
    except BrokenPipeError:
        # The reader of our output stopped reading (``modeltrack events | head``): that is how pipes end, not
        # an error to show. Point stdout at /dev/null so the interpreter's last flush does not fail again.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 141  # what a shell reports for a process ended by SIGPIPE
    except Exception as exc:
        message = explain(exc)
        if message is None:
            raise
        print(f"modeltrack: {message}", file=sys.stderr)
        return 2


def positive_int(raw: str) -> int:
    try:
        value = int(raw)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{raw!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not a positive number: write 1 or more")
    return value
