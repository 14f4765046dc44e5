"""Google Gemini API: ``generateContent``, ``streamGenerateContent`` with ``alt=sse`` and without (JSON array).

Usage mapping: ``promptTokenCount`` INCLUDES ``cachedContentTokenCount``; ``candidatesTokenCount`` EXCLUDES
``thoughtsTokenCount`` (so output = candidates + thoughts, and reasoning = thoughts); ``toolUsePromptTokenCount``
is billed as input. Every streamed chunk repeats ``usageMetadata`` with running totals: the last one is
authoritative, so only the last is decoded.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import unquote

import orjson

from ..usage import Usage, as_int
from ..wire.jsonstream import JSONArraySplitter
from ..wire.sse import SSEEvent
from .base import Meter, MeterResult, Provider, RequestInfo, error_code, has, loads
from .batches import FreeMeter, GeminiBatchFileMeter, GeminiBatchMeter
from .images import ImageCountMeter
from .meters import JSONBodyMeter, SSEMeter
from .openai import is_sse

_MODALITY = {"TEXT": "text", "AUDIO": "audio", "IMAGE": "image", "DOCUMENT": "image", "VIDEO": "video"}
"""Gemini's modalities as genai-prices' usage keys name them (a document is priced as image input)."""


def _by_modality(details: Any) -> dict[str, int]:
    out: dict[str, int] = {}
    for d in details or ():
        if isinstance(d, dict):
            m = _MODALITY.get(str(d.get("modality", "")).upper())
            if m is not None:
                out[m] = out.get(m, 0) + as_int(d.get("tokenCount"))
    return out


def gemini_usage(u: Any) -> Usage | None:
    """``usageMetadata`` onto the ledger, as genai-prices' own Google extractor maps it: totals, then every
    modality breakdown (prompt, cache, candidates, tool-use prompt) as a subset of its total."""
    if not isinstance(u, dict):
        return None
    tool = as_int(u.get("toolUsePromptTokenCount"))
    prompt = as_int(u.get("promptTokenCount")) + tool
    cached = as_int(u.get("cachedContentTokenCount"))
    thoughts = as_int(u.get("thoughtsTokenCount"))
    details: dict[str, int] = {}
    for m, n in _by_modality(u.get("promptTokensDetails")).items():
        details[f"input_{m}_tokens"] = n
    for m, n in _by_modality(u.get("toolUsePromptTokensDetails")).items():
        details[f"input_{m}_tokens"] = details.get(f"input_{m}_tokens", 0) + n  # tool-use prompt is input too
        details[f"input_{m}_tool_tokens"] = n
    if tool:
        details["input_tool_tokens"] = tool
    for m, n in _by_modality(u.get("cacheTokensDetails")).items():
        details[f"cache_{m}_read_tokens"] = n
    for m, n in _by_modality(u.get("candidatesTokensDetails")).items():
        details[f"output_{m}_tokens"] = n
    tier = u.get("serviceTier")
    return Usage(
        input_tokens=max(prompt - cached, 0),
        cache_read_tokens=cached,
        output_tokens=as_int(u.get("candidatesTokenCount")) + thoughts,
        reasoning_tokens=thoughts,
        input_audio_tokens=details.pop("input_audio_tokens", 0),
        output_audio_tokens=details.pop("output_audio_tokens", 0),
        input_image_tokens=details.pop("input_image_tokens", 0),
        details=details or None,
        service_tier=tier if isinstance(tier, str) else None,
    )


def _result(obj: Any, source: str) -> MeterResult:
    if not isinstance(obj, dict):
        return MeterResult(error="unexpected_json")
    if "error" in obj and "usageMetadata" not in obj:
        return MeterResult(error=error_code(obj["error"]))
    usage = gemini_usage(obj.get("usageMetadata"))
    model = obj.get("modelVersion")
    return MeterResult(
        model=model if isinstance(model, str) else None,
        usage=usage,
        usage_source=source if usage else "missing",
    )


class GeminiJSONMeter(JSONBodyMeter):
    def from_json(self, obj: Any) -> MeterResult:
        if isinstance(obj, list):  # a non-SSE stream read as a whole also lands here if cut short
            obj = next((o for o in reversed(obj) if isinstance(o, dict) and "usageMetadata" in o), obj[-1:] or None)
            if isinstance(obj, list):
                obj = obj[0] if obj else None
        return _result(obj, "response")


class GeminiSSEMeter(SSEMeter):
    def __init__(self, info: RequestInfo, status: int) -> None:
        super().__init__(info, status)
        self._last: bytes | None = None
        self._prev: bytes | None = None  # the one before: a stream cut mid-event leaves a torn last one

    def on_event(self, ev: SSEEvent) -> None:
        if has(ev.data, b'"finishReason"'):
            self.ended = True  # the last candidate chunk: Gemini streams have no separate end marker
        if has(ev.data, b'"usageMetadata"'):
            self._prev, self._last = self._last, ev.data
        elif has(ev.data[:32], b'"error"'):
            self.error_from(ev.data)

    def result(self, complete: bool) -> MeterResult:
        """Complete only with the stream's own end signal (a ``finishReason``), as the other providers' meters
        (``[DONE]``, ``message_stop``): a body that ends cleanly before it is truncated, whatever its framing
        said (tests/test_sse_meters.py::test_a_gemini_stream_that_ends_before_its_finish_reason_is_truncated)."""
        if self._last is None:
            return MeterResult(usage_source="missing")
        obj = loads(self._last)
        if not isinstance(obj, dict) and self._prev is not None:
            obj = loads(self._prev)  # the last event was torn by the cut: the one before is the latest usage
        done = complete and self.ended
        res = _result(obj, "stream" if done else "partial")
        if not done:
            res.error = res.error or self.error or "truncated"
        return res


class GeminiArrayMeter:
    """``streamGenerateContent`` without ``alt=sse``: an incrementally sent JSON array."""

    def __init__(self, info: RequestInfo, status: int) -> None:
        self.info = info
        self._splitter = JSONArraySplitter()
        self._last: bytes | None = None
        self._error: str | None = None

    @property
    def ended(self) -> bool:
        return self._last is not None and self._splitter.complete

    def feed(self, chunk: bytes) -> None:
        for element in self._splitter.feed(chunk):
            if has(element, b'"usageMetadata"'):
                self._last = element
            elif has(element[:32], b'"error"'):
                obj = loads(element)
                self._error = error_code(obj.get("error") if isinstance(obj, dict) else None)

    def finish(self, complete: bool) -> MeterResult:
        if self._last is None:
            return MeterResult(model=self.info.model, error=self._error or self._splitter.error)
        done = complete and self._splitter.complete
        res = _result(loads(self._last), "stream" if done else "partial")
        res.model = res.model or self.info.model
        res.error = res.error or self._error or self._splitter.error or (None if done else "truncated")
        return res


_DOWNLOAD = re.compile(r"(?:/download)?/v1(?:beta|alpha)?/files/(?P<file>[A-Za-z0-9_-]+):download")
"""A file's content (``google-genai`` asks ``/v1beta/files/{id}:download?alt=media``; the REST reference names
``/download/v1beta/…``): a batch's responses file is metered when it is read."""


class Gemini(Provider):
    name = "gemini"
    default_base_url = "https://generativelanguage.googleapis.com"

    def request_info(self, method: str, path: str, query: str, body: Any) -> RequestInfo:
        # The model is in the path: /v1beta/models/{model}:generateContent (possibly %-encoded).
        model = None
        marker = "/models/"
        i = path.find(marker)
        if i >= 0:
            rest = unquote(path[i + len(marker) :])
            model = rest.split(":", 1)[0].split("/", 1)[0] or None
        stream = ":streamGenerateContent" in path
        info = RequestInfo(method, path, query, model, stream)
        download = _DOWNLOAD.fullmatch(path) if method == "GET" else None
        if download is not None:
            info.extra["file_id"] = "files/" + download["file"]  # perhaps a batch's responses (modeltrack.batches)
        elif ":batchGenerateContent" in path or "/batches/" in path:
            info.extra["batch_api"] = True
            if method == "GET" and "/batches/" in path:
                # A poll: once the batch succeeded, its answers are in it (modeltrack.batches).
                info.extra["batch_results"] = "batches/" + path.rsplit("/batches/", 1)[1].split(":", 1)[0]
        return info

    def meter(self, info: RequestInfo, status: int, headers: Any) -> Meter:
        if info.path.endswith(":predict"):
            return ImageCountMeter(info, status)  # Imagen (here and on Vertex AI): billed per image
        if info.extra.get("batch_api"):
            return GeminiBatchMeter(info, status, gemini_usage)
        if "file_id" in info.extra:
            job = info.extra.get("batch")
            if job is not None and not job["priced"]:  # (already priced: streamed through unread)
                return GeminiBatchFileMeter(info, status, gemini_usage)
            return FreeMeter(info, status)
        if is_sse(headers):
            return GeminiSSEMeter(info, status)
        if info.stream and status < 400:
            return GeminiArrayMeter(info, status)
        return GeminiJSONMeter(info, status)

    def error_body(self, status: int, kind: str, message: str) -> bytes:
        return orjson.dumps({"error": {"code": status, "message": message, "status": kind.upper()}})
