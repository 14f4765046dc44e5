"""`make soak`: mixed streaming/non-streaming traffic with injected upstream faults, for a while (default 10 min).

Reports requests served, outcomes by cause, events stored vs. requests that reached the proxy (must be equal),
and the proxy's RSS after warm-up and at the end (growth must stay under 10%). Exits non-zero on a violation.

    python -m bench.soak [--minutes 10] [--concurrency 32] [--fault-rate 0.05]
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.expected import provider_of  # noqa: E402
from tests.proc import ProxyProcess  # noqa: E402
from tests.replay import Recording, all_recordings, split_awkwardly  # noqa: E402

from bench.sysinfo import rss_kb  # noqa: E402

RECS: web.AppKey[dict[str, Recording]] = web.AppKey("recs", dict)


class FaultyUpstream:
    """Replays the real recordings; a fraction of responses is broken on purpose (reset, stall, 500)."""

    def __init__(self, fault_rate: float) -> None:
        self.fault_rate = fault_rate
        self.by_path: dict[str, list[Recording]] = collections.defaultdict(list)
        self.faults: collections.Counter[str] = collections.Counter()

    async def handle(self, request: web.Request) -> web.StreamResponse:
        await request.read()
        rec: Recording = request.app[RECS][request.headers["X-Soak-Rec"]]
        fault = random.choice(["reset", "stall", "500"]) if random.random() < self.fault_rate else ""
        if fault == "500":
            self.faults[fault] += 1
            return web.json_response({"error": {"type": "server_error", "message": "injected"}}, status=500)
        resp = web.StreamResponse(status=rec.status)
        for k, v in rec.headers:
            resp.headers.add(k, v)
        await resp.prepare(request)
        chunks = split_awkwardly(rec.body, random.randrange(1 << 30))
        for i, c in enumerate(chunks):
            if fault and i == len(chunks) // 2:
                self.faults[fault] += 1
                if fault == "reset":
                    assert request.transport is not None
                    request.transport.abort()
                    return resp
                await asyncio.sleep(2.5)  # longer than the proxy's read timeout below
            await resp.write(c)
        await resp.write_eof()
        return resp


async def soak(minutes: float, concurrency: int, fault_rate: float) -> dict[str, Any]:
    recs = {f"{r.name}#{r.index}": r for r in all_recordings()}
    upstream = FaultyUpstream(fault_rate)
    app = web.Application()
    app[RECS] = recs
    app.router.add_route("*", "/{t:.*}", upstream.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    up_url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    tmp = Path(tempfile.mkdtemp(prefix="mt-soak-"))
    env = {
        f"MODELTRACK_{p}_BASE_URL": up_url
        for p in ("OPENAI", "ANTHROPIC", "GEMINI", "BEDROCK", "AZURE", "GROQ", "DEEPSEEK", "OPENROUTER")
    }
    env |= {"MODELTRACK_READ_TIMEOUT": "1", "MODELTRACK_LOG_LEVEL": "warning"}
    proxy = ProxyProcess(tmp, env)
    await proxy.start()
    assert proxy.proc is not None
    outcomes: collections.Counter[str] = collections.Counter()
    reached = 0
    deadline = time.monotonic() + minutes * 60
    warm_rss = 0
    warm_at = time.monotonic() + min(30.0, minutes * 6)
    keys = list(recs)

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency)) as s:

        async def worker() -> None:
            nonlocal reached
            while time.monotonic() < deadline:
                key = random.choice(keys)
                rec = recs[key]
                path = f"/{provider_of(rec.uri)}{rec.path_qs}"
                body = json.dumps(rec.request_body or {}).encode()
                reached += 1
                try:
                    async with s.post(
                        proxy.url + path,
                        data=body,
                        headers={"X-Soak-Rec": key, "X-ModelTrack-Team": random.choice(["a", "b", "c"])},
                    ) as r:
                        await r.read()
                        outcomes[f"http_{r.status}"] += 1
                except aiohttp.ClientPayloadError:
                    outcomes["truncated (injected)"] += 1
                except aiohttp.ClientError as exc:
                    outcomes[type(exc).__name__] += 1

        async def sampler() -> None:
            nonlocal warm_rss
            while time.monotonic() < warm_at:
                await asyncio.sleep(0.5)
            warm_rss = rss_kb(proxy.proc.pid)

        await asyncio.gather(sampler(), *(worker() for _ in range(concurrency)))
    end_rss = rss_kb(proxy.proc.pid)
    code = await proxy.stop()
    stored = len(proxy.events_cli().splitlines())
    await runner.cleanup()
    return {
        "minutes": minutes,
        "requests": reached,
        "outcomes": dict(outcomes),
        "faults_injected": dict(upstream.faults),
        "events_stored": stored,
        "exit_code": code,
        "rss_warm_kb": warm_rss,
        "rss_end_kb": end_rss,
    }


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--fault-rate", type=float, default=0.05)
    args = ap.parse_args()
    r = asyncio.run(soak(args.minutes, args.concurrency, args.fault_rate))
    print(json.dumps(r, indent=2))
    problems = []
    if r["events_stored"] != r["requests"]:
        problems.append(f"events stored {r['events_stored']} != requests sent {r['requests']}")
    if r["rss_end_kb"] > r["rss_warm_kb"] * 1.10:
        problems.append(f"RSS grew {r['rss_warm_kb']} -> {r['rss_end_kb']} kB (> 10%)")
    if r["exit_code"] != 0:
        problems.append(f"proxy exited {r['exit_code']}")
    print("SOAK " + ("FAILED: " + "; ".join(problems) if problems else "OK"))
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main())
