"""The Errors page's question: what failed, by status and error type, and whose doing it was.

Every failed request falls in one class, so the page can say at once whether spend controls refused it, the
upstream failed, the client went away, or the provider refused the request. Counted from the rollups
(``status`` and ``error`` are dimensions), so it answers a month as fast as a day.
"""

from __future__ import annotations

from typing import Any

from .base import Filters, Reader
from .views import Range

BUDGET = frozenset({"budget_exceeded", "budget_busy", "rate_limited", "route_blocked"})
CLIENT_GONE = frozenset({"client_disconnected"})
SHUTDOWN = frozenset({"shutdown"})
CLASSES = ("budget", "upstream", "client_disconnected", "shutdown", "provider_refused", "stream_error", "other")
"""In the order the page shows them: refused by a budget or a limit; the upstream failed (5xx, unreachable,
reset, timed out, a garbled answer); the client went away; a stop cut it; the provider refused the request
(4xx); a 2xx whose stream carried an error or was cut; anything else."""


def classify(status: int, error: str | None) -> str:
    e = error or ""
    if e in BUDGET:
        return "budget"
    if e in CLIENT_GONE:
        return "client_disconnected"
    if e in SHUTDOWN:
        return "shutdown"
    if status == 0 or status >= 500 or e.startswith("upstream_"):
        return "upstream"
    if 400 <= status < 500:
        return "provider_refused"
    if e:
        return "stream_error"
    return "other"


async def errors(reader: Reader, rng: Range, filters: Filters) -> dict[str, Any]:
    rows = await reader.aggregate(rng.start, rng.end, filters, ("status", "error"), latency=False)
    requests = sum(int(r["requests"]) for r in rows)
    failed = [r for r in rows if int(r["errors"])]
    by_class = dict.fromkeys(CLASSES, 0)
    out = []
    for r in sorted(failed, key=lambda r: -int(r["errors"])):
        status, error = int(r["status"]), r.get("error") or None
        kind = classify(status, error)
        by_class[kind] += int(r["errors"])
        out.append({"status": status, "error": error, "class": kind, "requests": int(r["errors"])})
    total = sum(by_class.values())
    return {
        "range": rng.describe(),
        "requests": requests,
        "errors": total,
        "error_rate": round(total / requests, 4) if requests else 0.0,
        "classes": [{"class": c, "requests": n} for c, n in by_class.items() if n],
        "rows": out,
    }
