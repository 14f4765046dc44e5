"""Expected usage per recording, written by reading the recordings (not by running our code).

Each entry: (fixture, interaction) -> dict of expected event fields. Token fields follow the ModelTrack
ledger (uncached input; output includes reasoning). The arithmetic from the raw numbers is in the comments.
"""

from __future__ import annotations

from typing import Any

EXPECTED: dict[tuple[str, int], dict[str, Any]] = {
    # Bedrock InvokeModel, Anthropic body: input_tokens 3 (excludes cache), cache_read 9511, writes 0, output 1944.
    ("test_anthropic__test_anthropic_cache_bedrock_real_api", 0): dict(
        provider="bedrock", model="eu.anthropic.claude-haiku-4-5-20251001-v1:0", input_tokens=3,
        cache_read_tokens=9511, cache_write_tokens=0, output_tokens=1944, usage_source="response"),
    # ...second call: cache_creation_input_tokens 1956 (all ephemeral_5m), read 9511, output 44.
    ("test_anthropic__test_anthropic_cache_bedrock_real_api", 1): dict(
        provider="bedrock", model="eu.anthropic.claude-haiku-4-5-20251001-v1:0", input_tokens=3,
        cache_read_tokens=9511, cache_write_tokens=1956, cache_write_1h_tokens=0, output_tokens=44),
    ("test_anthropic__test_anthropic_cache_real_api", 0): dict(
        provider="anthropic", model="claude-sonnet-4-5-20250929", input_tokens=3, cache_read_tokens=1111,
        cache_write_tokens=0, output_tokens=406, service_tier="standard"),
    ("test_anthropic__test_anthropic_cache_real_api", 1): dict(
        provider="anthropic", model="claude-sonnet-4-5-20250929", input_tokens=3, cache_read_tokens=1111,
        cache_write_tokens=418, output_tokens=33),
    # message_start: input 43, output 1; message_delta (cumulative): input 43, output 282 -> 43 / 282, not 283.
    ("test_anthropic__test_anthropic_model_thinking_part_stream", 0): dict(
        provider="anthropic", model="claude-sonnet-4-20250514", input_tokens=43, output_tokens=282,
        cache_read_tokens=0, cache_write_tokens=0, usage_source="stream", stream=True),
    # message_start: input 2068, output 8; final message_delta: input 22397 (grew with search results), output 637,
    # server_tool_use.web_search_requests 2.
    ("test_anthropic__test_anthropic_model_web_search_tool_stream", 0): dict(
        provider="anthropic", model="claude-sonnet-4-20250514", input_tokens=22397, output_tokens=637,
        web_search_requests=2, usage_source="stream", stream=True),
    # Azure: prompt 14 (cached 0), completion 9; the response names gpt-4o-2024-11-20 (deployment "gpt-4o").
    ("test_azure__test_azure_provider_call", 0): dict(
        provider="azure", model="gpt-4o-2024-11-20", requested_model="gpt-4o", input_tokens=14, output_tokens=9),
    # Bedrock ConverseStream metadata frame: inputTokens 13, outputTokens 82.
    ("test_bedrock__test_bedrock_model_stream", 0): dict(
        provider="bedrock", model="us.amazon.nova-micro-v1:0", input_tokens=13, output_tokens=82,
        usage_source="stream", stream=True),
    # DeepSeek: usage on the last content chunk: prompt 6 (prompt_cache_hit_tokens 0), completion 212 incl. 198
    # reasoning.
    ("test_deepseek__test_deepseek_model_thinking_stream", 0): dict(
        provider="deepseek", model="deepseek-reasoner", input_tokens=6, output_tokens=212, reasoning_tokens=198,
        cache_read_tokens=0, usage_source="stream", stream=True),
    ("test_embeddings__TestOpenAI.test_documents", 0): dict(
        provider="openai", model="text-embedding-3-small", input_tokens=2, output_tokens=0),
    # Gemini SSE: three usageMetadata; the last is authoritative: prompt 13, candidates 8.
    ("test_google__test_google_model_stream", 0): dict(
        provider="gemini", model="gemini-2.0-flash-exp", input_tokens=13, output_tokens=8, usage_source="stream",
        stream=True),
    # Gemini 2.5: last chunk prompt 18, candidates 80, thoughts 35 -> output 80 + 35 = 115, reasoning 35.
    ("test_google__test_google_stream_usage_is_live_mid_stream", 0): dict(
        provider="gemini", model="gemini-2.5-flash", input_tokens=18, output_tokens=115, reasoning_tokens=35,
        stream=True),
    # Groq: `event: error` mid-stream, code tool_use_failed, no usage.
    ("test_groq__test_tool_use_failed_error_streaming", 0): dict(
        provider="groq", model="openai/gpt-oss-120b", error="tool_use_failed", usage_source="missing", stream=True),
    # Groq x_groq.usage: prompt 304, completion 49 (reasoning 23).
    ("test_groq__test_tool_use_failed_error_streaming", 1): dict(
        provider="groq", model="openai/gpt-oss-120b", input_tokens=304, output_tokens=49, reasoning_tokens=23),
    ("test_groq__test_tool_use_failed_error_streaming", 2): dict(
        provider="groq", model="openai/gpt-oss-120b", input_tokens=339, output_tokens=58, reasoning_tokens=38),
    ("test_openai__test_openai_web_search_tool_model_not_supported", 0): dict(
        provider="openai", status=400, error="invalid_request_error", usage_source="missing"),
    # Final chunk with choices [] carries usage: prompt 53, completion 15.
    ("test_openai__test_run_stream_sync_streams_real_model", 0): dict(
        provider="openai", model="gpt-4o-mini-2024-07-18", requested_model="gpt-4o-mini", input_tokens=53,
        output_tokens=15, usage_source="stream", stream=True),
    ("test_openai__test_run_stream_sync_streams_real_model", 1): dict(
        provider="openai", model="gpt-4o-mini-2024-07-18", input_tokens=78, output_tokens=9, stream=True),
    # prompt 4020 includes cache_write_tokens 4012 -> uncached input 8; completion 4.
    ("test_openai_prompt_cache__test_openai_chat_prompt_cache_e2e", 0): dict(
        provider="openai", model="gpt-5.6-sol", input_tokens=8, cache_write_tokens=4012, cache_read_tokens=0,
        output_tokens=4),
    # prompt 4020 includes cached_tokens 4012 -> uncached input 8, cache read 4012.
    ("test_openai_prompt_cache__test_openai_chat_prompt_cache_e2e", 1): dict(
        provider="openai", model="gpt-5.6-sol", input_tokens=8, cache_read_tokens=4012, cache_write_tokens=0,
        output_tokens=4, cache_hit=True),
    ("test_openai_responses__test_openai_responses_model_http_error", 0): dict(
        provider="openai", status=400, error="decimal_below_min_value", usage_source="missing"),
    # response.completed: input 53 (cached 0), output 469 incl. 448 reasoning; service_tier flex.
    ("test_openai_responses__test_openai_responses_streaming_usage", 0): dict(
        provider="openai", model="gpt-5-2025-08-07", input_tokens=53, output_tokens=469, reasoning_tokens=448,
        service_tier="flex", usage_source="stream", stream=True),
    # OpenRouter: error object inside a normal chunk (code 400) that also carries usage: prompt 43, completion 10
    # (reasoning 11 as reported), cost 0 reported by the provider.
    ("test_openrouter__test_openrouter_stream_error", 0): dict(
        provider="openrouter", model="minimax/minimax-m2:free", input_tokens=43, output_tokens=10,
        reasoning_tokens=11, error="400", cost_usd=0.0, cost_source="provider", stream=True),
}

PROVIDER_BY_HOST = {
    "api.openai.com": "openai",
    "api.anthropic.com": "anthropic",
    "generativelanguage.googleapis.com": "gemini",
    "api.deepseek.com": "deepseek",
    "api.groq.com": "groq",
    "openrouter.ai": "openrouter",
}


def provider_of(uri: str) -> str:
    host = uri.split("://", 1)[1].split("/", 1)[0]
    if host.endswith(".openai.azure.com"):
        return "azure"
    if host.startswith("bedrock-runtime."):
        return "bedrock"
    return PROVIDER_BY_HOST[host]
