"""Who may read the API and the dashboard.

* **Tokens** (``MODELTRACK_UI_TOKENS``: ``tok1,tok2`` or ``@FILE`` of sha256 digests, the client-token format):
  read-only; required whenever the service listens beyond loopback. An API client sends
  ``Authorization: Bearer <token>``; a token is hashed and compared with every configured digest in constant
  time.
* **The dashboard** logs in with the same token and gets a session cookie: ``HttpOnly``, ``SameSite=Strict``,
  ``Secure`` over HTTPS, valid 12 hours. The cookie is ``expiry.digest-prefix.HMAC`` with a key derived from the
  configured digests, so it is valid on every replica with the same tokens, survives restarts, and dies when
  its token is removed from the configuration. It names a digest prefix, never the token.
* **CSRF:** the only requests that change anything (log in, log out) must be same-origin (``Origin`` or
  ``Sec-Fetch-Site``) JSON; everything else is a read. No CORS headers are ever sent.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from typing import Any

from ..access import ClientTokens

COOKIE = "modeltrack_session"
SESSION_SECONDS = 12 * 3600


class UIAuth:
    def __init__(self, tokens: ClientTokens) -> None:
        self.digests = sorted(tokens.tokens)
        self.tokens = tokens
        self._key = hashlib.sha256(b"modeltrack-ui-session\0" + b"".join(self.digests)).digest()

    @property
    def enabled(self) -> bool:
        return bool(self.digests)

    def token_digest(self, given: str) -> bytes | None:
        if self.tokens.lookup(given.encode()) is None:
            return None
        return hashlib.sha256(given.encode()).digest()

    def _mac(self, message: str) -> str:
        return hmac.new(self._key, message.encode(), hashlib.sha256).hexdigest()

    def cookie_for(self, digest: bytes, now: float | None = None) -> str:
        expiry = int((now or time.time()) + SESSION_SECONDS)
        message = f"{expiry}.{digest[:8].hex()}"
        return f"{message}.{self._mac(message)}"

    def cookie_valid(self, value: str, now: float | None = None) -> bool:
        parts = value.split(".")
        if len(parts) != 3 or not parts[0].isdigit():
            return False
        expiry, prefix, mac = parts
        if int(expiry) < (now or time.time()):
            return False
        if not hmac.compare_digest(self._mac(f"{expiry}.{prefix}"), mac):
            return False
        return any(d[:8].hex() == prefix for d in self.digests)  # its token is still configured

    def request_allowed(self, headers: Any, cookies: Any) -> bool:
        if not self.enabled:
            return True
        auth = headers.get("Authorization", "")
        if auth.startswith("Bearer ") and self.token_digest(auth[7:].strip()) is not None:
            return True
        cookie = cookies.get(COOKIE)
        return bool(cookie) and self.cookie_valid(cookie)


def same_origin(headers: Any, host: str, scheme: str) -> bool:
    """A state-changing request from our own pages (not another site's form or script)."""
    origin = headers.get("Origin")
    if origin is not None:
        return bool(origin == f"{scheme}://{host}")
    return bool(headers.get("Sec-Fetch-Site") == "same-origin")


def set_session_cookie(resp: Any, request: Any, name: str, value: str) -> None:
    """A session cookie as every sign-in here sets it: HttpOnly, SameSite=Strict, 12 hours, Secure over HTTPS
    (also behind a TLS-terminating load balancer: trusting the header can only make the cookie stricter)."""
    resp.set_cookie(
        name,
        value,
        max_age=SESSION_SECONDS,
        httponly=True,
        samesite="Strict",
        secure=request.secure or request.headers.get("X-Forwarded-Proto", "").lower() == "https",
        path="/",
    )
