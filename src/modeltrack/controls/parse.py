"""Reading the controls file: every entry and field checked, every cross-reference resolved, before anything
uses it. An error names the entry, the field and what to write instead:
``budgets[1] (search-monthly): limit_usd: must be above 0, e.g. limit_usd: 100``.
"""

from __future__ import annotations

import difflib
import re
from datetime import time as dtime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from ..query.times import TimeError, zone
from .match import DIMENSIONS, Scope
from .spec import (
    DAYS,
    MIB,
    PERIODS,
    Budget,
    CacheRule,
    CacheSpec,
    ClientToken,
    ControlsError,
    ControlsSpec,
    Report,
    Reserve,
    Route,
    Webhook,
    Window,
)


class _Entry:
    """One mapping of the file, read field by field; every error names the entry and the field."""

    def __init__(self, raw: Any, where: str, known: tuple[str, ...]) -> None:
        if not isinstance(raw, dict):
            raise ControlsError(f"{where}: expected a mapping (name: value lines), got {type(raw).__name__}")
        unknown = sorted(set(raw) - set(known))
        if unknown:
            hints = []
            for u in unknown:
                close = difflib.get_close_matches(str(u), known, n=1)
                hints.append(f"{u!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
            raise ControlsError(f"{where}: unknown field {', '.join(hints)}; known fields: {', '.join(known)}")
        self.raw = raw
        self.where = where

    def fail(self, name: str, problem: str) -> ControlsError:
        return ControlsError(f"{self.where}: {name}: {problem}")

    def text(self, name: str, default: str | None = None, *, required: bool = False, example: str = "") -> Any:
        v = self.raw.get(name, default)
        if v is None:
            if required:
                raise self.fail(name, f"required{f'; write e.g. {name}: {example}' if example else ''}")
            return None
        if not isinstance(v, str) or not v.strip():
            raise self.fail(name, f"must be a non-empty text{f', e.g. {name}: {example}' if example else ''}")
        return v.strip()

    def choice(self, name: str, options: tuple[str, ...], default: str | None = None) -> Any:
        v = self.raw.get(name, default)
        if v is None:
            raise self.fail(name, f"required; write one of {', '.join(options)}")
        if v not in options:
            raise self.fail(name, f"{v!r} is not one of {', '.join(options)}")
        return v

    def number(self, name: str, default: float | None, lo: float, hi: float, *, example: str = "") -> Any:
        v = self.raw.get(name, default)
        if v is None:
            raise self.fail(name, f"required; write e.g. {name}: {example or lo}")
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not lo <= v <= hi or v != v:
            raise self.fail(name, f"must be a number from {lo:g} to {hi:g}, e.g. {name}: {example or hi}")
        return v

    def positive(self, name: str, default: float | None, hi: float, *, example: str) -> Any:
        v = self.number(name, default, 0, hi, example=example)
        if v <= 0:
            raise self.fail(name, f"must be above 0, e.g. {name}: {example}")
        return v

    def integer(self, name: str, default: int | None, lo: int, hi: int) -> int:
        v = self.number(name, default, lo, hi)
        if int(v) != v:
            raise self.fail(name, f"must be a whole number from {lo} to {hi}")
        return int(v)

    def timezone(self, name: str, default: str) -> str:
        v = self.text(name, default) or default
        try:
            zone(v)
        except TimeError as exc:
            raise self.fail(name, str(exc)) from None
        return str(v)

    def scope(self, name: str = "match") -> Scope:
        raw = self.raw.get(name, {}) or {}
        sub = _Entry(raw, f"{self.where}: {name}", DIMENSIONS)
        values = {}
        for dim in DIMENSIONS:
            v = raw.get(dim)
            if v is None:
                continue
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                v = str(v)
            if not isinstance(v, str) or not v:
                raise sub.fail(dim, "must be a text value or a glob such as gpt-4o*")
            values[dim] = v
        return Scope.of(values)


def _named(raw: Any, where: str) -> str:
    return f"{where} ({raw['name']})" if isinstance(raw, dict) and isinstance(raw.get("name"), str) else where


def _list(doc: dict[str, Any], name: str) -> list[Any]:
    v = doc.get(name) or []
    if not isinstance(v, list):
        raise ControlsError(f"{name}: expected a list of entries (lines starting with `- `)")
    return v


_HHMM = re.compile(r"^([01]?\d|2[0-3]):([0-5]\d)$")


def _window(raw: dict[str, Any], e: _Entry, default_tz: str) -> Window | None:
    between = raw.get("between")
    if between is None:
        if "days" in raw:
            between = "00:00-00:00"
        else:
            return None
    if not isinstance(between, str) or "-" not in between:
        raise e.fail("between", "write local times as HH:MM-HH:MM, e.g. between: 22:00-06:00")
    a, b = (s.strip() for s in between.split("-", 1))
    ma, mb = _HHMM.match(a), _HHMM.match(b)
    if not ma or not mb:
        raise e.fail("between", "write local times as HH:MM-HH:MM, e.g. between: 22:00-06:00")
    days_raw = raw.get("days", list(DAYS))
    if not isinstance(days_raw, list) or not days_raw or any(d not in DAYS for d in days_raw):
        raise e.fail("days", f"write a list of {', '.join(DAYS)}, e.g. days: [sat, sun]")
    return Window(
        dtime(int(ma[1]), int(ma[2])),
        dtime(int(mb[1]), int(mb[2])),
        frozenset(DAYS.index(d) for d in days_raw),
        e.timezone("timezone", default_tz),
    )


def parse(doc: Any, source: str = "") -> ControlsSpec:
    """Validate a decoded controls document completely (every entry, every cross-reference)."""
    if doc is None:
        doc = {}
    top = _Entry(
        doc,
        "controls file",
        (
            "version",
            "timezone",
            "refresh_seconds",
            "on_store_error",
            "reserve",
            "webhooks",
            "budgets",
            "routes",
            "cache",
            "tokens",
            "reports",
        ),
    )
    if doc.get("version", 1) != 1:
        raise top.fail("version", "only version: 1 exists")
    tz = top.timezone("timezone", "UTC")
    refresh = top.number("refresh_seconds", 2.0, 0.05, 300, example="2")
    on_error = top.choice("on_store_error", ("open", "closed"), "open")
    r = _Entry(doc.get("reserve") or {}, "reserve", ("bytes_per_token", "default_max_output_tokens", "unpriced_usd"))
    reserve = Reserve(
        float(r.positive("bytes_per_token", 1.0, 64, example="1")),
        r.integer("default_max_output_tokens", 16_384, 1, 10_000_000),
        float(r.positive("unpriced_usd", None, 1e6, example="0.50")) if "unpriced_usd" in r.raw else None,
    )

    webhooks: dict[str, Webhook] = {}
    raw_hooks = doc.get("webhooks") or {}
    if not isinstance(raw_hooks, dict):
        raise ControlsError("webhooks: expected a mapping of name → {url, format}")
    for name, raw in raw_hooks.items():
        e = _Entry(raw, f"webhooks.{name}", ("url", "format", "timeout_seconds", "retries"))
        url = e.text("url", required=True, example="https://hooks.slack.com/services/T000/B000/XXXX")
        u = urlsplit(url)
        if u.scheme not in ("https", "http") or not u.hostname:
            raise e.fail("url", "must be an http(s) URL, e.g. url: https://hooks.slack.com/services/...")
        if u.scheme == "http" and u.hostname not in ("localhost", "127.0.0.1", "::1"):
            raise e.fail("url", "must use https (plain http only to localhost): the alert crosses networks")
        webhooks[str(name)] = Webhook(
            str(name),
            url,
            e.choice("format", ("json", "slack"), "json"),
            float(e.positive("timeout_seconds", 5.0, 60, example="5")),
            e.integer("retries", 3, 0, 10),
        )

    def hook(e: _Entry, name: str = "webhook", required: bool = False) -> str | None:
        v = e.text(name, required=required, example=next(iter(webhooks), "ops"))
        if v is not None and v not in webhooks:
            known = ", ".join(webhooks) or "none defined: add a `webhooks:` mapping"
            raise e.fail(name, f"no webhook named {v!r} (known: {known})")
        return v  # type: ignore[no-any-return]

    budgets: list[Budget] = []
    for i, raw in enumerate(_list(doc, "budgets")):
        e = _Entry(
            raw,
            _named(raw, f"budgets[{i}]"),
            ("name", "match", "period", "timezone", "limit_usd", "warn_at", "action", "webhook", "on_store_error"),
        )
        name = e.text("name", required=True, example="search-monthly")
        if any(b.name == name for b in budgets):
            raise e.fail("name", f"{name!r} is used twice; budget names must be unique")
        warn = raw.get("warn_at", [])
        if not isinstance(warn, list) or any(
            isinstance(w, bool) or not isinstance(w, (int, float)) or not 0 < w <= 1000 for w in warn
        ):
            raise e.fail("warn_at", "write percentages of the limit, e.g. warn_at: [50, 80, 100]")
        budgets.append(
            Budget(
                name,
                e.scope(),
                e.choice("period", PERIODS),
                e.timezone("timezone", tz),
                float(e.positive("limit_usd", None, 1e9, example="100")),
                tuple(sorted({float(w) for w in warn})),
                e.choice("action", ("block", "warn"), "block"),
                hook(e),
                e.choice("on_store_error", ("open", "closed"), on_error),
            )
        )
    by_name = {b.name: b for b in budgets}

    routes: list[Route] = []
    for i, raw in enumerate(_list(doc, "routes")):
        e = _Entry(raw, _named(raw, f"routes[{i}]"), ("name", "match", "when", "action", "to", "status", "message"))
        name = e.text("name", required=True, example="mini-near-limit")
        if any(r.name == name for r in routes):
            raise e.fail("name", f"{name!r} is used twice; route names must be unique")
        action = e.choice("action", ("downgrade", "block"))
        to = e.text("to", example="gpt-4o-mini")
        if action == "downgrade" and not to:
            raise e.fail("to", "required for action: downgrade; write the cheaper model, e.g. to: gpt-4o-mini")
        if action == "block" and to:
            raise e.fail("to", "only for action: downgrade")
        status = e.integer("status", 429, 400, 499)
        if status not in (403, 429):
            raise e.fail("status", "write 429 (too many requests) or 403 (forbidden)")
        when_raw = raw.get("when") or {}
        w = _Entry(when_raw, f"{e.where}: when", ("always", "budget", "above_percent", "between", "days", "timezone"))
        budget = w.text("budget")
        above = None
        if budget is not None:
            if budget not in by_name:
                raise w.fail("budget", f"no budget named {budget!r} (known: {', '.join(by_name) or 'none'})")
            above = float(w.number("above_percent", None, 0, 1000, example="80"))
        elif "above_percent" in when_raw:
            raise w.fail("budget", "above_percent needs the budget it refers to, e.g. budget: search-monthly")
        routes.append(
            Route(
                name,
                e.scope(),
                action,
                to,
                status,
                e.text("message"),
                budget,
                above,
                _window(when_raw, w, tz),
            )
        )

    cache = None
    if doc.get("cache") is not None:
        c = _Entry(doc["cache"], "cache", ("backend", "max_bytes", "max_entry_bytes", "ttl_seconds", "rules"))
        backend = c.text("backend", "memory")
        if backend != "memory" and not backend.startswith(("redis://", "rediss://", "unix://")):
            raise c.fail("backend", "write memory, or a Redis URL such as redis://localhost:6379/0")
        max_bytes = c.integer("max_bytes", 64 * MIB, 1024, 2**40)
        rules = []
        raw_rules = doc["cache"].get("rules") or []
        if not isinstance(raw_rules, list):
            raise c.fail("rules", "expected a list of {match: {...}, ttl_seconds: N}")
        for i, raw in enumerate(raw_rules):
            rc = _Entry(raw, f"cache.rules[{i}]", ("match", "ttl_seconds"))
            ttl = None
            if raw.get("ttl_seconds") is not None:
                ttl = float(rc.positive("ttl_seconds", None, 1e8, example="600"))
            rules.append(CacheRule(rc.scope(), ttl))
        cache = CacheSpec(
            backend,
            max_bytes,
            min(c.integer("max_entry_bytes", 4 * MIB, 1, 2**31), max_bytes),
            float(c.positive("ttl_seconds", 3600.0, 1e8, example="3600")),
            tuple(rules),
        )

    tokens: list[ClientToken] = []
    for i, raw in enumerate(_list(doc, "tokens")):
        e = _Entry(raw, f"tokens[{i}]", ("sha256", "team", "app", "user"))
        hexdigest = e.text("sha256", required=True, example="$(printf %s TOKEN | sha256sum | cut -d' ' -f1)")
        try:
            digest = bytes.fromhex(hexdigest)
        except ValueError:
            digest = b""
        if len(digest) != 32:
            raise e.fail("sha256", "must be a sha256 hex digest (64 characters): printf %s TOKEN | sha256sum")
        attrs = {k: e.text(k) for k in ("team", "app", "user")}
        if not any(attrs.values()):
            raise ControlsError(f"{e.where}: give at least one of team, app, user (what the token is attributed to)")
        tokens.append(ClientToken(digest, attrs["team"], attrs["app"], attrs["user"]))

    reports: list[Report] = []
    for i, raw in enumerate(_list(doc, "reports")):
        e = _Entry(raw, _named(raw, f"reports[{i}]"), ("name", "every", "by", "webhook", "timezone", "top"))
        reports.append(
            Report(
                e.text("name", required=True, example="weekly-by-team"),
                e.choice("every", ("weekly", "monthly")),
                e.choice("by", DIMENSIONS, "team"),
                str(hook(e, required=True)),
                e.timezone("timezone", tz),
                e.integer("top", 10, 1, 100),
            )
        )

    return ControlsSpec(
        source,
        tz,
        float(refresh),
        on_error,
        reserve,
        webhooks,
        tuple(budgets),
        tuple(routes),
        cache,
        tuple(tokens),
        tuple(reports),
    )


def load(path: str) -> ControlsSpec:
    """Read and validate a controls file (YAML or JSON)."""
    import yaml

    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise ControlsError(f"controls file {path}: cannot read it ({exc.strerror})") from None
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        raise ControlsError(f"controls file {path}: not valid YAML or JSON{at}") from None
    try:
        return parse(doc, path)
    except ControlsError as exc:
        raise ControlsError(f"controls file {path}: {exc}") from None
