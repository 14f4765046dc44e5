"""The benchmark harnesses work (tiny runs; real numbers come from `make bench`, never from tests)."""

from __future__ import annotations

import asyncio
import itertools
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from bench import closedloop, pipeline, pricing


async def test_pipeline_bench_harness() -> None:
    rows = await pipeline.main_async(300, firestore=False)
    assert [r["store"] for r in rows] == [
        "sqlite, writer process",
        "sqlite, writer thread",
        "sqlite, writer process (journal off)",
    ]
    assert [r["written"] for r in rows] == [600, 600, 600]
    assert "enqueue p50" in pipeline.markdown(rows)


async def test_closed_loop_client_reads_each_kind_of_response(aiohttp_server: Any) -> None:
    """bench/closedloop.py reads whole responses of either framing, and opens a new connection when the server
    closes one (as nginx does after 1,000 requests): every request it counts had its whole answer."""
    served = itertools.count(1)
    connections: set[Any] = set()

    async def answer(request: web.Request) -> web.StreamResponse:
        await request.read()
        n = next(served)
        connections.add(request.transport)
        if n % 2:
            resp = web.Response(body=b'{"ok": true}', content_type="application/json")
            if n % 5 == 0:
                resp.force_close()  # ("Connection: close", then the server closes it)
            return resp
        chunked = web.StreamResponse()
        chunked.enable_chunked_encoding()
        if n % 5 == 0:
            chunked.force_close()
        await chunked.prepare(request)
        await chunked.write(b'{"ok":')
        await chunked.write(b" true}")
        await chunked.write_eof()
        return chunked

    app = web.Application()
    app.router.add_post("/v1/chat/completions", answer)
    server = await aiohttp_server(app)
    r = await asyncio.to_thread(closedloop.measure, str(server.make_url("/v1/chat/completions")), 0.5)
    total = next(served) - 1
    assert 10 <= r["requests"] in (total, total - 1)  # (the last one may be answered after the clock ran out)
    assert 0 < r["p50_ms"] <= r["p99_ms"] <= r["p999_ms"]
    assert len(connections) >= total // 5


async def test_stream_client_times_and_hashes_each_stream() -> None:
    """bench/streams.py against the bench's own upstream: every stream is read to its end, each event is timed
    once, the bytes hash alike; a stream cut short, or refused, fails the round instead of counting."""
    from bench import streams, upstream

    loop = asyncio.get_running_loop()
    server = await loop.create_server(upstream.Upstream, "127.0.0.1", 0)
    url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    try:
        r = await streams.streams(url, 20, 10, 30)
        assert r["digests"] and len(r["digests"]) == 1
        assert r["events_per_s"] > 0 and r["mb_per_s"] > 0
        assert 0 < r["ttfb_p50_ms"] <= r["ttfb_p99_ms"] < 5000
        # 10 events a stream, 30 ms apart: each is timed against its own due time (event 9 is 270 ms after the first).
        assert -5 < r["late_p50_ms"] <= r["late_p99_ms"] < 150
        padded = await streams.streams(url, 2, 3, 0, pad=1000)
        assert len(padded["digests"]) == 1 and padded["digests"] != r["digests"]
    finally:
        server.close()

    async def cut(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\ndata:\r\n")
        await writer.drain()
        writer.close()

    async def refuse(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n")
        await writer.drain()

    for handler, error in ((cut, ConnectionError), (refuse, RuntimeError)):
        bad = await asyncio.start_server(handler, "127.0.0.1", 0)
        try:
            with pytest.raises(error):
                await streams.streams(f"http://127.0.0.1:{bad.sockets[0].getsockname()[1]}", 2, 3, 0)
        finally:
            bad.close()


def test_history_reads_the_committed_results() -> None:
    """bench/history.py finds every one of issue O's figures in the results `make bench` wrote last."""
    from bench import history

    r = history.parse((history.ROOT / history.LATEST).read_text())
    assert None not in r.values(), r
    assert 0 < r["share"] < 1 and r["rps"] < r["nginx"]
    assert "| " + r["date"] + " | abc |" in history.table([("abc", r)])


def test_pricing_bench_harness() -> None:
    assert pricing.run(500)["events"] == 500


async def test_soak_harness() -> None:
    from bench import soak

    r = await soak.soak(minutes=0.1, concurrency=8, fault_rate=0.2)
    assert r["requests"] > 20 and r["events_stored"] == r["requests"] and r["exit_code"] == 0
    assert sum(r["faults_injected"].values()) > 0


def test_batch_bench_harness(tmp_path: Path) -> None:
    from bench import batches

    r = batches.run(tmp_path, 200)
    assert (r["stored"], r["distinct"]) == (200, 200)  # every item once, after two reads
    assert "items/s" in batches.report(r)[0]


@pytest.mark.usefixtures("firestore_emulator")
async def test_firestore_scale_bench_harness() -> None:
    """The Firestore bench at a small size: every question answered from slices, within the read bound."""
    from bench import firestore_scale

    r = await firestore_scale.main_async(3_000, 3, 300)
    assert r["seed"]["events"] == 3_000 and r["seed"]["documents"] > 0
    assert len(r["questions"]) >= 10 and all(0 < q["reads"] <= 1_000 for q in r["questions"])
    assert r["writes_per_s"] > 0
    assert "documents read" in "\n".join(firestore_scale.report(r))


@pytest.mark.usefixtures("firestore_emulator")
async def test_firestore_dense_bench_harness() -> None:
    """The million-a-day user bench at 40 users in 2 shards: their day and week documents written, the breakdown
    answered from them (the previous period, before the seeded month, reads documents that do not exist)."""
    from bench import firestore_dense

    r = await firestore_dense.main_async(40, 2)
    assert r["user_documents"] >= 2 * (30 + 4)  # two user shards' 30 days and the weeks they fall in, at least
    assert r["documents"] >= r["user_documents"] + 30  # and the other dimensions' days
    assert len(r["times"]) == firestore_dense.REPEAT and 0 < r["reads"] <= 1_000
    assert r["max_bytes"] >= r["median_bytes"] > 0
    assert r["max_fields"] > 40  # (a user's fields a day, at least: the counter counts inside maps)
