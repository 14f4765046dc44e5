"""Endpoints billed by other units than chat tokens (issue L). Free ones are an explicit zero (item 8):
``/v1/moderations`` is recorded with ``cost_usd: 0`` and ``cost_source: zero``, never ``no_usage``; text to
speech is priced per character (item 6); GPT Image output image tokens at their own rate (item 7). Responses
follow the providers' API references and the openai SDK's types; the real openai SDK is the client."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import openai
import orjson
import pytest

from .replay import Recording


def recorded(uri: str, content_type: str, body: bytes) -> Recording:
    """A 200 answer from the provider, in the shape its API reference documents (the replay upstream sends it)."""
    name = uri.rsplit("/", 1)[-1]
    return Recording(name, 0, "POST", uri, 200, "OK", [("content-type", content_type)], body, None)


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
    upstream.current = recorded("https://api.openai.com/v1/moderations", "application/json", orjson.dumps(MODERATION))
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
    upstream.current = recorded("https://api.openai.com/v1/audio/speech", "audio/mpeg", audio)
    proxy = await make_proxy(upstream_url)
    client = openai.AsyncOpenAI(base_url=proxy.url + "/v1", api_key="sk-tts-test", max_retries=0)
    text = "Hello, world! Ça va? ✓"  # 22 characters, 26 bytes: billed by characters
    answer = await client.audio.speech.create(model="tts-1-hd", voice="alloy", input=text)
    assert answer.content == audio  # the audio, byte for byte
    (ev,) = await proxy.events()
    expected = float(calc_price(GUsage(input_characters=len(text)), "tts-1-hd", provider_id="openai").total_price)
    assert ev.cost_usd == round(expected, 9) and ev.cost_source == "priced" and ev.usage_source == "request"
    assert ev.model == "tts-1-hd" and len(text) == 22


async def test_gpt_image_output_image_tokens_are_priced_as_image_output(replay: Any, make_proxy: Any) -> None:
    """Issue L, item 7: ``/v1/images/generations`` with a GPT Image model answers with ``usage`` as the openai SDK's
    ``ImagesResponse.usage`` defines it (``input_tokens`` + ``input_tokens_details.{text,image}_tokens``,
    ``output_tokens`` + ``output_tokens_details.{text,image}_tokens``); image output is priced at its own rate.
    The response names no model: the request's is priced. Cost equal to genai-prices' calc_price."""
    from genai_prices import Usage as GUsage
    from genai_prices import calc_price

    upstream, upstream_url = replay
    body = {
        "created": 1764800000,
        "data": [{"b64_json": "iVBORw0KGgo="}],
        "output_format": "png",
        "quality": "low",
        "size": "1024x1024",
        "usage": {
            "input_tokens": 50,
            "input_tokens_details": {"text_tokens": 40, "image_tokens": 10},
            "output_tokens": 272,
            "output_tokens_details": {"text_tokens": 0, "image_tokens": 272},
            "total_tokens": 322,
        },
    }
    upstream.current = recorded("https://api.openai.com/v1/images/generations", "application/json", orjson.dumps(body))
    proxy = await make_proxy(upstream_url)
    client = openai.AsyncOpenAI(base_url=proxy.url + "/v1", api_key="sk-img-test", max_retries=0)
    answer = await client.images.generate(model="gpt-image-1.5", prompt="a cat", size="1024x1024", quality="low")
    assert answer.usage is not None and answer.usage.output_tokens == 272
    (ev,) = await proxy.events()
    usage = GUsage(input_tokens=50, input_image_tokens=10, output_tokens=272, output_image_tokens=272)
    expected = float(calc_price(usage, "gpt-image-1.5", provider_id="openai").total_price)
    assert ev.model == "gpt-image-1.5" and ev.cost_source == "priced"
    assert ev.cost_usd == round(expected, 9), (ev.cost_usd, expected)
    assert (ev.input_tokens, ev.output_tokens) == (50, 272)


WAV = b"RIFF" + (36 + 16000).to_bytes(4, "little") + b"WAVEfmt " + bytes(24) + b"data" + bytes(16000)


@pytest.mark.parametrize(
    ("model", "usage", "expected_usage"),
    [
        # whisper-1 and other per-duration models (API reference, "Create transcription": usage type "duration")
        ("whisper-1", {"type": "duration", "seconds": 7.4}, {"audio_seconds": 7}),
        # gpt-4o-transcribe: billed by tokens, audio tokens among the input (usage type "tokens")
        (
            "gpt-4o-transcribe",
            {
                "type": "tokens",
                "input_tokens": 14,
                "input_token_details": {"text_tokens": 0, "audio_tokens": 14},
                "output_tokens": 45,
                "total_tokens": 59,
            },
            {"input_tokens": 14, "input_audio_tokens": 14, "output_tokens": 45},
        ),
    ],
)
async def test_transcriptions_are_priced_by_duration_or_tokens(
    replay: Any, make_proxy: Any, model: str, usage: dict[str, Any], expected_usage: dict[str, int]
) -> None:
    """Issue L, item 5: ``/v1/audio/transcriptions`` (multipart: the model is read from the form without
    decoding the audio) is priced from the answer's ``usage``: per second for whisper-1, per token for
    gpt-4o-transcribe; a plain-text answer has no usage and is unpriced, never $0. Costs equal calc_price."""
    from genai_prices import Usage as GUsage
    from genai_prices import calc_price

    upstream, upstream_url = replay
    answer = {"text": "Hello there.", "usage": usage}
    upstream.current = recorded(
        "https://api.openai.com/v1/audio/transcriptions", "application/json", orjson.dumps(answer)
    )
    proxy = await make_proxy(upstream_url)
    client = openai.AsyncOpenAI(base_url=proxy.url + "/v1", api_key="sk-stt-test", max_retries=0)
    got = await client.audio.transcriptions.create(model=model, file=("hello.wav", WAV, "audio/wav"))
    assert got.text == "Hello there."
    assert upstream.received[-1].body.count(WAV) == 1  # the upload went through whole
    upstream.current = recorded("https://api.openai.com/v1/audio/transcriptions", "text/plain", b"Hello there.\n")
    text = await client.audio.transcriptions.create(
        model=model, file=("hello.wav", WAV, "audio/wav"), response_format="text"
    )
    assert "Hello there." in str(text)
    priced, plain = await proxy.events()
    expected = calc_price(GUsage(**expected_usage), model, provider_id="openai")
    assert priced.model == model and priced.cost_source == "priced"
    assert priced.cost_usd == round(float(expected.total_price), 9) and priced.cost_usd > 0
    assert plain.model == model and plain.cost_usd is None and plain.error is None  # unpriced, not $0


def wav(seconds: float, rate: int = 16_000) -> bytes:
    """A real WAV file (16-bit mono silence) of the given length, written by the standard library."""
    import io
    import wave

    out = io.BytesIO()
    with wave.open(out, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(bytes(2 * round(seconds * rate)))
    return out.getvalue()


async def test_a_plain_text_transcript_is_priced_by_the_audio_length(replay: Any, make_proxy: Any) -> None:
    """Issue L, item 5: a transcription answered as text, SRT or VTT names no duration. whisper-1 is billed per
    second, so the proxy reads the uploaded audio's own length from the multipart body (providers/audio.py) and
    prices that; a per-token model (gpt-4o-transcribe) or audio whose length cannot be read stays unpriced, never
    $0. Costs equal calc_price for the rounded seconds."""
    from genai_prices import Usage as GUsage
    from genai_prices import calc_price

    upstream, upstream_url = replay
    proxy = await make_proxy(upstream_url)
    client = openai.AsyncOpenAI(base_url=proxy.url + "/v1", api_key="sk-stt-test", max_retries=0)
    asked = [
        ("whisper-1", "text", wav(7.4), b"Hello there.\n"),
        ("whisper-1", "srt", wav(61.6), b"1\n00:00:00,000 --> 00:00:01,000\nHello there.\n"),
        ("whisper-1", "vtt", wav(2.2, rate=8_000), b"WEBVTT\n\n00:00.000 --> 00:01.000\nHello there.\n"),
        ("gpt-4o-transcribe", "text", wav(7.4), b"Hello there.\n"),  # billed by tokens: none reported
        ("whisper-1", "text", b"\x1aE\xdf\xa3 not a readable header", b"Hello there.\n"),  # WebM-like: unknown
    ]
    for model, fmt, audio, answer in asked:
        upstream.current = recorded("https://api.openai.com/v1/audio/transcriptions", "text/plain", answer)
        await client.audio.transcriptions.create(
            model=model, file=("speech.wav", audio, "audio/wav"), response_format=fmt
        )
        assert upstream.received[-1].body.count(audio) == 1  # the upload went through whole
    events = await proxy.events()
    assert [e.model for e in events] == [m for m, *_ in asked]
    for ev, seconds in zip(events[:3], (7, 62, 2), strict=True):
        expected = calc_price(GUsage(audio_seconds=seconds), "whisper-1", provider_id="openai")
        assert ev.cost_source == "priced" and ev.usage_source == "request", ev
        assert ev.cost_usd == round(float(expected.total_price), 9) > 0, (ev.cost_usd, expected.total_price)
    for ev in events[3:]:
        assert ev.cost_usd is None and ev.error is None, ev  # unpriced, not $0


async def test_imagen_is_priced_per_generated_image(replay: Any, make_proxy: Any, tmp_path: Path) -> None:
    """Issue L, item 7: Imagen's ``…/publishers/google/models/{m}:predict`` (Vertex AI's Imagen API reference,
    "Generate images": ``predictions``, one per image, each ``{"bytesBase64Encoded", "mimeType"}``; one the safety
    filter withheld carries ``raiFilteredReason`` instead and is not billed). google-genai's ``generate_images``
    serves Vertex AI only now (Imagen is deprecated on the Gemini API). genai-prices has no Imagen prices: the
    per-image price (``output_images``) comes from the override file; without one the call is ``unpriced``, never
    $0. The images (3 × 200 KB of base64) stream through, never buffered."""
    from google import genai
    from google.genai import types as gtypes
    from google.oauth2.credentials import Credentials

    upstream, upstream_url = replay
    image = base64.b64encode(bytes(range(256)) * 600).decode()
    body = {
        "predictions": [
            {"bytesBase64Encoded": image, "mimeType": "image/png"},
            {"raiFilteredReason": "Filtered by the safety settings."},
            {"bytesBase64Encoded": image, "mimeType": "image/png"},
            {"mimeType": "image/png", "bytesBase64Encoded": image},
        ]
    }
    uri = (
        "https://us-central1-aiplatform.googleapis.com/v1beta1/projects/acme/locations/us-central1/publishers/google"
        "/models/imagen-4.0-generate-001:predict"
    )
    upstream.current = recorded(uri, "application/json", orjson.dumps(body))
    prices = tmp_path / "prices.yaml"
    prices.write_text("models:\n  - match: {starts_with: imagen-4.0-generate}\n    prices: {output_images: 0.04}\n")
    for pricing_file, expected in ((str(prices), (0.12, "override")), ("", (None, "unpriced"))):
        proxy = await make_proxy(
            upstream_url,
            pricing_file=pricing_file,
            store=f"sqlite:///{tmp_path}/{bool(pricing_file)}.db",
            vertex_regions="us-central1",
            vertex_projects="acme",
        )
        client = genai.Client(
            vertexai=True,
            project="acme",
            location="us-central1",
            credentials=Credentials(token="ya29.imagen-test"),
            http_options=gtypes.HttpOptions(base_url=proxy.url + "/vertex"),
        )
        answer = await client.aio.models.generate_images(
            model="imagen-4.0-generate-001", prompt="a lighthouse", config={"number_of_images": 4}
        )
        images = [g for g in answer.generated_images or [] if g.image and g.image.image_bytes]
        assert len(images) == 3 and images[0].image is not None
        assert images[0].image.image_bytes == base64.b64decode(image)
        (ev,) = await proxy.events()
        assert (ev.cost_usd, ev.cost_source) == expected
        assert ev.model == "imagen-4.0-generate-001" and ev.provider == "vertex" and ev.status == 200


def test_an_image_is_counted_once_however_the_body_is_split() -> None:
    """The key that marks an image is found when a chunk boundary cuts it anywhere, and never counted twice."""
    from modeltrack.providers.base import RequestInfo
    from modeltrack.providers.images import ImageCountMeter

    body = orjson.dumps(
        {"predictions": [{"bytesBase64Encoded": "QUJD" * 10, "mimeType": "image/png"} for _ in range(3)]}
    )
    for size in range(1, 60):
        meter = ImageCountMeter(RequestInfo("POST", "/v1beta/models/imagen-4.0-generate-001:predict", ""), 200)
        for i in range(0, len(body), size):
            meter.feed(body[i : i + size])
        result = meter.finish(True)
        assert result.usage is not None and result.usage.details == {"output_images": 3}, size


async def test_a_sora_video_is_billed_once_when_it_completes(
    make_proxy: Any, aiohttp_server: Any, tmp_path: Path
) -> None:
    """Issue L, item 9: a Sora job (API reference "Videos"; the openai SDK's ``Video``: ``status`` queued →
    in_progress → completed, ``seconds``, ``size``) is billed once, when a poll first reads it completed, per second
    at the price of its model and size (sora-2-pro 1792x1024 here, a ``price_variants`` entry of the override file:
    genai-prices has no Sora prices), to the team that created it, whoever polls; the creation, the other polls and
    the download are free."""
    from aiohttp import web

    from modeltrack.batches import item_request_id

    polls = {"n": 0}
    video = {
        "id": "video_68d7512d07848190b3e45da0ecbebcde004da08e1e0678d5",
        "object": "video",
        "model": "sora-2-pro",
        "status": "queued",
        "progress": 0,
        "created_at": 1764800000,
        "seconds": "8",
        "size": "1792x1024",
    }

    async def create(request: web.Request) -> web.Response:
        await request.read()
        return web.json_response(video)

    async def retrieve(request: web.Request) -> web.Response:
        polls["n"] += 1
        done = polls["n"] > 1
        return web.json_response(
            video
            | (
                {"status": "completed", "progress": 100, "completed_at": 1764800100}
                if done
                else {"status": "in_progress", "progress": 40}
            )
        )

    async def content(request: web.Request) -> web.Response:
        return web.Response(body=b"\x00\x00\x00\x18ftypmp42" + bytes(4096), content_type="video/mp4")

    app = web.Application()
    app.router.add_post("/v1/videos", create)
    app.router.add_get("/v1/videos/{vid}", retrieve)
    app.router.add_get("/v1/videos/{vid}/content", content)
    server = await aiohttp_server(app)
    prices = tmp_path / "prices.yaml"
    prices.write_text(
        "models:\n  - model: sora-2-pro\n    prices: {output_video_seconds: 0.30}\n"
        "    price_variants:\n      - when: {size: 1792x1024}\n        prices: {output_video_seconds: 0.50}\n"
    )
    proxy = await make_proxy(str(server.make_url("")).rstrip("/"), pricing_file=str(prices))
    client = openai.AsyncOpenAI(base_url=proxy.url + "/v1", api_key="sk-sora-test", max_retries=0)
    job = await client.videos.create(
        model="sora-2-pro",
        prompt="a lighthouse",
        seconds="8",
        size="1792x1024",
        extra_headers={"X-ModelTrack-Team": "studio"},
    )
    states = [
        (await client.videos.retrieve(job.id, extra_headers={"X-ModelTrack-Team": "ops"})).status for _ in range(3)
    ]
    assert states == ["in_progress", "completed", "completed"]
    data = await client.videos.download_content(job.id)
    assert (await data.aread()).startswith(b"\x00\x00\x00\x18ftyp")
    events = await proxy.events()
    billed = [e for e in events if e.cost_usd]
    assert len(billed) == 1, [(e.endpoint, e.cost_usd) for e in events]
    (ev,) = billed
    assert (ev.cost_usd, ev.cost_source, ev.model, ev.team) == (4.0, "override", "sora-2-pro", "studio")
    assert ev.request_id == item_request_id("openai", job.id, "job") and ev.batch_id == job.id
    assert all(e.cost_usd == 0.0 and e.cost_source == "zero" for e in events if e is not ev)
    assert len(events) in (4, 5)  # a poll racing the "priced" mark stores nothing more (the same event id)


async def test_a_veo_video_on_vertex_is_billed_once_when_done(
    make_proxy: Any, aiohttp_server: Any, tmp_path: Path
) -> None:
    """Issue L, item 9: Veo on Vertex AI (google-genai's ``generate_videos`` with ``vertexai=True``;
    ``models/{m}:predictLongRunning`` with ``parameters.durationSeconds``, ``sampleCount``, ``resolution``, answered
    with an operation; ``models/{m}:fetchPredictOperation`` polls it until ``done`` with ``response.videos``). The
    seconds are the creation's, remembered with the job: 6 s × 2 videos at the 1080p price of the override file
    (genai-prices has no Veo prices), billed once, to the creating team; the other polls are free."""
    from aiohttp import web
    from google import genai
    from google.genai import types as gtypes
    from google.oauth2.credentials import Credentials

    from modeltrack.batches import item_request_id

    base = "/v1beta1/projects/acme/locations/us-central1/publishers/google/models/veo-3.0-generate-001"
    op = base.removeprefix("/v1beta1/") + "/operations/5e6c4a1f-0d3b-4f7e-9a52-1c8d2b7e6f90"
    asked: list[Any] = []
    polls = {"n": 0}

    async def create(request: web.Request) -> web.Response:
        asked.append(await request.json())
        return web.json_response({"name": op})

    async def fetch(request: web.Request) -> web.Response:
        assert (await request.json())["operationName"] == op
        polls["n"] += 1
        if polls["n"] < 2:
            return web.json_response({"name": op, "done": False})
        video = {
            "bytesBase64Encoded": base64.b64encode(b"\x00\x00\x00\x18ftypmp42" + bytes(512)).decode(),
            "mimeType": "video/mp4",
        }
        return web.json_response(
            {
                "name": op,
                "done": True,
                "response": {
                    "@type": "type.googleapis.com/cloud.ai.large_models.vision.GenerateVideoResponse",
                    "raiMediaFilteredCount": 0,
                    "videos": [video, video],
                },
            }
        )

    app = web.Application()
    app.router.add_post(base + ":predictLongRunning", create)
    app.router.add_post(base + ":fetchPredictOperation", fetch)
    server = await aiohttp_server(app)
    prices = tmp_path / "prices.yaml"
    prices.write_text(
        "models:\n  - model: veo-3.0-generate-001\n    prices: {output_video_seconds: 0.40}\n"
        "    price_variants:\n      - when: {resolution: 1080p}\n        prices: {output_video_seconds: 0.50}\n"
    )
    proxy = await make_proxy(
        str(server.make_url("")).rstrip("/"),
        pricing_file=str(prices),
        vertex_regions="us-central1",
        vertex_projects="acme",
    )

    def client(team: str) -> genai.Client:
        options = gtypes.HttpOptions(base_url=proxy.url + "/vertex", headers={"X-ModelTrack-Team": team})
        return genai.Client(
            vertexai=True,
            project="acme",
            location="us-central1",
            credentials=Credentials(token="ya29.veo-test"),
            http_options=options,
        )

    config = gtypes.GenerateVideosConfig(duration_seconds=6, number_of_videos=2, resolution="1080p")
    operation = await client("film").aio.models.generate_videos(
        model="veo-3.0-generate-001", prompt="a lighthouse at dusk", config=config
    )
    assert asked[0]["parameters"]["durationSeconds"] == 6
    poller = client("ops")
    for _ in range(3):
        operation = await poller.aio.operations.get(operation)
    assert operation.done and operation.response is not None
    assert len(operation.response.generated_videos or []) == 2
    events = await proxy.events()
    billed = [e for e in events if e.cost_usd]
    assert len(billed) == 1, [(e.endpoint, e.cost_usd, e.error) for e in events]
    (ev,) = billed
    assert (ev.cost_usd, ev.cost_source, ev.model, ev.team) == (6.0, "override", "veo-3.0-generate-001", "film")
    assert ev.request_id == item_request_id("vertex", op, "job") and ev.provider == "vertex"
    assert all(e.cost_usd == 0.0 for e in events if e is not ev)
