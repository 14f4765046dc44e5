"""The user breakdown at a million events a day (issue N), where bench/firestore_scale.py cannot go.

    python -m bench.firestore_dense [--users 5000] [--user-shards 40]    (~8 min; prints, records nothing)

The emulator fails to serve reads past ~140,000 slice documents, so a month of a million events a day cannot be
seeded whole. What a user breakdown reads can: the user shards' day and week documents, and the day documents
of the other dimensions (where its total comes from). Each (user, day) is counted as one hourly-rollup row of a
day's worth of that user's requests at a million a day over 5,000 users (190 answered by the provider, 10 from
the response cache, every sum filled, latency and TTFT histograms drawn from log-normal distributions), through
the sink's own :func:`modeltrack.sinks.slices.add_row`. Then the dashboard's 30-day breakdown by user is timed
as the API runs it, and the largest documents are measured in bytes and in fields: Firestore allows 1 MiB and
20,000 fields a document, and a map's fields are counted here (the safe reading; the emulator enforces neither).
A user here fills ~74 fields a day, so the store has 40 user shards (125 users a document), not the default 8
(README, "Firestore at scale").
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import random
import tempfile
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson

REPEAT = 7


def rows(users: list[str], days: int, end: datetime, rnd: random.Random) -> Iterator[dict[str, Any]]:
    from modeltrack.rollups import LATENCY_BUCKETS, TTFT_BUCKETS, latency_bucket

    for d in range(days):
        day = (end - timedelta(days=d + 1)).strftime("%Y-%m-%d")
        for user in users:
            for hit, n in ((0, 190), (1, 10)):
                row: dict[str, Any] = {
                    **dict.fromkeys(
                        ("team", "app", "feature", "org", "key_id", "error", "prompt_id", "processing"), ""
                    ),
                    "hour": f"{day}T12",
                    "user": user,
                    "provider": "openai",
                    "model": "gpt-4.1",
                    "status": 200,
                    "cache_hit": hit,
                    "requests": n,
                    "errors": 0 if hit else 4,
                    "unpriced": 0,
                    "input_tokens": n * 1500,
                    "output_tokens": n * 300,
                    "cache_read_tokens": n * 200,
                    "reasoning_tokens": n * 50,
                    "cost_nano_usd": n * 400_000,
                    "saved_nano_usd": n * 1000 * hit,
                }
                for _ in range(n):
                    lat = LATENCY_BUCKETS[latency_bucket(math.exp(rnd.gauss(6.5, 1.0)))]
                    first = TTFT_BUCKETS[latency_bucket(math.exp(rnd.gauss(5.5, 0.8)))]
                    row[lat] = row.get(lat, 0) + 1
                    row[first] = row.get(first, 0) + 1
                yield row


def fields(doc: dict[str, Any]) -> int:
    """A document's fields as Firestore counts them: every map, and every field inside one."""
    return sum(1 + (fields(v) if isinstance(v, dict) else 0) for v in doc.values())


async def main_async(users: int, user_shards: int) -> dict[str, Any]:
    from modeltrack.query import views
    from modeltrack.query.base import Filters
    from modeltrack.query.breakdown import breakdown
    from modeltrack.query.firestore import FirestoreReader
    from modeltrack.sinks import slices
    from modeltrack.sinks.firestore import SLICES_META, FirestoreSink

    end = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0) + timedelta(days=1)
    acc: slices.Acc = {}
    for row in rows([f"user-{i:05d}" for i in range(users)], 30, end, random.Random(3)):
        slices.add_row(acc, row, users=user_shards)
    docs = {k: v for k, v in acc.items() if k[0].split(slices.SEP)[0] == "day" or "user" in k[0].split(slices.SEP)[3]}
    users_docs = [v for k, v in docs.items() if "user" in k[0].split(slices.SEP)[3]]
    sizes = sorted(len(orjson.dumps(v)) for v in users_docs)
    counts = sorted(fields(v) for v in docs.values())
    sink = FirestoreSink("bench", f"d{uuid.uuid4().hex[:8]}")
    coll = sink.collection_ref("slices")
    await coll.document(SLICES_META).set({"since": "", "weeks": "", "user_shards": user_shards})
    items = list(docs.items())
    for i in range(0, len(items), 3):  # three documents a commit: the emulator takes 4 MB a request
        batch = sink.client.batch()
        for (name, bucket), dims in items[i : i + 3]:
            batch.set(coll.document(slices.slice_doc_id(name, bucket, 0)), {"slice": name, "b": bucket, **dims})
        await batch.commit(timeout=120)
    reader = FirestoreReader(sink)
    rng = views.make_range(None, None, "UTC", now=datetime.now(UTC))
    times, reads = [], 0
    for _ in range(REPEAT):
        before, t = reader.reads, time.perf_counter()
        await breakdown(reader, rng, "user", Filters())
        times.append((time.perf_counter() - t) * 1000)
        reads = reader.reads - before
    await sink.close()
    times.sort()
    return {
        "documents": len(docs),
        "user_documents": len(users_docs),
        "median_bytes": sizes[len(sizes) // 2],
        "max_bytes": sizes[-1],
        "max_fields": counts[-1],
        "times": times,
        "reads": reads,
    }


def main() -> None:
    from tests.faults import FirestoreEmulator, emulator_running

    from bench.sysinfo import free_port

    ap = argparse.ArgumentParser()
    ap.add_argument("--users", type=int, default=5_000)
    ap.add_argument("--user-shards", type=int, default=40)
    args = ap.parse_args()
    os.environ.setdefault("JVM_FLAGS", "-Xmx14g")
    with tempfile.TemporaryDirectory() as tmp:
        with emulator_running(FirestoreEmulator(free_port(), Path(tmp) / "emulator-dense.log")):
            r = asyncio.run(main_async(args.users, args.user_shards))
    t = r["times"]
    print(
        f"{args.users:,} users at a million events a day, 30 days, {args.user_shards} user shards: "
        f"{r['documents']} documents, {r['user_documents']} of them users' (JSON median {r['median_bytes']:,} B, "
        f"largest {r['max_bytes']:,} B; at most {r['max_fields']:,} fields a document). Breakdown by user, "
        f"{REPEAT} runs: p50 {t[len(t) // 2]:.0f} ms, p95 {t[-1]:.0f} ms, {r['reads']} documents read."
    )


if __name__ == "__main__":
    main()
