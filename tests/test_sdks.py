"""The official SDKs as clients: through the proxy they must see exactly what they see directly."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from typing import Any

import anthropic
import openai
import orjson
import pytest
from google import genai
from google.genai import types as gtypes

from .expected import expected_cost
from .replay import Recording, load
from .test_sse_meters import gemini_events

KEY = "sk-test-not-a-real-key"


def _dump(obj: Any) -> Any:
    if not hasattr(obj, "model_dump"):
        return obj
    data = obj.model_dump()
    data.pop("sdk_http_response", None)  # google-genai: transport headers (Date) differ between two calls
    return data


async def _close(client: Any) -> None:
    if isinstance(client, genai.Client):
        await client.aio.aclose()
    else:
        await client.close()


async def _both(replay: Any, make_proxy: Any, rec: Recording, call: Any, base: Any) -> tuple[Any, Any, Any]:
    upstream, upstream_url = replay
    upstream.current = rec
    proxy = await make_proxy(upstream_url)
    results = []
    for url in (upstream_url, proxy.url):
        client = base(url)
        try:
            results.append(await call(client))
        finally:
            await _close(client)
    return results[0], results[1], proxy


def _oa(url: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=url + "/v1", api_key=KEY, max_retries=0)


def _an(url: str) -> anthropic.AsyncAnthropic:
    return anthropic.AsyncAnthropic(base_url=url, api_key=KEY, max_retries=0)


def _gm(url: str) -> genai.Client:
    return genai.Client(api_key=KEY, http_options=gtypes.HttpOptions(base_url=url))


MSG = [{"role": "user", "content": "hi"}]


async def test_openai_chat_non_streaming(replay: Any, make_proxy: Any) -> None:
    rec = load("test_openai_prompt_cache__test_openai_chat_prompt_cache_e2e", 1)

    async def call(c: openai.AsyncOpenAI) -> Any:
        return _dump(await c.chat.completions.create(model="gpt-5.6-sol", messages=MSG))  # type: ignore[arg-type]

    direct, proxied, proxy = await _both(replay, make_proxy, rec, call, _oa)
    assert proxied == direct
    (ev,) = await proxy.events()
    u = proxied["usage"]
    assert ev.input_tokens + ev.cache_read_tokens + ev.cache_write_tokens == u["prompt_tokens"]
    assert ev.cache_read_tokens == u["prompt_tokens_details"]["cached_tokens"]


async def test_openai_chat_streaming(replay: Any, make_proxy: Any) -> None:
    rec = load("test_openai__test_run_stream_sync_streams_real_model", 0)

    async def call(c: openai.AsyncOpenAI) -> Any:
        stream = await c.chat.completions.create(
            model="gpt-4o-mini",
            messages=MSG,
            stream=True,  # type: ignore[arg-type]
            stream_options={"include_usage": True},
        )
        return [_dump(chunk) async for chunk in stream]

    direct, proxied, proxy = await _both(replay, make_proxy, rec, call, _oa)
    assert proxied == direct and len(direct) > 3
    (ev,) = await proxy.events()
    assert ev.input_tokens == direct[-1]["usage"]["prompt_tokens"]
    assert ev.output_tokens == direct[-1]["usage"]["completion_tokens"]
    assert ev.stream and not ev.stream_usage_injected


async def test_openai_stream_usage_is_injected_when_not_asked(replay: Any, make_proxy: Any) -> None:
    rec = load("test_openai__test_run_stream_sync_streams_real_model", 1)
    upstream, _ = replay

    async def call(c: openai.AsyncOpenAI) -> Any:
        stream = await c.chat.completions.create(model="gpt-4o-mini", messages=MSG, stream=True)  # type: ignore[arg-type]
        return [_dump(chunk) async for chunk in stream]

    direct, proxied, proxy = await _both(replay, make_proxy, rec, call, _oa)
    assert proxied == direct
    sent_direct, sent_proxied = upstream.received[-2].body, upstream.received[-1].body
    assert b"stream_options" not in sent_direct
    assert orjson.loads(sent_proxied) == {**orjson.loads(sent_direct), "stream_options": {"include_usage": True}}
    (ev,) = await proxy.events()
    assert ev.stream_usage_injected and ev.usage_source == "stream" and ev.input_tokens == 78


async def test_openai_responses_streaming(replay: Any, make_proxy: Any) -> None:
    rec = load("test_openai_responses__test_openai_responses_streaming_usage")

    async def call(c: openai.AsyncOpenAI) -> Any:
        stream = await c.responses.create(model="gpt-5", input="hi", stream=True)
        return [_dump(e) async for e in stream]

    direct, proxied, proxy = await _both(replay, make_proxy, rec, call, _oa)
    assert proxied == direct
    final = direct[-1]["response"]["usage"]
    (ev,) = await proxy.events()
    assert (ev.input_tokens, ev.output_tokens, ev.reasoning_tokens) == (
        final["input_tokens"],
        final["output_tokens"],
        final["output_tokens_details"]["reasoning_tokens"],
    )


async def test_openai_embeddings(replay: Any, make_proxy: Any) -> None:
    rec = load("test_embeddings__TestOpenAI.test_documents")

    async def call(c: openai.AsyncOpenAI) -> Any:
        return _dump(await c.embeddings.create(model="text-embedding-3-small", input=["a"]))

    direct, proxied, proxy = await _both(replay, make_proxy, rec, call, _oa)
    assert proxied == direct
    (ev,) = await proxy.events()
    assert ev.input_tokens == direct["usage"]["prompt_tokens"]


async def test_openai_error_passes_through(replay: Any, make_proxy: Any) -> None:
    rec = load("test_openai_responses__test_openai_responses_model_http_error")

    async def call(c: openai.AsyncOpenAI) -> Any:
        with pytest.raises(openai.BadRequestError) as info:
            await c.responses.create(model="gpt-5", input="hi", temperature=-1)
        return info.value.status_code, info.value.body

    direct, proxied, proxy = await _both(replay, make_proxy, rec, call, _oa)
    assert proxied == direct and direct[0] == 400
    (ev,) = await proxy.events()
    assert ev.status == 400 and ev.error == "decimal_below_min_value" and ev.cost_usd is None


async def test_anthropic_non_streaming(replay: Any, make_proxy: Any) -> None:
    rec = load("test_anthropic__test_anthropic_cache_real_api", 1)

    async def call(c: anthropic.AsyncAnthropic) -> Any:
        return _dump(await c.messages.create(model="claude-sonnet-4-5", max_tokens=100, messages=MSG))  # type: ignore[arg-type]

    direct, proxied, proxy = await _both(replay, make_proxy, rec, call, _an)
    assert proxied == direct
    (ev,) = await proxy.events()
    u = direct["usage"]
    assert (ev.input_tokens, ev.cache_read_tokens, ev.cache_write_tokens, ev.output_tokens) == (
        u["input_tokens"],
        u["cache_read_input_tokens"],
        u["cache_creation_input_tokens"],
        u["output_tokens"],
    )


async def test_anthropic_streaming(replay: Any, make_proxy: Any) -> None:
    rec = load("test_anthropic__test_anthropic_model_web_search_tool_stream")

    async def call(c: anthropic.AsyncAnthropic) -> Any:
        async with c.messages.stream(model="claude-sonnet-4-0", max_tokens=100, messages=MSG) as stream:  # type: ignore[arg-type]
            events = [_dump(e) async for e in stream]
            final = _dump(await stream.get_final_message())
        return events, final

    (d_events, d_final), (p_events, p_final), proxy = await _both(replay, make_proxy, rec, call, _an)
    assert p_events == d_events and p_final == d_final
    (ev,) = await proxy.events()
    assert ev.input_tokens == d_final["usage"]["input_tokens"] == 22397
    assert ev.output_tokens == d_final["usage"]["output_tokens"]
    assert ev.web_search_requests == d_final["usage"]["server_tool_use"]["web_search_requests"]


async def test_gemini_streaming(replay: Any, make_proxy: Any) -> None:
    rec = load("test_google__test_google_stream_usage_is_live_mid_stream")

    async def call(c: genai.Client) -> Any:
        stream = await c.aio.models.generate_content_stream(model="gemini-2.5-flash", contents="count")
        return [_dump(chunk) async for chunk in stream]

    direct, proxied, proxy = await _both(replay, make_proxy, rec, call, _gm)
    assert proxied == direct and len(direct) >= 3
    (ev,) = await proxy.events()
    um = direct[-1]["usage_metadata"]
    assert ev.input_tokens == um["prompt_token_count"]
    assert ev.output_tokens == um["candidates_token_count"] + um["thoughts_token_count"]
    assert ev.reasoning_tokens == um["thoughts_token_count"]
    assert ev.model == "gemini-2.5-flash"


async def test_gemini_non_streaming(replay: Any, make_proxy: Any) -> None:
    # The final SSE event of a real recording is a complete GenerateContentResponse: serve it as a plain body.
    rec = load("test_google__test_google_model_stream")
    last = gemini_events(rec.body)[-1]
    rec = dataclasses.replace(rec, body=last, headers=[("content-type", "application/json; charset=UTF-8")])

    async def call(c: genai.Client) -> Any:
        return _dump(await c.aio.models.generate_content(model="gemini-2.0-flash-exp", contents="capital?"))

    direct, proxied, proxy = await _both(replay, make_proxy, rec, call, _gm)
    assert proxied == direct
    (ev,) = await proxy.events()
    assert (ev.input_tokens, ev.output_tokens, ev.stream) == (13, 8, False)


@pytest.mark.parametrize("flavour", ["openai-sync", "openai-async"])
async def test_a_stream_the_sdk_closes_after_its_end_marker_is_complete(
    flavour: str, replay: Any, make_proxy: Any
) -> None:
    """The OpenAI SDKs hang up as soon as they have read ``data: [DONE]``, before the HTTP body's terminating
    chunk (the Anthropic SDK reads to the end of the body). The upstream here holds that chunk back for 1.5 s,
    so the proxy sees the client leave first: the event must still be complete (the meter saw the end), not
    ``client_disconnected``."""
    upstream, upstream_url = replay
    upstream.tail_delay = 1.5
    proxy = await make_proxy(upstream_url)
    upstream.current = load("test_openai__test_run_stream_sync_streams_real_model", 0)
    kwargs: dict[str, Any] = {"model": "gpt-4o-mini", "messages": MSG, "stream": True}
    kwargs["stream_options"] = {"include_usage": True}

    def sync_call() -> Any:
        client = openai.OpenAI(base_url=proxy.url + "/v1", api_key=KEY, max_retries=0)
        try:
            return [c.model_dump() for c in client.chat.completions.create(**kwargs)]
        finally:
            client.close()

    t0 = time.monotonic()
    if flavour == "openai-async":
        aclient = openai.AsyncOpenAI(base_url=proxy.url + "/v1", api_key=KEY, max_retries=0)
        result: Any = [c.model_dump() async for c in await aclient.chat.completions.create(**kwargs)]
        await aclient.close()
    else:
        result = await asyncio.to_thread(sync_call)
    assert time.monotonic() - t0 < 1.4, "the client had what it needed before the upstream's last byte"
    await asyncio.sleep(0.3)
    (ev,) = await proxy.events()
    assert ev.error is None and ev.usage_source == "stream", ev
    assert ev.latency_ms < 1400, "recorded when the client left, not when the upstream finished"
    assert ev.output_tokens == result[-1]["usage"]["completion_tokens"]


@pytest.mark.parametrize("mode", ["sync", "async"])
async def test_streams_stay_drop_in_when_usage_is_injected(mode: str, replay: Any, make_proxy: Any) -> None:
    """A client that never asked for usage: ModelTrack asks on its behalf (for exact costs) and gives back only
    what the client asked for. The most common streaming loop in the world, ``chunk.choices[0].delta``, would
    raise ``IndexError`` on the usage-only chunk; through the proxy it runs exactly as it does directly."""
    rec = load("test_openai__test_run_stream_sync_streams_real_model", 1)
    upstream, upstream_url = replay
    upstream.current = rec
    proxy = await make_proxy(upstream_url)
    usage = next(
        orjson.loads(e[6:])["usage"]
        for e in reversed(rec.body.split(b"\n\n"))
        if e.startswith(b"data: {") and b'"usage":{' in e
    )

    def loop_sync(base: str) -> tuple[list[Any], list[Any]]:
        client = openai.OpenAI(base_url=base + "/v1", api_key=KEY, max_retries=0)
        try:
            deltas, chunks = [], []
            for chunk in client.chat.completions.create(model="gpt-4o-mini", messages=MSG, stream=True):  # type: ignore[arg-type]
                deltas.append(chunk.choices[0].delta.model_dump())
                chunks.append(_dump(chunk))
            return deltas, chunks
        finally:
            client.close()

    async def loop_async(base: str) -> tuple[list[Any], list[Any]]:
        client = _oa(base)
        try:
            deltas, chunks = [], []
            async for chunk in await client.chat.completions.create(model="gpt-4o-mini", messages=MSG, stream=True):  # type: ignore[arg-type]
                deltas.append(chunk.choices[0].delta.model_dump())
                chunks.append(_dump(chunk))
            return deltas, chunks
        finally:
            await client.close()

    if mode == "sync":
        direct = await asyncio.to_thread(loop_sync, upstream_url)
        proxied = await asyncio.to_thread(loop_sync, proxy.url)
    else:
        direct = await loop_async(upstream_url)
        proxied = await loop_async(proxy.url)
    assert proxied == direct and len(direct[1]) > 3
    assert all(c["usage"] is None for c in proxied[1]), "no chunk carries usage the client did not ask for"
    assert b'"include_usage":true' in upstream.received[-1].body and b"stream_options" not in upstream.received[-2].body
    (ev,) = await proxy.events()
    assert ev.stream_usage_injected and ev.usage_source == "stream" and ev.error is None
    assert (ev.input_tokens, ev.output_tokens) == (usage["prompt_tokens"], usage["completion_tokens"])
    assert ev.cost_usd == expected_cost((rec.name, rec.index), ev.timestamp)
