"""The request log: the way from any number to the requests behind it (issue M).

Newest first, paged by keyset (``before`` = the last row's timestamp and request id, so a page deep in the log
costs what the first one does), filtered on every event field: the rollup dimensions go to the store as
filters, and what only the event holds (session, routed, stream, unpriced, a property, a batch id) is checked here on
each page, scanning at most ``scan_cap`` events per answer. An answer that stopped at that cap says so
(``next`` lets the caller go on), so a rare match is never reported as "nothing". The detail is the whole
stored event. Held by tests/test_request_log.py.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from ..events import CostEvent
from ..rollups import is_unpriced
from .base import EventFilter, Filters, Reader
from .views import QueryError, Range

_CURSOR = re.compile(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z)~(req_[0-9a-f]{1,64}|[A-Za-z0-9_.:-]{1,128})")
ROW_FIELDS = (
    "timestamp",
    "request_id",
    "provider",
    "endpoint",
    "model",
    "status",
    "error",
    "stream",
    "team",
    "app",
    "feature",
    "user",
    "session_id",
    "prompt_id",
    "input_tokens",
    "output_tokens",
    "cache_read_tokens",
    "cache_write_tokens",
    "reasoning_tokens",
    "cost_usd",
    "cost_source",
    "latency_ms",
    "ttft_ms",
    "cache_hit",
    "routed",
    "key_id",
    "processing",
    "batch_id",
)


def _flag(name: str, raw: str | None) -> bool | None:
    if raw is None:
        return None
    if raw not in ("true", "false"):
        raise QueryError(f"{name} {raw!r}: write true or false")
    return raw == "true"


@dataclass(frozen=True)
class EventOnly:
    """The filters only an event can answer (not the rollups)."""

    session_id: str | None = None
    routed: bool | None = None
    stream: bool | None = None
    unpriced: bool | None = None
    properties: tuple[tuple[str, str], ...] = ()
    batch_id: str | None = None

    @classmethod
    def parse(cls, get: Any, names: Any) -> EventOnly:
        props = tuple(sorted((n[len("property.") :], get(n)) for n in names if n.startswith("property.")))
        for name, _ in props:
            if not name or len(name) > 64:
                raise QueryError("property.NAME: a property name of 1 to 64 characters, e.g. property.env=prod")
        return cls(
            session_id=get("session_id") or None,
            routed=_flag("routed", get("routed")),
            stream=_flag("stream", get("stream")),
            unpriced=_flag("unpriced", get("unpriced")),
            properties=props,
            batch_id=get("batch_id") or None,
        )

    def matches(self, ev: CostEvent) -> bool:
        if self.routed is not None and ev.routed != self.routed:
            return False
        if self.stream is not None and ev.stream != self.stream:
            return False
        if self.unpriced is not None and is_unpriced(ev) != self.unpriced:
            return False
        if self.batch_id is not None and ev.batch_id != self.batch_id:
            return False
        if self.properties:
            have = ev.properties or {}
            if any(have.get(k) != v for k, v in self.properties):
                return False
        return True

    @property
    def empty(self) -> bool:
        return (
            self.routed is None
            and self.stream is None
            and self.unpriced is None
            and not self.properties
            and self.batch_id is None
        )


def parse_cursor(raw: str | None) -> tuple[str, str] | None:
    if raw is None:
        return None
    m = _CURSOR.fullmatch(raw)
    if m is None:
        raise QueryError("before: pass back the `next` value of the previous page")
    return m.group(1), m.group(2)


def row(ev: CostEvent) -> dict[str, Any]:
    d = {name: getattr(ev, name) for name in ROW_FIELDS}
    d["unpriced"] = is_unpriced(ev)
    return d


async def request_log(
    reader: Reader,
    rng: Range,
    filters: Filters,
    only: EventOnly,
    before: tuple[str, str] | None = None,
    limit: int = 50,
    scan_cap: int = 20_000,
) -> dict[str, Any]:
    f = EventFilter(rng.start, rng.end, filters, only.session_id)
    found: list[CostEvent] = []
    cursor = before
    scanned = 0
    exhausted = False  # nothing older is left to look at
    batch = limit if only.empty else max(limit * 4, 500)
    while len(found) < limit and scanned < scan_cap:
        page = await reader.page(f, cursor, batch)
        scanned += len(page)
        for ev in page:
            cursor = (ev.timestamp, ev.request_id)
            if only.matches(ev):
                found.append(ev)
                if len(found) == limit:
                    break
        else:  # the whole page was read: a short one was the last
            if len(page) < batch:
                exhausted = True
                break
    more = not exhausted
    return {
        "range": rng.describe(),
        "requests": [row(ev) for ev in found],
        "next": f"{cursor[0]}~{cursor[1]}" if more and cursor is not None else None,
        "scanned": scanned,
        "stopped_at_scan_cap": scanned >= scan_cap and len(found) < limit,
    }


async def request_detail(reader: Reader, request_id: str) -> dict[str, Any]:
    if not request_id or len(request_id) > 128:
        raise QueryError("a request id is 1 to 128 characters")
    ev = await reader.event(request_id)
    if ev is None:
        raise LookupError(f"no request {request_id!r} in the store")
    out = ev.to_dict()
    out["unpriced"] = is_unpriced(ev)
    return out


async def property_breakdown(
    reader: Reader, rng: Range, filters: Filters, name: str, limit: int = 10, scan_cap: int = 500_000
) -> dict[str, Any]:
    """Spend and requests by the value of one custom property (``X-ModelTrack-Property-<name>``). Properties are
    free-form, so they are not rollup dimensions: the events of the range are read (at most ``scan_cap``; an
    answer that stopped there says so, ``complete: false``), newest first."""
    if not name or len(name) > 64:
        raise QueryError("dimension property.NAME: a property name of 1 to 64 characters, e.g. property.env")
    groups: dict[str | None, list[int]] = {}
    scanned = 0
    cursor: tuple[str, str] | None = None
    f = EventFilter(rng.start, rng.end, filters)
    complete = True
    while True:
        page = await reader.page(f, cursor, 2000)
        for ev in page:
            value = (ev.properties or {}).get(name)
            g = groups.setdefault(value, [0, 0, 0])
            g[0] += round((ev.cost_usd or 0) * 1e9)
            g[1] += 1
            g[2] += int(is_unpriced(ev))
        scanned += len(page)
        if len(page) < 2000:
            break
        cursor = (page[-1].timestamp, page[-1].request_id)
        if scanned >= scan_cap:
            complete = False
            break
    ranked = sorted(groups.items(), key=lambda kv: (-kv[1][0], str(kv[0])))
    total = [sum(g[i] for g in groups.values()) for i in range(3)]
    return {
        "range": rng.describe(),
        "dimension": f"property.{name}",
        "rows": [
            {f"property.{name}": k, "cost_usd": round(g[0] / 1e9, 9), "requests": g[1], "unpriced": g[2]}
            for k, g in ranked[:limit]
        ],
        "total": {"cost_usd": round(total[0] / 1e9, 9), "requests": total[1], "unpriced": total[2]},
        "scanned": scanned,
        "complete": complete,
    }
