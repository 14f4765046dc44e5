"""Vertex AI: Gemini (``publishers/google``) and Claude (``publishers/anthropic``) on Google Cloud.

Paths: ``/v1[beta1]/projects/{project}/locations/{region}/publishers/{google|anthropic}/models/{model}:{method}``
with ``generateContent`` / ``streamGenerateContent`` (Gemini's body and stream format) or ``rawPredict`` /
``streamRawPredict`` (Anthropic's Messages body and stream). Clients reach them under ``/vertex``
(``genai.Client(vertexai=True, http_options=HttpOptions(base_url="http://HOST:8080/vertex"))``,
``AnthropicVertex(base_url="http://HOST:8080/vertex/v1")``); Google OAuth bearer tokens pass through untouched.

**No open relay.** The region and the project come from the path, and are checked against the operator's
allow-lists (``MODELTRACK_VERTEX_REGIONS``, ``MODELTRACK_VERTEX_PROJECTS``): each allowed region has its own
upstream pool, whose origin comes from configuration only (``https://{region}-aiplatform.googleapis.com``, or
``MODELTRACK_VERTEX_BASE_URL`` for all of them). A region or project not on the lists is refused (403) before
anything is sent (tests/test_vertex.py).

**Prices.** genai-prices has no Vertex-specific prices, so Gemini models are priced with Google's and Claude
models with Anthropic's list prices (``claude-sonnet-4-5@20250929`` is ``claude-sonnet-4-5-20250929``).
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import unquote

import orjson

from .anthropic import Anthropic
from .base import Meter, Provider, RequestInfo
from .gemini import Gemini
from .videos import VeoMeter, veo_request

_PATH = re.compile(
    r"/v1(?:beta1)?/projects/(?P<project>[^/]+)/locations/(?P<region>[^/]+)/publishers/(?P<publisher>google|anthropic)"
    r"/models/(?P<model>[^/:]+)(?::(?P<method>[A-Za-z]+))?"
)
STREAM_METHODS = frozenset({"streamGenerateContent", "streamRawPredict"})
VIDEO_METHODS = frozenset({"predictLongRunning", "fetchPredictOperation"})  # Veo


def is_live(path: str) -> bool:
    """Vertex AI Live: ``/ws/google.cloud.aiplatform.{version}.LlmBidiService/BidiGenerateContent``."""
    return path.startswith("/ws/google.cloud.aiplatform.") and path.endswith(".LlmBidiService/BidiGenerateContent")


def region_origin(region: str) -> str:
    """The public endpoint of a Vertex region (``global`` has none of its own)."""
    return "https://aiplatform.googleapis.com" if region == "global" else f"https://{region}-aiplatform.googleapis.com"


class Vertex(Provider):
    name = "vertex"
    default_base_url = ""

    def __init__(
        self,
        regions: tuple[str, ...] = (),
        projects: tuple[str, ...] = (),
        base_url: str | None = None,
        inject_stream_usage: bool | None = None,
    ) -> None:
        super().__init__(base_url, inject_stream_usage)
        # Set here, not as a class attribute: Provider is compiled (scripts/compile), and a compiled base's
        # instance attribute hides a subclass's class attribute of the same name.
        self.multi_origin = True
        self.regions = tuple(regions)
        self.projects = frozenset(projects)
        self._gemini = Gemini()
        self._anthropic = Anthropic()

    def origins(self) -> dict[str, str]:
        """Pool name → origin, one per allowed region."""
        return {f"vertex:{r}": self.base_url or region_origin(r) for r in self.regions}

    def locate(self, path: str) -> tuple[str, str] | None:
        """The region's pool, or None when the path names a region or project the operator did not allow."""
        if is_live(path):
            # Vertex AI Live names no region in its path (google-genai asks the regional host): served when one
            # region is configured; its project and region are checked in the session's first message, before
            # it goes on (providers.realtime.GeminiLiveMeter).
            return (f"vertex:{self.regions[0]}", path) if len(self.regions) == 1 else None
        m = _PATH.match(path)
        if m is None or m["region"] not in self.regions or unquote(m["project"]) not in self.projects:
            return None
        return f"vertex:{m['region']}", path

    def refusal(self, path: str) -> str:
        if is_live(path):
            return (
                "Vertex AI Live names no region in its path: it is served when MODELTRACK_VERTEX_REGIONS names one "
                f"region (it names {len(self.regions)})."
            )
        m = _PATH.match(path)
        if m is None:
            return (
                "Not a Vertex AI model path: /vertex/v1/projects/PROJECT/locations/REGION/publishers/"
                "google|anthropic/models/MODEL:METHOD."
            )
        return (
            f"Vertex AI project {unquote(m['project'])!r} in region {m['region']!r} is not allowed here: allowed "
            f"regions {', '.join(self.regions)}; ask the operator to add it to MODELTRACK_VERTEX_PROJECTS / _REGIONS."
        )

    def request_info(self, method: str, path: str, query: str, body: Any) -> RequestInfo:
        m = _PATH.match(path)
        if m is None:
            return RequestInfo(method, path, query, None, False)
        info = RequestInfo(method, path, query, unquote(m["model"]), (m["method"] or "") in STREAM_METHODS)
        info.extra["publisher"] = m["publisher"]
        if m["method"] in VIDEO_METHODS:
            veo_request(info, m["method"], body)
        return info

    def meter(self, info: RequestInfo, status: int, headers: Any) -> Meter:
        if "veo" in info.extra:
            return VeoMeter(info, status)
        if info.extra.get("publisher") == "anthropic":
            return self._anthropic.meter(info, status, headers)
        return self._gemini.meter(info, status, headers)

    def error_body(self, status: int, kind: str, message: str) -> bytes:
        return orjson.dumps({"error": {"code": status, "message": message, "status": kind.upper()}})
