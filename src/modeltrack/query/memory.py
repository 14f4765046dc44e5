"""Aggregation in Python, for stores without SQL (JSON Lines, and Firestore's rollup documents)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from ..events import CostEvent
from ..rollups import SUMMED, TOKENS, nano_usd
from .base import Filters


def row_matches(row: dict[str, Any], f: Filters) -> bool:
    for name, want in f.items():
        value = row.get(name)
        if name == "status":
            lo, hi = f.status_range() or (0, 999)
            if not lo <= int(value or 0) <= hi:
                return False
        elif name == "cache_hit":
            if bool(value) != want:
                return False
        elif (value or "") != want:
            return False
    return True


def group(rows: Iterable[dict[str, Any]], keys: tuple[str, ...]) -> list[dict[str, Any]]:
    out: dict[tuple[Any, ...], dict[str, Any]] = {}
    for row in rows:
        add_into(out, keys, tuple(row.get(name) for name in keys), row)
    return list(out.values())


def add_into(
    out: dict[tuple[Any, ...], dict[str, Any]],
    keys: tuple[str, ...],
    k: tuple[Any, ...],
    sums: dict[str, Any],
    summed: tuple[str, ...] = SUMMED,
) -> None:
    """Add ``sums`` to the group ``k`` (the values of ``keys``) of ``out``."""
    acc = out.get(k)
    if acc is None:
        acc = out[k] = {**dict(zip(keys, k, strict=True)), **dict.fromkeys(summed, 0)}
    if len(sums) < len(summed):  # a sparse cell (a slice's): walk its own few sums
        for name, v in sums.items():
            if v and name in acc and name not in keys:
                acc[name] += int(v)
    else:
        for name in summed:
            v = sums.get(name)
            if v:
                acc[name] += int(v)


class SessionSums:
    """Sessions summed from their events, for stores without a sessions table of their own (JSON Lines): whole
    sessions, with their first request's attribution, as the stores' sessions tables hold them."""

    def __init__(self) -> None:
        self.by: dict[tuple[str, str], dict[str, Any]] = {}

    def add(self, e: CostEvent) -> None:
        if e.session_id is None:
            return
        key = (e.org or "", e.session_id)  # one org's session id never merges with another's
        s = self.by.get(key)
        if s is None:
            s = self.by[key] = {
                "session_id": e.session_id,
                "first_ts": e.timestamp,
                "last_ts": e.timestamp,
                "team": e.team,
                "app": e.app,
                "feature": e.feature,
                "user": e.user,
                "org": e.org,
                "requests": 0,
                **dict.fromkeys(TOKENS, 0),
                "cost_nano_usd": 0,
                "latency_ms": 0.0,
            }
        if e.timestamp < s["first_ts"]:  # a session's attribution is its first request's
            s.update(first_ts=e.timestamp, team=e.team, app=e.app, feature=e.feature, user=e.user)
        s["last_ts"] = max(s["last_ts"], e.timestamp)
        s["requests"] += 1
        for t in TOKENS:
            s[t] += getattr(e, t)
        s["cost_nano_usd"] += nano_usd(e.cost_usd)
        s["latency_ms"] += e.latency_ms

    def top(self, limit: int) -> list[dict[str, Any]]:
        return sorted(self.by.values(), key=lambda s: -s["cost_nano_usd"])[:limit]
