"""The budget guarantee under the load that breaks naive budgets: 4 processes (``--workers 4``) × 50 concurrent
clients against a small budget, on SQLite and on the Firestore emulator. Each worker keeps its own state; only
the store is shared. Clients retry refused requests until the budget stays closed, so the whole limit is
contended for; unlimited, the load would spend many times the limit."""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from modeltrack.query import EventFilter, open_reader

from .proc import ProxyProcess
from .test_spend_controls import MINI_COST, MINI_STREAM, mini_body

CLIENTS = 50
MAX_EACH = 60
QUIET = 4.0
LIMIT = 50 * MINI_COST  # $0.00084750: a request reserves ~4.4× its real cost (max_tokens 20, 419 body bytes)


async def test_four_processes_and_fifty_clients_stay_within_the_limit(
    store_url: str, replay: Any, tmp_path: Path, artifacts: Path
) -> None:
    upstream, upstream_url = replay
    upstream.current = MINI_STREAM
    upstream.delay = 0.003  # each stream takes tens of milliseconds: many requests are in flight at once
    controls = tmp_path / "controls.yaml"
    controls.write_text(
        json.dumps({"refresh_seconds": 0.5, "budgets": [{"name": "shared", "period": "daily", "limit_usd": LIMIT}]})
    )
    env = {
        "MODELTRACK_STORE": store_url,
        "MODELTRACK_CONTROLS_FILE": str(controls),
        "MODELTRACK_OPENAI_BASE_URL": upstream_url,
    }
    if "FIRESTORE_EMULATOR_HOST" in os.environ:
        env["FIRESTORE_EMULATOR_HOST"] = os.environ["FIRESTORE_EMULATOR_HOST"]
    proxy = ProxyProcess(tmp_path, env, args=["--workers", "4"])
    await proxy.start()
    statuses: Counter[int] = Counter()
    kinds: Counter[str] = Counter()
    try:
        connector = aiohttp.TCPConnector(limit=CLIENTS, force_close=False)
        async with aiohttp.ClientSession(connector=connector) as s:
            last_success = [time.monotonic()]

            async def client() -> None:
                # Like real clients: a refused request is retried a little later, until the budget has
                # stayed closed for QUIET seconds (unused leases are returned within about a second).
                for _ in range(MAX_EACH):
                    if time.monotonic() - last_success[0] > QUIET:
                        return
                    async with s.post(proxy.url + "/v1/chat/completions", data=mini_body()) as r:
                        body = await r.read()
                        statuses[r.status] += 1
                    if r.status == 200:
                        last_success[0] = time.monotonic()
                    else:
                        kinds[orjson.loads(body)["error"]["type"]] += 1
                        await asyncio.sleep(0.1)

            await asyncio.gather(*(client() for _ in range(CLIENTS)))
    finally:
        assert await proxy.stop() == 0  # drains every worker's queue to the store
    reader = open_reader(store_url)
    try:
        events = await reader.events(EventFilter())
    finally:
        await reader.close()
    spent = sum(e.cost_usd or 0 for e in events)
    admitted = sum(1 for e in events if e.status == 200)
    report = {
        "store": store_url.split(":", 1)[0],
        "processes": 4,
        "clients": CLIENTS,
        "requests": sum(statuses.values()),
        "admitted": admitted,
        "refused": statuses[429],
        "limit_usd": LIMIT,
        "spent_usd": round(spent, 9),
        "spent_percent_of_limit": round(100 * spent / LIMIT, 1),
        "unlimited_would_spend_usd": round(sum(statuses.values()) * MINI_COST, 9),
    }
    (artifacts / f"overshoot-{report['store']}.json").write_text(json.dumps(report, indent=2))
    print(f"\nbudget overshoot check: {report}")
    assert len(events) == sum(statuses.values())  # refused requests are recorded too
    assert set(statuses) == {200, 429} and set(kinds) <= {"budget_exceeded", "budget_busy"}
    assert spent <= LIMIT + 1e-12, f"overshoot: spent ${spent:.9f} of ${LIMIT:.9f}"
    # It stops short by less than one reservation (~4.4 requests' cost), which no request could fit into.
    assert spent >= LIMIT - 5 * MINI_COST, f"too conservative: spent only ${spent:.9f} of ${LIMIT:.9f}"
    assert admitted == statuses[200] and abs(spent - admitted * MINI_COST) < 1e-9
