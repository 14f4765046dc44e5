"""The organisation model as data: orgs → teams → keys, members, budgets and rate limits. Each kind is a schema
(its fields, their types, which are required, which only the server writes), so validation, the admin API's
errors, the CLI and ``admin export``/``apply`` all read one table, as genai-prices reads its data.

A record is a plain JSON object with ``id`` and ``org_id``. Secrets never are: a ModelTrack key (``mt_…``) is
shown once when it is created or rotated, and stored only as its SHA-256 digest with a short display prefix;
a member's sign-in token likewise (tests/test_accounts.py::test_only_digests_are_stored).
"""

from __future__ import annotations

import fnmatch
import hashlib
import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

ROLES = ("org_admin", "team_admin", "viewer")
PERIODS = ("daily", "weekly", "monthly")
KEY_PREFIX = "mt_"
MEMBER_TOKEN_PREFIX = "mtm_"


class AccountError(ValueError):
    """A request the model refuses; ``status`` is the HTTP status the admin API answers with."""

    def __init__(self, message: str, status: int = 400, kind: str = "invalid_request") -> None:
        super().__init__(message)
        self.status = status
        self.kind = kind


def _text(v: Any) -> str:
    if not isinstance(v, str) or not v.strip() or len(v) > 200:
        raise ValueError("a non-empty text of at most 200 characters")
    return v.strip()


def _opt_text(v: Any) -> str | None:
    return None if v is None else _text(v)


def _models(v: Any) -> list[str] | None:
    if v is None:
        return None
    if not isinstance(v, list) or not all(isinstance(m, str) and m.strip() for m in v) or len(v) > 500:
        raise ValueError('a list of model names or globs, e.g. ["gpt-4o-mini", "claude-*"]')
    return [m.strip() for m in v]


def _count(v: Any) -> int | None:
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= 10**12:
        raise ValueError("a whole number from 1, or null for no limit")
    return v


def _flag(v: Any) -> bool:
    if v is None:
        return False  # null clears it, as it clears any optional field
    if not isinstance(v, bool):
        raise ValueError("true or false")
    return v


def _usd(v: Any) -> float | None:
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 < v <= 10**9:
        raise ValueError("an amount in USD above 0, e.g. 25 or 0.5")
    return float(v)


def _period(v: Any) -> str | None:
    if v is None:
        return None
    if v not in PERIODS:
        raise ValueError(f"one of {', '.join(PERIODS)}")
    return str(v)


def _role(v: Any) -> str:
    if v not in ROLES:
        raise ValueError(f"one of {', '.join(ROLES)}")
    return str(v)


def _instant(v: Any) -> str | None:
    if v is None:
        return None
    if not isinstance(v, str):
        raise ValueError("an RFC 3339 instant, e.g. 2027-01-31T00:00:00Z")
    try:
        when = datetime.fromisoformat(v.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError("an RFC 3339 instant, e.g. 2027-01-31T00:00:00Z") from None
    if when.tzinfo is None:
        raise ValueError("an instant with its offset, e.g. 2027-01-31T00:00:00Z")
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _action(v: Any) -> str:
    if v not in ("block", "warn"):
        raise ValueError("block or warn")
    return str(v)


def _ref(v: Any) -> str | None:
    return None if v is None else _text(v)


@dataclass(frozen=True)
class Field:
    check: Callable[[Any], Any]
    required: bool = False
    default: Any = None


Schema = Mapping[str, Field]

SCHEMAS: dict[str, Schema] = {
    "orgs": {"name": Field(_text, True)},
    "teams": {
        "name": Field(_text, True),
        "allowed_models": Field(_models),
        "description": Field(_opt_text),
    },
    "keys": {
        "name": Field(_text, True),
        "team_id": Field(_ref),
        "app": Field(_opt_text),
        "user": Field(_opt_text),
        "allowed_models": Field(_models),
        "expires": Field(_instant),
        "rpm": Field(_count),
        "tpm": Field(_count),
        "budget_usd": Field(_usd),
        "budget_period": Field(_period),
        "blocked": Field(_flag, False, False),
    },
    "members": {
        "subject": Field(_text, True),
        "role": Field(_role, True),
        "team_id": Field(_ref),
    },
    "budgets": {
        "name": Field(_text, True),
        "team_id": Field(_ref),
        "limit_usd": Field(_usd, True),
        "period": Field(_period, True),
        "action": Field(_action, False, "block"),
    },
    "limits": {
        "team_id": Field(_ref),
        "rpm": Field(_count),
        "tpm": Field(_count),
    },
}
KINDS = tuple(SCHEMAS)
SERVER_FIELDS = ("id", "org_id", "created", "digest", "prefix", "revoked", "last_used", "token_digest")
"""Written by the server only: a client that sends them is told so, not silently ignored."""
ID_PREFIX = {"orgs": "org", "teams": "team", "keys": "key", "members": "mem", "budgets": "bud", "limits": "lim"}


def now_stamp() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def new_id(kind: str) -> str:
    return f"{ID_PREFIX[kind]}_{secrets.token_hex(6)}"


def digest(secret: str | bytes) -> str:
    raw = secret.encode() if isinstance(secret, str) else secret
    return hashlib.sha256(raw).hexdigest()


def new_secret(prefix: str = KEY_PREFIX) -> str:
    """``mt_`` + 43 URL-safe characters (256 random bits): what ``secrets`` recommends for tokens."""
    return prefix + secrets.token_urlsafe(32)


def display_prefix(secret: str) -> str:
    """Enough to tell keys apart in a list (``mt_Ab3x…``), far too little to guess the rest from."""
    return secret[: len(KEY_PREFIX) + 4] + "…"


def validate(kind: str, body: Any, partial: bool = False) -> dict[str, Any]:
    """The fields of ``body`` checked against the kind's schema; every mistake names its field and says what
    to write. ``partial``: a PATCH (only the fields given; null clears an optional field)."""
    if kind not in SCHEMAS:
        raise AccountError(f"unknown kind {kind!r}: one of {', '.join(KINDS)}", 404, "not_found")
    if not isinstance(body, dict):
        raise AccountError("send a JSON object")
    schema = SCHEMAS[kind]
    server = sorted(k for k in body if k in SERVER_FIELDS)
    if server:
        raise AccountError(f"{', '.join(server)}: written by the server, not by a request")
    unknown = sorted(k for k in body if k not in schema)
    if unknown:
        raise AccountError(f"unknown field {unknown[0]!r}; {kind} take: {', '.join(schema)}")
    out: dict[str, Any] = {}
    for name, f in schema.items():
        if name not in body:
            if partial:
                continue
            if f.required:
                raise AccountError(f"{name}: required")
            out[name] = f.default
            continue
        value = body[name]
        if value is None and f.required:
            raise AccountError(f"{name}: required, cannot be null")
        try:
            out[name] = f.check(value)
        except ValueError as exc:
            raise AccountError(f"{name}: must be {exc}") from None
    return out


def model_allowed(allowed: list[str] | tuple[str, ...] | None, model: str | None) -> bool:
    """No list: any model. A list: the request's model matches one of its names or globs (a request whose
    model cannot be read is not allowed)."""
    if not allowed:
        return True
    if not model:
        return False
    m = model.lower()
    return any(fnmatch.fnmatchcase(m, pattern.lower()) for pattern in allowed)


def public(record: Mapping[str, Any]) -> dict[str, Any]:
    """A record as the API, the CLI and the audit log show it: never a digest."""
    return {k: v for k, v in record.items() if k not in ("digest", "token_digest")}
