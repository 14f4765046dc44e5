"""Reading slice documents by id from Firestore, decoded straight from the wire's protobuf messages.

Why not ``AsyncClient.get_all``: for every document it decodes each value through the client's generic
``decode_value`` and then deep-copies the whole result into its ``DocumentSnapshot`` (the snapshot promises
immutable data). A 30-day breakdown by user reads some 700 slice documents holding ~80,000 cells; cProfile put
1.4 s of its 1.8 s in those two steps (bench/README.md, "Firestore reads"). Slice documents hold only maps,
strings and numbers, so they are decoded here by one small function, and nothing is copied.

The request is the one ``get_all`` sends (``BatchGetDocuments`` with a field mask, the client's own database
path, channel, credentials and routing metadata), through the client's GAPIC layer. Those are attributes the
client does not document; where they are missing (another client version), :func:`batch_get` falls back to
``get_all``, so reads stay correct and only lose the speed. Held by tests/test_firestore_analytics.py (every
question answered from the slices equals SQLite's answer on the same events) and by
``test_raw_reads_equal_the_clients_own``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any


def decode_cells(value: Any) -> dict[str, dict[str, int | float]]:
    """A dimension's map of cells (cell key → sums), each sum a number: the bulk of what a question reads, so
    decoded without a call per sum. A sum is an integer, or a double (the latency sum)."""
    out: dict[str, dict[str, int | float]] = {}
    for key, cell in value.map_value.fields.items():
        sums: dict[str, int | float] = {}
        for name, v in cell.map_value.fields.items():
            sums[name] = v.integer_value or v.double_value
        out[key] = sums
    return out


async def batch_get(client: Any, refs: list[Any], field: str) -> AsyncIterator[tuple[str, dict[str, Any]]]:
    """For each document of ``refs`` that exists: its bucket (field ``b``) and the cells of map ``field``."""
    api = getattr(client, "_firestore_api", None)
    database = getattr(client, "_database_string", None)
    metadata = getattr(client, "_rpc_metadata", None)
    if api is None or database is None or metadata is None:
        async for snap in client.get_all(refs, field_paths=["b", field]):
            if snap.exists:
                doc = snap.to_dict()
                yield doc["b"], doc.get(field) or {}
        return
    request = {
        "database": database,
        "documents": [f"{database}/documents/{ref.path}" for ref in refs],
        "mask": {"field_paths": ["b", field]},
    }
    stream = await api.batch_get_documents(request=request, metadata=metadata)
    async for response in stream:
        pb = type(response).pb(response)
        if pb.WhichOneof("result") != "found":
            continue
        fields = pb.found.fields
        cells = decode_cells(fields[field]) if field in fields else {}
        yield fields["b"].string_value, cells
