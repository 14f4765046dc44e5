"""Free endpoints are an explicit zero (issue L, item 8): ``/v1/moderations`` is recorded with ``cost_usd: 0`` and
``cost_source: zero``, never as ``no_usage`` (unknown). The response below has the fields OpenAI's API reference
("Moderations: create") and the openai SDK's ``ModerationCreateResponse`` define: ``id``, ``model``, ``results``;
it carries no usage. The real openai SDK is the client."""

from __future__ import annotations

from typing import Any

import openai
import orjson

from .replay import Recording

MODERATION = {
    "id": "modr-0d9740456c391e43c445bf0f010940c7",
    "model": "omni-moderation-latest",
    "results": [
        {
            "flagged": False,
            "categories": {"harassment": False, "violence": False},
            "category_scores": {"harassment": 0.0001, "violence": 0.0002},
            "category_applied_input_types": {"harassment": ["text"], "violence": ["text"]},
        }
    ],
}


async def test_moderation_is_an_explicit_zero(replay: Any, make_proxy: Any) -> None:
    upstream, upstream_url = replay
    upstream.current = Recording(
        name="moderation",
        index=0,
        method="POST",
        uri="https://api.openai.com/v1/moderations",
        status=200,
        reason="OK",
        headers=[("content-type", "application/json")],
        body=orjson.dumps(MODERATION),
        request_body=None,
    )
    proxy = await make_proxy(upstream_url)
    client = openai.AsyncOpenAI(base_url=proxy.url + "/v1", api_key="sk-mod-test", max_retries=0)
    answer = await client.moderations.create(model="omni-moderation-latest", input="hello")
    assert answer.results[0].flagged is False
    (ev,) = await proxy.events()
    assert (ev.cost_usd, ev.cost_source, ev.model, ev.status) == (0.0, "zero", "omni-moderation-latest", 200)
    assert ev.usage_source == "none" and ev.error is None


async def test_text_to_speech_is_priced_per_character_of_input(replay: Any, make_proxy: Any) -> None:
    """Issue L, item 6: ``/v1/audio/speech`` (API reference, "Create speech": a JSON request with ``model``,
    ``input``, ``voice``; the answer is the audio file, with no usage) is billed per character of ``input``. The
    audio streams through unread; the cost equals genai-prices' ``calc_price`` for the same characters."""
    from genai_prices import Usage as GUsage
    from genai_prices import calc_price

    upstream, upstream_url = replay
    audio = b"ID3\x04\x00\x00\x00\x00\x00\x00" + bytes(range(256)) * 64  # stands in for the mp3 bytes
    upstream.current = Recording(
        name="speech",
        index=0,
        method="POST",
        uri="https://api.openai.com/v1/audio/speech",
        status=200,
        reason="OK",
        headers=[("content-type", "audio/mpeg")],
        body=audio,
        request_body=None,
    )
    proxy = await make_proxy(upstream_url)
    client = openai.AsyncOpenAI(base_url=proxy.url + "/v1", api_key="sk-tts-test", max_retries=0)
    text = "Hello, world! Ça va? ✓"  # 22 characters, 26 bytes: billed by characters
    answer = await client.audio.speech.create(model="tts-1-hd", voice="alloy", input=text)
    assert answer.content == audio  # the audio, byte for byte
    (ev,) = await proxy.events()
    expected = float(calc_price(GUsage(input_characters=len(text)), "tts-1-hd", provider_id="openai").total_price)
    assert ev.cost_usd == round(expected, 9) and ev.cost_source == "priced" and ev.usage_source == "request"
    assert ev.model == "tts-1-hd" and len(text) == 22
