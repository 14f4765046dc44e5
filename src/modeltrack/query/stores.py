"""Which reader answers a store URL (the same URLs as ``MODELTRACK_STORE``); each store's reader is imported
only when asked for, so the SQLite path never loads the Firestore client."""

from __future__ import annotations

from .base import Reader


def open_reader(url: str) -> Reader:
    """A reader for a store URL (the same URLs as ``MODELTRACK_STORE``). Raises :class:`StoreMissing` for a
    file store whose file does not exist."""
    from ..sinks import StoreURLError, _fs_path

    if url.startswith("sqlite://"):
        from .sqlite import SQLiteReader

        return SQLiteReader(_fs_path(url, "sqlite://"))
    if url.startswith("jsonl://"):
        from .jsonl import JSONLReader

        return JSONLReader(_fs_path(url, "jsonl://"))
    if url.startswith("firestore://"):
        from ..sinks import open_sink
        from .firestore import FirestoreReader

        sink = open_sink(url)
        return FirestoreReader(sink)  # type: ignore[arg-type]  # open_sink is typed as the Sink protocol
    raise StoreURLError(f"unsupported store URL (expected sqlite://, jsonl:// or firestore://): {url.split(':', 1)[0]}")
