"""One import for the app side: point the OpenAI, Anthropic and Google GenAI SDKs at ModelTrack and attribute
every call.

    import modeltrack.client as mt

    mt.install(base_url="http://modeltrack:8080", team="search", app="web")   # or MODELTRACK_PROXY_URL, ...
    client = openai.OpenAI()                          # created after install(): talks to the proxy
    with mt.context(feature="summaries", session_id=run_id, user=customer_id, prompt="summary-v3"):
        client.chat.completions.create(...)           # carries X-ModelTrack-Feature, -Session-Id, -User, ...

This module imports nothing from the server side (no uvloop, httptools, Firestore, Prometheus), and the
``modeltrack-proxy`` distribution needs no dependency for it: ``pip install modeltrack-proxy`` is the client,
``pip install 'modeltrack-proxy[server]'`` the proxy.

How it works: ``install()`` wraps the SDK clients' constructors so that, unless a ``base_url`` is passed
explicitly, they use the proxy, and gives their HTTP clients a request hook. The hook adds the attribution in
effect *when the request is sent* (a ``contextvars.ContextVar``, so it is right across asyncio tasks), and only
to requests that go to the proxy: attribution never leaks to another host. Threads do not inherit context
variables by themselves, so ``install()`` also makes ``threading.Thread`` and ``ThreadPoolExecutor`` carry the
attribution of the code that started them.
"""

from __future__ import annotations

import concurrent.futures
import contextvars
import functools
import importlib
import os
import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

__all__ = ["context", "current", "headers", "install", "uninstall"]

_HEADERS = {
    "team": "X-ModelTrack-Team",
    "app": "X-ModelTrack-App",
    "feature": "X-ModelTrack-Feature",
    "user": "X-ModelTrack-User",
    "session_id": "X-ModelTrack-Session-Id",
    "prompt": "X-ModelTrack-Prompt",
    "key": "X-ModelTrack-Key",
}
_ENV = {name: f"MODELTRACK_{name.upper()}" for name in _HEADERS}

_attribution: contextvars.ContextVar[Mapping[str, Any] | None] = contextvars.ContextVar(
    "modeltrack_attribution", default=None
)


@dataclass
class _Installed:
    base_url: str
    defaults: dict[str, Any]
    undo: list[Callable[[], None]] = field(default_factory=list)


_installed: _Installed | None = None


def current() -> dict[str, Any]:
    """The attribution in effect here: ``install()``'s defaults, overridden by every enclosing ``context()``."""
    base = dict(_installed.defaults) if _installed is not None else {}
    scoped = _attribution.get()
    if scoped:
        for k, v in scoped.items():
            if k == "properties":
                base["properties"] = {**base.get("properties", {}), **v}
            else:
                base[k] = v
    return base


def headers() -> dict[str, str]:
    """The ``X-ModelTrack-*`` headers for the attribution in effect here."""
    out = {}
    for name, value in current().items():
        if value is None:
            continue
        if name == "properties":
            for prop, v in value.items():
                out[f"X-ModelTrack-Property-{prop}"] = str(v)
        elif name in _HEADERS:
            out[_HEADERS[name]] = str(value)
    return out


@contextmanager
def context(**attribution: Any) -> Iterator[None]:
    """Attribution for the calls made inside (``team``, ``app``, ``feature``, ``user``, ``session_id``,
    ``prompt``, ``properties={...}``); nested contexts add to and override outer ones."""
    unknown = set(attribution) - {*_HEADERS, "properties"}
    if unknown:
        raise TypeError(f"unknown attribution {sorted(unknown)}: use {sorted({*_HEADERS, 'properties'})}")
    outer = _attribution.get() or {}
    merged = {**outer, **attribution}
    if "properties" in attribution and "properties" in outer:
        merged["properties"] = {**outer["properties"], **attribution["properties"]}
    token = _attribution.set(merged)
    try:
        yield
    finally:
        _attribution.reset(token)


def install(base_url: str | None = None, **defaults: Any) -> None:
    """Point SDK clients created from now on at the proxy (``base_url`` or ``MODELTRACK_PROXY_URL``) and send
    attribution: ``defaults`` (``team=``, ``app=``, ... or ``MODELTRACK_TEAM``, ``MODELTRACK_APP``, ...) plus
    whatever ``context()`` adds. Calling it again replaces the previous installation."""
    global _installed
    url = (base_url or os.environ.get("MODELTRACK_PROXY_URL") or "").rstrip("/")
    if not url.startswith(("http://", "https://")):
        raise ValueError("install() needs the proxy's URL: base_url='http://host:8080' or MODELTRACK_PROXY_URL")
    unknown = set(defaults) - {*_HEADERS, "properties"}
    if unknown:
        raise TypeError(f"unknown attribution {sorted(unknown)}")
    values = {name: os.environ[var] for name, var in _ENV.items() if os.environ.get(var)}
    values.update({k: v for k, v in defaults.items() if v is not None})
    uninstall()
    _installed = _Installed(url, values)
    _installed.undo += _patch_threads()
    _installed.undo += _patch_httpx_sdk("openai", "OpenAI", "AsyncOpenAI", url + "/v1")
    _installed.undo += _patch_httpx_sdk("anthropic", "Anthropic", "AsyncAnthropic", url)
    _installed.undo += _patch_genai(url)


def uninstall() -> None:
    """Undo ``install()``: clients created afterwards are the SDKs' own again."""
    global _installed
    if _installed is not None:
        for undo in reversed(_installed.undo):
            undo()
        _installed = None


# -- HTTP hooks -------------------------------------------------------------------------------------------------


def _for_proxy(request: Any) -> None:
    inst = _installed
    if inst is not None and str(request.url).startswith(inst.base_url):
        for name, value in headers().items():
            request.headers[name] = value


async def _for_proxy_async(request: Any) -> None:
    _for_proxy(request)


def _hooked(client: Any, hook: Callable[..., Any]) -> Any:
    hooks = client.event_hooks
    if hook not in hooks["request"]:
        hooks["request"] = [*hooks["request"], hook]
        client.event_hooks = hooks
    return client


def _wrap_init(cls: type, prepare: Callable[[dict[str, Any]], None]) -> Callable[[], None]:
    original = cls.__init__  # type: ignore[misc]

    @functools.wraps(original)
    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        prepare(kwargs)
        original(self, *args, **kwargs)

    cls.__init__ = __init__  # type: ignore[misc]

    def undo() -> None:
        cls.__init__ = original  # type: ignore[misc]

    return undo


def _no_base_url(kwargs: dict[str, Any]) -> bool:
    value = kwargs.get("base_url")
    return value is None or type(value).__name__ == "NotGiven"


def _patch_httpx_sdk(module_name: str, sync_name: str, async_name: str, base_url: str) -> list[Callable[[], None]]:
    """openai and anthropic: both take ``base_url`` and ``http_client`` and ship ``Default[Async]HttpxClient``
    (their own defaults: timeouts, connection limits), which we create with the hook when none is given."""
    try:
        sdk: Any = importlib.import_module(module_name)
    except ImportError:
        return []

    def prepare(sync: bool) -> Callable[[dict[str, Any]], None]:
        def apply(kwargs: dict[str, Any]) -> None:
            if _no_base_url(kwargs):
                kwargs["base_url"] = base_url
            hook = _for_proxy if sync else _for_proxy_async
            client = kwargs.get("http_client")
            if client is None:
                factory = sdk.DefaultHttpxClient if sync else sdk.DefaultAsyncHttpxClient
                kwargs["http_client"] = factory(event_hooks={"request": [hook], "response": []})
            else:
                _hooked(client, hook)

        return apply

    return [_wrap_init(getattr(sdk, sync_name), prepare(True)), _wrap_init(getattr(sdk, async_name), prepare(False))]


def _patch_genai(url: str) -> list[Callable[[], None]]:
    try:
        from google import genai
        from google.genai import types
    except ImportError:
        return []
    try:
        httpx_module: Any = importlib.import_module("httpx2")  # what the current SDKs are built on
    except ImportError:
        httpx_module = importlib.import_module("httpx")

    def apply(kwargs: dict[str, Any]) -> None:
        given = kwargs.get("http_options")
        options = types.HttpOptions.model_validate(given) if isinstance(given, dict) else given
        options = options.model_copy() if options is not None else types.HttpOptions()
        if options.base_url is None:
            options.base_url = url
        # Explicit httpx clients carry the hook (and keep google-genai's async calls on httpx, not aiohttp).
        if options.httpx_client is None:
            options.httpx_client = httpx_module.Client(
                event_hooks={"request": [_for_proxy]}, **(options.client_args or {})
            )
        else:
            _hooked(options.httpx_client, _for_proxy)
        if options.httpx_async_client is None:
            options.httpx_async_client = httpx_module.AsyncClient(
                event_hooks={"request": [_for_proxy_async]}, **(options.async_client_args or {})
            )
        else:
            _hooked(options.httpx_async_client, _for_proxy_async)
        kwargs["http_options"] = options

    return [_wrap_init(genai.Client, apply)]


# -- threads ----------------------------------------------------------------------------------------------------


def _patch_threads() -> list[Callable[[], None]]:
    """Threads and executor tasks run with the attribution of the code that started them."""
    start = threading.Thread.start
    submit = concurrent.futures.ThreadPoolExecutor.submit

    @functools.wraps(start)
    def thread_start(self: threading.Thread) -> None:
        scoped = _attribution.get()
        if scoped is not None:
            run = self.run

            def run_in_context() -> None:
                _attribution.set(scoped)
                run()

            self.run = run_in_context  # type: ignore[method-assign]
        start(self)

    def executor_submit(self: Any, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
        scoped = _attribution.get()
        if scoped is None:
            return submit(self, fn, *args, **kwargs)

        def in_context(*a: Any, **k: Any) -> Any:
            token = _attribution.set(scoped)
            try:
                return fn(*a, **k)
            finally:
                _attribution.reset(token)

        return submit(self, in_context, *args, **kwargs)

    threading.Thread.start = thread_start  # type: ignore[method-assign]
    concurrent.futures.ThreadPoolExecutor.submit = executor_submit  # type: ignore[method-assign]

    def undo() -> None:
        threading.Thread.start = start  # type: ignore[method-assign]
        concurrent.futures.ThreadPoolExecutor.submit = submit  # type: ignore[method-assign]

    return [undo]
