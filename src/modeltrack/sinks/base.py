"""Stores for cost events. A sink is synchronous or async; the pipeline adapts.

Every sink is idempotent on ``request_id``: writing the same event twice stores it once, which is what makes
pipeline retries after an ambiguous failure safe.
"""

from __future__ import annotations

import asyncio
import re
import sqlite3
from typing import Protocol

from ..events import CostEvent


class Batch(list[CostEvent]):
    """A batch of events that may carry the JSON lines they are encoded as (``docs``), one per event: the
    pipeline encodes each event once (for its journal) and the writer subprocess receives those lines, so a sink
    that stores JSON (SQLite) and the span exporter take them as they are. A plain list is a batch too (no
    ``docs``): every reader looks them up with ``getattr(events, "docs", None)``."""

    docs: list[bytes] | None = None


class Sink(Protocol):
    name: str

    async def open(self) -> None: ...

    async def write(self, events: list[CostEvent]) -> None:
        """Store a batch atomically-or-idempotently. Raise on failure; the pipeline retries/spools."""
        ...

    async def read(self, since: str | None = None, limit: int | None = None) -> list[CostEvent]: ...

    async def claim(self, key: str, at: str) -> bool:
        """Once-only actions shared by every process and replica on the store (a budget alert, a scheduled
        report): True for exactly one caller per ``key``."""
        ...

    async def recall(self, key: str) -> str | None:
        """The ``at`` a claim of ``key`` was made with (the batch registry keeps small JSON documents there), or
        None when nobody claimed it."""
        ...

    async def ping(self) -> bool: ...

    async def close(self) -> None: ...


_TRANSIENT_NAMES = {
    "ServiceUnavailable",
    "DeadlineExceeded",
    "Aborted",
    "ResourceExhausted",
    "InternalServerError",
    "RetryError",
    "TooManyRequests",
    "GatewayTimeout",
    "Unknown",
    "Cancelled",
}


def is_transient(exc: BaseException) -> bool:
    """Worth another try: the network, a busy database, a store saying "later". A store writer process says so
    itself (``transient`` on the error it raises here)."""
    flag = getattr(exc, "transient", None)
    if flag is not None:
        return bool(flag)
    if isinstance(exc, (OSError, ConnectionError, TimeoutError, asyncio.TimeoutError)):
        return True
    if isinstance(exc, sqlite3.OperationalError):
        return True  # busy / locked / disk I/O: all worth another try
    return type(exc).__name__ in _TRANSIENT_NAMES


class StoreURLError(ValueError):
    pass


def _count(params: dict[str, str], name: str, default: int | None, most: int, example: str) -> int | None:
    """A firestore:// option that counts documents: a whole number from 1 to ``most``."""
    if name not in params:
        return default
    value = params[name]
    if not value.isdigit() or not 1 <= int(value) <= most:
        raise StoreURLError(
            f"firestore:// {name} must be a whole number from 1 to {most}, got {value!r} (e.g. {example})"
        )
    return int(value)


def open_sink(url: str) -> Sink:
    if url.startswith("sqlite://"):
        from .sqlite import SQLiteSink

        return SQLiteSink(_fs_path(url, "sqlite://"))
    if url.startswith("jsonl://"):
        from .jsonl import JSONLSink

        return JSONLSink(_fs_path(url, "jsonl://"))
    if url.startswith("firestore://"):
        from .firestore import FirestoreSink

        rest, _, query = url[len("firestore://") :].partition("?")
        rest = rest.strip("/")
        if not rest:
            raise StoreURLError(
                "firestore:// needs a project: "
                "firestore://PROJECT[/COLLECTION][?shards=N][&user_shards=M][&value_shards=K][&bigquery=DATASET]"
            )
        project, _, collection = rest.partition("/")
        params = _params(query)
        unknown = set(params) - {"shards", "user_shards", "value_shards", "bigquery"}
        if unknown:
            raise StoreURLError(
                f"unknown firestore:// option(s): {sorted(unknown)} "
                "(supported: shards, user_shards, value_shards, bigquery)"
            )
        bigquery = params.get("bigquery")
        if bigquery is not None and not _BQ_DATASET.fullmatch(bigquery):
            raise StoreURLError(
                f"?bigquery={bigquery!r} is not a BigQuery dataset: write ?bigquery=DATASET (letters, digits and _) "
                "or ?bigquery=PROJECT.DATASET for a dataset in another project"
            )
        shards = _count(params, "shards", 1, 1000, "?shards=4 for about four commits a second")
        users = _count(params, "user_shards", None, 4096, "?user_shards=20 for about 10,000 users a day")
        values = _count(params, "value_shards", None, 4096, "?value_shards=8 for about 2,000 keys and prompt ids a day")
        return FirestoreSink(
            project,
            collection or "modeltrack",
            shards=shards or 1,
            user_shards=users,
            value_shards=values,
            bigquery=bigquery,
        )
    raise StoreURLError(
        f"unsupported store URL scheme (expected sqlite://, jsonl:// or firestore://): {url.split(':', 1)[0]}"
    )


def _params(query: str) -> dict[str, str]:
    """A store URL's ``?name=value&...`` options (no escaping: every value is a number or an id)."""
    return dict(p.partition("=")[::2] for p in query.split("&") if p)


_BQ_DATASET = re.compile(r"(?:[a-z][a-z0-9-]{4,28}[a-z0-9]\.)?[A-Za-z_][A-Za-z0-9_]{0,1023}")
"""A dataset id, optionally after its project's id (Google's rules for both)."""


def _fs_path(url: str, scheme: str) -> str:
    """SQLAlchemy's convention, which users already know: ``sqlite:///relative/x.db`` is relative to the working
    directory, ``sqlite:////abs/x.db`` (four slashes) is absolute."""
    rest = url[len(scheme) :]
    if not rest.startswith("/") or len(rest) < 2:
        raise StoreURLError(
            f"{scheme} URL needs three slashes and a path: {scheme}/data/modeltrack.db (relative) or "
            f"{scheme}//var/lib/modeltrack.db (absolute)"
        )
    return rest[1:]


def describe_store(url: str) -> str:
    """The store as the start-up line shows it: the resolved file path, or the project and collection. Never
    credentials (a URL's user info is dropped)."""
    import os

    for scheme in ("sqlite://", "jsonl://"):
        if url.startswith(scheme):
            try:
                return f"{scheme[:-3]} {os.path.abspath(_fs_path(url, scheme))}"
            except StoreURLError:
                return scheme[:-3] + " (invalid path)"
    if url.startswith("firestore://"):
        rest = url[len("firestore://") :].split("?", 1)[0].strip("/")
        project, _, collection = rest.partition("/")
        emulator = os.environ.get("FIRESTORE_EMULATOR_HOST")
        where = f" (emulator {emulator})" if emulator else ""
        params = _params(url.partition("?")[2])
        described = f"firestore project={project} collection={collection or 'modeltrack'}{where}"
        if params.get("bigquery"):
            bq = os.environ.get("BIGQUERY_EMULATOR_HOST")
            described += f"; warehouse bigquery dataset={params['bigquery']}" + (f" (emulator {bq})" if bq else "")
        return described
    return url.split(":", 1)[0]
