"""The management plane's figures, on a SQLite store seeded with a month of traffic (1M events by default):

* API answers (breakdowns by each dimension, spend over time split by team, sessions, what-if, the overview):
  p50/p95 over repeated calls through HTTP, from a real ``modeltrack ui`` process;
* the overview page in the system Chromium: from navigation to rendered and interactive;
* the export of every event as CSV and as JSON Lines: rows/s and the server's RSS growth while it streams.

    python -m bench.api [--events 1000000]      (make bench runs it with the rest)
"""

from __future__ import annotations

import argparse
import asyncio
import random
import shutil
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp

from bench.harness import Proc, pct
from bench.sysinfo import free_port, rss_kb
from modeltrack.events import CostEvent
from modeltrack.sinks.sqlite import SQLiteSink

TEAMS = [f"team-{i}" for i in range(12)]
FEATURES = [f"feature-{i}" for i in range(6)]
MODELS = [
    ("openai", "gpt-4o-mini-2024-07-18", 0.15, 0.6, 30),
    ("openai", "gpt-4o-2024-08-06", 2.5, 10.0, 12),
    ("openai", "gpt-4.1-mini-2025-04-14", 0.4, 1.6, 20),
    ("anthropic", "claude-sonnet-4-5-20250929", 3.0, 15.0, 15),
    ("anthropic", "claude-haiku-4-5-20251001", 1.0, 5.0, 10),
    ("gemini", "gemini-2.5-flash", 0.3, 2.5, 10),
    ("gemini", "gemini-2.5-pro", 1.25, 10.0, 3),
]


def seed(path: Path, n: int, days: int = 30, now: datetime | None = None) -> float:
    """``n`` events over the last ``days`` days, shaped like a real deployment: 12 teams (a long tail) of 3 apps,
    each app with 3 of 6 features, each feature on its own main model (80%) and a second one; 2,000 end users
    (Pareto); 3% errors, 10% response-cache hits, 20% in sessions. Returns the seconds the store took."""
    rnd = random.Random(42)
    now = now or datetime.now(UTC)
    start = now - timedelta(days=days)
    span = (now - start).total_seconds()
    weights = [m[4] for m in MODELS]
    plan: dict[tuple[str, str], tuple[tuple[Any, ...], tuple[Any, ...]]] = {}
    apps = {t: [f"{t}-app-{a}" for a in range(3)] for t in TEAMS}
    features = {a: rnd.sample(FEATURES, 3) for t in TEAMS for a in apps[t]}
    for app, feats in features.items():
        for feat in feats:
            main, second = rnd.choices(MODELS, weights, k=2)
            plan[(app, feat)] = (main, second)
    sink = SQLiteSink(str(path))
    took = 0.0
    batch: list[CostEvent] = []
    offsets = sorted(rnd.random() * span for _ in range(n))
    for i, off in enumerate(offsets):
        ts = start + timedelta(seconds=off)
        team = TEAMS[min(int(rnd.expovariate(0.35)), 11)]
        app = rnd.choice(apps[team])
        feature = rnd.choice(features[app])
        main, second = plan[(app, feature)]
        provider, model, pin, pout, _ = main if rnd.random() < 0.8 else second
        status = 200 if rnd.random() > 0.03 else rnd.choice((429, 500, 400))
        inp, out = (rnd.randrange(50, 6000), rnd.randrange(10, 900)) if status == 200 else (0, 0)
        cost = (inp * pin + out * pout) / 1e6 if status == 200 else None
        hit = status == 200 and rnd.random() < 0.1
        batch.append(
            CostEvent(
                timestamp=ts.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ts.microsecond // 1000:03d}Z",
                request_id=f"req_bench{i:012d}",
                upstream_request_id=None,
                provider=provider,
                endpoint="/v1/chat/completions",
                model=model,
                status=status,
                stream=i % 2 == 0,
                input_tokens=inp,
                output_tokens=out,
                cache_read_tokens=inp // 4 if i % 5 == 0 else 0,
                cache_write_tokens=0,
                reasoning_tokens=0,
                cost_usd=0.0 if hit else (round(cost, 9) if cost is not None else None),
                latency_ms=round(rnd.lognormvariate(7, 0.8), 1),
                ttft_ms=None,
                team=team,
                app=app,
                feature=feature,
                session_id=f"sess-{i // 8}" if rnd.random() < 0.2 else None,
                cache_hit=hit,
                routed=False,
                usage_source="cache" if hit else "response",
                error=None if status == 200 else "upstream_error",
                requested_model=model,
                cost_source="cache" if hit else ("priced" if status == 200 else "error"),
                user=f"user-{min(int(rnd.paretovariate(1.2)), 2000)}",
                saved_usd=round(cost, 9) if hit and cost else None,
            )
        )
        if len(batch) == 5000:
            t0 = time.perf_counter()
            sink.write_sync(batch)
            took += time.perf_counter() - t0
            batch = []
    if batch:
        sink.write_sync(batch)
    return took


async def timed(session: aiohttp.ClientSession, url: str, n: int) -> dict[str, float]:
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        async with session.get(url) as r:
            body = await r.read()
            assert r.status == 200, body[:300]
        times.append((time.perf_counter() - t0) * 1000)
    return {"p50_ms": pct(times, 0.5), "p95_ms": pct(times, 0.95), "max_ms": max(times)}


async def queries(base: str, n: int) -> dict[str, dict[str, float]]:
    today = datetime.now(UTC).date()
    rng = f"since={(today - timedelta(days=29)).isoformat()}&until={today.isoformat()}&tz=UTC"
    paris = rng.replace("tz=UTC", "tz=Europe/Paris")
    cases = {
        **{
            f"breakdown by {d}, 30 days": f"/api/v1/breakdown?dimension={d}&limit=25&{rng}"
            for d in ("team", "app", "feature", "user", "model")
        },
        "breakdown by model, one team, 30 days": f"/api/v1/breakdown?dimension=model&team=team-0&{rng}",
        "series by day split by team, 30 days": f"/api/v1/series?granularity=day&split=team&{rng}",
        "series by hour, 30 days": f"/api/v1/series?granularity=hour&{rng}",
        "top sessions, 30 days": f"/api/v1/sessions?limit=50&{rng}",
        "overview (month, trend, forecast)": "/api/v1/overview",
        "overview, in America/New_York": "/api/v1/overview?tz=America/New_York",
        "series by day split by team, 30 days, Europe/Paris": f"/api/v1/series?granularity=day&split=team&{paris}",
        "what-if, one team, 7 days": "/api/v1/whatif?to_model=gpt-4.1-mini&team=team-3&days=7",
    }
    out = {}
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=600)) as s:
        for name, path in cases.items():
            await timed(s, base + path, 1)  # warm the page cache
            out[name] = await timed(s, base + path, 3 if "what-if" in name else n)
            print(name, out[name], flush=True)
    return out


async def page_timing(base: str, n: int = 5) -> dict[str, float] | None:
    """Navigation start to the overview rendered (``body[data-ready=true]``: KPIs, chart and tables drawn, handlers
    wired), in the system Chromium. None when Playwright or Chromium is missing."""
    chromium = shutil.which("chromium")
    try:
        from playwright.async_api import async_playwright
    except ImportError:
        return None
    if chromium is None:
        return None
    times = []
    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        for _ in range(n + 1):
            page = await browser.new_page(viewport={"width": 1400, "height": 1000})
            t0 = time.perf_counter()
            await page.goto(base + "/")
            await page.wait_for_selector("body[data-ready=true]", timeout=30_000)
            times.append((time.perf_counter() - t0) * 1000)
            await page.close()
        await browser.close()
    times = times[1:]  # the first pays for the browser's own start-up
    return {"p50_ms": pct(times, 0.5), "max_ms": max(times)}


async def export_rss(base: str, pid: int, fmt: str) -> dict[str, float]:
    """Stream every event; the server's RSS is sampled every 20 ms while it writes."""
    before = rss_kb(pid)
    peak = before
    stop = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not stop.is_set():
            peak = max(peak, rss_kb(pid))
            time.sleep(0.02)

    t = threading.Thread(target=sample, daemon=True)
    t.start()
    rows = 0
    nbytes = 0
    t0 = time.perf_counter()
    since = (datetime.now(UTC) - timedelta(days=40)).date().isoformat()
    url = f"{base}/api/v1/export?kind=events&format={fmt}&since={since}"
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None)) as s,
        s.get(url) as r,
    ):
        assert r.status == 200
        async for chunk in r.content.iter_chunked(1 << 20):
            rows += chunk.count(b"\n")
            nbytes += len(chunk)
    secs = time.perf_counter() - t0
    stop.set()
    t.join()
    if fmt == "csv":
        rows -= 1  # the header
    return {
        "rows": rows,
        "mb": nbytes / 1e6,
        "rows_per_s": rows / secs,
        "rss_before_mb": before / 1024,
        "rss_growth_mb": (peak - before) / 1024,
    }


def run(tmp: Path, n_events: int, n_queries: int = 30) -> dict[str, Any]:
    db = tmp / "api-bench.db"
    t0 = time.perf_counter()
    write_s = seed(db, n_events)
    seeded_s = time.perf_counter() - t0
    print(f"seeded {n_events:,} events in {seeded_s:.0f} s (store writes {write_s:.0f} s)", flush=True)
    import sqlite3

    with sqlite3.connect(db) as conn:
        rollup_rows = conn.execute("SELECT COUNT(*) FROM rollup_hourly").fetchone()[0]
    port = free_port()
    cmd = [sys.executable, "-m", "modeltrack", "ui", "--store", f"sqlite:///{db}", "--ui-port", str(port)]
    ui = Proc("modeltrack-ui", [*cmd, "--log-level", "warning"], port).start(tmp)
    base = f"http://127.0.0.1:{port}"
    try:
        q = asyncio.run(queries(base, n_queries))
        page = asyncio.run(page_timing(base))
    finally:
        ui.stop()
    # The export on a fresh process: its RSS growth is the export's alone.
    ui = Proc("modeltrack-ui-export", [*cmd, "--log-level", "warning"], port).start(tmp)
    try:
        exports = {fmt: asyncio.run(export_rss(base, ui.pid, fmt)) for fmt in ("csv", "jsonl")}
    finally:
        ui.stop()
    print("export", exports, flush=True)
    return {
        "events": n_events,
        "seed_s": seeded_s,
        "rollup_rows": rollup_rows,
        "queries": q,
        "page": page,
        "export": exports,
    }


def report(r: dict[str, Any]) -> list[str]:
    n = r["events"]
    worst = max(v["p95_ms"] for k, v in r["queries"].items() if k.startswith("breakdown"))
    lines = [
        f"## API and dashboard ({n:,} events over 30 days, SQLite)",
        "",
        "| query (HTTP, `modeltrack ui`) | p50 ms | p95 ms |",
        "|---|---|---|",
    ]
    for name, v in r["queries"].items():
        lines.append(f"| {name} | {v['p50_ms']:.1f} | {v['p95_ms']:.1f} |")
    lines += [
        "",
        f"Worst 30-day breakdown p95: **{worst:.0f} ms** (target < 200 ms); the hourly rollup holds "
        f"{r['rollup_rows']:,} rows for these events.",
    ]
    page = r["page"]
    if page:
        lines.append(
            f"Overview page in Chromium, navigation to rendered and interactive: p50 **{page['p50_ms']:.0f} ms**, "
            f"worst {page['max_ms']:.0f} ms (target < 1 s)."
        )
    else:
        lines.append("Overview page timing skipped: Playwright or Chromium is not installed.")
    for fmt, e in r["export"].items():
        lines.append(
            f"Export of {e['rows']:,} events as {fmt.upper()} ({e['mb']:,.0f} MB): {e['rows_per_s']:,.0f} rows/s, "
            f"server RSS {e['rss_before_mb']:.0f} MB **+{e['rss_growth_mb']:.1f} MB** while streaming "
            "(target < +50 MB)."
        )
    lines.append("")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--events", type=int, default=1_000_000)
    ap.add_argument("--queries", type=int, default=30)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="mt-api-bench-") as d:
        print("\n".join(report(run(Path(d), args.events, args.queries))))


if __name__ == "__main__":
    main()
