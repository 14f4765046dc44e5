"""Rate limits of ModelTrack keys (issue K): RPM and TPM shared by 4 processes (`--workers 4`) on SQLite and the
Firestore emulator, a refusal in the provider's shape whose Retry-After is the real wait, and TPM settled to the
real tokens. The bound (controls/ratelimit.py): over t seconds a bucket of L per minute admits at most
L × (1 + t/60); leases can only make it refuse early, by at most one lease (5 % of L) per process."""

from __future__ import annotations

import asyncio
import os
import time
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from modeltrack.accounts import Actor, Admin, open_accounts
from modeltrack.controls.ratelimit import LEASE_FRACTION, MemoryRateLedger, RateLimiter, gcra

from .proc import ProxyProcess
from .test_spend_controls import MINI_STREAM, mini_body

OP = Actor.operator("test")


async def _key(store_url: str, **fields: Any) -> str:
    store = open_accounts(store_url)
    assert store is not None
    try:
        _, secret = await Admin(store).create(OP, "keys", {"name": "limited", **fields})
    finally:
        await store.close()
    assert secret is not None
    return secret


def test_the_bucket_holds_a_minute_and_refills_at_the_limit() -> None:
    interval = 60 / 120  # 120 per minute
    tat, now = 0.0, 1000.0
    admitted = 0
    for _ in range(200):
        granted, tat_new, retry = gcra(tat, now, 1, 1, interval)
        if not granted:
            assert 0 < retry <= interval + 1e-9  # the real wait for one more
            break
        tat, admitted = tat_new, admitted + 1
    assert admitted == 120  # a full minute at once
    granted, _, retry = gcra(tat, now + 10, 1, 1, interval)
    assert granted == 1  # 10 s later, 20 more have refilled
    granted, _, retry = gcra(tat, now, 30, 30, interval)
    assert granted == 0 and abs(retry - 30 * interval) < 1e-9


async def test_retry_after_is_the_real_wait() -> None:
    limiter = RateLimiter(MemoryRateLedger())
    limits = (_limit("key:k:rpm", 60),)
    admitted = 0
    while not hasattr(await limiter.admit(limits, 0), "retry_after"):
        admitted += 1
    assert admitted == 60
    refusal = await limiter.admit(limits, 0)
    assert refusal.retry_after == 1  # type: ignore[union-attr]  # one more fits after 1 s at 60/min
    await asyncio.sleep(1.05)
    assert not hasattr(await limiter.admit(limits, 0), "retry_after")


class _CountingLedger(MemoryRateLedger):
    """The in-memory ledger, counting how often the shared bucket is asked."""

    def __init__(self) -> None:
        super().__init__()
        self.takes = 0

    async def take(self, key: str, want: float, need: float, interval: float) -> tuple[float, float]:
        self.takes += 1
        return await super().take(key, want, need, interval)


async def test_leases_are_taken_without_the_store_until_they_run_out() -> None:
    """``take_now`` admits from this process's leases without awaiting, all buckets or none, and hands over to
    ``admit`` (one shared-bucket take per lease) when one runs out: the totals are the same as awaiting each."""
    ledger = _CountingLedger()
    limiter = RateLimiter(ledger)
    limits = (_limit("key:k:rpm", 600), _limit("key:k:tpm", 6_000, "tokens"))
    assert limiter.take_now(limits, 10) is None  # no lease yet: nothing taken
    assert ledger.takes == 0
    admitted = 0
    for _ in range(2_000):
        ticket = limiter.take_now(limits, 10)
        if ticket is None:
            got = await limiter.admit(limits, 10)
            if hasattr(got, "retry_after"):
                break
        admitted += 1
    assert admitted == 600  # the TPM bucket (6,000 tokens at 10 a request) and the RPM one both allow 600
    lease_rpm, lease_tpm = max(1, int(600 * LEASE_FRACTION)), max(1, int(6_000 * LEASE_FRACTION))
    assert ledger.takes <= 600 // lease_rpm + 6_000 // lease_tpm + 4  # a take per lease, not per request
    # All or none: a request larger than what the TPM lease holds takes nothing from the RPM lease either.
    left = limiter.leases["key:k:rpm"].cells
    assert limiter.take_now(limits, 10**6) is None
    assert limiter.leases["key:k:rpm"].cells == left


def _limit(scope: str, per_minute: int, unit: str = "requests") -> Any:
    from modeltrack.controls.ratelimit import Limit

    return Limit(scope, per_minute, unit)


async def _hammer(url: str, secret: str, seconds: float, clients: int) -> tuple[Counter[int], list[Any]]:
    statuses: Counter[int] = Counter()
    refusals: list[Any] = []
    deadline = time.monotonic() + seconds
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=clients)) as s:

        async def client() -> None:
            while time.monotonic() < deadline:
                async with s.post(
                    url + "/v1/chat/completions", data=mini_body(), headers={"X-ModelTrack-Key": secret}
                ) as r:
                    body = await r.read()
                    statuses[r.status] += 1
                    if r.status != 200:
                        refusals.append((r.headers.get("Retry-After"), orjson.loads(body)))
                        await asyncio.sleep(0.05)

        await asyncio.gather(*(client() for _ in range(clients)))
    return statuses, refusals


async def test_four_processes_stay_within_the_limit(store_url: str, replay: Any, tmp_path: Path) -> None:
    upstream, upstream_url = replay
    upstream.current = MINI_STREAM
    rpm, seconds = 120, 6.0
    secret = await _key(store_url, rpm=rpm)
    env = {"MODELTRACK_STORE": store_url, "MODELTRACK_OPENAI_BASE_URL": upstream_url}
    if "FIRESTORE_EMULATOR_HOST" in os.environ:
        env["FIRESTORE_EMULATOR_HOST"] = os.environ["FIRESTORE_EMULATOR_HOST"]
    proxy = ProxyProcess(tmp_path, env, args=["--workers", "4"])
    proxy.env["MODELTRACK_STORE"] = store_url
    await proxy.start()
    try:
        t0 = time.monotonic()
        statuses, refusals = await _hammer(proxy.url, secret, seconds, 24)
        elapsed = time.monotonic() - t0
    finally:
        assert await proxy.stop() == 0
    admitted = statuses[200]
    ceiling = rpm * (1 + elapsed / 60)
    lease = rpm * LEASE_FRACTION
    print(
        f"\nrate limit {rpm}/min, 4 processes, {elapsed:.1f} s: admitted {admitted}, ceiling {ceiling:.0f}, "
        f"refused {statuses[429]}"
    )
    assert set(statuses) == {200, 429}, [b for _, b in refusals if b["error"]["type"] != "rate_limited"][:3]
    assert admitted <= ceiling + 1e-9  # never more than the bucket allows, across all processes
    assert admitted >= ceiling - 4 * lease - 2  # refuses early by at most a lease per process (and rounding)
    retry_after, body = refusals[0]
    assert body["error"]["type"] == "rate_limited" and "120 requests per minute" in body["error"]["message"]
    assert retry_after is not None and 1 <= int(retry_after) <= 2  # one request refills in 0.5 s


async def test_tpm_reserves_the_worst_case_and_settles_to_the_real_tokens(
    replay: Any, make_proxy: Any, tmp_path: Path
) -> None:
    upstream, upstream_url = replay
    upstream.current = MINI_STREAM
    store = f"sqlite:///{tmp_path}/events.db"
    # A request reserves its bound (~420 body bytes + max_tokens 20 ≈ 441 tokens); it really uses far fewer.
    tpm = 2000
    secret = await _key(store, tpm=tpm)
    proxy = await make_proxy(upstream_url, store=store)
    async with aiohttp.ClientSession() as s:
        statuses: Counter[int] = Counter()
        for _ in range(40):
            async with s.post(
                proxy.url + "/v1/chat/completions", data=mini_body(), headers={"X-ModelTrack-Key": secret}
            ) as r:
                await r.read()
                statuses[r.status] += 1
    events = [e for e in await proxy.events() if e.status == 200]
    used = sum(e.input_tokens + e.output_tokens + e.cache_read_tokens + e.cache_write_tokens for e in events)
    reserve = len(mini_body()) + 1 + 20
    assert statuses[200] > tpm // reserve  # settling gave the unused reservations back
    assert used <= tpm * 1.01  # the real tokens stay within the bucket (the test takes about a second)
