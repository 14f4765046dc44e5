"""Wrong base URLs (issue M, item 19): `…/v1/v1`, the Anthropic or Gemini SDK given `…/v1`, the OpenAI SDK
without `/v1`, or any SDK pointed at the dashboard's port. Each gets a 404 in the SDK's own error shape that
says what to write instead; nothing reaches the upstream and no cost event is stored for a path no provider
serves. Real SDKs as clients."""

from __future__ import annotations

from typing import Any

import aiohttp
import anthropic
import openai
import orjson
import pytest
from google import genai
from google.genai import errors as genai_errors
from google.genai import types as gtypes

from modeltrack.config import Settings
from modeltrack.ui import create_app

from .test_spend_controls import MINI_STREAM, mini_body

KEY = "sk-base-url-test"


@pytest.mark.parametrize(
    ("path", "headers", "shape", "hint"),
    [
        ("/v1/v1/chat/completions", {}, "openai", "/v1 twice"),
        ("/openai/v1/v1/chat/completions", {}, "openai", "/v1 twice"),
        ("/v1/v1/messages", {"anthropic-version": "2023-06-01"}, "anthropic", "Anthropic SDK adds /v1 itself"),
        ("/v1/v1beta/models/gemini-2.5-flash:generateContent", {}, "gemini", "google-genai adds its own version"),
        ("/chat/completions", {}, "openai", "must end in /v1"),
        ("/embeddings", {}, "openai", "must end in /v1"),
        ("/messages", {"anthropic-version": "2023-06-01"}, "anthropic", "lacks /v1"),
    ],
)
async def test_wrong_base_urls_get_a_404_that_says_what_to_write(
    replay: Any, make_proxy: Any, path: str, headers: dict[str, str], shape: str, hint: str
) -> None:
    upstream, upstream_url = replay
    upstream.current = MINI_STREAM
    proxy = await make_proxy(upstream_url)
    async with aiohttp.ClientSession() as s:
        async with s.post(
            proxy.url + path, data=mini_body(), headers={"Authorization": f"Bearer {KEY}", **headers}
        ) as r:
            status, body = r.status, orjson.loads(await r.read())
    assert status == 404
    if shape == "anthropic":
        assert body["type"] == "error" and body["error"]["type"] == "wrong_base_url"
        message = body["error"]["message"]
    elif shape == "gemini":
        assert body["error"]["status"] == "WRONG_BASE_URL"
        message = body["error"]["message"]
    else:
        assert body["error"]["type"] == "wrong_base_url"
        message = body["error"]["message"]
    assert hint in message, message
    assert KEY not in message
    assert upstream.received == []  # never forwarded
    assert await proxy.events() == []  # no cost event for a path no provider serves


async def test_a_configured_base_url_may_end_in_v1_itself(replay: Any, make_proxy: Any) -> None:
    """/openai/chat/completions is right when the operator's base URL ends in /v1: prefixed routes are not
    second-guessed."""
    upstream, upstream_url = replay
    upstream.current = MINI_STREAM
    proxy = await make_proxy(upstream_url)
    async with aiohttp.ClientSession() as s:
        async with s.post(proxy.url + "/openai/chat/completions", data=mini_body()) as r:
            assert r.status == 200
    assert len(upstream.received) == 1


async def test_the_real_sdks_show_the_hint(replay: Any, make_proxy: Any) -> None:
    upstream, upstream_url = replay
    upstream.current = MINI_STREAM
    proxy = await make_proxy(upstream_url)
    oai = openai.AsyncOpenAI(base_url=proxy.url, api_key=KEY, max_retries=0)  # no /v1
    with pytest.raises(openai.NotFoundError) as e1:
        await oai.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "x"}])
    assert "must end in /v1" in str(e1.value)
    ant = anthropic.AsyncAnthropic(base_url=proxy.url + "/v1", api_key=KEY, max_retries=0)
    with pytest.raises(anthropic.NotFoundError) as e2:
        await ant.messages.create(model="claude-sonnet-4-5", max_tokens=5, messages=[{"role": "user", "content": "x"}])
    assert "Anthropic SDK adds /v1 itself" in str(e2.value)
    gem = genai.Client(api_key=KEY, http_options=gtypes.HttpOptions(base_url=proxy.url + "/v1"))
    with pytest.raises(genai_errors.ClientError) as e3:
        await gem.aio.models.generate_content(model="gemini-2.5-flash", contents="x")
    assert e3.value.code == 404 and "google-genai adds its own version" in str(e3.value)
    assert upstream.received == [] and await proxy.events() == []


async def test_an_sdk_pointed_at_the_dashboard_is_told_where_the_proxy_is(aiohttp_client: Any, tmp_path: Any) -> None:
    settings = Settings.load(env={}, overrides={"store": f"sqlite:///{tmp_path}/none.db", "port": 18080})
    client = await aiohttp_client(create_app(settings))
    for method, path in (("POST", "/v1/chat/completions"), ("POST", "/v1/messages"), ("GET", "/v1beta/models")):
        r = await client.request(method, path, data=b"{}")
        assert r.status == 404
        err = (await r.json())["error"]
        assert err["type"] == "wrong_base_url" and ":18080" in err["message"], err
    r = await client.get("/api/v1/nope")
    assert r.status in (401, 404)  # the API's own paths are not taken for SDK calls
