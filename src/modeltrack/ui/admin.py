"""The admin API, ``/api/v1/admin/…``, on the management plane: orgs, teams, keys, members, budgets and limits
(``GET``/``POST`` a collection, ``GET``/``PATCH``/``DELETE`` a record, ``POST keys/{id}/rotate``), the audit log
(``GET audit``, JSON or ``format=jsonl`` to export), and ``GET me``. Errors are JSON that say what is wrong.

Who is asking (``Authorization: Bearer …``):

* a token from ``MODELTRACK_ADMIN_TOKENS``: the operator (every org);
* a member's sign-in token (``mtm_…``, shown once when the member was added): that member, in its role;
* the dashboard's admin session cookie (``POST /api/v1/admin/login`` with either token: HttpOnly,
  SameSite=Strict, an HMAC that names the member or the admin token's fingerprint, never the token; changes made
  with it must be same-origin);
* nothing, on a dashboard that listens on loopback with no admin tokens set: the operator of this machine
  (who could edit the store file anyway). Anywhere else, 401.

The dashboard's read-only tokens (``MODELTRACK_UI_TOKENS``) never change anything here.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import orjson
from aiohttp import web

from ..access import ClientTokens
from ..accounts import AccountError, Actor, Admin
from ..accounts.model import MEMBER_TOKEN_PREFIX, digest
from .api import error, json_response
from .auth import SESSION_SECONDS, same_origin, set_session_cookie

if TYPE_CHECKING:
    from .oidc import OIDC

LOOPBACK = ("127.0.0.1", "localhost", "::1")
COOKIE = "modeltrack_admin"
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


SIGNUPS_PER_HOUR = 5
"""Sign-ups one client address may make in an hour (per dashboard process): enough for a person, not a script."""


class AdminApi:
    def __init__(
        self,
        admin: Admin,
        admin_tokens: ClientTokens,
        ui_host: str,
        oidc: OIDC | None = None,
        multi_tenant: bool = False,
        signup: str = "off",
    ) -> None:
        self.admin = admin
        self.oidc = oidc
        self.tokens = admin_tokens
        # Multi-tenant: loopback is no proof of being the operator (a hosted dashboard sits behind a proxy).
        self.local_operator = not admin_tokens and ui_host in LOOPBACK and not multi_tenant
        self.signup_open = signup == "open"
        self._signups: dict[str, list[float]] = {}
        # Members by sign-in token digest, rebuilt when the store's version moves (any write: a member added,
        # rotated or removed takes effect on the next request). One version read per request, not every member.
        self._members: dict[str, dict[str, Any]] = {}
        self._members_version: int | None = None

    def _session_key(self, kind: str, secret_digest: str) -> bytes:
        # A member's sessions die with its token (rotated or removed); an admin token's with the configured set.
        base = b"".join(sorted(self.tokens.tokens)) if kind == "t" else secret_digest.encode()
        return hashlib.sha256(b"modeltrack-admin-session\0" + kind.encode() + b"\0" + base).digest()

    def _cookie(self, kind: str, ref: str, secret_digest: str) -> str:
        message = f"{int(time.time() + SESSION_SECONDS)}.{kind}.{ref}"
        mac = hmac.new(self._session_key(kind, secret_digest), message.encode(), hashlib.sha256).hexdigest()
        return f"{message}.{mac}"

    async def _from_cookie(self, value: str) -> Actor | None:
        parts = value.split(".")
        if len(parts) != 4 or not parts[0].isdigit() or int(parts[0]) < time.time():
            return None
        expiry, kind, ref, mac = parts
        if kind == "t" and self.tokens:
            good = hmac.new(self._session_key("t", ""), f"{expiry}.t.{ref}".encode(), hashlib.sha256).hexdigest()
            return Actor.operator("admin-token:" + ref) if hmac.compare_digest(good, mac) else None
        if kind == "m":
            member = await self.admin.store.get("members", ref)
            if member is None:
                return None
            key = self._session_key("m", str(member.get("token_digest", "")))
            good = hmac.new(key, f"{expiry}.m.{ref}".encode(), hashlib.sha256).hexdigest()
            if hmac.compare_digest(good, mac):
                return Actor(str(member["subject"]), str(member["role"]), str(member["org_id"]), member.get("team_id"))
        return None

    async def member_scope(self, request: web.Request) -> tuple[Actor, str | None] | None:
        """For the spend API: the member a request signs in as (a ``mtm_`` bearer token or a member's admin
        session cookie), with the name of the team its reading is narrowed to (None: its whole org); None
        when the request names no member."""
        auth = request.headers.get("Authorization", "")
        cookie = request.cookies.get(COOKIE, "")
        if not (auth.startswith("Bearer " + MEMBER_TOKEN_PREFIX) or ".m." in cookie or cookie.startswith("o.")):
            return None
        try:
            actor = await self._actor(request)
        except AccountError:
            return None
        if actor.org_id is None:
            return None  # an operator's session: not a member
        if actor.team_id is None or actor.role == "org_admin":
            return actor, None
        team = await self.admin.store.get("teams", actor.team_id)
        # A member whose team is gone reads nothing rather than everything.
        return actor, str(team["name"]) if team is not None else "\x00no-team"

    async def actor(self, request: web.Request) -> Actor:
        found = await self._actor(request)
        cookie_auth = "Authorization" not in request.headers and COOKIE in request.cookies
        if cookie_auth and request.method != "GET" and not same_origin(request.headers, request.host, request.scheme):
            raise AccountError("change things from the dashboard itself (same origin)", 403, "cross_origin")
        return found

    async def _member_by_token(self, wanted: str) -> dict[str, Any] | None:
        store = self.admin.store
        version = await store.version()
        if version != self._members_version:
            members = await store.records("members")
            self._members = {str(m["token_digest"]): m for m in members if m.get("token_digest")}
            self._members_version = version
        return self._members.get(wanted)

    async def _actor(self, request: web.Request) -> Actor:
        auth = request.headers.get("Authorization", "")
        if auth.startswith("Bearer "):
            given = auth[7:].strip()
            if self.tokens and self.tokens.lookup(given.encode()) is not None:
                return Actor.operator("admin-token:" + hashlib.sha256(given.encode()).hexdigest()[:8])
            if given.startswith(MEMBER_TOKEN_PREFIX):
                m = await self._member_by_token(digest(given))
                if m is not None:
                    return Actor(str(m["subject"]), str(m["role"]), str(m["org_id"]), m.get("team_id"))
            raise AccountError("that token is not an admin token or a member's sign-in token", 401, "unauthorized")
        cookie = request.cookies.get(COOKIE)
        if cookie and cookie.startswith("o.") and self.oidc is not None:
            found = self.oidc.actor_from_cookie(cookie)
            if found is not None:
                return found
        elif cookie:
            actor = await self._from_cookie(cookie)
            if actor is not None:
                return actor
        if self.local_operator:
            return Actor.operator("local")
        raise AccountError(
            "send Authorization: Bearer <a MODELTRACK_ADMIN_TOKENS token, or a member's mtm_ token>",
            401,
            "unauthorized",
        )

    def routes(self) -> list[web.RouteDef]:
        base = "/api/v1/admin"
        return [
            web.post(base + "/login", self.login),
            web.post(base + "/logout", self.logout),
            web.get(base + "/me", self.me),
            web.post(base + "/signup", self.signup),
            web.get(base + "/audit", self.audit),
            web.post(base + "/keys/{id}/rotate", self.rotate),
            web.get(base + "/{kind}", self.list),
            web.post(base + "/{kind}", self.create),
            web.get(base + "/{kind}/{id}", self.get),
            web.patch(base + "/{kind}/{id}", self.update),
            web.delete(base + "/{kind}/{id}", self.delete),
        ]

    @web.middleware
    async def errors(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if not request.path.startswith(("/api/v1/admin/", "/api/v1/oidc/")):
            return await handler(request)
        try:
            return await handler(request)
        except AccountError as exc:
            return error(exc.status, exc.kind, str(exc))

    async def _body(self, request: web.Request) -> Any:
        if request.content_type != "application/json":
            raise AccountError("send a JSON object (Content-Type: application/json)", 415, "unsupported_media_type")
        try:
            return orjson.loads(await request.read())
        except orjson.JSONDecodeError:
            raise AccountError("the body is not valid JSON") from None

    async def login(self, request: web.Request) -> web.Response:
        """The dashboard's sign-in for people who administer: an admin token or a member's ``mtm_`` token, sent
        as same-origin JSON, for an HttpOnly, SameSite=Strict session cookie (12 hours) that never holds it."""
        if not same_origin(request.headers, request.host, request.scheme):
            raise AccountError("sign in from the dashboard itself", 403, "cross_origin")
        body = await self._body(request)
        given = body.get("token") if isinstance(body, dict) else None
        if not isinstance(given, str) or not given:
            raise AccountError('send {"token": "..."}')
        value: str | None = None
        if self.tokens and self.tokens.lookup(given.encode()) is not None:
            value = self._cookie("t", hashlib.sha256(given.encode()).hexdigest()[:8], "")
        elif given.startswith(MEMBER_TOKEN_PREFIX):
            wanted = digest(given)
            m = await self._member_by_token(wanted)
            if m is not None:
                value = self._cookie("m", str(m["id"]), wanted)
        if value is None:
            await asyncio.sleep(0.3)  # a wrong token costs time: guessing stays slow
            raise AccountError("that token is not an admin token or a member's sign-in token", 401, "unauthorized")
        resp = json_response({"ok": True})
        set_session_cookie(resp, request, COOKIE, value)
        return resp

    async def logout(self, request: web.Request) -> web.Response:
        resp = json_response({"ok": True})
        resp.del_cookie(COOKIE, path="/")
        return resp

    async def signup(self, request: web.Request) -> web.Response:
        """``MODELTRACK_SIGNUP=open`` (multi-tenant mode only): a new org and its first admin, whose sign-in token
        (``mtm_…``) is answered this once. Same-origin JSON, and a few per client address an hour."""
        if not self.signup_open:
            raise AccountError("sign-up is off here: the operator creates organisations", 404, "not_found")
        if not same_origin(request.headers, request.host, request.scheme):
            raise AccountError("sign up from the dashboard itself", 403, "cross_origin")
        now = time.monotonic()
        who = request.remote or "?"
        recent = [t for t in self._signups.get(who, ()) if now - t < 3600]
        if len(recent) >= SIGNUPS_PER_HOUR:
            retry = int(3600 - (now - recent[0])) + 1
            return error(429, "rate_limited", f"Too many sign-ups from this address; retry in {retry} s.")
        body = await self._body(request)
        if not isinstance(body, dict) or set(body) - {"org", "subject"}:
            raise AccountError('send {"org": "Your organisation", "subject": "you@example.com"}')
        org, member, token = await self.admin.signup(body.get("org"), body.get("subject"))
        if len(self._signups) > 10_000:
            self._signups.clear()  # bounded: a flood of addresses cannot grow it without limit
        self._signups[who] = [*recent, now]
        resp = json_response({"org": org, "member": member, "token": token}, 201)
        set_session_cookie(resp, request, COOKIE, self._cookie("m", str(member["id"]), digest(token)))
        return resp

    async def me(self, request: web.Request) -> web.Response:
        a = await self.actor(request)
        return json_response({"subject": a.subject, "role": a.role, "org_id": a.org_id, "team_id": a.team_id})

    async def list(self, request: web.Request) -> web.Response:
        a = await self.actor(request)
        kind = request.match_info["kind"]
        return json_response({kind: await self.admin.records(a, kind, request.query.get("org_id"))})

    async def get(self, request: web.Request) -> web.Response:
        a = await self.actor(request)
        return json_response(await self.admin.get(a, request.match_info["kind"], request.match_info["id"]))

    async def create(self, request: web.Request) -> web.Response:
        a = await self.actor(request)
        body = await self._body(request)
        record, secret = await self.admin.create(a, request.match_info["kind"], body, request.query.get("org_id"))
        out = dict(record)
        if secret is not None:
            out["secret"] = secret  # shown this once: only its digest is stored
        return json_response(out, 201)

    async def update(self, request: web.Request) -> web.Response:
        a = await self.actor(request)
        body = await self._body(request)
        return json_response(await self.admin.update(a, request.match_info["kind"], request.match_info["id"], body))

    async def delete(self, request: web.Request) -> web.Response:
        a = await self.actor(request)
        return json_response(await self.admin.delete(a, request.match_info["kind"], request.match_info["id"]))

    async def rotate(self, request: web.Request) -> web.Response:
        a = await self.actor(request)
        record, secret = await self.admin.rotate(a, request.match_info["id"])
        return json_response({**record, "secret": secret})

    async def audit(self, request: web.Request) -> web.StreamResponse:
        a = await self.actor(request)
        try:
            limit = int(request.query.get("limit", "100"))
            before = int(request.query["before"]) if "before" in request.query else None
        except ValueError:
            raise AccountError("limit and before are whole numbers") from None
        entries = await self.admin.audit_log(a, limit, before)
        if request.query.get("format") == "jsonl":
            body = b"".join(orjson.dumps(e) + b"\n" for e in entries)
            return web.Response(
                body=body,
                content_type="application/x-ndjson",
                headers={"Content-Disposition": 'attachment; filename="modeltrack-audit.jsonl"'},
            )
        return json_response({"entries": entries, "next_before": entries[-1]["seq"] if entries else None})
