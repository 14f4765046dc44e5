"""Stores for cost events. A sink is synchronous or async; the pipeline adapts.

Every sink is idempotent on ``request_id``: writing the same event twice stores it once, which is what makes
pipeline retries after an ambiguous failure safe.
"""

from __future__ import annotations

from typing import Protocol

from ..events import CostEvent


class Sink(Protocol):
    name: str

    async def open(self) -> None: ...

    async def write(self, events: list[CostEvent]) -> None:
        """Store a batch atomically-or-idempotently. Raise on failure; the pipeline retries/spools."""
        ...

    async def read(self, since: str | None = None, limit: int | None = None) -> list[CostEvent]: ...

    async def ping(self) -> bool: ...

    async def close(self) -> None: ...


class StoreURLError(ValueError):
    pass


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
            raise StoreURLError("firestore:// needs a project: firestore://PROJECT[/COLLECTION][?shards=N]")
        project, _, collection = rest.partition("/")
        params = dict(p.partition("=")[::2] for p in query.split("&") if p)
        unknown = set(params) - {"shards"}
        if unknown:
            raise StoreURLError(f"unknown firestore:// option(s): {sorted(unknown)} (supported: shards)")
        try:
            shards = int(params.get("shards", "1"))
        except ValueError:
            raise StoreURLError("firestore:// shards must be an integer") from None
        return FirestoreSink(project, collection or "modeltrack", shards=shards)
    raise StoreURLError(
        f"unsupported store URL scheme (expected sqlite://, jsonl:// or firestore://): {url.split(':', 1)[0]}"
    )


def _fs_path(url: str, scheme: str) -> str:
    """``sqlite:///./data/x.db`` → ``./data/x.db``; ``sqlite:////abs/x.db`` and ``sqlite:///abs/x.db`` →
    ``/abs/x.db``."""
    rest = url[len(scheme) :]
    if not rest.startswith("/"):
        raise StoreURLError(f"{scheme} URL needs three slashes: {scheme}/PATH")
    rest = rest[1:]
    if rest.startswith("./") or rest.startswith("../") or rest.startswith("/"):
        return rest
    return "/" + rest
