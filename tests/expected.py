"""Expected usage per recording, written by reading the recordings (not by running our code).

Each entry: (fixture, interaction) -> dict of expected event fields. Token fields follow the ModelTrack
ledger (uncached input; output includes reasoning). The arithmetic from the raw numbers is in the comments.
"""

from __future__ import annotations

from typing import Any

EXPECTED: dict[tuple[str, int], dict[str, Any]] = {
    # Bedrock InvokeModel, Anthropic body: input_tokens 3 (excludes cache), cache_read 9511, writes 0, output 1944.
    ("test_anthropic__test_anthropic_cache_bedrock_real_api", 0): dict(
        provider="bedrock",
        model="eu.anthropic.claude-haiku-4-5-20251001-v1:0",
        input_tokens=3,
        cache_read_tokens=9511,
        cache_write_tokens=0,
        output_tokens=1944,
        usage_source="response",
    ),
    # ...second call: cache_creation_input_tokens 1956 (all ephemeral_5m), read 9511, output 44.
    ("test_anthropic__test_anthropic_cache_bedrock_real_api", 1): dict(
        provider="bedrock",
        model="eu.anthropic.claude-haiku-4-5-20251001-v1:0",
        input_tokens=3,
        cache_read_tokens=9511,
        cache_write_tokens=1956,
        cache_write_1h_tokens=0,
        output_tokens=44,
    ),
    ("test_anthropic__test_anthropic_cache_real_api", 0): dict(
        provider="anthropic",
        model="claude-sonnet-4-5-20250929",
        input_tokens=3,
        cache_read_tokens=1111,
        cache_write_tokens=0,
        output_tokens=406,
        service_tier="standard",
    ),
    ("test_anthropic__test_anthropic_cache_real_api", 1): dict(
        provider="anthropic",
        model="claude-sonnet-4-5-20250929",
        input_tokens=3,
        cache_read_tokens=1111,
        cache_write_tokens=418,
        output_tokens=33,
    ),
    # message_start: input 43, output 1; message_delta (cumulative): input 43, output 282 -> 43 / 282, not 283.
    ("test_anthropic__test_anthropic_model_thinking_part_stream", 0): dict(
        provider="anthropic",
        model="claude-sonnet-4-20250514",
        input_tokens=43,
        output_tokens=282,
        cache_read_tokens=0,
        cache_write_tokens=0,
        usage_source="stream",
        stream=True,
    ),
    # message_start: input 2068, output 8; final message_delta: input 22397 (grew with search results), output 637,
    # server_tool_use.web_search_requests 2.
    ("test_anthropic__test_anthropic_model_web_search_tool_stream", 0): dict(
        provider="anthropic",
        model="claude-sonnet-4-20250514",
        input_tokens=22397,
        output_tokens=637,
        web_search_requests=2,
        usage_source="stream",
        stream=True,
    ),
    # Azure: prompt 14 (cached 0), completion 9; the response names gpt-4o-2024-11-20 (deployment "gpt-4o").
    ("test_azure__test_azure_provider_call", 0): dict(
        provider="azure", model="gpt-4o-2024-11-20", requested_model="gpt-4o", input_tokens=14, output_tokens=9
    ),
    # Bedrock ConverseStream metadata frame: inputTokens 13, outputTokens 82.
    ("test_bedrock__test_bedrock_model_stream", 0): dict(
        provider="bedrock",
        model="us.amazon.nova-micro-v1:0",
        input_tokens=13,
        output_tokens=82,
        usage_source="stream",
        stream=True,
    ),
    # DeepSeek: usage on the last content chunk: prompt 6 (prompt_cache_hit_tokens 0), completion 212 incl. 198
    # reasoning.
    ("test_deepseek__test_deepseek_model_thinking_stream", 0): dict(
        provider="deepseek",
        model="deepseek-reasoner",
        input_tokens=6,
        output_tokens=212,
        reasoning_tokens=198,
        cache_read_tokens=0,
        usage_source="stream",
        stream=True,
    ),
    ("test_embeddings__TestOpenAI.test_documents", 0): dict(
        provider="openai", model="text-embedding-3-small", input_tokens=2, output_tokens=0
    ),
    # Gemini SSE: three usageMetadata; the last is authoritative: prompt 13, candidates 8.
    ("test_google__test_google_model_stream", 0): dict(
        provider="gemini",
        model="gemini-2.0-flash-exp",
        input_tokens=13,
        output_tokens=8,
        usage_source="stream",
        stream=True,
    ),
    # Gemini 2.5: last chunk prompt 18, candidates 80, thoughts 35 -> output 80 + 35 = 115, reasoning 35.
    ("test_google__test_google_stream_usage_is_live_mid_stream", 0): dict(
        provider="gemini",
        model="gemini-2.5-flash",
        input_tokens=18,
        output_tokens=115,
        reasoning_tokens=35,
        stream=True,
    ),
    # Groq: `event: error` mid-stream, code tool_use_failed, no usage.
    ("test_groq__test_tool_use_failed_error_streaming", 0): dict(
        provider="groq", model="openai/gpt-oss-120b", error="tool_use_failed", usage_source="missing", stream=True
    ),
    # Groq x_groq.usage: prompt 304, completion 49 (reasoning 23).
    ("test_groq__test_tool_use_failed_error_streaming", 1): dict(
        provider="groq", model="openai/gpt-oss-120b", input_tokens=304, output_tokens=49, reasoning_tokens=23
    ),
    ("test_groq__test_tool_use_failed_error_streaming", 2): dict(
        provider="groq", model="openai/gpt-oss-120b", input_tokens=339, output_tokens=58, reasoning_tokens=38
    ),
    ("test_openai__test_openai_web_search_tool_model_not_supported", 0): dict(
        provider="openai", status=400, error="invalid_request_error", usage_source="missing"
    ),
    # Final chunk with choices [] carries usage: prompt 53, completion 15.
    ("test_openai__test_run_stream_sync_streams_real_model", 0): dict(
        provider="openai",
        model="gpt-4o-mini-2024-07-18",
        requested_model="gpt-4o-mini",
        input_tokens=53,
        output_tokens=15,
        usage_source="stream",
        stream=True,
    ),
    ("test_openai__test_run_stream_sync_streams_real_model", 1): dict(
        provider="openai", model="gpt-4o-mini-2024-07-18", input_tokens=78, output_tokens=9, stream=True
    ),
    # prompt 4020 includes cache_write_tokens 4012 -> uncached input 8; completion 4.
    ("test_openai_prompt_cache__test_openai_chat_prompt_cache_e2e", 0): dict(
        provider="openai",
        model="gpt-5.6-sol",
        input_tokens=8,
        cache_write_tokens=4012,
        cache_read_tokens=0,
        output_tokens=4,
    ),
    # prompt 4020 includes cached_tokens 4012 -> uncached input 8, cache read 4012.
    ("test_openai_prompt_cache__test_openai_chat_prompt_cache_e2e", 1): dict(
        provider="openai",
        model="gpt-5.6-sol",
        input_tokens=8,
        cache_read_tokens=4012,
        cache_write_tokens=0,
        output_tokens=4,
        cache_hit=False,  # a provider prompt-cache read, not a hit of ModelTrack's response cache
    ),
    ("test_openai_responses__test_openai_responses_model_http_error", 0): dict(
        provider="openai", status=400, error="decimal_below_min_value", usage_source="missing"
    ),
    # response.completed: input 53 (cached 0), output 469 incl. 448 reasoning; service_tier flex.
    ("test_openai_responses__test_openai_responses_streaming_usage", 0): dict(
        provider="openai",
        model="gpt-5-2025-08-07",
        input_tokens=53,
        output_tokens=469,
        reasoning_tokens=448,
        service_tier="flex",
        usage_source="stream",
        stream=True,
    ),
    # OpenRouter: error object inside a normal chunk (code 400) that also carries usage: prompt 43, completion 10
    # (reasoning 11 as reported), cost 0 reported by the provider.
    ("test_openrouter__test_openrouter_stream_error", 0): dict(
        provider="openrouter",
        model="minimax/minimax-m2:free",
        input_tokens=43,
        output_tokens=10,
        reasoning_tokens=11,
        error="400",
        cost_usd=0.0,
        cost_source="provider",
        stream=True,
    ),
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


# Golden costs in USD, by hand: tokens × $/MTok ÷ 1e6 (prices from pricing/prices.json, genai-prices 0.2.3).
# None = no usage, so no cost (never a silent 0).
COST: dict[tuple[str, int], float | None] = {
    # Bedrock regional Claude Haiku 4.5: in $1.1, cache read $0.11, cache write $1.375, out $5.5
    # 3×1.1 + 9511×0.11 + 1944×5.5 = 3.3 + 1046.21 + 10692 = 11741.51 µ$
    ("test_anthropic__test_anthropic_cache_bedrock_real_api", 0): 0.01174151,
    # 3×1.1 + 9511×0.11 + 1956×1.375 + 44×5.5 = 3.3 + 1046.21 + 2689.5 + 242 = 3981.01 µ$
    ("test_anthropic__test_anthropic_cache_bedrock_real_api", 1): 0.00398101,
    # Claude Sonnet 4.5: in $3, cache read $0.3, cache write (5m) $3.75, out $15
    # 3×3 + 1111×0.3 + 406×15 = 9 + 333.3 + 6090 = 6432.3 µ$
    ("test_anthropic__test_anthropic_cache_real_api", 0): 0.0064323,
    # 3×3 + 1111×0.3 + 418×3.75 + 33×15 = 9 + 333.3 + 1567.5 + 495 = 2404.8 µ$
    ("test_anthropic__test_anthropic_cache_real_api", 1): 0.0024048,
    # Claude Sonnet 4: in $3, out $15: 43×3 + 282×15 = 129 + 4230 = 4359 µ$
    ("test_anthropic__test_anthropic_model_thinking_part_stream", 0): 0.004359,
    # 22397×3 + 637×15 = 67191 + 9555 = 76746 µ$, + 2 web searches × $10/1000 = $0.02
    ("test_anthropic__test_anthropic_model_web_search_tool_stream", 0): 0.096746,
    # Azure gpt-4o: in $2.5, out $10: 14×2.5 + 9×10 = 35 + 90 = 125 µ$
    ("test_azure__test_azure_provider_call", 0): 0.000125,
    # Nova Micro: in $0.035, out $0.14: 13×0.035 + 82×0.14 = 0.455 + 11.48 = 11.935 µ$
    ("test_bedrock__test_bedrock_model_stream", 0): 0.000011935,
    # deepseek-reasoner, peak hours (00:30–16:30 UTC): in $0.55, out $2.19: 6×0.55 + 212×2.19 = 3.3 + 464.28
    # = 467.58 µ$. Off-peak: see DEEPSEEK_OFF_PEAK.
    ("test_deepseek__test_deepseek_model_thinking_stream", 0): 0.00046758,
    # text-embedding-3-small: $0.02: 2×0.02 = 0.04 µ$
    ("test_embeddings__TestOpenAI.test_documents", 0): 0.00000004,
    # gemini-2.0-flash(-exp): in $0.1, out $0.4: 13×0.1 + 8×0.4 = 1.3 + 3.2 = 4.5 µ$
    ("test_google__test_google_model_stream", 0): 0.0000045,
    # gemini-2.5-flash: in $0.3, out $2.5 (thoughts billed as output): 18×0.3 + 115×2.5 = 5.4 + 287.5 = 292.9 µ$
    ("test_google__test_google_stream_usage_is_live_mid_stream", 0): 0.0002929,
    ("test_groq__test_tool_use_failed_error_streaming", 0): None,
    # Groq gpt-oss-120b: in $0.15, out $0.6: 304×0.15 + 49×0.6 = 45.6 + 29.4 = 75 µ$
    ("test_groq__test_tool_use_failed_error_streaming", 1): 0.000075,
    # 339×0.15 + 58×0.6 = 50.85 + 34.8 = 85.65 µ$
    ("test_groq__test_tool_use_failed_error_streaming", 2): 0.00008565,
    ("test_openai__test_openai_web_search_tool_model_not_supported", 0): None,
    # gpt-4o-mini: in $0.15, out $0.6: 53×0.15 + 15×0.6 = 7.95 + 9 = 16.95 µ$
    ("test_openai__test_run_stream_sync_streams_real_model", 0): 0.00001695,
    # 78×0.15 + 9×0.6 = 11.7 + 5.4 = 17.1 µ$
    ("test_openai__test_run_stream_sync_streams_real_model", 1): 0.0000171,
    # gpt-5.6-sol: in $4, cache write $5, cache read $0.4, out $20 (4020 total input < 272k tier):
    # 8×4 + 4012×5 + 4×20 = 32 + 20060 + 80 = 20172 µ$
    ("test_openai_prompt_cache__test_openai_chat_prompt_cache_e2e", 0): 0.020172,
    # 8×4 + 4012×0.4 + 4×20 = 32 + 1604.8 + 80 = 1716.8 µ$
    ("test_openai_prompt_cache__test_openai_chat_prompt_cache_e2e", 1): 0.0017168,
    ("test_openai_responses__test_openai_responses_model_http_error", 0): None,
    # gpt-5 at service_tier flex: in $0.625, out $5: 53×0.625 + 469×5 = 33.125 + 2345 = 2378.125 µ$
    ("test_openai_responses__test_openai_responses_streaming_usage", 0): 0.002378125,
    # OpenRouter reported usage.cost = 0 (a :free model): the provider's number wins.
    ("test_openrouter__test_openrouter_stream_error", 0): 0.0,
}

# deepseek-reasoner off-peak (16:30–00:30 UTC): in $0.135, out $0.55: 6×0.135 + 212×0.55 = 0.81 + 116.6 = 117.41 µ$
DEEPSEEK_OFF_PEAK = 0.00011741


def expected_cost(key: tuple[str, int], timestamp: str) -> float | None:
    """The golden cost for a recording priced at ``timestamp`` (RFC 3339): only DeepSeek's price depends on the
    time of day."""
    if key[0].startswith("test_deepseek"):
        hhmm = timestamp[11:16]
        return COST[key] if "00:30" <= hhmm < "16:30" else DEEPSEEK_OFF_PEAK
    return COST[key]
