"""Anthropic Messages API (stream and not), ``count_tokens`` (zero cost).

Usage mapping: ``input_tokens`` EXCLUDES cache reads and writes (unlike OpenAI). ``cache_creation_input_tokens``
is all cache writes; ``cache_creation.ephemeral_1h_input_tokens`` the 1-hour subset. ``output_tokens`` includes
thinking. In streams, ``message_start`` carries the initial usage and every ``message_delta`` carries
*cumulative* totals for the fields it names: values replace, they are never added (adding them is the classic
double count).
"""

from __future__ import annotations

from typing import Any

import orjson

from ..usage import Usage, as_int
from ..wire.sse import SSEEvent
from .base import BodyView, Meter, MeterResult, Provider, RequestInfo, error_code, has, loads
from .batches import BatchObjectMeter, FreeMeter, MessageBatchResultsMeter, ResultsURLView
from .meters import JSONBodyMeter, SSEMeter, dig
from .openai import is_sse


def apply_anthropic_usage(usage: Usage, u: Any) -> None:
    """Overwrite ``usage`` with the fields present in ``u`` (cumulative semantics)."""
    if not isinstance(u, dict):
        return
    if "input_tokens" in u:
        usage.input_tokens = as_int(u["input_tokens"])
    if "output_tokens" in u:
        usage.output_tokens = as_int(u["output_tokens"])
    if "cache_read_input_tokens" in u:
        usage.cache_read_tokens = as_int(u["cache_read_input_tokens"])
    if "cache_creation_input_tokens" in u:
        usage.cache_write_tokens = as_int(u["cache_creation_input_tokens"])
    cc = u.get("cache_creation")
    if isinstance(cc, dict) and "ephemeral_1h_input_tokens" in cc:
        usage.cache_write_1h_tokens = as_int(cc["ephemeral_1h_input_tokens"])
    stu = u.get("server_tool_use")
    if isinstance(stu, dict) and "web_search_requests" in stu:
        usage.web_search_requests = as_int(stu["web_search_requests"])
    tier = u.get("service_tier")
    if isinstance(tier, str):
        usage.service_tier = tier
    thinking = dig(u, "output_tokens_details", "thinking_tokens")
    if thinking is not None:
        usage.reasoning_tokens = as_int(thinking)


def anthropic_usage(u: Any) -> Usage | None:
    if not isinstance(u, dict):
        return None
    usage = Usage()
    apply_anthropic_usage(usage, u)
    return usage


class AnthropicJSONMeter(JSONBodyMeter):
    def from_json(self, obj: Any) -> MeterResult:
        if not isinstance(obj, dict):
            return MeterResult(error="unexpected_json")
        if obj.get("type") == "error":
            return MeterResult(error=error_code(obj.get("error")))
        usage = anthropic_usage(obj.get("usage"))
        model = obj.get("model")
        return MeterResult(
            model=model if isinstance(model, str) else None,
            usage=usage,
            usage_source="response" if usage else "missing",
        )


class AnthropicStreamMeter(SSEMeter):
    def __init__(self, info: RequestInfo, status: int) -> None:
        super().__init__(info, status)
        self.usage: Usage | None = None

    def on_event(self, ev: SSEEvent) -> None:
        name = ev.event
        if not name:
            head = ev.data[:40]
            if has(head, b'"message_start"'):
                name = b"message_start"
            elif has(head, b'"message_delta"'):
                name = b"message_delta"
            elif has(head, b'"error"'):
                name = b"error"
            else:
                return
        if name == b"message_start":
            obj = loads(ev.data)
            msg = obj.get("message") if isinstance(obj, dict) else None
            if isinstance(msg, dict):
                if isinstance(msg.get("model"), str):
                    self.model = msg["model"]
                self.usage = anthropic_usage(msg.get("usage")) or self.usage
        elif name == b"message_delta":
            obj = loads(ev.data)
            if isinstance(obj, dict) and isinstance(obj.get("usage"), dict):
                if self.usage is None:
                    self.usage = Usage()
                apply_anthropic_usage(self.usage, obj["usage"])
        elif name == b"message_stop":
            self.ended = True
        elif name == b"error":
            self.error_from(ev.data)

    def result(self, complete: bool) -> MeterResult:
        if self.usage is None:
            return MeterResult(usage_source="missing")
        return MeterResult(usage=self.usage, usage_source="stream" if complete and self.ended else "partial")


class CountTokensMeter(JSONBodyMeter):
    """``/v1/messages/count_tokens`` is free: recorded, priced at exactly zero."""

    def from_json(self, obj: Any) -> MeterResult:
        err = obj.get("error") if isinstance(obj, dict) and obj.get("type") == "error" else None
        return MeterResult(usage=Usage(), usage_source="none", zero_cost=True, error=error_code(err) if err else None)


class Anthropic(Provider):
    name = "anthropic"
    default_base_url = "https://api.anthropic.com"

    def request_info(self, method: str, path: str, query: str, body: Any) -> RequestInfo:
        info = super().request_info(method, path, query, body)
        if "/messages/batches" in path:
            parts = path.rstrip("/").split("/")
            if method == "GET" and parts[-1] == "results" and len(parts) >= 2:
                info.extra["batch_results"] = parts[-2]  # the proxy asks its batch registry (modeltrack.batches)
            info.extra["batch_api"] = True
        return info

    def meter(self, info: RequestInfo, status: int, headers: Any) -> Meter:
        if info.path.endswith("/count_tokens"):
            return CountTokensMeter(info, status)
        if info.extra.get("batch_api"):
            if "batch_results" in info.extra:
                job = info.extra.get("batch")
                if job is not None and not job["priced"]:  # (already priced: streamed through unread)
                    return MessageBatchResultsMeter(info, status, anthropic_usage)
                return FreeMeter(info, status)
            return BatchObjectMeter(info, status)
        if is_sse(headers):
            return AnthropicStreamMeter(info, status)
        return AnthropicJSONMeter(info, status)

    def client_view(self, info: RequestInfo, status: int, encoding: str | None) -> BodyView | None:
        """Batch objects' ``results_url`` pointed back at the proxy (:class:`.batches.ResultsURLView`)."""
        base = info.extra.get("public_base")
        if base and "batch_results" not in info.extra and 200 <= status < 300 and encoding is None:
            return ResultsURLView(base)
        return None

    def error_body(self, status: int, kind: str, message: str) -> bytes:
        return orjson.dumps({"type": "error", "error": {"type": kind, "message": message}})
