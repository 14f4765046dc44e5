"""The benchmark harnesses work (tiny runs; real numbers come from `make bench`, never from tests)."""

from __future__ import annotations

from pathlib import Path

from bench import pipeline, pricing


async def test_pipeline_bench_harness() -> None:
    rows = await pipeline.main_async(300, firestore=False)
    assert [r["written"] for r in rows] == [600, 600]
    assert "enqueue p50" in pipeline.markdown(rows)


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
