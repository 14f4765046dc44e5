"""Routing rules: downgrade a request to a cheaper model, or refuse it, when a rule matches and its trigger holds.

A downgrade changes exactly the model's bytes: the value of the JSON body's top-level ``"model"`` member (found
by a scanner that walks the top level only, so a ``"model"`` inside ``messages`` is never touched), or the model
segment of the path for Gemini (``/models/{model}:generateContent``) and Bedrock (``/model/{id}/converse``).
Every other byte stays as sent; the proxy writes the new ``Content-Length``.

A SigV4-signed request (Bedrock with IAM credentials) signs its path: rewriting it would make the upstream
refuse the signature, so downgrade rules skip such requests (block rules still apply).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

import orjson

from ..query.times import zone
from .spec import Route, Window

_WS = b" \t\r\n"


def window_open(w: Window, now: datetime) -> bool:
    local = now.astimezone(zone(w.timezone))
    t = local.time().replace(second=0, microsecond=0)
    day = local.weekday()
    if w.start == w.end:  # the whole day
        return day in w.days
    if w.start < w.end:
        return day in w.days and w.start <= t < w.end
    # Wraps past midnight: the late part belongs to the listed day, the early part to the day before.
    if t >= w.start:
        return day in w.days
    return t < w.end and (day - 1) % 7 in w.days


def choose(
    routes: tuple[Route, ...], values: Mapping[str, Any], wall: float, percent: Callable[[str], float]
) -> Route | None:
    """The first rule whose match and trigger hold (rules are tried in file order)."""
    for r in routes:
        if not r.scope.matches(values):
            continue
        if r.window is not None and not window_open(r.window, datetime.fromtimestamp(wall, UTC)):
            continue
        if r.budget is not None and r.above_percent is not None and percent(r.budget) < r.above_percent:
            continue
        return r
    return None


def _skip_ws(raw: bytes, i: int) -> int:
    n = len(raw)
    while i < n and raw[i] in _WS:
        i += 1
    return i


def _string_end(raw: bytes, i: int) -> int:
    """``raw[i]`` is an opening quote: the index just past the closing one."""
    i += 1
    while True:
        j = raw.index(b'"', i)
        k = j - 1
        while raw[k] == 0x5C:  # count the backslashes before the quote
            k -= 1
        if (j - 1 - k) % 2 == 0:
            return j + 1
        i = j + 1


def _value_end(raw: bytes, i: int) -> int:
    c = raw[i]
    if c == 0x22:
        return _string_end(raw, i)
    if c in b"{[":
        depth = 0
        n = len(raw)
        while i < n:
            c = raw[i]
            if c == 0x22:
                i = _string_end(raw, i)
                continue
            if c in b"{[":
                depth += 1
            elif c in b"}]":
                depth -= 1
                if depth == 0:
                    return i + 1
            i += 1
        raise ValueError("unterminated")
    j = i
    while j < len(raw) and raw[j] not in b",}" and raw[j] not in _WS:
        j += 1
    return j


def model_span(raw: bytes) -> tuple[int, int] | None:
    """Where the top-level ``"model"`` member's value is in a JSON object's bytes, or None."""
    try:
        i = _skip_ws(raw, 0)
        if raw[i : i + 1] != b"{":
            return None
        i = _skip_ws(raw, i + 1)
        while i < len(raw) and raw[i] == 0x22:
            key_end = _string_end(raw, i)
            key = raw[i:key_end]
            i = _skip_ws(raw, key_end)
            if raw[i] != 0x3A:  # ':'
                return None
            i = _skip_ws(raw, i + 1)
            end = _value_end(raw, i)
            if key == b'"model"' or (b"\\" in key and orjson.loads(key) == "model"):
                return (i, end) if raw[i] == 0x22 else None
            i = _skip_ws(raw, end)
            if raw[i : i + 1] != b",":
                return None
            i = _skip_ws(raw, i + 1)
    except (ValueError, IndexError, orjson.JSONDecodeError):
        return None
    return None


def rewrite(provider: str, path: str, body: bytes, new_model: str, sigv4: bool) -> tuple[str, bytes] | None:
    """(path, body) asking for ``new_model`` instead, or None when this request's model cannot be replaced."""
    if provider == "gemini":
        marker = "/models/"
        i = path.find(marker)
        if i < 0:
            return None
        start = i + len(marker)
        end = path.find(":", start)
        if end < 0:
            return None
        return path[:start] + quote(new_model, safe="") + path[end:], body
    if provider == "bedrock":
        parts = path.split("/")
        if sigv4 or len(parts) < 4 or parts[1] != "model":
            return None
        parts[2] = quote(new_model, safe="")
        return "/".join(parts), body
    if provider == "azure":
        return None  # the deployment in the path names the model; deployments are not interchangeable names
    span = model_span(body)
    if span is None:
        return None
    a, b = span
    return path, body[:a] + orjson.dumps(new_model) + body[b:]
