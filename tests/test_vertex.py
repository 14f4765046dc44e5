"""Vertex AI (issue L, item 1): Gemini and Claude on Google Cloud through ``/vertex``, with the real SDKs
(``google-genai`` with ``vertexai=True``; ``anthropic.AsyncAnthropicVertex``), Google OAuth bearer tokens
passed through untouched, the region and project checked against the operator's allow-lists (no open relay),
and costs equal to genai-prices' ``calc_price`` for the same usage.

The upstream answers with real recorded Gemini and Anthropic responses: Vertex AI serves the same body and
stream formats as the Gemini API (``GenerateContentResponse``) and the Anthropic API (``rawPredict`` and
``streamRawPredict`` return the Messages API's body and events; Anthropic's "Claude on Vertex AI" reference).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import anthropic
import pytest
from genai_prices import Usage as GUsage
from genai_prices import calc_price
from google import genai
from google.genai.types import HttpOptions
from google.oauth2.credentials import Credentials

from modeltrack.config import ConfigError, Settings

from .replay import load
from .test_sse_meters import gemini_events

TOKEN = "ya29.vertex-canary-token-7f3a"
PROJECT = "acme-prod"


def _genai(proxy_url: str, location: str = "us-central1", project: str = PROJECT) -> genai.Client:
    return genai.Client(
        vertexai=True,
        project=project,
        location=location,
        credentials=Credentials(token=TOKEN),
        http_options=HttpOptions(base_url=proxy_url + "/vertex"),
    )


@pytest.fixture
async def vertex_proxy(replay: Any, make_proxy: Any) -> Any:
    _, upstream_url = replay
    return await make_proxy(upstream_url, vertex_regions="us-central1,europe-west4", vertex_projects=PROJECT)


async def test_gemini_on_vertex_with_the_google_genai_sdk(replay: Any, vertex_proxy: Any, caplog: Any) -> None:
    upstream, _ = replay
    stream = load("test_google__test_google_stream_usage_is_live_mid_stream")
    plain = load("test_google__test_google_model_stream")
    upstream.current = dataclasses.replace(
        plain, body=gemini_events(plain.body)[-1], headers=[("content-type", "application/json; charset=UTF-8")]
    )
    client = _genai(vertex_proxy.url)
    answer = await client.aio.models.generate_content(model="gemini-2.0-flash-exp", contents="capital?")
    sent = upstream.received[-1]
    assert sent.raw_path == (
        f"/v1beta1/projects/{PROJECT}/locations/us-central1/publishers/google/models/gemini-2.0-flash-exp:generateContent"
    )
    assert (b"Authorization", f"Bearer {TOKEN}".encode()) in sent.raw_headers  # untouched
    upstream.current = stream
    chunks = [c async for c in await client.aio.models.generate_content_stream(model="gemini-2.5-flash", contents="n")]
    assert upstream.received[-1].raw_path.endswith("/models/gemini-2.5-flash:streamGenerateContent?alt=sse")
    plain_ev, stream_ev = await vertex_proxy.events()
    for ev, um, model in (
        (plain_ev, answer.usage_metadata, "gemini-2.0-flash-exp"),
        (stream_ev, chunks[-1].usage_metadata, "gemini-2.5-flash"),
    ):
        assert um is not None
        assert ev.provider == "vertex" and ev.model == model and ev.usage_source in ("response", "stream")
        thoughts = um.thoughts_token_count or 0
        assert (ev.input_tokens, ev.output_tokens) == (um.prompt_token_count, um.candidates_token_count + thoughts)
        expected = calc_price(
            GUsage(input_tokens=um.prompt_token_count, output_tokens=um.candidates_token_count + thoughts),
            model,
            provider_id="google",
        )
        assert ev.cost_usd == round(float(expected.total_price), 9) and ev.cost_source == "priced"
    assert stream_ev.stream and not plain_ev.stream
    assert TOKEN not in caplog.text and TOKEN not in repr(await vertex_proxy.events())


async def test_claude_on_vertex_with_the_anthropic_sdk(replay: Any, vertex_proxy: Any) -> None:
    upstream, _ = replay
    upstream.current = load("test_anthropic__test_anthropic_cache_real_api", 1)
    client = anthropic.AsyncAnthropicVertex(
        region="europe-west4", project_id=PROJECT, access_token=TOKEN, base_url=vertex_proxy.url + "/vertex/v1"
    )
    msg = await client.messages.create(
        model="claude-sonnet-4-5@20250929", max_tokens=64, messages=[{"role": "user", "content": "hi"}]
    )
    sent = upstream.received[-1]
    assert sent.raw_path == (
        f"/v1/projects/{PROJECT}/locations/europe-west4/publishers/anthropic/models/claude-sonnet-4-5@20250929:rawPredict"
    )
    assert (b"Authorization", f"Bearer {TOKEN}".encode()) in sent.raw_headers
    upstream.current = load("test_anthropic__test_anthropic_model_thinking_part_stream")
    async with client.messages.stream(
        model="claude-sonnet-4-5@20250929", max_tokens=64, messages=[{"role": "user", "content": "think"}]
    ) as stream:
        final = await stream.get_final_message()
    assert upstream.received[-1].raw_path.endswith(":streamRawPredict")
    plain_ev, stream_ev = await vertex_proxy.events()
    for ev, usage in ((plain_ev, msg.usage), (stream_ev, final.usage)):
        assert ev.provider == "vertex" and ev.input_tokens == usage.input_tokens
        assert ev.output_tokens == usage.output_tokens
        assert ev.cache_read_tokens == (usage.cache_read_input_tokens or 0)
        assert ev.cache_write_tokens == (usage.cache_creation_input_tokens or 0)
        expected = calc_price(
            GUsage(
                input_tokens=usage.input_tokens + ev.cache_read_tokens + ev.cache_write_tokens,
                cache_read_tokens=ev.cache_read_tokens,
                cache_write_tokens=ev.cache_write_tokens,
                output_tokens=usage.output_tokens,
            ),
            ev.model.replace("@", "-"),
            provider_id="anthropic",
        )
        assert ev.cost_usd == pytest.approx(float(expected.total_price), abs=1e-9), ev.model
    assert stream_ev.stream and stream_ev.usage_source == "stream"


async def test_a_region_or_project_not_allowed_is_refused_before_anything_is_sent(
    replay: Any, vertex_proxy: Any
) -> None:
    upstream, _ = replay
    upstream.current = load("test_google__test_google_model_stream")
    for location, project in (("asia-east1", PROJECT), ("us-central1", "someone-elses-project")):
        with pytest.raises(genai.errors.ClientError) as err:
            await _genai(vertex_proxy.url, location, project).aio.models.generate_content(
                model="gemini-2.5-flash", contents="x"
            )
        assert err.value.code == 403 and "not allowed here" in str(err.value)
    assert upstream.received == [] and await vertex_proxy.events() == []


@pytest.mark.parametrize(
    ("env", "says"),
    [
        ({"vertex_regions": "us-central1"}, "set MODELTRACK_VERTEX_PROJECTS too"),
        ({"vertex_projects": "p"}, "set MODELTRACK_VERTEX_REGIONS too"),
        ({"vertex_regions": "https://evil.example", "vertex_projects": "p"}, "is not a region"),
    ],
)
def test_a_vertex_setting_that_would_make_an_open_relay_is_refused(env: dict[str, str], says: str) -> None:
    with pytest.raises(ConfigError, match=says):
        Settings.load(env={}, overrides=env)
