"""Pricing: golden costs at fixed times, the genai-prices cross-check, tiers, dates, service tiers, overrides,
unknown models, and reproducible generation."""

from __future__ import annotations

import logging
import subprocess
import sys
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import genai_prices
import orjson
import pytest

from modeltrack.pricing import Bounds, Pricing, PricingError
from modeltrack.providers.base import MeterResult
from modeltrack.usage import Usage

from .expected import COST, DEEPSEEK_OFF_PEAK
from .replay import all_recordings
from .test_sse_meters import meter_for

PRICING = Pricing.load()
ROOT = Path(__file__).resolve().parent.parent
PEAK = datetime(2026, 11, 2, 12, 0, tzinfo=UTC).timestamp()  # a Monday, 12:00 UTC (DeepSeek peak)
OFF_PEAK = datetime(2026, 11, 2, 20, 0, tzinfo=UTC).timestamp()


def cost(provider: str, model: str, ts: float = PEAK, **usage: Any) -> tuple[float | None, str]:
    return PRICING.cost(provider, MeterResult(model=model, usage=Usage(**usage)), None, ts)


@pytest.mark.parametrize("rec", all_recordings(), ids=lambda r: f"{r.name[:50]}[{r.index}]")
def test_golden_cost_of_every_recording(rec: Any) -> None:
    """Meter the recording (streamed or not), price it at a fixed time, compare with the hand arithmetic."""
    m = meter_for(rec)
    m.feed(rec.body)
    res = m.finish(True)
    provider = rec.uri.split("://")[1]
    from .expected import provider_of

    got, _ = PRICING.cost(provider_of(rec.uri), res, None, PEAK)
    assert got == COST[(rec.name, rec.index)], provider
    if rec.name.startswith("test_deepseek"):
        assert PRICING.cost("deepseek", res, None, OFF_PEAK)[0] == DEEPSEEK_OFF_PEAK


# (provider, model, usage) — spans OpenAI, Anthropic, Google, Bedrock, DeepSeek, xAI, Mistral, Groq, Azure.
CROSS: list[tuple[str, str, dict[str, Any]]] = [
    ("openai", "gpt-4o", dict(input_tokens=1200, cache_read_tokens=800, output_tokens=300)),
    ("openai", "gpt-4o-mini-2024-07-18", dict(input_tokens=53, output_tokens=15)),
    ("openai", "gpt-4.1", dict(input_tokens=10_000, cache_read_tokens=5_000, output_tokens=2_000)),
    ("openai", "gpt-4.1-mini", dict(input_tokens=999, output_tokens=1)),
    ("openai", "gpt-5", dict(input_tokens=53, output_tokens=469, reasoning_tokens=448)),
    (
        "openai",
        "gpt-5-mini",
        dict(input_tokens=7_000, cache_read_tokens=3_000, output_tokens=900, reasoning_tokens=500),
    ),
    ("openai", "gpt-5-nano", dict(input_tokens=100, output_tokens=100)),
    ("openai", "o3", dict(input_tokens=5_000, output_tokens=12_000, reasoning_tokens=11_000)),
    ("openai", "o4-mini", dict(input_tokens=5_000, cache_read_tokens=1_000, output_tokens=700)),
    ("openai", "text-embedding-3-large", dict(input_tokens=8_000)),
    ("openai", "gpt-5.6-sol", dict(input_tokens=8, cache_write_tokens=4012, output_tokens=4)),
    ("openai", "gpt-5.6-sol", dict(input_tokens=300_000, cache_read_tokens=10_000, output_tokens=4_000)),
    (
        "openai",
        "gpt-4o-audio-preview",
        dict(input_tokens=2_000, input_audio_tokens=1_500, output_tokens=800, output_audio_tokens=600),
    ),
    ("openai", "gpt-5", dict(input_tokens=1000, output_tokens=1000, service_tier="flex")),
    ("openai", "gpt-5", dict(input_tokens=1000, output_tokens=1000, service_tier="priority")),
    ("openai", "gpt-4o-mini", dict(input_tokens=1000, output_tokens=1000, service_tier="priority")),
    (
        "anthropic",
        "claude-sonnet-4-5-20250929",
        dict(input_tokens=3, cache_read_tokens=1111, cache_write_tokens=418, output_tokens=33),
    ),
    ("anthropic", "claude-sonnet-4-5", dict(input_tokens=150_000, cache_read_tokens=60_000, output_tokens=2_000)),
    ("anthropic", "claude-sonnet-4-20250514", dict(input_tokens=22397, output_tokens=637, web_search_requests=2)),
    (
        "anthropic",
        "claude-opus-4-1-20250805",
        dict(input_tokens=1_000, cache_write_tokens=2_000, cache_write_1h_tokens=2_000, output_tokens=500),
    ),
    (
        "anthropic",
        "claude-haiku-4-5-20251001",
        dict(input_tokens=10, cache_write_tokens=3_000, cache_write_1h_tokens=1_000, output_tokens=50),
    ),
    ("anthropic", "claude-3-5-haiku-20241022", dict(input_tokens=4_000, output_tokens=1_000)),
    ("anthropic", "claude-opus-4-6", dict(input_tokens=250_000, output_tokens=1_000)),
    ("gemini", "gemini-2.5-pro", dict(input_tokens=100_000, output_tokens=5_000, reasoning_tokens=3_000)),
    ("gemini", "gemini-2.5-pro", dict(input_tokens=210_000, cache_read_tokens=5_000, output_tokens=5_000)),
    ("gemini", "gemini-2.5-flash", dict(input_tokens=18, output_tokens=115, reasoning_tokens=35)),
    ("gemini", "gemini-2.5-flash", dict(input_tokens=5_000, input_audio_tokens=2_000, output_tokens=100)),
    ("gemini", "gemini-2.0-flash", dict(input_tokens=13, output_tokens=8)),
    ("openai", "gpt-image-1", dict(input_tokens=500, input_image_tokens=400, output_tokens=1000)),
    ("gemini", "gemini-2.5-flash-lite", dict(input_tokens=9_000, cache_read_tokens=1_000, output_tokens=400)),
    ("bedrock", "us.anthropic.claude-sonnet-4-20250514-v1:0", dict(input_tokens=1_000, output_tokens=200)),
    (
        "bedrock",
        "eu.anthropic.claude-haiku-4-5-20251001-v1:0",
        dict(input_tokens=3, cache_read_tokens=9511, cache_write_tokens=1956, output_tokens=44),
    ),
    ("bedrock", "us.amazon.nova-micro-v1:0", dict(input_tokens=13, output_tokens=82)),
    ("bedrock", "amazon.nova-pro-v1:0", dict(input_tokens=5_000, cache_read_tokens=2_000, output_tokens=300)),
    ("bedrock", "eu.amazon.nova-lite-v1:0", dict(input_tokens=700, output_tokens=70)),
    ("bedrock", "meta.llama3-70b-instruct-v1:0", dict(input_tokens=1_234, output_tokens=567)),
    ("deepseek", "deepseek-chat", dict(input_tokens=1_000, cache_read_tokens=9_000, output_tokens=500)),
    ("deepseek", "deepseek-reasoner", dict(input_tokens=6, output_tokens=212, reasoning_tokens=198)),
    ("xai", "grok-4", dict(input_tokens=2_000, cache_read_tokens=500, output_tokens=1_000)),
    ("xai", "grok-3-mini", dict(input_tokens=3_000, output_tokens=3_000, reasoning_tokens=2_500)),
    ("xai", "grok-code-fast-1", dict(input_tokens=40_000, cache_read_tokens=20_000, output_tokens=800)),
    ("mistral", "mistral-large-latest", dict(input_tokens=5_000, output_tokens=1_000)),
    ("mistral", "mistral-small-latest", dict(input_tokens=5_000, output_tokens=1_000)),
    ("mistral", "codestral-latest", dict(input_tokens=12_000, output_tokens=300)),
    ("groq", "llama-3.3-70b-versatile", dict(input_tokens=800, output_tokens=200)),
    ("groq", "openai/gpt-oss-120b", dict(input_tokens=304, output_tokens=49, reasoning_tokens=23)),
    ("azure", "gpt-4o-2024-11-20", dict(input_tokens=14, output_tokens=9)),
]
GENAI_ID = {"gemini": "google", "bedrock": "aws", "xai": "x-ai"}


def genai_usage(u: Usage) -> genai_prices.Usage:
    """The same numbers in genai-prices' convention, where input_tokens is the TOTAL input."""
    return genai_prices.Usage(
        input_tokens=u.input_tokens + u.cache_read_tokens + u.cache_write_tokens,
        cache_read_tokens=u.cache_read_tokens,
        cache_write_tokens=u.cache_write_tokens,
        cache_write_1h_tokens=u.cache_write_1h_tokens,
        input_audio_tokens=u.input_audio_tokens,
        input_image_tokens=u.input_image_tokens,
        output_tokens=u.output_tokens,
        output_audio_tokens=u.output_audio_tokens,
        output_reasoning_tokens=u.reasoning_tokens,
        web_searches=u.web_search_requests,
    )


@pytest.mark.parametrize(("provider", "model", "usage"), CROSS, ids=lambda x: x if isinstance(x, str) else "")
def test_cross_check_against_genai_prices(provider: str, model: str, usage: dict[str, Any]) -> None:
    u = Usage(**usage)
    when = datetime.fromtimestamp(PEAK, UTC)
    ctx = {"service_tier": u.service_tier} if u.service_tier else None
    ref = genai_prices.calc_price(
        genai_usage(u),
        model,
        provider_id=GENAI_ID.get(provider, provider),
        genai_request_timestamp=when,
        price_context=ctx,
    )
    got, source = PRICING.cost(provider, MeterResult(model=model, usage=u), None, PEAK)
    assert source == "priced"
    assert got is not None and abs(Decimal(str(got)) - ref.total_price) <= Decimal("1e-9"), (got, ref.total_price)


def test_tier_boundary_is_exclusive() -> None:
    # gemini-2.5-pro: $1.25 in / $10 out up to 200k input tokens; above, ALL tokens at $2.5 / $15.
    at, _ = cost("gemini", "gemini-2.5-pro", input_tokens=200_000, output_tokens=1_000)
    over, _ = cost("gemini", "gemini-2.5-pro", input_tokens=200_001, output_tokens=1_000)
    assert at == 0.26  # 200000×1.25 + 1000×10 = 260000 µ$
    assert over == 0.5150025  # 200001×2.5 + 1000×15 = 500002.5 + 15000 µ$
    # Cache reads count toward the threshold: 199,999 uncached + 2 cached = 200,001 total input.
    mixed, _ = cost("gemini", "gemini-2.5-pro", input_tokens=199_999, cache_read_tokens=2, output_tokens=0)
    assert mixed == 0.4999980  # 199999×2.5 + 2×0.25 = 499997.5 + 0.5 µ$


def test_date_bounded_price() -> None:
    # ministral-8b-latest: $0.1/$0.1 until 2025-12-01, then $0.15/$0.15 (start_date 2025-12-02).
    before = datetime(2025, 12, 1, 23, 59, tzinfo=UTC).timestamp()
    after = datetime(2025, 12, 2, 0, 0, tzinfo=UTC).timestamp()
    assert cost("mistral", "ministral-8b-latest", before, input_tokens=1_000_000)[0] == 0.1
    assert cost("mistral", "ministral-8b-latest", after, input_tokens=1_000_000)[0] == 0.15


def test_time_of_day_price() -> None:
    assert cost("deepseek", "deepseek-chat", PEAK, input_tokens=1_000_000)[0] == 0.27
    assert cost("deepseek", "deepseek-chat", OFF_PEAK, input_tokens=1_000_000)[0] == 0.135


def test_service_tiers() -> None:
    base = cost("openai", "gpt-5", input_tokens=1_000_000, output_tokens=1_000_000)[0]
    flex = cost("openai", "gpt-5", input_tokens=1_000_000, output_tokens=1_000_000, service_tier="flex")[0]
    prio = cost("openai", "gpt-5", input_tokens=1_000_000, output_tokens=1_000_000, service_tier="priority")[0]
    assert (base, flex, prio) == (11.25, 5.625, 22.5)  # 1.25+10, 0.625+5, 2.5+20


def test_reasoning_and_cache_are_not_double_counted() -> None:
    # Reasoning is a subset of output: 1000 output incl. 900 reasoning costs exactly 1000 output tokens.
    with_r = cost("openai", "o3", output_tokens=1_000, reasoning_tokens=900)[0]
    without = cost("openai", "o3", output_tokens=1_000)[0]
    assert with_r == without
    # Anthropic: 1h writes are a subset of writes: 1000 writes of which 400 at 1h = 600×3.75 + 400×6 µ$.
    assert cost("anthropic", "claude-sonnet-4-5", cache_write_tokens=1_000, cache_write_1h_tokens=400)[0] == 0.00465


def test_unknown_model_is_null_never_zero(caplog: pytest.LogCaptureFixture) -> None:
    pricing = Pricing.load()
    res = MeterResult(model="totally-unknown-model-x", usage=Usage(input_tokens=10))
    assert pricing.cost("openai", res, None, PEAK) == (None, "unpriced")
    assert pricing.cost("local", MeterResult(model="llama3", usage=Usage(input_tokens=1)), None, PEAK) == (
        None,
        "unpriced",
    )
    with caplog.at_level(logging.WARNING, logger="modeltrack.pricing"):
        pricing.warn_unpriced("openai", "totally-unknown-model-x")
        pricing.warn_unpriced("openai", "totally-unknown-model-x")
    assert sum("totally-unknown-model-x" in r.message for r in caplog.records) == 1


def test_requested_model_fallback_and_provider_cost() -> None:
    res = MeterResult(model=None, usage=Usage(input_tokens=1_000_000))
    assert PRICING.cost("openai", res, "gpt-4o-mini", PEAK) == (0.15, "priced")
    res = MeterResult(model="anything", usage=Usage(input_tokens=5, reported_cost_usd=0.0123456789012))
    assert PRICING.cost("openrouter", res, None, PEAK) == (0.012345679, "provider")


def test_overrides(tmp_path: Path) -> None:
    f = tmp_path / "prices.yaml"
    f.write_text(
        "models:\n"
        "  - provider: openai\n    model: ft:gpt-4o-mini:acme::abc\n"
        "    prices: {input_mtok: 0.3, output_mtok: 1.2, cache_read_mtok: 0.15}\n"
        "  - provider: local\n    match: {starts_with: llama}\n    prices: {input_mtok: 0, output_mtok: 0}\n"
        "  - model: gpt-4o\n    prices: {input_mtok: 2.0, output_mtok: 8.0}\n"  # negotiated discount
    )
    p = Pricing.load(str(f))
    r = MeterResult(
        model="ft:gpt-4o-mini:acme::abc", usage=Usage(input_tokens=1_000, cache_read_tokens=1_000, output_tokens=1_000)
    )
    assert p.cost("openai", r, None, PEAK) == (0.00165, "override")  # 1000×0.3 + 1000×0.15 + 1000×1.2 µ$
    assert p.cost("local", MeterResult(model="llama3.1:8b", usage=Usage(input_tokens=9)), None, PEAK) == (
        0.0,
        "override",
    )
    assert p.cost("azure", MeterResult(model="gpt-4o", usage=Usage(output_tokens=1_000_000)), None, PEAK) == (
        8.0,
        "override",
    )


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("models:\n  - model: x\n    prices: {input_mtok: -1}\n", "entry #1 (x): price -1 must be"),
        ("models:\n  - model: y\n    prices: {inptu_mtok: 1}\n", "entry #1 (y): unknown price key 'inptu_mtok'"),
        ("models:\n  - prices: {input_mtok: 1}\n", "entry #1: give exactly one of"),
        (
            "models:\n  - model: a\n    prices: {input_mtok: 1}\n"
            "  - model: b\n    provider: nope\n    prices: {input_mtok: 1}\n",
            "entry #2 (b): unknown provider 'nope'",
        ),
        ("[1, 2]", "expected a top-level `models:` list"),
        ("models: [ {", "not valid YAML/JSON"),
    ],
)
def test_bad_overrides_name_the_entry(tmp_path: Path, body: str, message: str) -> None:
    f = tmp_path / "bad.yaml"
    f.write_text(body)
    with pytest.raises(PricingError) as info:
        Pricing.load(str(f))
    assert message in str(info.value)


def test_generation_is_reproducible(tmp_path: Path) -> None:
    out = tmp_path / "prices.json"
    subprocess.run(
        [sys.executable, "-m", "modeltrack", "pricing", "update", "--output", str(out)], check=True, capture_output=True
    )
    assert out.read_bytes() == (ROOT / "pricing" / "prices.json").read_bytes()


def test_cache_savings() -> None:
    # gpt-4o-mini: 1000 uncached + 4000 cached input. Uncached would cost 4000×0.15 µ$; cached costs 4000×0.075.
    res = MeterResult(model="gpt-4o-mini", usage=Usage(input_tokens=1000, cache_read_tokens=4000, output_tokens=10))
    assert PRICING.cache_savings("openai", res, None, PEAK) == 0.0003  # 4000 × (0.15 − 0.075) = 300 µ$
    assert (
        PRICING.cache_savings("openai", MeterResult(model="gpt-4o-mini", usage=Usage(input_tokens=5)), None, PEAK)
        == 0.0
    )


GEMINI_MODELS = (
    "gemini-2.0-flash",
    "gemini-2.5-flash",
    "gemini-2.5-pro",
    "gemini-3-flash-preview",
    "gemini-3-pro-preview",
    "gemini-3.1-flash-live-preview",  # prices audio, image and video input
    "gemini-3-pro-image-preview",  # prices image output ten times text output
)


def usage_metadata(modality: str, cached: bool, output: str, tool: bool) -> dict[str, Any]:
    """A Gemini ``usageMetadata`` with ``modality`` next to text in the prompt (and the cache), ``output`` in
    the candidates, thoughts, and optionally a tool-use prompt."""
    prompt = [{"modality": "TEXT", "tokenCount": 3000}, {"modality": modality, "tokenCount": 2000}]
    meta: dict[str, Any] = {
        "promptTokenCount": 5000,
        "promptTokensDetails": prompt if modality != "TEXT" else [{"modality": "TEXT", "tokenCount": 5000}],
        "candidatesTokenCount": 400,
        "candidatesTokensDetails": [{"modality": output, "tokenCount": 400}],
        "thoughtsTokenCount": 120,
    }
    if cached:
        meta["cachedContentTokenCount"] = 1500
        meta["cacheTokensDetails"] = [
            {"modality": "TEXT", "tokenCount": 700},
            {"modality": modality, "tokenCount": 800},
        ]
    if tool:
        meta["toolUsePromptTokenCount"] = 250
        meta["toolUsePromptTokensDetails"] = [{"modality": modality, "tokenCount": 250}]
    return meta


@pytest.mark.parametrize("model", GEMINI_MODELS)
@pytest.mark.parametrize("modality", ["TEXT", "AUDIO", "IMAGE", "VIDEO", "DOCUMENT"])
@pytest.mark.parametrize("cached", [False, True], ids=["uncached", "cached"])
def test_gemini_modalities_cross_check_against_genai_prices(model: str, modality: str, cached: bool) -> None:
    """Every modality × cached/uncached, metered from the JSON by ModelTrack, against genai-prices' own Google
    extractor and calculator on the same JSON. Cached audio (a video's sound track too) is cheaper than
    uncached audio: pricing the cached slice at the uncached rate was the bug."""
    from modeltrack.providers.base import RequestInfo
    from modeltrack.providers.gemini import GeminiJSONMeter

    output = "IMAGE" if "image" in model else ("AUDIO" if modality == "AUDIO" else "TEXT")
    body = {"candidates": [], "usageMetadata": usage_metadata(modality, cached, output, tool=modality == "VIDEO")}
    meter = GeminiJSONMeter(RequestInfo("POST", f"/v1beta/models/{model}:generateContent", "", model), 200)
    meter.feed(orjson.dumps(body))
    result = meter.finish(True)
    got, source = PRICING.cost("gemini", result, model, PEAK)
    extracted = genai_prices.extract_usage(body, provider_id="google")
    ref = genai_prices.calc_price(
        extracted.usage, model, provider_id="google", genai_request_timestamp=datetime.fromtimestamp(PEAK, UTC)
    )
    assert source == "priced"
    assert got is not None and abs(Decimal(str(got)) - ref.total_price) <= Decimal("1e-9"), (got, ref.total_price)


def test_cached_audio_is_priced_at_the_cached_audio_rate() -> None:
    """gemini-2.5-flash: audio $1/M, cached audio $0.1/M, text $0.3/M, cached text $0.03/M. 285 cached audio
    tokens priced as uncached audio cost 285 × (1 + 0.03 − 0.1 − 0.3) µ$ = $0.00017955 too much."""
    meta = {
        "promptTokenCount": 1000,
        "promptTokensDetails": [{"modality": "TEXT", "tokenCount": 400}, {"modality": "AUDIO", "tokenCount": 600}],
        "cachedContentTokenCount": 500,
        "cacheTokensDetails": [{"modality": "TEXT", "tokenCount": 215}, {"modality": "AUDIO", "tokenCount": 285}],
        "candidatesTokenCount": 0,
    }
    from modeltrack.providers.gemini import gemini_usage

    usage = gemini_usage(meta)
    assert usage is not None
    got, _ = PRICING.cost("gemini", MeterResult(model="gemini-2.5-flash", usage=usage), None, PEAK)
    # by hand: cached audio 285×0.1 + cached text 215×0.03 + audio 315×1 + text 185×0.3 µ$
    assert got == round((285 * 0.1 + 215 * 0.03 + 315 * 1.0 + 185 * 0.3) / 1e6, 9) == 0.00040545


@pytest.mark.parametrize("provider", ["openai", "anthropic", "gemini", "deepseek"])
def test_the_reservation_bound_is_the_dearer_of_both_full_prices(provider: str) -> None:
    """A budget reserves ``bound``: for every model of the provider, at sizes below, at and above the input tiers
    (Gemini 2.5 Pro's 200k) and at two times, it equals the dearer full price of the tokens as uncached input and
    as cache writes: the per-token shortcut below the first tier changes nothing."""
    pricing = Pricing.load()
    bounds = Bounds(pricing)  # its own memo, so the sizes below start from an empty one
    models = pricing.model_ids(provider)
    assert len(models) > 5
    checked = 0
    for model in models:
        for ts in (PEAK, OFF_PEAK):
            for inp, out in ((1, 0), (1_000, 100), (200_000, 1), (200_001, 7), (1_234_567, 8_192)):
                got = bounds.bound(provider, model, inp, out, ts)
                plain = pricing.price(provider, model, Usage(input_tokens=inp, output_tokens=out), ts)
                written = pricing.price(provider, model, Usage(cache_write_tokens=inp, output_tokens=out), ts)
                if plain is None or written is None:  # an id its own provider does not resolve
                    assert got is None
                    continue
                assert got is not None
                checked += 1
                assert abs(got - max(plain, written)) <= 1e-9 * max(1.0, got), (model, ts, inp, out)
    assert checked >= 9 * len(models), (checked, len(models))  # (a few ids resolve to nothing)


def test_rounding_matches_the_builtin() -> None:
    """modeltrack.rounding replaces ``round`` on the request path: ``nearest`` gives exactly ``round(x)`` (halves
    to even; the same errors for NaN and infinities), and ``nano_usd`` gives the pico-dollar amount rounded to the
    nano-dollar on its exact value, as Decimal does, halves to even. That is ``round(pico / 1e12, 9)``, the old
    formula, except where the float quotient's own error decided a tie."""
    import random
    from decimal import ROUND_HALF_EVEN
    from fractions import Fraction

    from modeltrack.rounding import nano_usd, nearest

    rng = random.Random(7)
    floats = [rng.uniform(-1e7, 1e7) for _ in range(20_000)]
    floats += [rng.randint(-(10**6), 10**6) + h for h in (0.5, -0.5, 0.25, 0.75, 0.0) for _ in range(2_000)]
    floats += [rng.random() * 10 ** rng.randint(0, 18) for _ in range(5_000)] + [0.0, -0.0, 0.5, -0.5, 1.5, 2.5]
    assert [nearest(x) for x in floats] == [round(x) for x in floats]
    for bad in (float("nan"), float("inf"), float("-inf")):
        with pytest.raises((ValueError, OverflowError)) as builtin:
            round(bad)
        with pytest.raises(builtin.type):
            nearest(bad)

    def exact(pico: int | Fraction) -> float:
        d = Decimal(pico.numerator) / Decimal(pico.denominator) if isinstance(pico, Fraction) else Decimal(pico)
        return float((d / 10**12).quantize(Decimal("1e-9"), rounding=ROUND_HALF_EVEN))

    picos: list[int | Fraction] = [rng.randint(0, 10 ** rng.randint(1, 18)) for _ in range(20_000)]
    picos += [rng.randint(0, 10**12) * 1000 + 500 for _ in range(2_000)]  # ties: half go each way
    picos += [-p for p in picos[:2_000]] + [Fraction(rng.randint(0, 10**12), rng.randint(1, 9)) for _ in range(2_000)]
    picos += [Fraction(2 * rng.randint(0, 10**9) + 1, 2) * 1000 for _ in range(500)]  # Fraction ties
    assert [nano_usd(p) for p in picos] == [exact(p) for p in picos]
    same = [p for p in picos if isinstance(p, int) and abs(p) < 2**53 and p % 1000 != 500]
    assert [nano_usd(p) for p in same] == [round(p / 10**12, 9) for p in same]


def test_each_request_is_priced_in_its_own_context_whatever_came_before(tmp_path: Path) -> None:
    """The engine keeps the last request's price plan (its model, minute, service tier, batch processing and
    variant) for the next one. Requests that alternate between those contexts are each priced as a fresh engine
    prices them alone, and the contexts do price differently (so a plan reused across them would show)."""
    overrides = tmp_path / "prices.yaml"
    overrides.write_text(
        "models:\n  - model: sora-2-pro\n    prices: {output_video_seconds: 0.30}\n"
        "    price_variants:\n      - when: {size: 1792x1024}\n        prices: {output_video_seconds: 0.50}\n"
    )
    tokens = {"input_tokens": 1_000_000, "output_tokens": 1_000_000}
    asks: list[tuple[str, MeterResult, bool]] = [
        ("openai", MeterResult(model="gpt-6.1-terra", usage=Usage(**tokens)), False),
        ("openai", MeterResult(model="gpt-6.1-terra", usage=Usage(**tokens)), True),  # its batch prices
        ("openai", MeterResult(model="gpt-5", usage=Usage(**tokens)), False),
        ("openai", MeterResult(model="gpt-5", usage=Usage(**tokens, service_tier="priority")), False),
        ("openai", MeterResult(model="sora-2-pro", usage=Usage(details={"output_video_seconds": 8})), False),
        (
            "openai",
            MeterResult(
                model="sora-2-pro", usage=Usage(details={"output_video_seconds": 8}), variant=(("size", "1792x1024"),)
            ),
            False,
        ),
    ]

    def alone(i: int) -> tuple[float | None, str]:
        provider, result, batch = asks[i]
        return Pricing.load(str(overrides)).cost(provider, result, None, PEAK, batch=batch)

    want = [alone(i) for i in range(len(asks))]
    for a, b in ((0, 1), (2, 3), (4, 5)):
        assert want[a][0] != want[b][0], (asks[a], asks[b])  # each pair's contexts price differently
    shared = Pricing.load(str(overrides))
    order = [0, 1, 0, 0, 1, 1, 2, 3, 3, 2, 4, 5, 4, 0, 5, 5, 3, 1, 2, 4]
    for i in order:
        provider, result, batch = asks[i]
        assert shared.cost(provider, result, None, PEAK, batch=batch) == want[i], asks[i]
    # The same model a minute apart, with the minutes alternating: the same answer each time.
    for ts in (PEAK, PEAK + 60, PEAK, PEAK + 120):
        assert shared.cost(*asks[0][:2], None, ts) == want[0]
