"""``GET /api/v1/export``: events or aggregates, as CSV or JSON Lines, streamed in constant memory.

Events are read a page at a time (keyset pagination in SQLite, cursors in Firestore) and written to the socket
page by page, with back-pressure (``await write`` waits for a slow client), so a million rows cost one page of
memory. JSON Lines from SQLite are the stored documents, not decoded and re-encoded.
"""

from __future__ import annotations

from datetime import timedelta

import orjson
from aiohttp import web

from ..events import FIELD_ORDER
from ..query import EventFilter
from ..query.breakdown import breakdown
from ..query.views import QueryError, Range, parse_filters, series, sessions
from ..tabular import csv_lines
from .api import Api, Params

KINDS = ("events", "breakdown", "series", "sessions")
FORMATS = ("csv", "jsonl")


async def export(api: Api, request: web.Request) -> web.StreamResponse:
    p = Params(request)
    kind = p.get("kind", "events") or "events"
    fmt = p.get("format", "csv") or "csv"
    if kind not in KINDS:
        raise QueryError(f"kind {kind!r} is not one of {', '.join(KINDS)}")
    if fmt not in FORMATS:
        raise QueryError(f"format {fmt!r} is not one of {', '.join(FORMATS)}")
    rng = p.range()
    filters = parse_filters(p.get)
    reader = await api.reader(request)
    if kind == "events":
        resp = _start(request, kind, fmt, *_days(rng))
        await resp.prepare(request)
        f = EventFilter(rng.start, rng.end, filters)
        raw = getattr(reader, "iter_raw", None)
        if fmt == "jsonl" and raw is not None:
            async for docs in raw(f, 2000):
                await resp.write(b"".join(d if d.endswith(b"\n") else d + b"\n" for d in docs))
        elif raw is not None:
            # CSV from the stored documents as they are (no event objects in between: ~3x the rows per second).
            first = True
            async for docs in raw(f, 2000):
                await resp.write(csv_lines(FIELD_ORDER, map(orjson.loads, docs), first))
                first = False
            if first:
                await resp.write(csv_lines(FIELD_ORDER, (), True))
        else:
            first = True
            async for chunk in reader.iter_events(f, 2000):
                if fmt == "jsonl":
                    await resp.write(b"".join(e.to_line() for e in chunk))
                else:
                    await resp.write(csv_lines(FIELD_ORDER, (e.to_dict() for e in chunk), first))
                    first = False
            if first and fmt == "csv":
                await resp.write(csv_lines(FIELD_ORDER, (), True))
        await resp.write_eof()
        return resp
    if kind == "breakdown":
        dim = p.get("dimension") or "team"
        data = await breakdown(reader, rng, dim, filters, p.number("limit", 1000) or 1000, p.get("sort") or "cost")
        rows = list(data["rows"]) + ([data["other"]] if data["other"] else [])
    elif kind == "sessions":
        rows = (await sessions(reader, rng, filters, p.number("limit", 1000) or 1000))["sessions"]
    else:
        data = await series(reader, rng, p.get("granularity", "day") or "day", filters, p.get("split") or None, 50)
        rows = [
            {"bucket": b, "key": s["key"], "cost_usd": s["cost_usd"][i], "requests": s["requests"][i]}
            for s in data["series"]
            for i, b in enumerate(data["buckets"])
        ]
    resp = _start(request, kind, fmt, *_days(rng))
    await resp.prepare(request)
    if fmt == "jsonl":
        await resp.write(b"".join(orjson.dumps(r) + b"\n" for r in rows))
    else:
        header = list(rows[0]) if rows else ["key"]
        await resp.write(csv_lines(header, rows, True))
    await resp.write_eof()
    return resp


def _days(rng: Range) -> tuple[str, str]:
    """The first and the last day the range covers, in its own time zone: ``until`` is exclusive, so a range to
    2026-11-30 ends at 2026-12-01T00:00 and its file is named ``…-to-2026-11-30``."""
    first = rng.start.astimezone(rng.tz).date().isoformat()
    last = (rng.end - timedelta(microseconds=1)).astimezone(rng.tz).date().isoformat()
    return first, last


def _start(request: web.Request, kind: str, fmt: str, since: str, until: str) -> web.StreamResponse:
    resp = web.StreamResponse()
    resp.content_type = "text/csv" if fmt == "csv" else "application/x-ndjson"
    resp.charset = "utf-8"
    resp.headers["Content-Disposition"] = f'attachment; filename="modeltrack-{kind}-{since}-to-{until}.{fmt}"'
    resp.enable_chunked_encoding()
    return resp
