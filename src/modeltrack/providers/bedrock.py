"""AWS Bedrock Runtime: Converse, ConverseStream, InvokeModel, InvokeModelWithResponseStream.

Requests are SigV4-signed by the client, so the proxy must not touch the path (still %-encoded, e.g.
``us.amazon.nova-micro-v1%3A0``), the body or any signed header. Bedrock bodies are never rewritten.

Usage sources, best first:
* Converse(Stream): ``usage`` (``inputTokens`` EXCLUDES ``cacheReadInputTokens``/``cacheWriteInputTokens``).
* Invoke of an Anthropic model: the Anthropic body/events (carry the 1h cache-write split).
* Invoke(WithResponseStream) of any model: ``amazon-bedrock-invocationMetrics`` in the last chunk, or the
  ``x-amzn-bedrock-*-token-count`` response headers.
"""

from __future__ import annotations

import base64
from typing import Any
from urllib.parse import unquote

import orjson

from ..usage import Usage, as_int
from ..wire.eventstream import EventStreamDecoder
from .anthropic import anthropic_usage, apply_anthropic_usage
from .base import Meter, MeterResult, Provider, RequestInfo, error_code, has, loads
from .meters import JSONBodyMeter


def converse_usage(u: Any) -> Usage | None:
    if not isinstance(u, dict):
        return None
    return Usage(
        input_tokens=as_int(u.get("inputTokens")),
        output_tokens=as_int(u.get("outputTokens")),
        cache_read_tokens=as_int(u.get("cacheReadInputTokens")),
        cache_write_tokens=as_int(u.get("cacheWriteInputTokens")),
    )


def metrics_usage(m: Any) -> Usage | None:
    if not isinstance(m, dict):
        return None
    return Usage(
        input_tokens=as_int(m.get("inputTokenCount")),
        output_tokens=as_int(m.get("outputTokenCount")),
        cache_read_tokens=as_int(m.get("cacheReadInputTokenCount")),
        cache_write_tokens=as_int(m.get("cacheWriteInputTokenCount")),
    )


def header_usage(headers: Any) -> Usage | None:
    if headers is None or headers.get("x-amzn-bedrock-input-token-count") is None:
        return None
    return Usage(
        input_tokens=as_int(headers.get("x-amzn-bedrock-input-token-count")),
        output_tokens=as_int(headers.get("x-amzn-bedrock-output-token-count")),
        cache_read_tokens=as_int(headers.get("x-amzn-bedrock-cache-read-input-token-count")),
        cache_write_tokens=as_int(headers.get("x-amzn-bedrock-cache-write-input-token-count")),
    )


class BedrockJSONMeter(JSONBodyMeter):
    def __init__(self, info: RequestInfo, status: int, headers: Any) -> None:
        super().__init__(info, status)
        self.headers_usage = header_usage(headers)

    def from_json(self, obj: Any) -> MeterResult:
        if not isinstance(obj, dict):
            return MeterResult(error="unexpected_json")
        if self.status >= 400:
            return MeterResult(error=error_code(obj.get("__type") or (obj.get("message") and "error")))
        if isinstance(obj.get("usage"), dict) and "inputTokens" in obj["usage"]:
            return MeterResult(usage=converse_usage(obj["usage"]), usage_source="response")
        if isinstance(obj.get("usage"), dict) and "input_tokens" in obj["usage"]:  # Anthropic model via Invoke
            return MeterResult(usage=anthropic_usage(obj["usage"]), usage_source="response")
        if self.headers_usage is not None:
            return MeterResult(usage=self.headers_usage, usage_source="headers")
        return MeterResult(usage_source="missing")

    def finish(self, complete: bool) -> MeterResult:
        res = super().finish(complete)
        if res.usage is None and self.headers_usage is not None:
            res.usage, res.usage_source = self.headers_usage, "headers"
        return res


class BedrockStreamMeter:
    """Decodes event-stream frames; only ``metadata`` frames and the final Invoke chunk are JSON-decoded."""

    def __init__(self, info: RequestInfo, status: int, headers: Any) -> None:
        self.info = info
        self._decoder = EventStreamDecoder()
        self._usage: Usage | None = None
        self._anthropic: Usage | None = None
        self._source = "missing"
        self._error: str | None = None
        self.ended = False

    def feed(self, chunk: bytes) -> None:
        for frame in self._decoder.feed(chunk):
            h = frame.headers
            mtype = h.get(":message-type")
            if mtype in ("exception", "error"):
                self._error = error_code(h.get(":exception-type") or h.get(":error-code") or "exception")
                continue
            etype = h.get(":event-type")
            if etype == "metadata":
                obj = loads(frame.payload)
                if isinstance(obj, dict):
                    self._usage = converse_usage(obj.get("usage"))
                    self._source = "stream"
                self.ended = True
            elif etype == "chunk":
                self._invoke_chunk(frame.payload)

    def _invoke_chunk(self, payload: bytes) -> None:
        obj = loads(payload)
        raw = obj.get("bytes") if isinstance(obj, dict) else None
        if not isinstance(raw, str):
            return
        try:
            inner = base64.b64decode(raw)
        except ValueError:
            self._error = "invalid_chunk"
            return
        if has(inner, b"amazon-bedrock-invocationMetrics"):
            doc = loads(inner)
            if isinstance(doc, dict):
                self._usage = metrics_usage(doc.get("amazon-bedrock-invocationMetrics"))
                self._source = "stream"
                self.ended = True
        if has(inner[:40], b'"message_start"') or has(inner[:40], b'"message_delta"'):
            doc = loads(inner)
            if isinstance(doc, dict):
                if self._anthropic is None:
                    self._anthropic = Usage()
                apply_anthropic_usage(self._anthropic, (doc.get("message") or {}).get("usage") or doc.get("usage"))

    def finish(self, complete: bool) -> MeterResult:
        usage = self._usage
        if self._anthropic is not None:
            # The Anthropic events know the 1h cache split; the metrics know nothing more. Prefer them.
            usage = self._anthropic
            self._source = "stream" if self.ended else "partial"
        err = self._error or self._decoder.error
        if usage is None:
            return MeterResult(model=self.info.model, error=err)
        src = self._source if complete else "partial"
        return MeterResult(
            model=self.info.model, usage=usage, usage_source=src, error=err or (None if complete else "truncated")
        )


class Bedrock(Provider):
    """One region (``MODELTRACK_BEDROCK_BASE_URL``, default us-east-1) under ``/bedrock/model/...`` and
    ``/model/...``; with ``MODELTRACK_BEDROCK_REGIONS``, each listed region under ``/bedrock/{region}/model/...``,
    with its own upstream pool whose origin comes from configuration only (``bedrock-runtime.{region}
    .amazonaws.com``, or ``MODELTRACK_BEDROCK_ENDPOINTS``). The region picks among configured origins: an
    unlisted one is refused (403) before anything is sent, so no request can name a host
    (tests/test_azure_resources.py::test_each_bedrock_region_has_its_own_origin). The client signs for the
    region's own host, as with one region."""

    name = "bedrock"
    default_base_url = "https://bedrock-runtime.us-east-1.amazonaws.com"

    def __init__(
        self,
        base_url: str | None = None,
        inject_stream_usage: bool | None = None,
        regions: dict[str, str] | None = None,
    ) -> None:
        super().__init__(base_url, inject_stream_usage)
        self.regions = {k: v.rstrip("/") for k, v in (regions or {}).items()}
        self.multi_origin = bool(self.regions)

    def origins(self) -> dict[str, str]:
        out = super().origins()
        out.update({f"bedrock:{region}": url for region, url in self.regions.items()})
        return out

    def locate(self, path: str) -> tuple[str, str] | None:
        """``/{region}/model/...`` → that region's pool and ``/model/...``; ``/model/...`` → the single region."""
        region, _, rest = path[1:].partition("/")
        if region in self.regions:
            return f"bedrock:{region}", "/" + rest
        if region == "model":
            return self.name, path
        return None

    def refusal(self, path: str) -> str:
        regions = ", ".join(sorted(self.regions))
        return f"No such Bedrock region here: write /bedrock/REGION/model/..., REGION one of {regions}."

    def request_info(self, method: str, path: str, query: str, body: Any) -> RequestInfo:
        # /model/{modelId}/{converse|converse-stream|invoke|invoke-with-response-stream} (a region's prefix is
        # gone: :meth:`locate` took it)
        model = None
        parts = path.split("/")
        if len(parts) >= 4 and parts[1] == "model":
            model = unquote(parts[2]) or None
        op = parts[-1] if parts else ""
        return RequestInfo(method, path, query, model, op in ("converse-stream", "invoke-with-response-stream"))

    def meter(self, info: RequestInfo, status: int, headers: Any) -> Meter:
        ctype = (headers.get("Content-Type") or "").lower()
        if "vnd.amazon.eventstream" in ctype:
            return BedrockStreamMeter(info, status, headers)
        return BedrockJSONMeter(info, status, headers)

    def error_body(self, status: int, kind: str, message: str) -> bytes:
        return orjson.dumps({"message": message, "__type": kind})
