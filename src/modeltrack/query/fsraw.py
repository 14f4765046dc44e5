"""Reading slice documents by id from Firestore, decoded straight from the wire's protobuf messages.

Why not ``AsyncClient.get_all``: for every document it decodes each value through the client's generic
``decode_value`` and then deep-copies the whole result into its ``DocumentSnapshot`` (the snapshot promises
immutable data). A 30-day breakdown by user reads some 700 slice documents holding ~80,000 cells; cProfile put
1.4 s of its 1.8 s in those two steps (bench/README.md, "Firestore reads"). Slice documents hold only maps,
strings and numbers, so their cells are read here from the messages as they are summed, and nothing is built or
copied on the way.

The request is the one ``get_all`` sends (``BatchGetDocuments`` with a field mask, the client's own database
path, channel, credentials and routing metadata), through the client's GAPIC layer. Those are attributes the
client does not document; where they are missing (another client version), :func:`batch_get` falls back to
``get_all``, so reads stay correct and only lose the speed. Held by tests/test_firestore_analytics.py (every
question answered from the slices equals SQLite's answer on the same events) and by
``test_raw_reads_equal_the_clients_own``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Iterator
from itertools import chain
from typing import Any

Cells = Iterable[tuple[str, Iterable[tuple[str, int]]]]
"""A dimension's cells: each cell's key, and its sums as (name, value) pairs, read as they are iterated."""


def _sums(cell: Any) -> Iterator[tuple[str, int]]:
    fields = cell.map_value.fields
    for name in fields:  # keys, then a lookup: the map's own items() is a Python-level view, ~20 % slower
        v = fields[name]
        yield name, v.integer_value or int(v.double_value)


def _named(cell: Any, names: tuple[str, ...]) -> list[tuple[str, int]]:
    fields = cell.map_value.fields
    return [(n, (v := fields[n]).integer_value or int(v.double_value)) for n in names if n in fields]


FEW = 6
"""Up to this many sums asked for (a ranking's): each is looked up in a cell by name (a cell holds ten sums,
and in documents written before ``user_h`` its histogram too); more are read by walking the cell."""


def _cells(value: Any, names: tuple[str, ...] | None = None) -> Iterator[tuple[str, Iterable[tuple[str, int]]]]:
    """A dimension's map of cells as wire messages: nothing is built but the pairs themselves (a question sums
    them straight into its groups), and with ``names`` only those sums. Slices write integers; a double is read
    as an integer, as the sums are."""
    cells = value.map_value.fields
    if names is not None:
        for key in cells:
            yield key, _named(cells[key], names)
        return
    for key in cells:
        yield key, _sums(cells[key])


async def batch_get(
    client: Any,
    refs: list[Any],
    maps: tuple[str, ...],
    mask: list[str] | None = None,
    names: tuple[str, ...] | None = None,
) -> AsyncIterator[tuple[str, Cells]]:
    """For each document of ``refs`` that exists: its bucket (field ``b``) and the cells of the maps ``maps``
    (of one dimension: its sums, and for the user its histograms), one map's after the other. ``mask``: the
    field paths to read, when not every cell of those maps (the default). ``names``: only these sums of each
    cell (at most :data:`FEW`; every sum without)."""
    paths = ["b", *(mask if mask is not None else maps)]
    api = getattr(client, "_firestore_api", None)
    database = getattr(client, "_database_string", None)
    metadata = getattr(client, "_rpc_metadata", None)
    if api is None or database is None or metadata is None:
        async for snap in client.get_all(refs, field_paths=paths):
            if snap.exists:
                doc = snap.to_dict()
                yield (
                    doc["b"],
                    [
                        (key, sums.items() if names is None else [(n, sums[n]) for n in names if n in sums])
                        for m in maps
                        for key, sums in (doc.get(m) or {}).items()
                    ],
                )
        return
    request = {
        "database": database,
        "documents": [f"{database}/documents/{ref.path}" for ref in refs],
        "mask": {"field_paths": paths},
    }
    stream = await api.batch_get_documents(request=request, metadata=metadata)
    async for response in stream:
        pb = type(response).pb(response)
        if pb.WhichOneof("result") != "found":
            continue
        fields = pb.found.fields
        found = [fields[m] for m in maps if m in fields]
        cells = _cells(found[0], names) if len(found) == 1 else chain.from_iterable(_cells(f, names) for f in found)
        yield fields["b"].string_value, cells
