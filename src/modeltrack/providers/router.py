"""Provider registry and routing.

Routing uses only the request path (and the ``anthropic-version`` header): the upstream origin always comes
from configuration, never from the request, which is what makes the proxy impossible to use as an open relay.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

from .anthropic import Anthropic
from .azure import Azure
from .base import Meter, MeterResult, Provider, RequestInfo
from .bedrock import Bedrock
from .compatible import COMPATIBLE
from .gemini import Gemini
from .openai import OpenAI
from .vertex import Vertex

__all__ = ["Meter", "MeterResult", "Provider", "RequestInfo", "Router", "build_providers"]


def build_providers(
    base_urls: Mapping[str, str] | None = None,
    inject_stream_usage: Mapping[str, bool] | None = None,
    azure_deployments: Mapping[str, str] | None = None,
    vertex: tuple[tuple[str, ...], tuple[str, ...]] = ((), ()),
    azure_resources: Mapping[str, str] | None = None,
    bedrock_regions: Mapping[str, str] | None = None,
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
    if base_urls.get("azure") or azure_resources:
        out["azure"] = Azure(
            base_urls.get("azure"), inject.get("azure"), dict(azure_deployments or {}), dict(azure_resources or {})
        )
    if bedrock_regions:
        out["bedrock"] = Bedrock(base_urls.get("bedrock"), inject.get("bedrock"), dict(bedrock_regions))
    if vertex[0]:
        out["vertex"] = Vertex(vertex[0], vertex[1], base_urls.get("vertex"), inject.get("vertex"))
    return out


_OPENAI_RESOURCES: Final[tuple[str, ...]] = (
    "/chat/completions",
    "/completions",
    "/embeddings",
    "/responses",
    "/models",
    "/audio/",
    "/images/",
    "/moderations",
    "/batches",
    "/files",
    "/realtime",
)


def wrong_base_url(path: str, prefixes: tuple[str, ...] = ()) -> tuple[str, str] | None:
    """(provider whose error shape to answer in, what to write instead) for a path that only a wrong base URL
    produces: ``/v1`` twice (``…/v1`` given to an SDK that adds its own version), or no version at all (the
    OpenAI SDK's base URL without ``/v1``). None for a path a provider may serve. No such request is forwarded
    or recorded (tests/test_server.py::test_wrong_base_urls_get_a_404_that_says_what_to_write)."""
    rest, prefixed = path, False
    for prefix in prefixes:
        if path == prefix or path.startswith(prefix + "/"):
            rest, prefixed = path[len(prefix) :], True
            break
    if rest.startswith(("/v1/v1beta/", "/v1/v1alpha/")) or (rest.startswith("/v1/v1/") and _gemini_method(rest)):
        return "gemini", (
            "The path has two versions: google-genai adds its own version, so its base_url is the "
            "proxy's address alone: HttpOptions(base_url='http://HOST:8080')."
        )
    if rest.startswith("/v1/v1/messages"):
        return "anthropic", (
            "The path has /v1 twice: the Anthropic SDK adds /v1 itself, so its base_url is the proxy's address "
            "alone: Anthropic(base_url='http://HOST:8080')."
        )
    if rest == "/v1/v1" or rest.startswith("/v1/v1/"):
        return "openai", (
            "The path has /v1 twice: the base URL ends in /v1 and so does the path the client adds. Write "
            "base_url='http://HOST:8080/v1' for the OpenAI SDK (once), and no /v1 for the Anthropic and Gemini SDKs."
        )
    if prefixed:
        return None  # a configured base URL may end in /v1 itself (MODELTRACK_LOCAL_BASE_URL=http://vllm:8000/v1)
    if rest.startswith("/messages"):
        return (
            "anthropic",
            "The path lacks /v1: the Anthropic SDK's base_url is the proxy's address alone: 'http://HOST:8080'.",
        )
    if rest.startswith(_OPENAI_RESOURCES):
        return (
            "openai",
            "The path lacks /v1: the OpenAI SDK's base_url must end in /v1: base_url='http://HOST:8080/v1'.",
        )
    return None


_GEMINI_LIVE: Final = "/ws/google.ai.generativelanguage."  # Gemini Live's WebSocket path (google-genai's live.connect)


def _gemini_method(path: str) -> bool:
    return "/models/" in path and ":" in path.rsplit("/", 1)[-1]


class Router:
    def __init__(self, providers: Mapping[str, Provider]) -> None:
        self.providers = dict(providers)
        self._prefixes = {f"/{name}": p for name, p in self.providers.items()}
        self.prefixes = tuple(self._prefixes)

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
        if (
            path.startswith(("/v1beta/", "/v1alpha/", "/download/v1beta/", "/download/v1alpha/", _GEMINI_LIVE))
            or "x-goog-api-key" in headers
            or _gemini_method(path)
        ):
            # google-genai >= 1.x defaults to /v1/models/{m}:generateContent; a ":method" suffix on a /models/
            # path is Gemini's REST style and never an OpenAI route.
            return self.providers["gemini"], path
        if path.startswith("/model/"):
            return self.providers["bedrock"], path
        if path.startswith("/v1/"):
            return self.providers["openai"], path
        return None


_KINDS: Final[dict[str, str]] = {}


def endpoint_kind(path: str) -> str:
    """A bounded name for the operation: ``chat/completions``, ``messages``, ``generateContent``, ``converse``.
    Memoised (bounded): a service sees a handful of distinct paths over and over."""
    kind = _KINDS.get(path)
    if kind is None:
        if len(_KINDS) >= 4096:
            _KINDS.clear()
        kind = _KINDS[path] = _endpoint_kind(path)
    return kind


def _endpoint_kind(path: str) -> str:
    if ":" in path.rsplit("/", 1)[-1]:
        return path.rsplit(":", 1)[-1]
    parts = [p for p in path.split("/") if p]
    if len(parts) >= 3 and parts[0] == "model":  # bedrock: /model/{id}/{op}
        return parts[-1]
    if "deployments" in parts:  # azure: /openai/deployments/{d}/{op...}
        parts = parts[parts.index("deployments") + 2 :]
    while parts and (parts[0] in ("v1", "v1beta", "openai", "api", "inference") or parts[0].startswith("v1")):
        parts = parts[1:]
    return "/".join(parts[:2]) or "/"
