"""The gate: who sends a request (a ModelTrack key, a client token, or no one) and whether that key's rules and
rate limits let it through. The proxy calls it at two defined points of a request:

1. :meth:`Gate.identify`, before the route is resolved and the body read: a missing, unknown, revoked or
   unverifiable key is refused at once. The key's own attribution is fixed here; its value is never logged,
   recorded or forwarded.
2. :meth:`Gate.admit_now` (or :meth:`Gate.admit`, when this process's lease of a shared bucket has run out), once
   the model is known: the key's expiry and allowed models, then its RPM and TPM limits
   (:mod:`modeltrack.controls.ratelimit`). A TPM limit reserves the request's worst case, bounded as a budget's
   reservation is (:func:`modeltrack.controls.estimate.bound_tokens`); the bounds are handed on, so budgets do
   not compute them again.

And :meth:`Gate.swap_key`, for a ModelTrack key given to the SDK as its API key: the team's provider key takes its
place, in the same header and scheme.

Nothing here awaits on the common path: a request with no key costs a few attribute reads, one with a key a
dict lookup (the key's SHA-256 is taken once per key and reload: KeyRing.lookup; bench/controls.py and
bench/instructions.py measure both). Held by tests/test_accounts.py (keys, their rules,
provider keys in their place), tests/test_ratelimits.py and tests/test_tenants.py.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final, NamedTuple

from ..access import ClientTokens
from ..controls.estimate import bound_tokens
from ..controls.ratelimit import RateLimiter, RateRefusal, Ticket
from ..controls.spec import Reserve
from .credentials import ProviderKeys, sdk_key
from .keyring import Grant, KeyRing


class Refusal(NamedTuple):
    """Answered in the provider's error shape."""

    status: int
    kind: str
    message: str


RATE_RESERVE: Final = Reserve()  # a TPM reservation is bounded as a budget's is (controls.estimate)
UNLIMITED: Final = Ticket((), 0.0)
"""What :meth:`Gate.admit_now` answers for a key with no rate limits (nothing was taken; one shared record)."""


@dataclass(slots=True, init=False)
class Identity:
    """Who sent the request: ``grant`` for a ModelTrack key, ``fixed`` the attribution that beats the headers (a
    key's or a client token's), ``as_api_key`` when the key came as the SDK's own API key."""

    grant: Grant | None = None
    fixed: dict[str, str] | None = None
    as_api_key: bool = False

    def __init__(
        self, grant: Grant | None = None, fixed: dict[str, str] | None = None, as_api_key: bool = False
    ) -> None:
        # Not the dataclass's: compiled, it is a direct call, not an interpreted __init__ (~1,300 instructions).
        self.grant = grant
        self.fixed = fixed
        self.as_api_key = as_api_key


ANONYMOUS: Final = Identity()
LOADING: Final = Identity()
"""Returned by :meth:`Gate.identify` while the keys are still loading: await :meth:`Gate.loaded`, then ask again."""


class Gate:
    def __init__(
        self,
        keyring: KeyRing | None,
        ratelimiter: RateLimiter,
        provider_keys: ProviderKeys,
        client_tokens: ClientTokens,
        *,
        multi_tenant: bool,
        require_key: bool,
    ) -> None:
        """``keyring``: the store's ModelTrack keys (None: the store keeps none). ``client_tokens``: the tokens of
        ``MODELTRACK_CLIENT_TOKENS`` and the controls file (empty: access control off; replaced on a reload).
        ``multi_tenant``: every request carries an org's key, which fixes the org of all it makes."""
        self.keyring = keyring
        self.ratelimiter = ratelimiter
        self.provider_keys = provider_keys
        self.client_tokens = client_tokens
        self.multi_tenant = multi_tenant
        self.require_key = require_key or multi_tenant
        self._last = ANONYMOUS

    def identify(self, headers: Any, given: bytes) -> Identity | Refusal:
        """``given``: the X-ModelTrack-Key header's value (or ``b""``); ``headers`` the request's, where a key
        may stand as the SDK's API key instead."""
        keyring = self.keyring
        as_api_key = False
        if not given and keyring is not None and self.provider_keys:
            found = sdk_key(headers)  # the ModelTrack key given to the SDK as its API key
            if found is not None:
                given, as_api_key = found[1], True
        if given.startswith(b"mt_") and keyring is not None:
            if not keyring.loaded:
                return LOADING
            grant = keyring.lookup(given)
            if grant is None:
                return Refusal(401, "invalid_key", "This X-ModelTrack-Key is not a valid ModelTrack key.")
            if keyring.stale():
                return Refusal(503, "keys_unavailable", "Keys cannot be checked: the store is unreachable.")
            last = self._last
            if last.grant is grant and last.as_api_key == as_api_key:
                return last  # the last request's key (read only, so shared): no record to build and free
            ident = self._last = Identity(grant, grant.fixed, as_api_key)
            return ident
        if self.client_tokens and not self.multi_tenant:
            fixed = self.client_tokens.lookup(given)
            if fixed is None:
                return Refusal(401, "invalid_client_token", "A valid X-ModelTrack-Key header is required.")
            return Identity(None, fixed)
        if self.require_key:
            return Refusal(401, "key_required", "Send a ModelTrack key (mt_...) in the X-ModelTrack-Key header.")
        return ANONYMOUS

    async def loaded(self) -> bool:
        """Wait for the first load of the keys (the proxy listens before it loads: a busy port must fail first);
        False when it did not come in time."""
        return self.keyring is not None and await self.keyring.wait_loaded()

    def admit_now(
        self, grant: Grant, model: str | None, wall: float, body_bytes: int, body: Any, reserve: Reserve | None
    ) -> Ticket | Refusal | RateRefusal | None:
        """The key's rules and limits for a request whose model is now known: the rate ticket (its ``bounds``
        the request's token bounds, when a TPM limit needed them), a refusal, or None when a limit's lease has
        run out and :meth:`admit` must ask the shared bucket (nothing is taken then). A key without limits gets
        :data:`UNLIMITED`. ``reserve``: the controls file's, if any."""
        if grant.ruled:
            refused = grant.refusal(model, wall)
            if refused is not None:
                return Refusal(*refused)
        assert self.keyring is not None  # a grant comes from it
        self.keyring.used_now(grant.key_id, wall)
        if not grant.limits:
            return UNLIMITED
        tokens, bounds = self._tokens(grant, body_bytes, body, reserve)
        return self.ratelimiter.take_now(grant.limits, tokens, bounds)

    async def admit(self, grant: Grant, body_bytes: int, body: Any, reserve: Reserve | None) -> Ticket | RateRefusal:
        """:meth:`admit_now`'s limits, asking the shared buckets (its rules were checked already)."""
        tokens, bounds = self._tokens(grant, body_bytes, body, reserve)
        return await self.ratelimiter.admit(grant.limits, tokens, bounds)

    @staticmethod
    def _tokens(
        grant: Grant, body_bytes: int, body: Any, reserve: Reserve | None
    ) -> tuple[int, tuple[int, int] | None]:
        """What a TPM limit takes (the request's worst-case tokens) and those bounds; (0, None) without one. (A
        fixed-size tuple: compiled, it is returned unboxed, not allocated.)"""
        if not grant.tpm:
            return 0, None
        bounds = bound_tokens(body_bytes, body, reserve or RATE_RESERVE)
        return bounds[0] + bounds[1], bounds

    def swap_key(self, grant: Grant, provider: str, lines: list[tuple[bytes, bytes]]) -> Refusal | None:
        """Put the team's provider key where the client sent its ModelTrack key as the SDK's API key (same header,
        same scheme), in the forwarded header ``lines``; a refusal when the server holds none for that team."""
        secret = self.provider_keys.key_for(
            grant.team_id, provider, None if self.multi_tenant else grant.attrs.get("team")
        )
        at = sdk_key(lines)
        if secret is None or at is None:
            return Refusal(
                401,
                "no_provider_key",
                f"No {provider} key is configured on the server for this key's team: add one to "
                "MODELTRACK_PROVIDER_KEYS_FILE, or send your own provider key with the ModelTrack key in "
                "X-ModelTrack-Key.",
            )
        name, value = lines[at[0]]
        lines[at[0]] = (name, value[: value.find(b"mt_")] + secret.encode())
        return None


def tokens_in_force(
    env_tokens: ClientTokens, controls_tokens: Mapping[bytes, Mapping[str, str]] | None
) -> ClientTokens:
    """``MODELTRACK_CLIENT_TOKENS`` plus the controls file's tokens (computed again after a reload)."""
    return env_tokens if controls_tokens is None else env_tokens.merged(controls_tokens)
