"""A cost event's OpenTelemetry span, as data: its name, attributes (the GenAI semantic conventions plus
ModelTrack's own) and times. No SDK here: :mod:`.build` makes the spans, in the exporter's process.

Nothing secret or private: attributes come only from the event, which holds metadata, never a prompt, a
response or a key (tests/test_otel.py scans what the receiver got for canaries).
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..events import CostEvent

PROVIDER_NAMES = {
    "openai": "openai",
    "anthropic": "anthropic",
    "gemini": "gcp.gemini",
    "bedrock": "aws.bedrock",
    "azure": "azure.ai.openai",
    "groq": "groq",
    "mistral": "mistral_ai",
    "deepseek": "deepseek",
    "xai": "x_ai",
}
"""``gen_ai.provider.name`` per the GenAI conventions' well-known values; other providers keep their own name."""

_OPERATIONS = {
    "completions": "chat",
    "messages": "chat",
    "responses": "chat",
    "converse": "chat",
    "converse-stream": "chat",
    "generateContent": "generate_content",
    "streamGenerateContent": "generate_content",
    "embeddings": "embeddings",
    "embedContent": "embeddings",
    "batchEmbedContents": "embeddings",
}


def operation(endpoint: str) -> str:
    """``gen_ai.operation.name`` from the endpoint's path (``/v1/chat/completions`` → ``chat``)."""
    last = endpoint.rsplit("/", 1)[-1]
    last = last.rsplit(":", 1)[-1]
    if last == "completions" and not endpoint.endswith("chat/completions"):
        return "text_completion"
    return _OPERATIONS.get(last, last or "request")


def epoch_ns(timestamp: str) -> int:
    when = datetime.fromisoformat(timestamp.replace("Z", "+00:00"))
    return int(when.timestamp()) * 1_000_000_000 + when.microsecond * 1000


def attributes(ev: CostEvent) -> dict[str, Any]:
    """The span's attributes. ``gen_ai.usage.input_tokens`` counts every input token, cached ones included (as
    the conventions say); ModelTrack's ``input_tokens`` is the uncached part, so both are there. Nulls are left
    out (OpenTelemetry attributes have no null)."""
    provider = PROVIDER_NAMES.get(ev.provider, ev.provider)
    out: dict[str, Any] = {
        "gen_ai.operation.name": operation(ev.endpoint),
        "gen_ai.provider.name": provider,
        "gen_ai.system": provider,
        "gen_ai.request.model": ev.requested_model or ev.model,
        "gen_ai.response.model": ev.model,
        "gen_ai.usage.input_tokens": ev.input_tokens + ev.cache_read_tokens + ev.cache_write_tokens,
        "gen_ai.usage.output_tokens": ev.output_tokens,
        "gen_ai.usage.cache_read.input_tokens": ev.cache_read_tokens,
        "gen_ai.usage.cache_creation.input_tokens": ev.cache_write_tokens,
        "gen_ai.usage.reasoning.output_tokens": ev.reasoning_tokens,
        "http.response.status_code": ev.status,
        "error.type": ev.error,
        "modeltrack.request_id": ev.request_id,
        "modeltrack.upstream_request_id": ev.upstream_request_id,
        "modeltrack.endpoint": ev.endpoint,
        "modeltrack.stream": ev.stream,
        "modeltrack.cost_usd": ev.cost_usd,
        "modeltrack.cost_source": ev.cost_source,
        "modeltrack.usage_source": ev.usage_source,
        "modeltrack.input_tokens": ev.input_tokens,
        "modeltrack.latency_ms": ev.latency_ms,
        "modeltrack.ttft_ms": ev.ttft_ms,
        "modeltrack.team": ev.team,
        "modeltrack.app": ev.app,
        "modeltrack.feature": ev.feature,
        "modeltrack.user": ev.user,
        "modeltrack.session_id": ev.session_id,
        "modeltrack.prompt_id": ev.prompt_id,
        "modeltrack.org": ev.org,
        "modeltrack.key_id": ev.key_id,
        "modeltrack.routed": ev.routed,
        "modeltrack.route_rule": ev.route_rule,
        "modeltrack.cache_hit": ev.cache_hit,
        "modeltrack.saved_usd": ev.saved_usd,
        "modeltrack.service_tier": ev.service_tier,
    }
    for name, value in (ev.properties or {}).items():
        out[f"modeltrack.property.{name}"] = value
    return {k: v for k, v in out.items() if v is not None}


def span_name(attrs: dict[str, Any]) -> str:
    return f"{attrs['gen_ai.operation.name']} {attrs.get('gen_ai.request.model', '')}".strip()
