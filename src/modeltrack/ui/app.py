"""``modeltrack ui``: the management plane on aiohttp's web server. The JSON API under ``/api/v1/`` and the
dashboard (static files, no build step, no outside call) read the same store as the proxy and never touch the
request path.

It listens on 127.0.0.1:8081 by default; anywhere else it refuses to start without ``MODELTRACK_UI_TOKENS``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from aiohttp import web

from ..access import ClientTokens
from ..accounts import Admin, open_accounts
from ..config import Settings
from ..controls.spec import ControlsError
from ..logs import log_exception_safely
from ..pricing import Pricing
from ..query import StoreMissing
from ..query.views import QueryError
from .admin import AdminApi
from .api import ORG_SCOPE, SCOPE, Api, error, json_response
from .auth import COOKIE, UIAuth, same_origin, set_session_cookie
from .export import export
from .exposure import check_exposure
from .oidc import OIDC

log = logging.getLogger("modeltrack.ui")
STATIC = Path(__file__).resolve().parent / "static"
PAGES = (
    "",
    "teams",
    "apps",
    "features",
    "users",
    "models",
    "sessions",
    "requests",
    "errors",
    "budgets",
    "whatif",
    "export",
    "keys",
    "org",
    "audit",
)
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    "font-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)

PUBLIC = frozenset({"/api/v1/login", "/api/v1/logout", "/api/v1/session"})  # say nothing about spend
API = web.AppKey("api", Api)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


SDK_PATHS = ("v1", "v1beta", "v1alpha", "openai", "anthropic", "gemini", "azure", "bedrock", "model")
"""First path segments of the proxy's routes: an SDK that sends them here was given the dashboard's port."""


def create_app(settings: Settings, pricing: Pricing | None = None) -> web.Application:
    auth = UIAuth(ClientTokens.from_setting(settings.ui_tokens, "MODELTRACK_UI_TOKENS"))
    check_exposure(settings.ui_host, auth)
    api = Api(settings, pricing or Pricing.load(settings.pricing_file or None))

    @web.middleware
    async def errors(request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            return await handler(request)
        except QueryError as exc:
            return error(400, "invalid_request", str(exc))
        except StoreMissing as exc:
            return error(503, "store_missing", f"{exc}; start the proxy (make run) so it creates the store")
        except ControlsError as exc:
            return error(500, "controls_invalid", str(exc))
        except web.HTTPException as exc:
            if not request.path.startswith("/api/") or exc.status < 400:
                raise
            return error(exc.status, "not_found" if exc.status == 404 else "http_error", exc.reason)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - a bug answers 500 and logs its frames, never request content
            log_exception_safely(f"{request.method} {request.path} failed", exc, log.name)
            return error(500, "internal_error", "The server failed to answer; the error is in its log.")

    @web.middleware
    async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
        path = request.path
        if path.startswith("/api/") and path not in PUBLIC and not path.startswith(("/api/v1/admin/", "/api/v1/oidc/")):
            # A member (mtm_ token or session) reads within its scope, in the query layer (query.scoped); a
            # dashboard token reads everything, as before.
            member = await admin.member_scope(request) if admin is not None else None
            if member is not None:
                if member[1] is not None:
                    request[SCOPE] = member[1]
                if settings.multi_tenant:
                    request[ORG_SCOPE] = member[0].org_id or "\x00no-org"
            elif (settings.multi_tenant and not auth.enabled) or not auth.request_allowed(
                request.headers, request.cookies
            ):
                # Multi-tenant: nobody reads without signing in (a member, or the operator's dashboard token).
                return error(
                    401, "unauthorized", "Log in with a dashboard token, or send Authorization: Bearer <token>."
                )
        if request.method == "OPTIONS":
            return error(405, "method_not_allowed", "Cross-origin requests are not served.")
        resp = await handler(request)
        resp.headers.setdefault("Content-Security-Policy", CSP)
        resp.headers["X-Content-Type-Options"] = "nosniff"
        resp.headers["Referrer-Policy"] = "no-referrer"
        resp.headers["X-Frame-Options"] = "DENY"
        if path.startswith("/api/"):
            resp.headers["Cache-Control"] = "no-store"
        return resp

    async def login(request: web.Request) -> web.Response:
        if not same_origin(request.headers, request.host, request.scheme):
            return error(403, "cross_origin", "Log in from the dashboard itself.")
        if request.content_type != "application/json":
            return error(415, "unsupported_media_type", 'Send the token as JSON: {"token": "..."}.')
        try:
            body = await request.json()
        except ValueError:
            return error(400, "invalid_request", 'Send the token as JSON: {"token": "..."}.')
        token = body.get("token") if isinstance(body, dict) else None
        if not auth.enabled:
            return json_response({"ok": True, "auth": False})
        digest = auth.token_digest(token) if isinstance(token, str) else None
        if digest is None:
            await asyncio.sleep(0.3)  # a wrong token costs time: guessing stays slow
            return error(401, "unauthorized", "That token is not valid.")
        resp = json_response({"ok": True, "auth": True})
        set_session_cookie(resp, request, COOKIE, auth.cookie_for(digest))
        return resp

    async def logout(request: web.Request) -> web.Response:
        if not same_origin(request.headers, request.host, request.scheme):
            return error(403, "cross_origin", "Log out from the dashboard itself.")
        resp = json_response({"ok": True})
        resp.del_cookie(COOKIE, path="/")
        return resp

    async def session_state(request: web.Request) -> web.Response:
        member = await admin.member_scope(request) if admin is not None else None
        logged_in = member is not None or auth.request_allowed(request.headers, request.cookies)
        if settings.multi_tenant and member is None and not auth.enabled:
            logged_in = False
        return json_response(
            {
                "auth": auth.enabled or settings.multi_tenant,
                "logged_in": logged_in,
                "sso": oidc is not None,
                "signup": settings.signup == "open",
            }
        )

    async def page(request: web.Request) -> web.FileResponse:
        return web.FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})

    async def healthz(request: web.Request) -> web.Response:
        return json_response({"status": "ok"})

    async def export_handler(request: web.Request) -> web.StreamResponse:
        return await export(api, request)

    async def wrong_port(request: web.Request) -> web.Response:
        # An SDK given the dashboard's port: say where the proxy is (issue M, item 19), never a bare 404.
        host = request.url.host or settings.host
        return error(
            404,
            "wrong_base_url",
            f"This is the ModelTrack dashboard, not the proxy: point the SDK at http://{host}:{settings.port} "
            f"(OpenAI SDK: base_url='http://{host}:{settings.port}/v1').",
        )

    accounts = open_accounts(settings.store)
    admin_tokens = ClientTokens.from_setting(settings.admin_tokens, "MODELTRACK_ADMIN_TOKENS")
    oidc = OIDC(settings, Admin(accounts)) if accounts is not None and settings.oidc_issuer else None
    admin = (
        AdminApi(Admin(accounts), admin_tokens, settings.ui_host, oidc, settings.multi_tenant, settings.signup)
        if accounts is not None
        else None
    )
    app = web.Application(middlewares=[errors, guard, *([admin.errors] if admin is not None else [])])
    app.add_routes(api.routes())
    if admin is not None:
        app.add_routes(admin.routes())
    if oidc is not None:
        app.add_routes(oidc.routes())
    app.add_routes(
        [
            web.get("/api/v1/export", export_handler),
            web.post("/api/v1/login", login),
            web.post("/api/v1/logout", logout),
            web.get("/api/v1/session", session_state),
            web.get("/healthz", healthz),
            *[web.get("/" + p, page) for p in PAGES],
            web.static("/static", STATIC, append_version=False),
            *[web.route("*", f"/{p}/{{tail:.*}}", wrong_port) for p in SDK_PATHS],
        ]
    )
    app[API] = api

    async def close(_: web.Application) -> None:
        await api.close()
        if accounts is not None:
            await accounts.close()

    app.on_cleanup.append(close)
    return app


async def serve_ui(settings: Settings, announce: Any = None) -> int:
    """Run until SIGTERM/SIGINT."""
    import signal

    app = create_app(settings)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, settings.ui_host, settings.ui_port)
    await site.start()
    log.info("modeltrack dashboard on http://%s:%d (store %s)", settings.ui_host, settings.ui_port, settings.store)
    if announce is not None:
        announce()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await runner.cleanup()
    return 0
