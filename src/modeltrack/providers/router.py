"""Provider registry and routing.

Routing uses only the request path (and the ``anthropic-version`` header): the upstream origin always comes
from configuration, never from the request, which is what makes the proxy impossible to use as an open relay.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .anthropic import Anthropic
from .azure import Azure
from .base import Meter, MeterResult, Provider, RequestInfo
from .bedrock import Bedrock
from .compatible import COMPATIBLE
from .gemini import Gemini
from .openai import OpenAI

__all__ = ["Meter", "MeterResult", "Provider", "RequestInfo", "Router", "build_providers"]


def build_providers(
    base_urls: Mapping[str, str] | None = None,
    inject_stream_usage: Mapping[str, bool] | None = None,
    azure_deployments: Mapping[str, str] | None = None,
) -> dict[str, Provider]:
    base_urls = base_urls or {}
    inject = inject_stream_usage or {}
    classes: dict[str, type[Provider]] = {
        "openai": OpenAI,
        "anthropic": Anthropic,
        "gemini": Gemini,
        "bedrock": Bedrock,
        **COMPATIBLE,
    }
    out: dict[str, Provider] = {n: c(base_urls.get(n), inject.get(n)) for n, c in classes.items()}
    if base_urls.get("azure"):
        out["azure"] = Azure(base_urls["azure"], inject.get("azure"), dict(azure_deployments or {}))
    return out


def _gemini_method(path: str) -> bool:
    return "/models/" in path and ":" in path.rsplit("/", 1)[-1]


class Router:
    def __init__(self, providers: Mapping[str, Provider]) -> None:
        self.providers = dict(providers)
        self._prefixes = {f"/{name}": p for name, p in self.providers.items()}

    def resolve(self, path: str, headers: Mapping[str, Any]) -> tuple[Provider, str] | None:
        """Return (provider, upstream path) or None. ``path`` is the raw, still %-encoded path (no query)."""
        second = path.find("/", 1)
        head = path if second < 0 else path[:second]
        provider = self._prefixes.get(head)
        if provider is not None:
            rest = path[len(head) :] or "/"
            return provider, rest
        if path.startswith("/v1/messages") or "anthropic-version" in headers:
            return self.providers["anthropic"], path
        if path.startswith(("/v1beta/", "/v1alpha/")) or "x-goog-api-key" in headers or _gemini_method(path):
            # google-genai >= 1.x defaults to /v1/models/{m}:generateContent; a ":method" suffix on a /models/
            # path is Gemini's REST style and never an OpenAI route.
            return self.providers["gemini"], path
        if path.startswith("/model/"):
            return self.providers["bedrock"], path
        if path.startswith("/v1/"):
            return self.providers["openai"], path
        return None
