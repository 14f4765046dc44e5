"""Every real recording through the proxy: bytes identical to the upstream's, one correct cost event each."""

from __future__ import annotations

from typing import Any

import aiohttp
import pytest

from .expected import EXPECTED, expected_cost, provider_of
from .replay import Recording, all_recordings

RECORDINGS = all_recordings()


def proxy_path(rec: Recording) -> str:
    return f"/{provider_of(rec.uri)}{rec.path_qs}"


def request_body(rec: Recording) -> bytes:
    import orjson

    return orjson.dumps(rec.request_body) if rec.request_body is not None else b"{}"


async def fetch(url: str, body: bytes, headers: dict[str, str] | None = None) -> tuple[int, Any, bytes]:
    async with aiohttp.ClientSession(auto_decompress=False) as s, s.post(url, data=body, headers=headers) as r:
        return r.status, r.headers, await r.read()


def test_every_recording_has_expectations() -> None:
    assert {(r.name, r.index) for r in RECORDINGS} == set(EXPECTED)


@pytest.mark.parametrize("rec", RECORDINGS, ids=lambda r: f"{r.name.split('__', 1)[1]}[{r.index}]")
async def test_recording_through_proxy(rec: Recording, replay: Any, make_proxy: Any) -> None:
    upstream, upstream_url = replay
    upstream.current = rec
    proxy = await make_proxy(upstream_url)
    body = request_body(rec)
    headers = {"Content-Type": "application/json", "X-ModelTrack-Team": "search", "X-ModelTrack-App": "web"}

    d_status, d_headers, direct = await fetch(upstream_url + rec.path_qs, body, headers)
    p_status, p_headers, proxied = await fetch(proxy.url + proxy_path(rec), body, headers)

    assert direct == rec.body
    assert proxied == direct, "the client must receive exactly the upstream's bytes"
    assert p_status == d_status == rec.status
    assert p_headers.get("Content-Type") == d_headers.get("Content-Type")
    # Attribution headers are consumed, not forwarded.
    assert not any(k.lower().startswith(b"x-modeltrack") for k, _ in upstream.received[-1].raw_headers)

    events = await proxy.events()
    assert len(events) == 1
    ev = events[0].to_dict()
    expected = {
        "status": rec.status,
        "team": "search",
        "app": "web",
        "cost_usd": expected_cost((rec.name, rec.index), ev["timestamp"]),
        **EXPECTED[(rec.name, rec.index)],
    }
    for key in ("input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens", "reasoning_tokens"):
        expected.setdefault(key, 0)
    assert {k: ev[k] for k in expected} == expected
    assert ev["request_id"].startswith("req_")
    assert ev["upstream_request_id"] == f"upstream-{rec.name[:20]}-{rec.index}"
    assert "?" not in ev["endpoint"]
    assert ev["latency_ms"] > 0
    if ev["stream"]:
        assert ev["ttft_ms"] is not None and 0 < ev["ttft_ms"] <= ev["latency_ms"]


@pytest.mark.parametrize("encoding", ["gzip", "deflate", "br", "zstd", "gzip-members", "zstd-frames", "deflate-raw"])
@pytest.mark.parametrize(
    "key",
    [
        ("test_anthropic__test_anthropic_model_thinking_part_stream", 0),
        ("test_openai_prompt_cache__test_openai_chat_prompt_cache_e2e", 1),
    ],
    ids=["anthropic-stream", "openai-json"],
)
async def test_compressed_bodies_pass_through_and_are_metered(
    encoding: str, key: tuple[str, int], replay: Any, make_proxy: Any
) -> None:
    from .replay import CODINGS, load

    upstream, upstream_url = replay
    rec = load(*key)
    upstream.current = rec
    upstream.encoding = encoding
    proxy = await make_proxy(upstream_url)
    _, _, direct = await fetch(upstream_url + rec.path_qs, request_body(rec))
    _, p_headers, proxied = await fetch(proxy.url + proxy_path(rec), request_body(rec))
    assert proxied == direct != rec.body  # compressed bytes, passed through untouched
    assert p_headers["Content-Encoding"] == CODINGS.get(encoding, encoding)
    (ev,) = await proxy.events()
    expected = EXPECTED[key]
    assert (ev.input_tokens, ev.output_tokens) == (expected["input_tokens"], expected["output_tokens"])
    assert ev.error is None


async def test_a_finished_exchange_is_freed_without_the_garbage_collector(replay: Any, make_proxy: Any) -> None:
    """An exchange, its meter (which may hold a copy of a large body) and its event go when the request ends, by
    reference counting alone: no reference cycle leaves them for the garbage collector, which under a flood of
    large answers let RSS grow by tens of megabytes (tests/test_controls_live.py's cache flood)."""
    import gc

    upstream, upstream_url = replay
    proxy = await make_proxy(upstream_url)
    picked: dict[str, Recording] = {}
    for rec in RECORDINGS:
        picked.setdefault(f"{provider_of(rec.uri)} {rec.status} {'stream' in rec.path_qs or b'data:' in rec.body}", rec)
    gc.collect()
    gc.disable()
    try:
        for rec in picked.values():
            upstream.current = rec
            status, _, _ = await fetch(proxy.url + proxy_path(rec), request_body(rec))
            assert status == rec.status
        await proxy.events()
        gc.set_debug(gc.DEBUG_SAVEALL)
        gc.collect()
        ours = sorted({type(o).__module__ + "." + type(o).__qualname__ for o in gc.garbage})
        ours = [name for name in ours if name.startswith("modeltrack.")]
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.enable()
    assert len(picked) >= 6
    assert ours == [], f"left in reference cycles: {ours}"
