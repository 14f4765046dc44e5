"""Realtime sessions through the proxy (issue L, item 4): WebSocket tunnels metered per response.

python -m bench.realtime [--sessions 50 --responses 20 --deltas 20]   (also part of `make bench`)

The upstream is a small aiohttp app in its own process answering OpenAI Realtime's messages (the shapes of
tests/test_realtime.py): for each ``response.create``, ``response.created``, ``deltas`` audio deltas of 4 KB of
base64, and ``response.done`` with usage. ``sessions`` clients at once each ask for ``responses`` responses in
turn, directly and through ModelTrack. Reported: messages per second and a response's round trip (create sent →
done read) p50/p99 both ways, and whether the store holds exactly one event per response.
"""

from __future__ import annotations

import argparse
import asyncio
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

from bench.harness import Proc, modeltrack
from bench.sysinfo import free_port

UPSTREAM = r"""
import sys, base64, orjson
from aiohttp import web, WSMsgType
deltas = int(sys.argv[2])
USAGE = {"total_tokens": 253, "input_tokens": 132, "output_tokens": 121,
         "input_token_details": {"text_tokens": 119, "audio_tokens": 13, "image_tokens": 0, "cached_tokens": 64,
                                 "cached_tokens_details": {"text_tokens": 56, "audio_tokens": 8, "image_tokens": 0}},
         "output_token_details": {"text_tokens": 30, "audio_tokens": 91}}
AUDIO = base64.b64encode(bytes(range(256)) * 12).decode()
async def realtime(request):
    ws = web.WebSocketResponse(max_msg_size=0)
    await ws.prepare(request)
    await ws.send_str(orjson.dumps({"type": "session.created", "event_id": "e0",
                                    "session": {"type": "realtime", "model": request.query.get("model")}}).decode())
    n = 0
    async for msg in ws:
        if msg.type != WSMsgType.TEXT:
            continue
        n += 1
        rid = f"resp_{n}"
        await ws.send_str(orjson.dumps({"type": "response.created", "event_id": f"c{n}",
                                        "response": {"id": rid, "status": "in_progress", "output": []}}).decode())
        for i in range(deltas):
            await ws.send_str(orjson.dumps({"type": "response.output_audio.delta", "event_id": f"d{n}.{i}",
                                            "response_id": rid, "item_id": "item_1", "output_index": 0,
                                            "content_index": 0, "delta": AUDIO}).decode())
        await ws.send_str(orjson.dumps({"type": "response.done", "event_id": f"e{n}", "response": {
            "id": rid, "status": "completed", "output": [], "usage": USAGE}}).decode())
    return ws
app = web.Application()
app.router.add_get("/v1/realtime", realtime)
web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), print=None)
"""


async def _session(base: str, responses: int, trips: list[float]) -> int:
    messages = 0
    async with aiohttp.ClientSession() as s:
        ws = await s.ws_connect(
            base + "/v1/realtime?model=gpt-realtime",
            headers={"Authorization": "Bearer sk-bench", "X-ModelTrack-Team": "bench"},
            max_msg_size=0,
        )
        await ws.receive()  # session.created
        for _ in range(responses):
            t = time.perf_counter()
            await ws.send_str('{"type":"response.create"}')
            while True:
                msg = await ws.receive()
                messages += 1
                if '"response.done"' in msg.data[:40]:
                    break
            trips.append(time.perf_counter() - t)
        await ws.close()
    return messages


async def _load(base: str, sessions: int, responses: int) -> dict[str, float]:
    trips: list[float] = []
    t = time.perf_counter()
    counts = await asyncio.gather(*(_session(base, responses, trips) for _ in range(sessions)))
    elapsed = time.perf_counter() - t
    q = statistics.quantiles(trips, n=100)
    return {"messages_per_s": sum(counts) / elapsed, "p50_ms": q[49] * 1000, "p99_ms": q[98] * 1000}


def run(tmp: Path, sessions: int, responses: int, deltas: int) -> dict[str, Any]:
    up_port = free_port()
    up = Proc("realtime-upstream", [sys.executable, "-c", UPSTREAM, str(up_port), str(deltas)], up_port).start(tmp)
    mt = modeltrack("modeltrack-realtime", tmp, up_port).start(tmp)
    try:
        asyncio.run(_load(f"http://127.0.0.1:{up_port}", 4, 2))  # warm-up
        direct = asyncio.run(_load(f"http://127.0.0.1:{up_port}", sessions, responses))
        proxied = asyncio.run(_load(f"http://127.0.0.1:{mt.port}", sessions, responses))
    finally:
        mt.stop()  # drains the queue to the store
        up.stop()
    db = sqlite3.connect(tmp / "modeltrack-realtime.db")
    stored, sessions_seen = db.execute("SELECT COUNT(*), COUNT(DISTINCT session_id) FROM events").fetchone()
    db.close()
    return {
        "sessions": sessions,
        "responses": responses,
        "deltas": deltas,
        "direct": direct,
        "modeltrack": proxied,
        "stored": stored,
        "sessions_seen": sessions_seen,
    }


def report(r: dict[str, Any]) -> list[str]:
    d, m = r["direct"], r["modeltrack"]
    total = r["sessions"] * r["responses"]
    return [
        f"- Realtime over WebSocket ({r['sessions']} sessions at once, {r['responses']} responses each, "
        f"{r['deltas']} audio deltas of 4 KB per response): direct {d['messages_per_s']:,.0f} messages/s, "
        f"through ModelTrack **{m['messages_per_s']:,.0f}** (**{m['messages_per_s'] / d['messages_per_s']:.0%}**), "
        f"a response's round trip p50 {d['p50_ms']:.1f} → {m['p50_ms']:.1f} ms, p99 {d['p99_ms']:.1f} → "
        f"{m['p99_ms']:.1f} ms; the store holds **{r['stored']:,}** events in {r['sessions_seen']} sessions "
        f"(target: exactly {total:,} in {r['sessions']})",
    ]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sessions", type=int, default=50)
    parser.add_argument("--responses", type=int, default=20)
    parser.add_argument("--deltas", type=int, default=20)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        print("\n".join(report(run(Path(tmp), args.sessions, args.responses, args.deltas))))


if __name__ == "__main__":
    main()
