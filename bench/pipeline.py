"""Cost-pipeline benchmark: enqueue latency on the request path, sustained events/s into SQLite and Firestore.

python -m bench.pipeline [--events 100000] [--firestore]   (also part of `make bench`)
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from modeltrack.events import CostEvent, new_request_id, rfc3339
from modeltrack.metrics import Metrics
from modeltrack.pipeline import Pipeline
from modeltrack.sinks import ProcessWriter, open_sink


def event(i: int) -> CostEvent:
    return CostEvent(
        timestamp=rfc3339(time.time()),
        request_id=new_request_id(),
        upstream_request_id="req_upstream_123",
        provider="openai",
        endpoint="/v1/chat/completions",
        model="gpt-4o-mini-2024-07-18",
        status=200,
        stream=True,
        input_tokens=1200,
        output_tokens=300,
        cache_read_tokens=800,
        cache_write_tokens=0,
        reasoning_tokens=0,
        cost_usd=0.000123456,
        latency_ms=812.5,
        ttft_ms=301.2,
        team=f"team-{i % 10}",
        app="web",
        feature="search",
        session_id=None,
        cache_hit=True,
        routed=False,
        usage_source="stream",
        error=None,
    )


def pct(values: list[float], p: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(len(values) * p))]


async def run(store: str, n: int, spool: str, journal: bool = True, writer: str = "process") -> dict[str, Any]:
    """Phase 1: a producer enqueues n events as fast as it can while the flusher writes (end-to-end rate and
    enqueue latency). Phase 2: n events are queued first, then drained (the store-bound rate). ``writer``: the
    store written by a child process (the proxy's default) or by a thread of this one."""
    metrics = Metrics()
    sink = open_sink(store)
    pipeline = Pipeline(
        ProcessWriter(sink, store) if writer == "process" else sink,
        metrics,
        spool_dir=spool,
        batch_size=2000,
        flush_interval=0.05,
        max_queue=2 * n + 1,
        journal=journal,
    )
    await pipeline.start()
    events = [event(i) for i in range(n)]
    lat: list[float] = []
    t0 = time.perf_counter()
    for i, ev in enumerate(events):
        a = time.perf_counter_ns()
        pipeline.enqueue(ev)
        lat.append(time.perf_counter_ns() - a)
        if i % 500 == 499:
            await asyncio.sleep(0)  # let the flusher run, as a live server's loop would
    await pipeline.drained()
    end_to_end = n / (time.perf_counter() - t0)

    drain_events = [event(i) for i in range(n)]
    task, pipeline._task = pipeline._task, None  # pause the flusher while we fill the queue
    assert task is not None
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    for ev in drain_events:
        pipeline.enqueue(ev)
    t1 = time.perf_counter()
    await pipeline.flush()
    drain = n / (time.perf_counter() - t1)
    written = metrics.registry.get_sample_value("modeltrack_events_written_total") or 0
    await pipeline.close()
    return {
        "store": f"{store.split(':', 1)[0]}, writer {writer}" + ("" if journal else " (journal off)"),
        "events": n,
        "written": int(written),
        "end_to_end_per_s": end_to_end,
        "drain_per_s": drain,
        "enqueue_p50_us": pct(lat, 0.50) / 1000,
        "enqueue_p99_us": pct(lat, 0.99) / 1000,
        "enqueue_p999_us": pct(lat, 0.999) / 1000,
        "enqueue_mean_us": statistics.fmean(lat) / 1000,
    }


def markdown(rows: list[dict[str, Any]]) -> str:
    out = [
        "| store | events | drain events/s (store-bound) | end-to-end events/s (producer in-process) "
        "| enqueue p50 µs | p99 µs | p99.9 µs |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        out.append(
            f"| {r['store']} | {r['events']:,} | {r['drain_per_s']:,.0f} | {r['end_to_end_per_s']:,.0f} | "
            f"{r['enqueue_p50_us']:.1f} | {r['enqueue_p99_us']:.1f} | {r['enqueue_p999_us']:.1f} |"
        )
    return "\n".join(out) + "\n"


async def main_async(n: int, firestore: bool) -> list[dict[str, Any]]:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        rows.append(await run(f"sqlite:///{tmp}/bench.db", n, f"{tmp}/spool-sqlite"))
        rows.append(await run(f"sqlite:///{tmp}/bench-t.db", n, f"{tmp}/spool-t", writer="thread"))
        rows.append(await run(f"sqlite:///{tmp}/bench-nj.db", n, f"{tmp}/spool-nj", journal=False))
        if firestore:
            from tests.faults import FirestoreEmulator

            from bench.sysinfo import free_port

            emu = FirestoreEmulator(free_port(), Path(tmp) / "emulator.log")
            emu.start()
            import os

            os.environ["FIRESTORE_EMULATOR_HOST"] = emu.host
            try:
                rows.append(await run("firestore://bench/pipeline", min(n, 20_000), f"{tmp}/spool-fs"))
            finally:
                emu.stop()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--firestore", action="store_true")
    args = parser.parse_args()
    rows = asyncio.run(main_async(args.events, args.firestore))
    print(markdown(rows))


if __name__ == "__main__":
    main()
