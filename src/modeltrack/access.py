"""Client tokens (``X-ModelTrack-Key``): who may use the proxy, and which of them carry fixed attribution.

A token can be pinned to a team, app and/or user (``MODELTRACK_CLIENT_TOKENS=@file`` lines such as
``<sha256 hex> team=search app=web``, or the controls file's ``tokens:``). A request with such a token is
attributed to those values whatever ``X-ModelTrack-*`` headers it sends: one team cannot spend another team's
budget by claiming its name. Only digests are kept (and only digests need be written in files:
``printf %s TOKEN | sha256sum``). The check hashes the given token and compares it with *every* configured
digest in constant time, so neither a token's length nor its position in the list shows in the timing.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping

from .config import ConfigError

ATTRIBUTES = ("team", "app", "user")


class ClientTokens:
    def __init__(self, tokens: Mapping[bytes, Mapping[str, str]] | None = None) -> None:
        self.tokens = {d: dict(a) for d, a in (tokens or {}).items()}

    def __bool__(self) -> bool:
        return bool(self.tokens)

    def __len__(self) -> int:
        return len(self.tokens)

    def merged(self, more: Mapping[bytes, Mapping[str, str]]) -> ClientTokens:
        """These tokens plus ``more`` (the controls file's), whose attribution wins for a digest in both."""
        out = dict(self.tokens)
        for d, a in more.items():
            out[d] = {**out.get(d, {}), **a}
        return ClientTokens(out)

    def lookup(self, given: bytes) -> dict[str, str] | None:
        """The token's fixed attribution (possibly empty), or None when it is not a valid token."""
        digest = hashlib.sha256(given).digest()
        found: dict[str, str] | None = None
        for expected, attrs in self.tokens.items():
            if hmac.compare_digest(digest, expected):
                found = attrs
        return found

    @classmethod
    def from_setting(cls, spec: str, variable: str = "MODELTRACK_CLIENT_TOKENS") -> ClientTokens:
        """``tok1,tok2`` (plain tokens), or ``@/path/file``: one ``<sha256 hex> [team=..] [app=..] [user=..]``
        per line, ``#`` comments."""
        if not spec:
            return cls()
        if not spec.startswith("@"):
            return cls({hashlib.sha256(t.strip().encode()).digest(): {} for t in spec.split(",") if t.strip()})
        try:
            with open(spec[1:]) as f:
                lines = f.read().splitlines()
        except OSError as exc:
            raise ConfigError(f"{variable}: cannot read {spec[1:]} ({exc.strerror})") from None
        tokens: dict[bytes, dict[str, str]] = {}
        for n, line in enumerate(lines, 1):
            words = line.split("#", 1)[0].split()
            if not words:
                continue
            try:
                raw = bytes.fromhex(words[0])
            except ValueError:
                raw = b""
            if len(raw) != 32:
                raise ConfigError(
                    f"{variable} file line {n}: start each line with a sha256 hex digest "
                    "(`printf %s TOKEN | sha256sum`), then optionally team=NAME app=NAME user=NAME"
                )
            attrs: dict[str, str] = {}
            for word in words[1:]:
                key, sep, value = word.partition("=")
                if not sep or key not in ATTRIBUTES or not value:
                    raise ConfigError(f"{variable} file line {n}: {word!r} is not team=NAME, app=NAME or user=NAME")
                attrs[key] = value
            tokens[raw] = attrs
        return cls(tokens)
