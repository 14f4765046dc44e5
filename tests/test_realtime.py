"""WebSocket APIs through the proxy (issue L, item 4): OpenAI Realtime, Responses over WebSocket, Gemini Live.

The upstream is a real WebSocket server (aiohttp) speaking each API's documented messages; the clients are the
real SDKs (``openai``'s ``realtime.connect`` and ``responses.connect``, ``google-genai``'s ``aio.live.connect``)
or raw sockets where a test needs bytes the SDKs never send. Each response is one cost event, its cost equal to
genai-prices' ``calc_price`` for the same usage, all of a connection's events share one ``session_id``, and no
key reaches a log line.

Wire formats, from the providers' references:

* Realtime ``response.done`` (https://platform.openai.com/docs/api-reference/realtime-server-events/response/done)
  and its ``usage`` (the openai SDK's ``types/realtime/realtime_response_usage*.py``: ``input_tokens`` includes
  ``cached_tokens``; ``{text,audio,image}_tokens`` by modality, ``cached_tokens_details`` by modality);
* Responses over WebSocket (https://platform.openai.com/docs/guides/websocket-mode): the Responses streaming
  events, here the real recorded stream of ``test_openai_responses_streaming_usage`` sent one event per message;
* Gemini Live (https://ai.google.dev/api/live): ``setup`` first, ``setupComplete``, ``serverContent`` and
  ``usageMetadata`` with ``responseTokenCount``/``responseTokensDetails``.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import ssl
from pathlib import Path
from typing import Any

import aiohttp
import openai
import orjson
import pytest
import trustme
import websockets.exceptions
from aiohttp import WSMsgType, web
from genai_prices import Usage as GUsage
from genai_prices import calc_price
from google import genai
from google.genai import types

from .faults import Tinyproxy
from .proc import ProxyProcess
from .replay import load

CANARY = "sk-canary-realtime-4f1c9b7e2d"
GEMINI_CANARY = "AIza-canary-live-8e3a61c0"

REALTIME_USAGE = {
    "total_tokens": 253,
    "input_tokens": 132,
    "output_tokens": 121,
    "input_token_details": {
        "text_tokens": 119,
        "audio_tokens": 13,
        "image_tokens": 0,
        "cached_tokens": 64,
        "cached_tokens_details": {"text_tokens": 56, "audio_tokens": 8, "image_tokens": 0},
    },
    "output_token_details": {"text_tokens": 30, "audio_tokens": 91},
}
TRANSCRIBED = {  # the openai SDK's ConversationItemInputAudioTranscriptionCompletedEvent, tokens usage
    "type": "conversation.item.input_audio_transcription.completed",
    "item_id": "item_in_1",
    "content_index": 0,
    "transcript": "Hello there.",
    "usage": {
        "type": "tokens",
        "input_tokens": 47,
        "input_token_details": {"audio_tokens": 40, "text_tokens": 7},
        "output_tokens": 5,
        "total_tokens": 52,
    },
}
LIVE_USAGE = {
    "promptTokenCount": 522,
    "responseTokenCount": 42,
    "totalTokenCount": 564,
    "promptTokensDetails": [{"modality": "TEXT", "tokenCount": 357}, {"modality": "AUDIO", "tokenCount": 165}],
    "responseTokensDetails": [{"modality": "AUDIO", "tokenCount": 42}],
}


class Upstream:
    """The provider's WebSocket endpoints, answering as their references document."""

    def __init__(self) -> None:
        self.handshakes: list[dict[str, str]] = []
        self.received: list[Any] = []
        self.delta_bytes = 4096  # base64 audio per output delta
        self.deltas = 3
        self.pause = 0.0  # seconds between two output deltas
        self.transcriber: str | None = None  # the session transcribes the input audio with this model
        self.hang = False

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/v1/realtime", self.realtime)
        app.router.add_get("/openai/realtime", self.realtime)  # Azure OpenAI's path
        app.router.add_get("/v1/responses", self.responses)
        app.router.add_get("/ws/{method}", self.live)
        app.router.add_get("/ws/{service}/BidiGenerateContent", self.live)  # Vertex AI Live
        return app

    async def _open(self, request: web.Request) -> web.WebSocketResponse | web.Response:
        self.handshakes.append({k.lower(): v for k, v in request.headers.items()} | {"query": request.query_string})
        if self.hang:
            await asyncio.sleep(30)  # never answers the upgrade
        auth = request.headers.get("authorization", "") or request.headers.get("x-goog-api-key", "")
        if "wrong" in auth:
            return web.json_response(
                {
                    "error": {
                        "message": "Incorrect API key provided.",
                        "type": "invalid_request_error",
                        "code": "invalid_api_key",
                    }
                },
                status=401,
            )
        ws = web.WebSocketResponse(compress=True, max_msg_size=0)
        await ws.prepare(request)
        return ws

    async def realtime(self, request: web.Request) -> web.StreamResponse:
        ws = await self._open(request)
        if not isinstance(ws, web.WebSocketResponse):
            return ws
        model = request.query.get("model", "")
        session: dict[str, Any] = {"type": "realtime", "object": "realtime.session", "id": "sess_1", "model": model}
        if self.transcriber:
            session["audio"] = {"input": {"transcription": {"model": self.transcriber}}}
        await ws.send_str(orjson.dumps({"type": "session.created", "event_id": "event_1", "session": session}).decode())
        n = 0
        async for msg in ws:
            if msg.type != WSMsgType.TEXT:
                continue
            event = orjson.loads(msg.data)
            self.received.append(event)
            if event.get("type") != "response.create":
                continue
            n += 1
            rid = f"resp_{n}"
            await ws.send_str(
                orjson.dumps(
                    {
                        "type": "response.created",
                        "event_id": f"event_c{n}",
                        "response": {"object": "realtime.response", "id": rid, "status": "in_progress", "output": []},
                    }
                ).decode()
            )
            for i in range(self.deltas):
                await asyncio.sleep(self.pause)
                audio = base64.b64encode(bytes([i % 256]) * self.delta_bytes).decode()
                await ws.send_str(
                    orjson.dumps(
                        {
                            "type": "response.output_audio.delta",
                            "event_id": f"event_d{n}{i}",
                            "response_id": rid,
                            "item_id": "item_1",
                            "output_index": 0,
                            "content_index": 0,
                            "delta": audio,
                        }
                    ).decode()
                )
            await ws.send_str(
                orjson.dumps(
                    {
                        "type": "response.done",
                        "event_id": f"event_e{n}",
                        "response": {
                            "object": "realtime.response",
                            "id": rid,
                            "status": "completed",
                            "status_details": None,
                            "output": [],
                            "usage": REALTIME_USAGE,
                        },
                    }
                ).decode()
            )
            if self.transcriber:
                await ws.send_str(orjson.dumps(TRANSCRIBED | {"event_id": f"event_t{n}"}).decode())
        return ws

    async def responses(self, request: web.Request) -> web.StreamResponse:
        ws = await self._open(request)
        if not isinstance(ws, web.WebSocketResponse):
            return ws
        recording = load("test_openai_responses__test_openai_responses_streaming_usage", 0)
        events = [line[6:] for line in recording.body.split(b"\n") if line.startswith(b"data: ")]
        async for msg in ws:
            if msg.type == WSMsgType.TEXT:
                self.received.append(orjson.loads(msg.data))
                for data in events:
                    await ws.send_str(data.decode())
        return ws

    async def live(self, request: web.Request) -> web.StreamResponse:
        ws = await self._open(request)
        if not isinstance(ws, web.WebSocketResponse):
            return ws
        async for msg in ws:
            if msg.type not in (WSMsgType.TEXT, WSMsgType.BINARY):
                continue
            event = orjson.loads(msg.data)
            self.received.append(event)
            if "setup" in event:
                await ws.send_bytes(orjson.dumps({"setupComplete": {}}))
            elif "clientContent" in event or "client_content" in event:  # (proto JSON: either spelling)
                await ws.send_bytes(orjson.dumps({"serverContent": {"modelTurn": {"parts": [{"text": "Hi!"}]}}}))
                await ws.send_bytes(
                    orjson.dumps({"serverContent": {"turnComplete": True}, "usageMetadata": LIVE_USAGE})
                )
        return ws


@pytest.fixture
async def ws_upstream(aiohttp_server: Any) -> tuple[Upstream, str]:
    upstream = Upstream()
    server = await aiohttp_server(upstream.app())
    return upstream, str(server.make_url("")).rstrip("/")


async def tls_proxy(make_proxy: Any, url: str, tmp_path: Path, **settings: Any) -> tuple[Any, ssl.SSLContext]:
    """A proxy serving TLS with a throwaway CA's certificate (google-genai always connects Live with ``wss://``),
    and a client context that trusts it."""
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    chain, key = tmp_path / "chain.pem", tmp_path / "key.pem"
    cert.private_key_pem.write_to_path(str(key))
    chain.write_bytes(b"".join(blob.bytes() for blob in cert.cert_chain_pems))
    proxy = await make_proxy(url, tls_cert=str(chain), tls_key=str(key), **settings)
    trust = ssl.create_default_context()
    ca.configure_trust(trust)
    return proxy, trust


def _price(usage: GUsage, model: str, provider: str) -> float:
    return round(float(calc_price(usage, model, provider_id=provider).total_price), 9)


def _no_key_logged(caplog: pytest.LogCaptureFixture, *keys: str) -> None:
    """None of ModelTrack's log lines (at DEBUG, access log on) holds a key; the clients' own websockets debug
    lines quote their request headers, and are not ours."""
    ours = [r for r in caplog.records if r.name.startswith("modeltrack")]
    assert ours, "the proxy logged (access log on)"
    text = "\n".join(r.getMessage() for r in ours)
    for key in keys:
        assert key not in text


async def test_realtime_sessions_are_priced_per_response_with_one_session_id(
    ws_upstream: Any, make_proxy: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    upstream, url = ws_upstream
    proxy = await make_proxy(url, access_log=True)
    client = openai.AsyncOpenAI(base_url=proxy.url + "/v1", api_key=CANARY, max_retries=0)
    got: list[str] = []
    audio = 0
    async with client.realtime.connect(
        model="gpt-realtime", extra_headers={"X-ModelTrack-Team": "voice", "X-ModelTrack-App": "agent"}
    ) as conn:
        for _ in range(2):
            await conn.response.create()
            async for event in conn:
                got.append(event.type)
                if event.type == "response.output_audio.delta":
                    audio += len(base64.b64decode(event.delta))
                if event.type == "response.done":
                    break
    assert got.count("response.done") == 2 and audio == 2 * 3 * 4096, "every byte through, both ways"
    assert [e["type"] for e in upstream.received] == ["response.create", "response.create"]
    (hs,) = upstream.handshakes
    assert hs["authorization"] == f"Bearer {CANARY}", "the caller's key goes upstream untouched"
    assert "sec-websocket-extensions" not in hs, "no compression is negotiated through the proxy"
    assert not any(k.startswith("x-modeltrack-") for k in hs)

    events = await _events(proxy, 2)
    expected = _price(
        GUsage(
            input_tokens=132,
            cache_read_tokens=64,
            input_audio_tokens=13,
            cache_audio_read_tokens=8,
            output_tokens=121,
            output_audio_tokens=91,
        ),
        "gpt-realtime",
        "openai",
    )
    for ev in events:
        assert (ev.provider, ev.endpoint, ev.model, ev.status, ev.error) == (
            "openai",
            "/v1/realtime",
            "gpt-realtime",
            200,
            None,
        )
        assert (ev.input_tokens, ev.cache_read_tokens, ev.output_tokens) == (68, 64, 121)
        assert ev.cost_usd == expected and ev.cost_source == "priced" and ev.usage_source == "stream"
        assert (ev.team, ev.app) == ("voice", "agent")
        assert ev.ttft_ms is not None and ev.ttft_ms <= ev.latency_ms
    assert {e.upstream_request_id for e in events} == {"resp_1", "resp_2"}
    (session,) = {e.session_id for e in events}
    assert session.startswith("ws_")
    assert len({e.request_id for e in events}) == 2
    _no_key_logged(caplog, CANARY)


async def test_a_realtime_sessions_input_transcription_is_priced_at_the_transcription_model(
    ws_upstream: Any, make_proxy: Any
) -> None:
    """The session's ``audio.input.transcription.model`` transcribes the caller's audio apart, billed at that
    model's prices (the event's own reference says so): one event per transcript, in the same session."""
    upstream, url = ws_upstream
    upstream.transcriber = "gpt-4o-transcribe"
    proxy = await make_proxy(url)
    client = openai.AsyncOpenAI(base_url=proxy.url + "/v1", api_key=CANARY, max_retries=0)
    async with client.realtime.connect(model="gpt-realtime") as conn:
        await conn.response.create()
        async for event in conn:
            if event.type == "conversation.item.input_audio_transcription.completed":
                break
    events = await _events(proxy, 2)
    by_model = {e.model: e for e in events}
    asr = by_model["gpt-4o-transcribe"]
    expected = _price(GUsage(input_tokens=47, input_audio_tokens=40, output_tokens=5), "gpt-4o-transcribe", "openai")
    assert asr.cost_usd == expected and asr.cost_source == "priced" and (asr.input_tokens, asr.output_tokens) == (47, 5)
    assert by_model["gpt-realtime"].cost_usd is not None
    assert len({e.session_id for e in events}) == 1


async def test_azure_realtime_is_priced_as_the_deployments_model(ws_upstream: Any, make_proxy: Any) -> None:
    """Azure OpenAI's Realtime (``/openai/realtime?api-version=…&deployment=NAME``, key in ``api-key``) through an
    Azure resource: the deployment's model (MODELTRACK_AZURE_DEPLOYMENTS) is priced."""
    upstream, url = ws_upstream
    proxy = await make_proxy(url, azure_resources={"east": url}, azure_deployments={"voice-prod": "gpt-realtime"})
    async with aiohttp.ClientSession() as s:
        ws = await s.ws_connect(
            proxy.url + "/azure/east/openai/realtime?api-version=2025-08-28&deployment=voice-prod",
            headers={"api-key": CANARY},
        )
        await ws.receive(timeout=5)
        await ws.send_str('{"type":"response.create"}')
        while b"response.done" not in (await ws.receive(timeout=5)).data.encode():
            pass
        await ws.close()
    (ev,) = await _events(proxy, 1)
    assert (ev.provider, ev.model, ev.cost_usd) == ("azure", "gpt-realtime", 0.0067416)
    assert upstream.handshakes[0]["api-key"] == CANARY and "deployment=voice-prod" in upstream.handshakes[0]["query"]


async def test_responses_over_websocket_price_each_response_like_its_http_stream(
    ws_upstream: Any, make_proxy: Any, replay: Any, caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    """The real recorded Responses stream, one event per message, costs what it costs over HTTP (SSE)."""
    caplog.set_level(logging.DEBUG)
    upstream, url = ws_upstream
    proxy = await make_proxy(url)
    client = openai.AsyncOpenAI(base_url=proxy.url + "/v1", api_key=CANARY, max_retries=0)
    async with client.responses.connect(extra_headers={"X-ModelTrack-Session-Id": "chat-7"}) as conn:
        for _ in range(2):
            await conn.response.create(model="gpt-5", input="What is 6666?")
            async for event in conn:
                if event.type == "response.completed":
                    break
    ws_events = await _events(proxy, 2)
    assert [(e["type"], e["model"]) for e in upstream.received] == [("response.create", "gpt-5")] * 2

    http_upstream, http_url = replay
    http_upstream.current = load("test_openai_responses__test_openai_responses_streaming_usage", 0)
    http_proxy = await make_proxy(http_url, store=f"sqlite:///{tmp_path}/http.db")
    http_client = openai.AsyncOpenAI(base_url=http_proxy.url + "/v1", api_key=CANARY, max_retries=0)
    stream = await http_client.responses.create(model="gpt-5", input="What is 6666?", stream=True)
    async for _ in stream:
        pass
    (http_ev,) = await http_proxy.events()
    for ev in ws_events:
        assert (ev.endpoint, ev.model, ev.session_id) == ("/v1/responses", "gpt-5-2025-08-07", "chat-7")
        assert (ev.input_tokens, ev.output_tokens, ev.reasoning_tokens) == (53, 469, 448)
        assert ev.cost_usd == http_ev.cost_usd is not None and ev.service_tier == "flex"
    _no_key_logged(caplog, CANARY)


async def test_gemini_live_turns_are_priced_from_usage_metadata(
    ws_upstream: Any, make_proxy: Any, caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    """google-genai connects with ``wss://`` whenever it has an API key: the proxy serves TLS (a trustme CA)."""
    caplog.set_level(logging.DEBUG)
    upstream, url = ws_upstream
    proxy, trust = await tls_proxy(make_proxy, url, tmp_path, access_log=True)
    options = types.HttpOptions(base_url=proxy.url.replace("http://", "https://"), async_client_args={"ssl": trust})
    client = genai.Client(api_key=GEMINI_CANARY, http_options=options)
    texts: list[str] = []
    async with client.aio.live.connect(
        model="gemini-2.5-flash-native-audio-preview-09-2025", config={"response_modalities": ["TEXT"]}
    ) as session:
        for _ in range(2):
            await session.send_client_content(turns={"role": "user", "parts": [{"text": "Hello"}]})
            async for msg in session.receive():
                if msg.text:
                    texts.append(msg.text)
                if msg.server_content and msg.server_content.turn_complete:
                    break
    assert texts == ["Hi!", "Hi!"]
    (hs,) = upstream.handshakes
    assert hs["x-goog-api-key"] == GEMINI_CANARY and "sec-websocket-extensions" not in hs
    events = await _events(proxy, 2)
    expected = _price(
        GUsage(input_tokens=522, input_audio_tokens=165, output_tokens=42, output_audio_tokens=42),
        "gemini-2.5-flash-native-audio-preview-09-2025",
        "google",
    )
    for ev in events:
        assert (ev.provider, ev.model, ev.input_tokens, ev.output_tokens) == (
            "gemini",
            "gemini-2.5-flash-native-audio-preview-09-2025",
            522,
            42,
        )
        assert ev.cost_usd == expected and ev.cost_source == "priced"
    assert len({e.session_id for e in events}) == 1
    _no_key_logged(caplog, GEMINI_CANARY)


async def test_vertex_live_checks_the_sessions_project_before_anything_goes_on(
    ws_upstream: Any, make_proxy: Any, tmp_path: Path
) -> None:
    """Vertex AI Live (google-genai ``vertexai=True``: ``wss://…/ws/google.cloud.aiplatform.v1beta1.LlmBidiService/
    BidiGenerateContent``, an OAuth bearer token, ``setup.model`` a resource name): the path names no region, so
    the one configured region's origin serves it, and the session's first message is checked against the project
    and region allow-list before it is sent on. An allowed session is metered as Gemini Live; another project's is
    closed, and its setup never reaches Google."""
    from google.oauth2.credentials import Credentials

    upstream, url = ws_upstream
    proxy, trust = await tls_proxy(make_proxy, url, tmp_path, vertex_regions="us-central1", vertex_projects="acme")

    def client(project: str) -> genai.Client:
        options = types.HttpOptions(
            base_url=proxy.url.replace("http://", "https://") + "/vertex", async_client_args={"ssl": trust}
        )
        token = Credentials(token="ya29.live-canary")
        return genai.Client(
            vertexai=True, project=project, location="us-central1", credentials=token, http_options=options
        )

    async with client("acme").aio.live.connect(
        model="gemini-live-2.5-flash", config={"response_modalities": ["TEXT"]}
    ) as session:
        await session.send_client_content(turns={"role": "user", "parts": [{"text": "Hello"}]})
        async for msg in session.receive():
            if msg.server_content and msg.server_content.turn_complete:
                break
    (ev,) = await _events(proxy, 1)
    assert (ev.provider, ev.model, ev.input_tokens, ev.output_tokens) == ("vertex", "gemini-live-2.5-flash", 522, 42)
    assert ev.cost_usd is not None and ev.cost_usd > 0
    assert upstream.handshakes[0]["authorization"] == "Bearer ya29.live-canary"
    setups = len([e for e in upstream.received if "setup" in e])
    with pytest.raises(Exception):  # noqa: B017 - the SDK reports the closed session in its own way
        async with client("evil").aio.live.connect(model="gemini-live-2.5-flash") as session:
            await session.send_client_content(turns={"role": "user", "parts": [{"text": "Hello"}]})
            async for _ in session.receive():
                pass
    assert len([e for e in upstream.received if "setup" in e]) == setups, "the refused setup never went on"


async def test_an_upgrade_the_upstream_refuses_is_answered_and_recorded(ws_upstream: Any, make_proxy: Any) -> None:
    _, url = ws_upstream
    proxy = await make_proxy(url)
    client = openai.AsyncOpenAI(base_url=proxy.url + "/v1", api_key="sk-wrong-key", max_retries=0)
    with pytest.raises(Exception) as info:
        async with client.realtime.connect(model="gpt-realtime"):
            pass
    assert "401" in str(info.value)
    (ev,) = await proxy.events()
    assert (ev.status, ev.error, ev.endpoint, ev.cost_usd) == (401, "invalid_api_key", "/v1/realtime", None)


async def _raw(url: str, data: bytes, read_until_close: bool = True) -> bytes:
    host, port = url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(data)
    await writer.drain()
    out = await asyncio.wait_for(reader.read(-1), 5) if read_until_close else await reader.read(65536)
    writer.close()
    return out


_UPGRADE = (
    b"GET %s HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\nAuthorization: Bearer %s\r\n\r\n"
)


async def test_bytes_after_a_refused_upgrade_are_never_parsed_as_a_request(replay: Any, make_proxy: Any) -> None:
    upstream, url = replay
    upstream.current = load("test_openai__test_run_stream_sync_streams_real_model", 0)
    proxy = await make_proxy(url)
    smuggled = b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}"
    answer = await _raw(proxy.url, _UPGRADE % (b"/v1/chat/completions", CANARY.encode()) + smuggled)
    assert answer.startswith(b"HTTP/1.1 400 ") and answer.count(b"HTTP/1.1") == 1
    assert b"websocket_not_served" in answer
    assert upstream.received == [], "nothing was forwarded: the smuggled request was never read"


def _frame(payload: bytes, opcode: int = 1, mask: bytes = b"\x01\x02\x03\x04") -> bytes:
    n = len(payload)
    head = bytes([0x80 | opcode])
    if n < 126:
        head += bytes([0x80 | n])
    elif n < 65536:
        head += bytes([0x80 | 126]) + n.to_bytes(2, "big")
    else:
        head += bytes([0x80 | 127]) + n.to_bytes(8, "big")
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


async def test_a_message_past_the_bound_closes_the_tunnel(ws_upstream: Any, make_proxy: Any) -> None:
    upstream, url = ws_upstream
    proxy = await make_proxy(url, websocket_max_message=2048)
    host, port = proxy.url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(_UPGRADE % (b"/v1/realtime?model=gpt-realtime", CANARY.encode()))
    head = await reader.readuntil(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 101 ")
    writer.write(_frame(b'{"type":"input_audio_buffer.append","audio":"' + b"A" * 4096 + b'"}'))
    await writer.drain()
    rest = await asyncio.wait_for(reader.read(-1), 5)  # closed by the proxy
    assert b"input_audio_buffer" not in rest
    writer.close()
    assert upstream.received == [], "the oversized message never reached the provider whole"


async def test_an_idle_tunnel_is_closed(ws_upstream: Any, make_proxy: Any) -> None:
    _, url = ws_upstream
    proxy = await make_proxy(url, websocket_idle_timeout=0.3)
    async with aiohttp.ClientSession() as s:
        ws = await s.ws_connect(proxy.url + "/v1/realtime?model=gpt-realtime", headers={"Authorization": "Bearer x"})
        first = await ws.receive(timeout=5)
        assert orjson.loads(first.data)["type"] == "session.created"
        closed = await ws.receive(timeout=5)
        assert closed.type in (WSMsgType.CLOSED, WSMsgType.CLOSE, WSMsgType.ERROR)
        async with s.get(proxy.url + "/metrics") as r:
            text = await r.text()
    assert 'modeltrack_websocket_sessions_closed_total{provider="openai",reason="idle_timeout"} 1.0' in text
    assert 'modeltrack_websocket_sessions_open{provider="openai"} 0.0' in text


async def test_an_upstream_that_never_answers_the_upgrade_is_a_504(ws_upstream: Any, make_proxy: Any) -> None:
    upstream, url = ws_upstream
    upstream.hang = True
    proxy = await make_proxy(url, websocket_idle_timeout=0.3)
    answer = await _raw(proxy.url, _UPGRADE % (b"/v1/realtime?model=gpt-realtime", CANARY.encode()))
    assert answer.startswith(b"HTTP/1.1 504 ") and b"upstream_timeout" in answer
    (ev,) = await _events(proxy, 1)
    assert (ev.status, ev.error, ev.cost_usd) == (504, "upstream_timeout", None)


async def test_a_session_cut_mid_response_records_it_unpriced(ws_upstream: Any, make_proxy: Any) -> None:
    """The client's connection drops in the middle of a response: the response is recorded (usage unknown, cost
    null), never dropped, and the provider's connection is closed too."""
    upstream, url = ws_upstream
    upstream.deltas, upstream.pause = 200, 0.01  # a 2-second answer: the client leaves in the middle of it
    proxy = await make_proxy(url)
    host, port = proxy.url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(_UPGRADE % (b"/v1/realtime?model=gpt-realtime", CANARY.encode()))
    assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 101 ")
    writer.write(_frame(b'{"type":"response.create"}'))
    seen = b""
    while b"output_audio.delta" not in seen:
        seen += await asyncio.wait_for(reader.read(65536), 5)
    writer.transport.abort()
    (ev,) = await _events(proxy, 1)
    assert ev.cost_usd is None and ev.usage_source == "missing" and ev.error == "client_disconnected"
    assert ev.model == "gpt-realtime" and ev.status == 200
    await asyncio.sleep(2.5)  # longer than the whole answer: had it gone on upstream, a priced event would follow
    assert len(await proxy.events()) == 1


async def test_a_session_past_its_budget_is_closed_after_the_response_that_spent_it(
    ws_upstream: Any, make_proxy: Any, tmp_path: Path
) -> None:
    """The upgrade is admitted by the budgets like any request; each response's cost is spent as it is recorded,
    and the budget is checked again before anything more of the client's reaches the provider: a session cannot
    run past a block budget. Each response costs $0.0067416: a $0.01 budget admits the session and its first
    response, and the second spends it, so the session is closed there, and the third is never asked for."""
    _, url = ws_upstream
    doc = {
        "reserve": {"default_max_output_tokens": 100},  # a check's worst case: $0.0016 of gpt-realtime output
        "budgets": [{"name": "voice", "period": "daily", "limit_usd": 0.01, "match": {"team": "voice"}}],
    }
    controls = tmp_path / "controls.json"
    controls.write_bytes(orjson.dumps(doc))
    proxy = await make_proxy(url, controls_file=str(controls))
    client = openai.AsyncOpenAI(base_url=proxy.url + "/v1", api_key=CANARY, max_retries=0)
    done = 0
    # The SDK sees the connection end after the second response (and, reconnecting, a refusal): however it reports
    # that, no second response is ever produced.
    with contextlib.suppress(openai.OpenAIError, websockets.exceptions.WebSocketException):
        async with client.realtime.connect(
            model="gpt-realtime", extra_headers={"X-ModelTrack-Team": "voice"}, max_retries=0
        ) as conn:
            for _ in range(3):
                await conn.response.create()
                async for event in conn:
                    if event.type == "response.done":
                        done += 1
                        break
    assert done == 2
    events = await _events(proxy, 2)
    assert [e.cost_usd for e in events] == [0.0067416, 0.0067416] and {e.team for e in events} == {"voice"}
    refused = await s_refused(proxy.url)
    assert refused.startswith(b"HTTP/1.1 429 ") or refused.startswith(b"HTTP/1.1 402 "), refused[:40]


async def s_refused(url: str) -> bytes:
    """A new session for the team, now that the budget is spent: refused before anything is sent upstream."""
    host, port = url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(
        (_UPGRADE % (b"/v1/realtime?model=gpt-realtime", CANARY.encode())).replace(
            b"\r\n\r\n", b"\r\nX-ModelTrack-Team: voice\r\n\r\n"
        )
    )
    answer = await asyncio.wait_for(reader.read(-1), 5)
    writer.close()
    return answer


async def test_a_tls_upstream_is_reached_through_the_egress_proxy(tmp_path: Path, tinyproxy: Tinyproxy) -> None:
    """An HTTPS upstream behind a corporate forward proxy: the tunnel is a CONNECT through tinyproxy, then TLS to
    the origin; the key travels inside TLS, never in the forward proxy's view."""
    ca = trustme.CA()
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost").configure_cert(ctx)
    upstream = Upstream()
    runner = web.AppRunner(upstream.app())
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0, ssl_context=ctx).start()
    url = f"https://localhost:{runner.addresses[0][1]}"
    env = {"MODELTRACK_OPENAI_BASE_URL": url, "MODELTRACK_CA_BUNDLE": str(ca_file), "HTTPS_PROXY": tinyproxy.url}
    proxy = ProxyProcess(tmp_path, env)
    await proxy.start()
    try:
        async with aiohttp.ClientSession() as s:
            ws = await s.ws_connect(
                proxy.url + "/v1/realtime?model=gpt-realtime", headers={"Authorization": f"Bearer {CANARY}"}
            )
            assert orjson.loads((await ws.receive(timeout=5)).data)["type"] == "session.created"
            await ws.send_str('{"type":"response.create"}')
            types_seen = []
            while "response.done" not in types_seen:
                types_seen.append(orjson.loads((await ws.receive(timeout=5)).data)["type"])
            await ws.close()
    finally:
        assert await proxy.stop() == 0
        await runner.cleanup()
    assert types_seen == ["response.created"] + ["response.output_audio.delta"] * 3 + ["response.done"]
    assert upstream.handshakes[0]["authorization"] == f"Bearer {CANARY}"
    log = tinyproxy.text()
    assert f"CONNECT localhost:{url.rsplit(':', 1)[1]}" in log and CANARY not in log
    assert CANARY not in proxy.log_path.read_text()


async def _events(proxy: Any, n: int) -> list[Any]:
    for _ in range(100):
        events = await proxy.events()
        if len(events) >= n:
            return sorted(events, key=lambda e: e.timestamp)
        await asyncio.sleep(0.05)
    raise AssertionError(f"expected {n} events, got {len(events)}")


def test_a_response_done_is_read_whatever_the_order_of_its_keys() -> None:
    """The meter skips a message by the ``type`` its head shows, and only when that ``type`` is the top-level one:
    a ``response.done`` whose ``response`` object comes first (its own nested ``type`` seen first) is still read."""
    from modeltrack.providers.realtime import OpenAIRealtimeMeter, event_type

    delta = b'{"type":"response.output_audio.delta","event_id":"e1","response_id":"r","delta":"AAAA"}'
    assert event_type(delta) == b"response.output_audio.delta"
    nested_first = orjson.dumps(
        {
            "response": {"object": "realtime.response", "type": "x", "id": "r", "usage": REALTIME_USAGE},
            "type": "response.done",
            "event_id": "e2",
        }
    )
    assert event_type(nested_first) is None
    for msg in (
        nested_first,
        orjson.dumps(
            {
                "event_id": "e3",
                "type": "response.done",
                "response": {"id": "r", "status": "completed", "usage": REALTIME_USAGE},
            }
        ),
    ):
        turn = OpenAIRealtimeMeter("gpt-realtime").from_server(msg, 0.0)
        assert turn is not None and turn.result.usage is not None
        assert (turn.result.usage.input_tokens, turn.result.usage.cache_read_tokens) == (68, 64)
    assert OpenAIRealtimeMeter("gpt-realtime").from_server(delta, 0.0) is None
