"""Dashboard sign-in with any standard OpenID Connect provider (authorization code flow with PKCE, state and
nonce), beside the token login. The ID token is verified with the well-kept ``joserfc`` (signature against the
provider's JWKS, issuer, audience, expiry, nonce); nothing about it is hand-rolled.

Claims map to the organisation model (``MODELTRACK_OIDC_*_CLAIM``): a role (``org_admin``, ``team_admin``,
``viewer``; anything else, or no claim, is ``MODELTRACK_OIDC_DEFAULT_ROLE``), an org (an org id or name; the
default org when absent) and a team (by name). The session is the admin cookie (``ui.admin``) of kind ``o``:
HttpOnly, SameSite=Strict, 12 hours, its claims signed with a key derived from the client secret, so any
replica with the same configuration accepts it. Held by tests/test_oidc.py (against a local OIDC provider).

    GET /api/v1/oidc/login      → 302 to the provider (a short-lived signed cookie holds state, nonce, verifier)
    GET /api/v1/oidc/callback   → checks, exchanges the code, verifies the ID token, signs in, 302 to /
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time
from typing import Any
from urllib.parse import urlencode

import aiohttp
import orjson
from aiohttp import web

from ..accounts import ROLES, AccountError, Actor, Admin
from ..accounts.admin import DEFAULT_ORG
from ..config import Settings
from .auth import SESSION_SECONDS, set_session_cookie

FLOW_COOKIE = "modeltrack_oidc"
FLOW_SECONDS = 600


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class OIDC:
    def __init__(self, settings: Settings, admin: Admin) -> None:
        self.s = settings
        self.admin = admin
        self.key = hashlib.sha256(b"modeltrack-oidc\0" + settings.oidc_client_secret.encode()).digest()
        self._meta: dict[str, Any] | None = None
        self._jwks: Any = None

    def sign(self, payload: dict[str, Any], seconds: float) -> str:
        body = _b64(orjson.dumps({**payload, "exp": int(time.time() + seconds)}))
        return body + "." + hmac.new(self.key, body.encode(), hashlib.sha256).hexdigest()

    def verify(self, value: str) -> dict[str, Any] | None:
        body, _, mac = value.partition(".")
        good = hmac.new(self.key, body.encode(), hashlib.sha256).hexdigest()
        if not mac or not hmac.compare_digest(good, mac):
            return None
        try:
            payload = orjson.loads(_unb64(body))
        except (ValueError, orjson.JSONDecodeError):
            return None
        return payload if isinstance(payload, dict) and payload.get("exp", 0) > time.time() else None

    async def metadata(self, session: aiohttp.ClientSession) -> dict[str, Any]:
        if self._meta is None:
            url = self.s.oidc_issuer.rstrip("/") + "/.well-known/openid-configuration"
            async with session.get(url) as r:
                if r.status != 200:
                    raise AccountError(f"the OIDC provider's discovery document answered {r.status}", 502, "oidc_error")
                self._meta = await r.json()
            from joserfc.jwk import KeySet

            async with session.get(self._meta["jwks_uri"]) as r:
                self._jwks = KeySet.import_key_set(await r.json())
        return self._meta

    def redirect_uri(self, request: web.Request) -> str:
        return self.s.oidc_redirect_url or f"{request.scheme}://{request.host}/api/v1/oidc/callback"

    def routes(self) -> list[web.RouteDef]:
        return [web.get("/api/v1/oidc/login", self.login), web.get("/api/v1/oidc/callback", self.callback)]

    async def login(self, request: web.Request) -> web.StreamResponse:
        async with aiohttp.ClientSession() as session:
            meta = await self.metadata(session)
        state, nonce, verifier = secrets.token_urlsafe(24), secrets.token_urlsafe(24), secrets.token_urlsafe(48)
        challenge = _b64(hashlib.sha256(verifier.encode()).digest())
        query = {
            "response_type": "code",
            "client_id": self.s.oidc_client_id,
            "redirect_uri": self.redirect_uri(request),
            "scope": "openid email profile",
            "state": state,
            "nonce": nonce,
            "code_challenge": challenge,
            "code_challenge_method": "S256",
        }
        resp = web.Response(status=302, headers={"Location": meta["authorization_endpoint"] + "?" + urlencode(query)})
        flow = self.sign({"state": state, "nonce": nonce, "verifier": verifier}, FLOW_SECONDS)
        resp.set_cookie(FLOW_COOKIE, flow, max_age=FLOW_SECONDS, httponly=True, samesite="Lax", path="/api/v1/oidc/")
        return resp

    async def callback(self, request: web.Request) -> web.StreamResponse:
        flow = self.verify(request.cookies.get(FLOW_COOKIE, ""))
        if flow is None or not hmac.compare_digest(str(flow.get("state")), request.query.get("state", "")):
            raise AccountError("the sign-in expired or did not start here: sign in again", 400, "oidc_state")
        if "error" in request.query:
            raise AccountError(f"the provider refused the sign-in ({request.query['error']})", 401, "oidc_denied")
        async with aiohttp.ClientSession() as session:
            meta = await self.metadata(session)
            form = {
                "grant_type": "authorization_code",
                "code": request.query.get("code", ""),
                "redirect_uri": self.redirect_uri(request),
                "client_id": self.s.oidc_client_id,
                "client_secret": self.s.oidc_client_secret,
                "code_verifier": flow["verifier"],
            }
            async with session.post(meta["token_endpoint"], data=form) as r:
                tokens = await r.json(content_type=None)
                if r.status != 200 or "id_token" not in tokens:
                    raise AccountError("the provider did not exchange the code for an ID token", 401, "oidc_error")
        claims = self.check(tokens["id_token"], str(flow["nonce"]), str(meta.get("issuer")))
        actor = await self.actor_for(claims)
        payload = {"sub": actor.subject, "role": actor.role, "org": actor.org_id, "team": actor.team_id}
        from .admin import COOKIE

        resp = web.Response(status=302, headers={"Location": "/"})
        set_session_cookie(resp, request, COOKIE, "o." + self.sign(payload, SESSION_SECONDS))
        resp.del_cookie(FLOW_COOKIE, path="/api/v1/oidc/")
        return resp

    def check(self, id_token: str, nonce: str, issuer: str) -> dict[str, Any]:
        from joserfc import jwt
        from joserfc.errors import JoseError
        from joserfc.jwt import JWTClaimsRegistry

        try:
            token = jwt.decode(id_token, self._jwks)
            JWTClaimsRegistry(
                iss={"essential": True, "value": issuer},
                aud={"essential": True, "value": self.s.oidc_client_id},
                exp={"essential": True},
                nonce={"essential": True, "value": nonce},
                sub={"essential": True},
            ).validate(token.claims)
        except (JoseError, ValueError) as exc:
            raise AccountError(f"the ID token is not valid ({type(exc).__name__})", 401, "oidc_invalid") from None
        return dict(token.claims)

    async def actor_for(self, claims: dict[str, Any]) -> Actor:
        s = self.s
        role = claims.get(s.oidc_role_claim)
        role = role if role in ROLES else s.oidc_default_role
        org = DEFAULT_ORG
        wanted_org = claims.get(s.oidc_org_claim)
        if isinstance(wanted_org, str) and wanted_org:
            orgs = await self.admin.store.records("orgs")
            found = next((o for o in orgs if wanted_org in (o["id"], o.get("name"))), None)
            if found is None:
                raise AccountError(f"no org {wanted_org!r} for this sign-in", 403, "oidc_no_org")
            org = str(found["id"])
        team_id = None
        team = claims.get(s.oidc_team_claim)
        if isinstance(team, str) and team:
            teams = await self.admin.store.records("teams", org)
            match = next((t for t in teams if t["name"] == team), None)
            if match is None:
                raise AccountError(f"no team {team!r} in this org for this sign-in", 403, "oidc_no_team")
            team_id = str(match["id"])
        if role == "team_admin" and team_id is None:
            role = "viewer"  # a team admin of no team administers nothing
        subject = str(claims.get("email") or claims["sub"])
        return Actor(f"oidc:{subject}", str(role), org, team_id)

    def actor_from_cookie(self, value: str) -> Actor | None:
        payload = self.verify(value[2:]) if value.startswith("o.") else None
        if payload is None:
            return None
        return Actor(str(payload["sub"]), str(payload["role"]), str(payload["org"]), payload.get("team"))
