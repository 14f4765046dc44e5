"""Batch results through the proxy (issue L): a batch's output file of ``items`` result lines downloaded directly
and through ModelTrack, which meters every line as it streams (one cost event per item, stored once).

python -m bench.batches [--items 20000]   (also part of `make bench`)

The upstream is a small aiohttp app in its own process that answers OpenAI's batch object and serves the output
file in the Batch guide's JSON Lines (the shapes of tests/test_batches.py). Reported: the download's time and
MB/s both ways, items metered per second, and whether the store holds each item exactly once after a second
read (which must meter nothing).
"""

from __future__ import annotations

import argparse
import asyncio
import sqlite3
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

from bench.harness import Proc, modeltrack
from bench.sysinfo import free_port

UPSTREAM = r"""
import sys, orjson
from aiohttp import web
n = int(sys.argv[2])
def line(i):
    body = {"id": f"chatcmpl-{i}", "object": "chat.completion", "created": 1711652795,
            "model": "gpt-4o-mini-2024-07-18",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "x" * 600}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 1000 + i % 97, "completion_tokens": 150 + i % 31, "total_tokens": 0}}
    return orjson.dumps({"id": f"batch_req_{i}", "custom_id": f"task-{i}",
                         "response": {"status_code": 200, "request_id": f"req_{i}", "body": body}, "error": None})
FILE = b"\n".join(line(i) for i in range(n)) + b"\n"
BATCH = {"id": "batch_bench", "object": "batch", "endpoint": "/v1/chat/completions", "input_file_id": "file-in",
         "completion_window": "24h", "status": "completed", "output_file_id": "file-out", "error_file_id": None,
         "created_at": 1711471533, "request_counts": {"total": n, "completed": n, "failed": 0}}
async def create(request):
    await request.read()
    return web.json_response({**BATCH, "status": "validating", "output_file_id": None})
async def get(request):
    return web.json_response(BATCH)
async def content(request):
    return web.Response(body=FILE, content_type="application/octet-stream")
app = web.Application()
app.router.add_post("/v1/batches", create)
app.router.add_get("/v1/batches/batch_bench", get)
app.router.add_get("/v1/files/file-out/content", content)
web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), print=None)
"""


async def _download(url: str) -> tuple[float, int]:
    async with aiohttp.ClientSession(auto_decompress=False) as s:
        t = time.perf_counter()
        async with s.get(url, headers={"Authorization": "Bearer sk-bench"}) as r:
            size = len(await r.read())
        return time.perf_counter() - t, size


async def _through(base: str, upstream: str) -> dict[str, float]:
    headers = {"Authorization": "Bearer sk-bench", "X-ModelTrack-Team": "bench"}
    async with aiohttp.ClientSession() as s:
        async with s.post(base + "/v1/batches", json={"input_file_id": "file-in"}, headers=headers) as r:
            assert r.status == 200
        async with s.get(base + "/v1/batches/batch_bench", headers=headers) as r:
            assert r.status == 200
    direct, size = await _download(upstream + "/v1/files/file-out/content")
    first, _ = await _download(base + "/v1/files/file-out/content")
    second, _ = await _download(base + "/v1/files/file-out/content")
    return {"direct_s": direct, "first_s": first, "second_s": second, "bytes": size}


def run(tmp: Path, items: int) -> dict[str, Any]:
    up_port = free_port()
    up = Proc("batch-upstream", [sys.executable, "-c", UPSTREAM, str(up_port), str(items)], up_port).start(tmp)
    mt = modeltrack("modeltrack-batches", tmp, up_port).start(tmp)
    try:
        got = asyncio.run(_through(f"http://127.0.0.1:{mt.port}", f"http://127.0.0.1:{up_port}"))
    finally:
        mt.stop()  # drains the queue to the store
        up.stop()
    db = sqlite3.connect(tmp / "modeltrack-batches.db")
    stored, distinct = db.execute(
        "SELECT COUNT(*), COUNT(DISTINCT request_id) FROM events WHERE processing = 'batch'"
    ).fetchone()
    db.close()
    return {"items": items, **got, "stored": stored, "distinct": distinct}


def report(r: dict[str, Any]) -> list[str]:
    mb = r["bytes"] / 1e6
    return [
        f"- batch results ({r['items']:,} items, {mb:.0f} MB): direct {r['direct_s'] * 1000:.0f} ms, through "
        f"ModelTrack {r['first_s'] * 1000:.0f} ms while metering every line (**{r['items'] / r['first_s']:,.0f} "
        f"items/s**, {mb / r['first_s']:.0f} MB/s), a second read {r['second_s'] * 1000:.0f} ms; the store holds "
        f"**{r['stored']:,}** item events ({r['distinct']:,} distinct; target: exactly {r['items']:,})",
    ]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--items", type=int, default=20_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        print("\n".join(report(run(Path(tmp), args.items))))


if __name__ == "__main__":
    main()
