"""``modeltrack serve --workers N``: one port, N processes, one /metrics that sums them all."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import aiohttp

from .proc import ProxyProcess
from .replay import load


async def test_two_workers_share_the_port_and_the_metrics(replay: Any, tmp_path: Path) -> None:
    upstream, upstream_url = replay
    upstream.current = load("test_openai_prompt_cache__test_openai_chat_prompt_cache_e2e", 1)
    upstream.chunked = False
    proxy = ProxyProcess(tmp_path, {"MODELTRACK_OPENAI_BASE_URL": upstream_url}, args=["--workers", "2"])
    await proxy.start()
    n = 200
    try:
        # A new connection per request, so the kernel spreads them over both workers.
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as s:
            for i in range(n):
                async with s.post(
                    proxy.url + "/v1/chat/completions", data=b"{}", headers={"X-ModelTrack-Session-Id": f"s-{i}"}
                ) as r:
                    assert r.status == 200
                    await r.read()
            await asyncio.sleep(0.5)
            totals = []
            for _ in range(6):  # whichever worker answers the scrape, it reports everyone's counts
                async with s.get(proxy.url + "/metrics") as r:
                    text = (await r.read()).decode()
                totals.append(
                    sum(
                        float(line.rsplit(" ", 1)[1])
                        for line in text.splitlines()
                        if line.startswith("modeltrack_requests_total{")
                    )
                )
    finally:
        code = await proxy.stop()
    assert code == 0
    assert totals == [float(n)] * 6, totals
    sessions = {line.split(b'"session_id":"', 1)[1].split(b'"', 1)[0] for line in proxy.events_cli().splitlines()}
    assert len(sessions) == n
    journals = list((tmp_path / "spool").glob("journal-*"))
    assert journals == []  # both workers drained and cleaned up on SIGTERM
    # Two workers (and their store writers) opened a new database at once: none may have found it unusable.
    assert [line for line in proxy.log_path.read_text().splitlines() if " ERROR " in line] == []
