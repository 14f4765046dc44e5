"""The request path's view of the organisation model: every ModelTrack key (``mt_…``) by digest, with what it
carries. The proxy asks :meth:`KeyRing.lookup` once per request: a comparison or a dict lookup, no store call.

Freshness: a background task reads the store's version counter every ``refresh_seconds`` (default 1 s) and
reloads the keys and teams when it moved, so a created, changed, rotated or revoked key takes effect on every
replica within ``refresh_seconds`` plus one reload (README, "Organisations, teams and keys": measured by
tests/test_accounts.py::test_a_revoked_key_stops_working_everywhere_within_the_stated_delay).

Outages: the last state loaded stays in force. ``on_store_error: open`` (the default) keeps serving it for as
long as the store is unreachable; ``closed`` refuses every key once the state is older than ``max_stale``
seconds (503), so a revocation made during an outage cannot be outlived by more than that.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import importlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final

from ..controls.match import Scope
from ..controls.ratelimit import Limit
from ..controls.spec import Budget
from .model import model_allowed
from .store import AccountStore

# The clocks as C statics: compiled, a call is then one indirect call, not an attribute lookup on the module
# (~30 ns a call, several a request).
monotonic: Final = time.monotonic
log: Final = logging.getLogger("modeltrack.accounts")
LOAD_WAIT_SECONDS: Final = 10.0
SEEN_MAX: Final = 4096


def _builtin_sha256() -> Callable[[bytes], Any]:
    """CPython's own SHA-256 (``_sha2``, ``_sha256`` before 3.12), not OpenSSL's: the digest is the same, but
    each OpenSSL call fetches the algorithm, locks and copies a context, and frees an ENGINE reference, ~5 µs of a
    keyed request at concurrency 1 (perf, bench/README.md). hashlib's, where neither module exists."""
    for name in ("_sha2", "_sha256"):
        with contextlib.suppress(ImportError):
            found: Callable[[bytes], Any] = importlib.import_module(name).sha256
            return found
    return hashlib.sha256


sha256: Final = _builtin_sha256()
"""SHA-256 of a presented key, for the lookup by digest on every keyed request
(tests/test_accounts.py::test_the_key_lookup_digest_is_sha256)."""


@dataclass(frozen=True, slots=True)
class Grant:
    """What a valid key carries: its id and org, its fixed attribution, and its own rules."""

    key_id: str
    org_id: str
    attrs: dict[str, str]  # team (the team's name), app, user: X-ModelTrack-* headers cannot override them
    allowed_models: tuple[str, ...]
    expires: float | None  # epoch seconds
    revoked: bool
    limits: tuple[Limit, ...] = ()  # the key's own RPM/TPM, its team's and its org's (controls.ratelimit)
    tpm: bool = False  # one of the limits counts tokens (the request's worst case is then bounded)
    team_id: str | None = None  # for the provider keys held per team (accounts.credentials)
    blocked: bool = False  # suspended by an admin until unblocked (revoking is for good)
    fixed: dict[str, str] = field(init=False, compare=False)
    """The attribution a request with this key gets (``attrs`` plus ``key_id`` and ``org``): built once here, read
    (never changed) by every request."""

    ruled: bool = field(init=False, compare=False)
    """The key is revoked, blocked, expires or names its models: :meth:`refusal` has something to check (else a
    request skips the call)."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "fixed", {**self.attrs, "key_id": self.key_id, "org": self.org_id})
        ruled = self.revoked or self.blocked or self.expires is not None or bool(self.allowed_models)
        object.__setattr__(self, "ruled", ruled)

    def refusal(self, model: str | None, now: float) -> tuple[int, str, str] | None:
        """(status, error type, message) when this key may not make the request, else None."""
        if self.revoked:
            return 401, "key_revoked", f"ModelTrack key {self.key_id} was revoked."
        if self.blocked:
            return 401, "key_blocked", f"ModelTrack key {self.key_id} is blocked: an admin of its org can unblock it."
        if self.expires is not None and now >= self.expires:
            return 401, "key_expired", f"ModelTrack key {self.key_id} has expired."
        if self.allowed_models and not model_allowed(self.allowed_models, model):
            allowed = ", ".join(self.allowed_models)
            return 403, "model_not_allowed", f"ModelTrack key {self.key_id} may use only: {allowed}."
        return None


def _stamps(used: dict[str, float]) -> dict[str, str]:
    return {k: datetime.fromtimestamp(v, UTC).strftime("%Y-%m-%dT%H:%M:%SZ") for k, v in used.items()}


def _epoch(stamp: str | None) -> float | None:
    if not stamp:
        return None
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).astimezone(UTC).timestamp()


def _limits(scope: str, record: dict[str, Any] | None) -> list[Limit]:
    if not record:
        return []
    out = []
    if record.get("rpm"):
        out.append(Limit(f"{scope}:rpm", int(record["rpm"]), "requests"))
    if record.get("tpm"):
        out.append(Limit(f"{scope}:tpm", int(record["tpm"]), "tokens"))
    return out


def build(
    keys: list[dict[str, Any]], teams: list[dict[str, Any]], limits: list[dict[str, Any]] | None = None
) -> dict[bytes, Grant]:
    """The digest → grant map. A key's allowed models are its own list, else its team's; its rate limits are its
    own, its team's and its org's (a ``limits`` record with a ``team_id``, or without one for the org)."""
    by_id = {t["id"]: t for t in teams}
    team_limits: dict[str, list[Limit]] = {}
    org_limits: dict[str, list[Limit]] = {}
    for lim in limits or []:
        if lim.get("team_id"):
            team_limits.setdefault(lim["team_id"], []).extend(_limits(f"team:{lim['team_id']}", lim))
        else:
            org_limits.setdefault(lim["org_id"], []).extend(_limits(f"org:{lim['org_id']}", lim))
    out: dict[bytes, Grant] = {}
    for k in keys:
        team = by_id.get(k.get("team_id") or "")
        attrs = {
            name: str(value)
            for name, value in (
                ("team", team["name"] if team else None),
                ("app", k.get("app")),
                ("user", k.get("user")),
            )
            if value
        }
        allowed = k.get("allowed_models") or (team.get("allowed_models") if team else None) or ()
        key_limits = (
            *_limits(f"key:{k['id']}", k),
            *team_limits.get(k.get("team_id") or "", ()),
            *org_limits.get(k["org_id"], ()),
        )
        out[bytes.fromhex(k["digest"])] = Grant(
            key_id=k["id"],
            org_id=k["org_id"],
            attrs=attrs,
            allowed_models=tuple(allowed),
            expires=_epoch(k.get("expires")),
            revoked=bool(k.get("revoked")),
            blocked=bool(k.get("blocked")),
            limits=key_limits,
            tpm=any(lim.tokens for lim in key_limits),
            team_id=team["id"] if team else None,
        )
    return out


def store_budgets(
    budgets: list[dict[str, Any]],
    teams: list[dict[str, Any]],
    multi_tenant: bool = False,
    keys: list[dict[str, Any]] | None = None,
) -> tuple[Budget, ...]:
    """The store's budgets as the controls' budgets: a team's matches its requests by team name (what keys and
    headers attribute), an org's matches everything; periods are calendar periods in UTC. In multi-tenant mode
    each also matches its own org only (the org its keys stamp on every request), so no org spends another's
    budget and no team budget counts another org's team of the same name.

    A key with a ``budget_usd`` gets a block budget of its own (``budget_period``, monthly when unset), matched by
    the key's public id: the requests made with that key, and no other."""
    names = {t["id"]: t["name"] for t in teams}
    out = []
    for b in budgets:
        team = names.get(b.get("team_id") or "")
        if b.get("team_id") and team is None:
            continue  # its team is gone
        exact: list[tuple[str, str]] = [("team", str(team))] if team else []
        if multi_tenant:
            exact.append(("org", str(b["org_id"])))
        out.append(
            Budget(
                name=f"{b['name']} [{b['id']}]",
                scope=Scope(tuple(exact)),
                period=str(b["period"]),
                timezone="UTC",
                limit_usd=float(b["limit_usd"]),
                action=str(b.get("action") or "block"),
            )
        )
    for k in keys or ():
        if not k.get("budget_usd") or k.get("revoked"):
            continue
        scope: list[tuple[str, str]] = [("key_id", str(k["id"]))]
        if multi_tenant:
            scope.append(("org", str(k["org_id"])))
        out.append(
            Budget(
                name=f"key {k['name']} [{k['id']}]",
                scope=Scope(tuple(scope)),
                period=str(k.get("budget_period") or "monthly"),
                timezone="UTC",
                limit_usd=float(k["budget_usd"]),
                action="block",
            )
        )
    return tuple(sorted(out, key=lambda b: b.name))


class KeyRing:
    def __init__(
        self,
        store: AccountStore,
        refresh_seconds: float = 1.0,
        on_store_error: str = "open",
        max_stale: float = 60.0,
        touch_seconds: float = 30.0,
        multi_tenant: bool = False,
    ) -> None:
        self.store = store
        self.multi_tenant = multi_tenant
        self.refresh_seconds = refresh_seconds
        self.on_store_error = on_store_error
        self.max_stale = max_stale
        self.touch_seconds = touch_seconds
        self.grants: dict[bytes, Grant] = {}
        self._seen: dict[bytes, Grant] = {}  # presented key → its grant, for this load only (see lookup)
        self._last: tuple[bytes, Grant | None] = (b"", None)  # the last key found, and its grant
        self.version = -1
        self.loaded_at = 0.0  # monotonic: when the store last answered
        self.used: dict[str, float] = {}  # key id → last use (epoch), written to the store every touch_seconds
        self.on_budgets: Callable[[tuple[Budget, ...]], None] | None = None  # the controls' budgets, when loaded
        self.loaded = False  # the first load is done: until then a key is neither valid nor invalid
        self._loaded = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._last_touch = monotonic()
        self._last_error_log = 0.0

    def __bool__(self) -> bool:
        return bool(self.grants)

    def lookup(self, given: bytes) -> Grant | None:
        """The key's grant, or None for no such key. (A dict lookup by digest: the digest of a guess says
        nothing about a real key's digest, so no constant-time scan is needed here.)

        The SHA-256 is ~3,300 CPU instructions, a tenth of what a key, its limits and a budget add to a request
        (callgrind, bench/README.md), so a valid key's grant is remembered by the bytes presented, in memory
        only, until the next load: a revoked, blocked or changed key is looked up afresh at the reload that
        brings the change (the delay stays ``refresh_seconds``). Unknown keys are never remembered, so guesses
        cannot fill it; at most ``SEEN_MAX`` keys are (then it starts again). The last key found is compared
        first: a client's keep-alive connection sends the same key request after request."""
        last = self._last
        if given == last[0]:  # the key of the last request (a client's keep-alive connection): compared, not hashed
            return last[1]
        grant = self._seen.get(given)
        if grant is None:
            grant = self.grants.get(sha256(given).digest())
            if grant is not None:
                seen = self._seen
                if len(seen) >= SEEN_MAX:
                    seen.clear()
                seen[given] = grant
        if grant is not None:
            self._last = (given, grant)
        return grant

    def stale(self) -> bool:
        """Fail closed: the store has not answered for longer than ``max_stale``."""
        return self.on_store_error == "closed" and monotonic() - self.loaded_at > self.max_stale

    def used_now(self, key_id: str, wall: float) -> None:
        self.used[key_id] = wall  # formatted only when written (every touch_seconds): per request, a float

    async def refresh(self) -> bool:
        """Reload when the version moved; True when something new was loaded."""
        version = await self.store.version()
        self.loaded_at = monotonic()
        if version == self.version:
            return False
        keys, teams = await self.store.records("keys"), await self.store.records("teams")
        self.grants = build(keys, teams, await self.store.records("limits"))
        self._seen = {}
        self._last = (b"", None)
        if self.on_budgets is not None:
            self.on_budgets(store_budgets(await self.store.records("budgets"), teams, self.multi_tenant, keys))
        log.info("keys: %d loaded (store version %d)", len(self.grants), version)
        self.version = version
        if not self.loaded:
            self.loaded = True
            self._loaded.set()
        return True

    async def wait_loaded(self) -> bool:
        """For the requests that arrive while the proxy starts (it listens before it loads: a busy port must
        fail first): they wait for the first load instead of being told a valid key is invalid."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(LOAD_WAIT_SECONDS):
                await self._loaded.wait()
        return self.loaded

    async def start(self) -> None:
        try:
            await self.refresh()
        except Exception as exc:  # noqa: BLE001 - the proxy starts; keys load when the store answers
            log.warning("keys: the store could not be read at start-up (%s); retrying", type(exc).__name__)
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="modeltrack-keyring")

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.refresh_seconds)
            try:
                await self.refresh()
                if self.used and monotonic() - self._last_touch >= self.touch_seconds:
                    used, self.used = self.used, {}
                    self._last_touch = monotonic()
                    await self.store.touch(_stamps(used))
            except Exception as exc:  # noqa: BLE001 - keep the last state (see the module docstring)
                now = monotonic()
                if now - self._last_error_log > 30:
                    self._last_error_log = now
                    log.warning("keys: the store did not answer (%s); keeping the last state", type(exc).__name__)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(BaseException):
                await self._task
            self._task = None
        if self.used:
            with contextlib.suppress(Exception):
                await self.store.touch(_stamps(self.used))
        await self.store.close()
