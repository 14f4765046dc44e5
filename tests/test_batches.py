"""OpenAI's Batch API through the proxy (issue L, item 3), with the real ``openai`` SDK as the client, on SQLite and
the Firestore emulator.

The upstream answers in the documented wire format: the batch object of the API reference ("Batch", "The batch
object": ``id``, ``object: "batch"``, ``endpoint``, ``input_file_id``, ``status``, ``output_file_id``,
``error_file_id``, ``request_counts``), the file object ("Files", "The file object"), and result files in the
Batch guide's JSON Lines ("Retrieving the results": ``{"id", "custom_id", "response": {"status_code",
"request_id", "body"}, "error"}``; an error file's failed lines carry ``response: null`` and an ``error``).

What is checked: every item is priced once, at the batch rate (equal to genai-prices' ``calc_price`` with
``price_context={"processing": "batch"}``), with the attribution of whoever created the batch; polling and
downloading are free; reading the results twice stores nothing twice; the key is in no log and no event.
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any

import openai
import orjson
import pytest
from aiohttp import web

from modeltrack.config import Settings
from modeltrack.ui import create_app

KEY = "sk-canary-batch-0123456789abcdef"
MODEL = "gpt-4o-mini-2024-07-18"


def _line(custom_id: str, prompt: int, completion: int, cached: int = 0) -> dict[str, Any]:
    return {
        "id": f"batch_req_{custom_id}",
        "custom_id": custom_id,
        "response": {
            "status_code": 200,
            "request_id": f"req_up_{custom_id}",
            "body": {
                "id": f"chatcmpl-{custom_id}",
                "object": "chat.completion",
                "created": 1711652795,
                "model": MODEL,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}],
                "usage": {
                    "prompt_tokens": prompt,
                    "completion_tokens": completion,
                    "total_tokens": prompt + completion,
                    "prompt_tokens_details": {"cached_tokens": cached},
                },
                "system_fingerprint": "fp_44709d6fcb",
            },
        },
        "error": None,
    }


OUTPUT = [
    _line("task-1", 1200, 300),
    _line("task-2", 2048, 512, cached=1024),
    {
        "id": "batch_req_task-3",
        "custom_id": "task-3",
        "response": {
            "status_code": 400,
            "request_id": "req_up_task-3",
            "body": {"error": {"message": "bad", "type": "invalid_request_error", "code": "invalid_value"}},
        },
        "error": None,
    },
]
ERRORS = [
    {
        "id": "batch_req_task-4",
        "custom_id": "task-4",
        "response": None,
        "error": {"code": "batch_expired", "message": "This request could not be executed before expiry."},
    }
]


def _jsonl(lines: list[dict[str, Any]]) -> bytes:
    return b"".join(orjson.dumps(x) + b"\n" for x in lines)


class Upstream:
    """OpenAI's Files and Batch endpoints, as documented; the batch completes on its first retrieval."""

    def __init__(self) -> None:
        self.polls = 0
        self.downloads = 0

    def batch(self, status: str) -> dict[str, Any]:
        done = status == "completed"
        return {
            "id": "batch_67c1a2b3",
            "object": "batch",
            "endpoint": "/v1/chat/completions",
            "errors": None,
            "input_file_id": "file-in42",
            "completion_window": "24h",
            "status": status,
            "output_file_id": "file-out42" if done else None,
            "error_file_id": "file-err42" if done else None,
            "created_at": 1711471533,
            "in_progress_at": 1711471538,
            "expires_at": 1711557933,
            "completed_at": 1711493133 if done else None,
            "request_counts": {"total": 4, "completed": 3 if done else 0, "failed": 1 if done else 0},
            "metadata": None,
        }

    def app(self) -> web.Application:
        app = web.Application()

        async def upload(request: web.Request) -> web.Response:
            await request.read()
            return web.json_response(
                {
                    "id": "file-in42",
                    "object": "file",
                    "bytes": 120000,
                    "created_at": 1711471533,
                    "filename": "batch.jsonl",
                    "purpose": "batch",
                    "status": "processed",
                }
            )

        async def create(request: web.Request) -> web.Response:
            body = await request.json()
            assert body["input_file_id"] == "file-in42" and body["endpoint"] == "/v1/chat/completions"
            return web.json_response(self.batch("validating"))

        async def retrieve(request: web.Request) -> web.Response:
            self.polls += 1
            return web.json_response(self.batch("completed"))

        async def content(request: web.Request) -> web.Response:
            self.downloads += 1
            lines = {"file-out42": OUTPUT, "file-err42": ERRORS}.get(request.match_info["fid"])
            if lines is None:
                return web.json_response(
                    {"error": {"message": "no such file", "type": "invalid_request_error"}}, status=404
                )
            return web.Response(body=_jsonl(lines), content_type="application/octet-stream")

        app.router.add_post("/v1/files", upload)
        app.router.add_post("/v1/batches", create)
        app.router.add_get("/v1/batches/{bid}", retrieve)
        app.router.add_get("/v1/files/{fid}/content", content)
        return app


def calc(prompt: int, completion: int, cached: int, batch: bool) -> float:
    from genai_prices import Usage, calc_price

    usage = Usage(input_tokens=prompt, cache_read_tokens=cached, output_tokens=completion)
    price = calc_price(
        usage,
        MODEL,
        provider_id="openai",
        genai_request_timestamp=datetime.now().astimezone(),
        price_context={"processing": "batch"} if batch else None,
    )
    return float(price.total_price)


async def test_a_batch_is_priced_once_per_item_at_the_batch_rate_for_its_creator(
    aiohttp_server: Any, aiohttp_client: Any, make_proxy: Any, store_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    upstream = Upstream()
    server = await aiohttp_server(upstream.app())
    proxy = await make_proxy(str(server.make_url("")).rstrip("/"), store=store_url, access_log=True)

    def client(team: str) -> openai.AsyncOpenAI:
        return openai.AsyncOpenAI(
            api_key=KEY,
            base_url=proxy.url + "/v1",
            default_headers={"X-ModelTrack-Team": team, "X-ModelTrack-App": "evals", "X-ModelTrack-User": team},
            max_retries=0,
        )

    creator, reader = client("research"), client("ops")
    uploaded = await creator.files.create(file=("batch.jsonl", b'{"custom_id": "task-1"}\n'), purpose="batch")
    batch = await creator.batches.create(
        input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    assert batch.id == "batch_67c1a2b3" and batch.status == "validating"
    for _ in range(3):  # polling is free, and never prices anything
        polled = await reader.batches.retrieve(batch.id)
    assert polled.output_file_id == "file-out42" and upstream.polls == 3
    for _ in range(2):  # the results read twice: priced once
        out = await reader.files.content(polled.output_file_id)
        assert out.content == _jsonl(OUTPUT)  # byte for byte
    errors = await reader.files.content(polled.error_file_id or "")
    assert errors.content == _jsonl(ERRORS)

    events = await proxy.events()
    items = {e.upstream_request_id or e.request_id: e for e in events if e.processing == "batch"}
    calls = [e for e in events if e.processing != "batch"]
    assert len(calls) == 1 + 1 + 3 + 2 + 1  # upload, create, polls, downloads
    assert all(e.cost_usd == 0 and e.cost_source == "zero" for e in calls)
    assert [e.batch_id for e in calls].count("batch_67c1a2b3") == 1 + 3 + 3
    assert len(items) == 4 and len([e for e in events if e.processing == "batch"]) == 4, "every item exactly once"

    for e in items.values():
        assert e.batch_id == "batch_67c1a2b3" and e.endpoint == "/v1/chat/completions"
        assert (e.team, e.app, e.user) == ("research", "evals", "research"), "the creator's attribution"
    one, two = items["req_up_task-1"], items["req_up_task-2"]
    assert (one.input_tokens, one.output_tokens, one.model) == (1200, 300, MODEL)
    assert (two.input_tokens, two.cache_read_tokens, two.output_tokens) == (1024, 1024, 512)
    for e, (p, c, cached) in ((one, (1200, 300, 0)), (two, (2048, 512, 1024))):
        assert e.cost_source == "priced" and e.cost_usd == pytest.approx(calc(p, c, cached, True), abs=1e-9)
        assert e.cost_usd < calc(p, c, cached, False), "the batch rate, not the standard one"
    failed, expired = items["req_up_task-3"], next(e for e in items.values() if e.error == "batch_expired")
    assert (failed.status, failed.error, failed.cost_usd) == (400, "invalid_value", 0.0)
    assert expired.cost_usd == 0.0

    # A second proxy on the same store (another replica) knows the batch: nothing is priced again.
    again = await make_proxy(str(server.make_url("")).rstrip("/"), store=store_url)
    c2 = openai.AsyncOpenAI(api_key=KEY, base_url=again.url + "/v1", max_retries=0)
    await c2.files.content("file-out42")
    later = await again.events()
    assert len([e for e in later if e.processing == "batch"]) == 4

    text = caplog.text + "".join(orjson.dumps(e.to_dict()).decode() for e in later)
    assert KEY not in text and "canary" not in text

    # The request log shows batch spend as such: the items, with their batch.
    ui = await aiohttp_client(create_app(Settings.load(env={}, overrides={"store": store_url})))
    r = await ui.get("/api/v1/requests", params={"processing": "batch"})
    assert r.status == 200
    rows = (await r.json())["requests"]
    assert sorted(x["request_id"] for x in rows) == sorted(e.request_id for e in items.values())
    assert all(x["processing"] == "batch" and x["batch_id"] == "batch_67c1a2b3" for x in rows)
    r = await ui.get("/api/v1/requests", params={"processing": "", "batch_id": "batch_67c1a2b3"})
    assert len((await r.json())["requests"]) == 1 + 3 + 3 + 1  # the free calls on it, the replica's read too
    # Breakdowns split batch spend from interactive spend (a rollup dimension, equal to the events).
    r = await ui.get("/api/v1/breakdown", params={"dimension": "processing"})
    split = {row["processing"]: row for row in (await r.json())["rows"]}
    assert split["batch"]["requests"] == 4
    assert split["batch"]["cost_usd"] == pytest.approx(sum(e.cost_usd or 0 for e in items.values()), abs=1e-9)
    assert split[None]["requests"] == len(later) - 4 and split[None]["cost_usd"] == 0  # None: "(none)"
    r = await ui.get("/api/v1/breakdown", params={"dimension": "team", "processing": "batch"})
    assert [(row["team"], row["requests"]) for row in (await r.json())["rows"]] == [("research", 4)]


BATCH_ID = "msgbatch_01HkcTjaV5uDC8jWR4ZsDV8d"
SONNET = "claude-sonnet-4-5-20250929"
HAIKU3 = "claude-3-haiku-20240307"  # no batch price in the data: its standard rate, and said so


def _message_batch(ended: bool) -> dict[str, Any]:
    """Anthropic's Message Batch object (API reference, "Message Batches"; the SDK's ``MessageBatch``)."""
    counts = {"processing": 0 if ended else 4, "succeeded": 2 if ended else 0, "errored": 1 if ended else 0}
    return {
        "id": BATCH_ID,
        "type": "message_batch",
        "processing_status": "ended" if ended else "in_progress",
        "request_counts": {**counts, "canceled": 0, "expired": 1 if ended else 0},
        "ended_at": "2024-09-24T19:37:24.100435Z" if ended else None,
        "created_at": "2024-09-24T18:37:24.100435Z",
        "expires_at": "2024-09-25T18:37:24.100435Z",
        "archived_at": None,
        "cancel_initiated_at": None,
        # The API's own absolute URL, which the SDK fetches as it is.
        "results_url": f"https://api.anthropic.com/v1/messages/batches/{BATCH_ID}/results" if ended else None,
    }


def _result(custom_id: str, model: str, usage: dict[str, int]) -> dict[str, Any]:
    message = {
        "id": f"msg_{custom_id}",
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [{"type": "text", "text": "ok"}],
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": usage,
    }
    return {"custom_id": custom_id, "result": {"type": "succeeded", "message": message}}


RESULTS = [
    _result("r-1", SONNET, {"input_tokens": 3000, "output_tokens": 700, "cache_read_input_tokens": 2000}),
    _result("r-2", HAIKU3, {"input_tokens": 800, "output_tokens": 100}),
    {
        "custom_id": "r-3",
        "result": {
            "type": "errored",
            "error": {"type": "error", "error": {"type": "invalid_request_error", "message": "bad"}},
        },
    },
    {"custom_id": "r-4", "result": {"type": "expired"}},
]


async def test_anthropic_message_batches_through_the_sdk(
    aiohttp_server: Any, make_proxy: Any, store_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The anthropic SDK reads a batch's results from the ``results_url`` its batch object names: the proxy points
    it back at itself, so the results are metered (without that, the SDK would go to api.anthropic.com)."""
    import anthropic

    caplog.set_level(logging.DEBUG)
    seen: list[str] = []
    app = web.Application()

    async def create(request: web.Request) -> web.Response:
        body = await request.json()
        assert [r["custom_id"] for r in body["requests"]] == ["r-1", "r-2", "r-3", "r-4"]
        return web.json_response(_message_batch(False))

    async def retrieve(request: web.Request) -> web.Response:
        seen.append("retrieve")
        answer = web.json_response(_message_batch(True))
        answer.enable_compression()  # gzip when the request accepts it, as the API does
        return answer

    async def results(request: web.Request) -> web.Response:
        seen.append("results")
        return web.Response(body=_jsonl(RESULTS), content_type="application/binary")

    app.router.add_post("/v1/messages/batches", create)
    app.router.add_get(f"/v1/messages/batches/{BATCH_ID}", retrieve)
    app.router.add_get(f"/v1/messages/batches/{BATCH_ID}/results", results)
    server = await aiohttp_server(app)
    proxy = await make_proxy(str(server.make_url("")).rstrip("/"), store=store_url)

    def client(team: str) -> anthropic.AsyncAnthropic:
        return anthropic.AsyncAnthropic(
            api_key=KEY, base_url=proxy.url + "/anthropic", default_headers={"X-ModelTrack-Team": team}, max_retries=0
        )

    params = {"model": SONNET, "max_tokens": 100, "messages": [{"role": "user", "content": "hi"}]}
    created = await client("research").messages.batches.create(
        requests=[{"custom_id": f"r-{i}", "params": params} for i in range(1, 5)]  # type: ignore[misc]
    )
    assert created.id == BATCH_ID
    polled = await client("ops").messages.batches.retrieve(BATCH_ID)
    assert polled.results_url == f"{proxy.url}/anthropic/v1/messages/batches/{BATCH_ID}/results"
    for _ in range(2):  # read twice: priced once
        got = [r.custom_id async for r in await client("ops").messages.batches.results(BATCH_ID)]
        assert got == ["r-1", "r-2", "r-3", "r-4"]
    assert seen == ["retrieve", "retrieve", "results", "retrieve", "results"], "every call through the proxy"

    events = await proxy.events()
    items = {e.upstream_request_id or e.error: e for e in events if e.processing == "batch"}
    assert len(items) == 4 and all(e.batch_id == BATCH_ID and e.team == "research" for e in items.values())
    sonnet, haiku = items["msg_r-1"], items["msg_r-2"]
    assert (sonnet.input_tokens, sonnet.cache_read_tokens, sonnet.output_tokens) == (3000, 2000, 700)
    from genai_prices import Usage, calc_price

    now = datetime.now().astimezone()
    want = calc_price(
        Usage(input_tokens=5000, cache_read_tokens=2000, output_tokens=700),
        SONNET,
        provider_id="anthropic",
        genai_request_timestamp=now,
        price_context={"processing": "batch"},
    )
    assert sonnet.cost_source == "priced" and sonnet.cost_usd == pytest.approx(float(want.total_price), abs=1e-9)
    standard = calc_price(Usage(input_tokens=800, output_tokens=100), HAIKU3, provider_id="anthropic")
    assert haiku.cost_source == "standard_rate"
    assert haiku.cost_usd == pytest.approx(float(standard.total_price), abs=1e-9)
    assert items["invalid_request_error"].cost_usd == 0.0 and items["expired"].cost_usd == 0.0
    assert all(e.cost_usd == 0 for e in events if e.processing != "batch")
    assert KEY not in caplog.text


def _gemini_batch(state: str) -> dict[str, Any]:
    """A Gemini API batch (API reference, "Batch Mode"; the google-genai SDK's ``_BatchJob_from_mldev`` reads
    ``name`` and ``metadata``: ``model``, ``state``, ``output.inlinedResponses.inlinedResponses``)."""

    def answer(key: str, prompt: int, out: int, thoughts: int) -> dict[str, Any]:
        usage = {
            "promptTokenCount": prompt,
            "candidatesTokenCount": out,
            "thoughtsTokenCount": thoughts,
            "totalTokenCount": prompt + out + thoughts,
            "promptTokensDetails": [{"modality": "TEXT", "tokenCount": prompt}],
        }
        response = {
            "candidates": [{"content": {"role": "model", "parts": [{"text": "ok"}]}, "finishReason": "STOP"}],
            "usageMetadata": usage,
            "modelVersion": "gemini-2.5-flash",
            "responseId": f"resp-{key}",
        }
        return {"response": response, "metadata": {"key": key}}

    meta: dict[str, Any] = {
        "@type": "type.googleapis.com/google.ai.generativelanguage.v1main.GenerateContentBatch",
        "model": "models/gemini-2.5-flash",
        "displayName": "nightly",
        "state": state,
        "createTime": "2026-12-01T10:00:00Z",
        "updateTime": "2026-12-01T10:05:00Z",
    }
    if state == "BATCH_STATE_SUCCEEDED":
        meta["output"] = {
            "inlinedResponses": {"inlinedResponses": [answer("q-1", 900, 120, 300), answer("q-2", 400, 80, 0)]}
        }
        meta["endTime"] = "2026-12-01T10:05:00Z"
    return {"name": "batches/nightly123", "metadata": meta, "done": state == "BATCH_STATE_SUCCEEDED"}


def _genai(proxy_url: str, team: str) -> Any:
    """A ``google-genai`` client through the proxy's ``/gemini`` route, for ``team``."""
    from google import genai
    from google.genai import types

    options = types.HttpOptions(
        base_url=proxy_url + "/gemini", api_version="v1beta", headers={"X-ModelTrack-Team": team}
    )
    return genai.Client(api_key=KEY, http_options=options)


async def test_gemini_batch_mode_through_the_sdk(aiohttp_server: Any, make_proxy: Any, store_url: str) -> None:
    """Inlined answers arrive in the poll that finds the batch succeeded, and in every later poll: priced once."""
    from genai_prices import Usage, calc_price

    polls = 0
    app = web.Application()

    async def create(request: web.Request) -> web.Response:
        body = await request.json()
        assert len(body["batch"]["inputConfig"]["requests"]["requests"]) == 2
        return web.json_response(_gemini_batch("BATCH_STATE_PENDING"))

    async def get(request: web.Request) -> web.Response:
        nonlocal polls
        polls += 1
        return web.json_response(_gemini_batch("BATCH_STATE_RUNNING" if polls == 1 else "BATCH_STATE_SUCCEEDED"))

    app.router.add_post("/v1beta/models/gemini-2.5-flash:batchGenerateContent", create)
    app.router.add_get("/v1beta/batches/nightly123", get)
    server = await aiohttp_server(app)
    proxy = await make_proxy(str(server.make_url("")).rstrip("/"), store=store_url)

    def client(team: str) -> Any:
        return _genai(proxy.url, team)

    requests = [{"contents": [{"parts": [{"text": q}], "role": "user"}]} for q in ("a", "b")]
    job = await client("research").aio.batches.create(model="gemini-2.5-flash", src=requests)  # type: ignore[arg-type]
    assert job.name == "batches/nightly123"
    for _ in range(4):  # running, then succeeded three times: the answers are priced once
        job = await client("ops").aio.batches.get(name="batches/nightly123")
    assert job.dest is not None and job.dest.inlined_responses is not None and len(job.dest.inlined_responses) == 2

    events = await proxy.events()
    items = {e.upstream_request_id: e for e in events if e.processing == "batch"}
    assert set(items) == {"resp-q-1", "resp-q-2"} and len([e for e in events if e.processing == "batch"]) == 2
    assert all(e.team == "research" and e.batch_id == "batches/nightly123" for e in items.values())
    one = items["resp-q-1"]
    want = calc_price(
        Usage(input_tokens=900, output_tokens=420),
        "gemini-2.5-flash",
        provider_id="google",
        genai_request_timestamp=datetime.now().astimezone(),
        price_context={"processing": "batch"},
    )
    assert (one.input_tokens, one.output_tokens, one.reasoning_tokens) == (900, 420, 300)
    assert one.cost_source == "priced" and one.cost_usd == pytest.approx(float(want.total_price), abs=1e-9)
    assert all(e.cost_usd == 0 and e.batch_id == "batches/nightly123" for e in events if e.processing != "batch")
    assert polls == 4


async def test_a_gemini_batch_answered_in_a_responses_file_is_priced_when_read(
    aiohttp_server: Any, make_proxy: Any, store_url: str
) -> None:
    """A batch built from an input file answers in a file (``output.responsesFile``): the poll that names it is
    remembered, and the file's download (``files.download``, ``GET /v1beta/files/{id}:download?alt=media``) is
    metered, one event per line, keyed by the line's ``key`` (else its position), priced once however often it
    is read, for the batch's creator. A status line (an item that failed) costs nothing."""
    from genai_prices import Usage, calc_price

    def line(key: str | None, prompt: int, out: int) -> bytes:
        response = {
            "candidates": [{"content": {"role": "model", "parts": [{"text": "ok"}]}, "finishReason": "STOP"}],
            "usageMetadata": {"promptTokenCount": prompt, "candidatesTokenCount": out, "totalTokenCount": prompt + out},
            "modelVersion": "gemini-2.5-flash",
            "responseId": f"resp-{key or prompt}",
        }
        return orjson.dumps({"key": key, "response": response} if key else response) + b"\n"

    results = (
        line("f-1", 700, 90)
        + orjson.dumps({"key": "f-2", "error": {"code": 400, "message": "bad", "status": "INVALID_ARGUMENT"}})
        + b"\n"
        + line(None, 300, 40)  # a bare GenerateContentResponse: keyed by its position
    )
    downloads = 0
    app = web.Application()

    def batch(state: str) -> dict[str, Any]:
        meta: dict[str, Any] = {"model": "models/gemini-2.5-flash", "state": state, "displayName": "from-file"}
        if state == "BATCH_STATE_SUCCEEDED":
            meta["output"] = {"responsesFile": "files/batch-fromfile1"}
        return {"name": "batches/fromfile1", "metadata": meta, "done": state == "BATCH_STATE_SUCCEEDED"}

    async def create(request: web.Request) -> web.Response:
        body = await request.json()
        assert body["batch"]["inputConfig"] == {"fileName": "files/input-1"}
        return web.json_response(batch("BATCH_STATE_PENDING"))

    async def get(request: web.Request) -> web.Response:
        return web.json_response(batch("BATCH_STATE_SUCCEEDED"))

    async def download(request: web.Request) -> web.Response:
        nonlocal downloads
        downloads += 1
        assert request.query.get("alt") == "media"
        return web.Response(body=results, content_type="application/octet-stream")

    app.router.add_post("/v1beta/models/gemini-2.5-flash:batchGenerateContent", create)
    app.router.add_get("/v1beta/batches/fromfile1", get)
    app.router.add_get("/v1beta/files/batch-fromfile1:download", download)
    server = await aiohttp_server(app)
    proxy = await make_proxy(str(server.make_url("")).rstrip("/"), store=store_url)

    def client(team: str) -> Any:
        return _genai(proxy.url, team)

    job = await client("research").aio.batches.create(model="gemini-2.5-flash", src="files/input-1")
    assert job.name == "batches/fromfile1"
    job = await client("ops").aio.batches.get(name="batches/fromfile1")
    assert job.dest is not None and job.dest.file_name == "files/batch-fromfile1"
    for _ in range(2):  # read twice: priced once
        assert await client("ops").aio.files.download(file=job.dest.file_name) == results
    assert downloads == 2

    events = await proxy.events()
    items = {e.upstream_request_id or e.error: e for e in events if e.processing == "batch"}
    assert len([e for e in events if e.processing == "batch"]) == 3 and set(items) == {
        "resp-f-1",
        "resp-300",
        "INVALID_ARGUMENT",
    }
    assert all(e.team == "research" and e.batch_id == "batches/fromfile1" for e in items.values())
    for rid, (prompt, out) in (("resp-f-1", (700, 90)), ("resp-300", (300, 40))):
        want = calc_price(
            Usage(input_tokens=prompt, output_tokens=out),
            "gemini-2.5-flash",
            provider_id="google",
            genai_request_timestamp=datetime.now().astimezone(),
            price_context={"processing": "batch"},
        )
        assert items[rid].cost_source == "priced"
        assert items[rid].cost_usd == pytest.approx(float(want.total_price), abs=1e-9) and items[rid].cost_usd > 0
    assert items["INVALID_ARGUMENT"].cost_usd == 0.0
    assert all(e.cost_usd == 0 for e in events if e.processing != "batch")
