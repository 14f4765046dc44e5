"""Bounded in-memory queue → batches → sink, with retry, spool and replay. Nothing is dropped silently.

* ``enqueue`` is synchronous and O(1): request handlers never await store I/O.
* The flusher writes up to ``batch_size`` events, or whatever is queued every ``flush_interval`` seconds.
* Transient store errors are retried with exponential backoff and full jitter; after ``max_retries`` the batch
  goes to the local spool (JSONL, fsync'd) and is replayed later. Permanent errors go to a dead-letter file.
* When the queue is full, new events go straight to the spool. Only if the spool cannot be written is an
  event dropped: counted in ``modeltrack_events_dropped_total`` and logged with its request id.
* Sinks are idempotent on ``request_id``, so a replay or retry after an ambiguous failure never duplicates.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import os
import random
import sqlite3
import time

import orjson

from .events import CostEvent
from .metrics import Metrics
from .sinks import Sink

log = logging.getLogger("modeltrack.pipeline")

_TRANSIENT_NAMES = {
    "ServiceUnavailable",
    "DeadlineExceeded",
    "Aborted",
    "ResourceExhausted",
    "InternalServerError",
    "RetryError",
    "TooManyRequests",
    "GatewayTimeout",
    "Unknown",
    "Cancelled",
}


def is_transient(exc: BaseException) -> bool:
    if isinstance(exc, (OSError, ConnectionError, TimeoutError, asyncio.TimeoutError)):
        return True
    if isinstance(exc, sqlite3.OperationalError):
        return True  # busy / locked / disk I/O: all worth another try
    return type(exc).__name__ in _TRANSIENT_NAMES


class Spool:
    """Append-only JSONL files: ``spool-*.jsonl`` for replay, ``deadletter.jsonl`` for permanent rejects."""

    def __init__(self, directory: str) -> None:
        self.dir = directory
        self._current: str | None = None
        self._lines = 0
        self.rotate_lines = 100_000

    def _path(self) -> str:
        if self._current is None or self._lines >= self.rotate_lines:
            self._current = os.path.join(self.dir, f"spool-{time.time_ns()}-{os.getpid()}.jsonl")
            self._lines = 0
        return self._current

    def append(self, events: list[CostEvent], dead: bool = False) -> None:
        os.makedirs(self.dir, exist_ok=True)
        path = os.path.join(self.dir, "deadletter.jsonl") if dead else self._path()
        data = b"".join(e.to_json() + b"\n" for e in events)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        if not dead:
            self._lines += len(events)

    def files(self) -> list[str]:
        if not os.path.isdir(self.dir):
            return []
        return sorted(
            os.path.join(self.dir, f) for f in os.listdir(self.dir) if f.startswith("spool-") and f.endswith(".jsonl")
        )

    def read(self, path: str) -> list[CostEvent]:
        out = []
        with open(path, "rb") as f:
            for line in f:
                line = line.strip()
                if not line:
                    continue
                try:
                    out.append(CostEvent.from_dict(orjson.loads(line)))
                except (orjson.JSONDecodeError, TypeError):
                    log.warning("spool: skipping a corrupt line in %s", os.path.basename(path))
        return out

    def pending(self) -> int:
        total = 0
        for p in self.files():
            with open(p, "rb") as f:
                total += sum(1 for line in f if line.strip())
        return total


class Pipeline:
    def __init__(
        self,
        sink: Sink,
        metrics: Metrics,
        *,
        spool_dir: str,
        batch_size: int = 500,
        flush_interval: float = 0.2,
        max_queue: int = 100_000,
        max_retries: int = 5,
        backoff_base: float = 0.1,
        backoff_max: float = 5.0,
    ) -> None:
        self.sink = sink
        self.metrics = metrics
        self.spool = Spool(spool_dir)
        self.batch_size = batch_size
        self.flush_interval = flush_interval
        self.max_queue = max_queue
        self.max_retries = max_retries
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max
        self._q: collections.deque[CostEvent] = collections.deque()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self.failing_since: float | None = None

    # -- request path -----------------------------------------------------------------------------------
    def enqueue(self, ev: CostEvent) -> None:
        if len(self._q) >= self.max_queue or (self._closing and self._task is None):
            self._spool_now([ev])
            return
        self._q.append(ev)
        if len(self._q) >= self.batch_size:
            self._wake.set()

    @property
    def depth(self) -> int:
        return len(self._q)

    # -- lifecycle --------------------------------------------------------------------------------------
    async def start(self) -> None:
        await self.sink.open()
        await self.replay()
        self._task = asyncio.create_task(self._run(), name="modeltrack-flusher")

    async def close(self, grace: float = 10.0) -> None:
        """Drain the queue to the store within ``grace`` seconds; spool whatever is left. Never raises."""
        self._closing = True
        self._wake.set()
        if self._task is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self._task), grace)
            except (TimeoutError, asyncio.CancelledError):
                self._task.cancel()
                with contextlib.suppress(BaseException):
                    await self._task
            self._task = None
        if self._q:
            rest = list(self._q)
            self._q.clear()
            self._spool_now(rest)
        await self.sink.close()

    async def flush(self) -> None:
        """Write everything queued now (tests, shutdown)."""
        while self._q:
            await self._write_batch(self._take())

    # -- flusher ----------------------------------------------------------------------------------------
    def _take(self) -> list[CostEvent]:
        n = min(self.batch_size, len(self._q))
        return [self._q.popleft() for _ in range(n)]

    async def _run(self) -> None:
        while True:
            if not self._q:
                if self._closing:
                    return
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), self.flush_interval)
            elif len(self._q) < self.batch_size and not self._closing:
                # Give a partial batch a moment to fill, bounded by the flush interval.
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), self.flush_interval)
            if self._q:
                await self._write_batch(self._take())
                self.metrics.queue_depth.set(len(self._q))
                if self.failing_since is None and self.spool.files() and not self._closing:
                    await self.replay()

    async def _write_batch(self, batch: list[CostEvent]) -> None:
        attempt = 0
        while True:
            t0 = time.perf_counter()
            try:
                await self.sink.write(batch)
            except Exception as exc:  # noqa: BLE001 - any store error is counted, retried or spooled
                self.metrics.write_errors.labels(type(exc).__name__).inc()
                if self.failing_since is None:
                    self.failing_since = time.monotonic()
                if not is_transient(exc):
                    log.error(
                        "store rejected a batch permanently (%s); dead-lettering %d events, first request_id=%s",
                        type(exc).__name__,
                        len(batch),
                        batch[0].request_id,
                    )
                    self._spool_now(batch, dead=True)
                    return
                attempt += 1
                if attempt > self.max_retries or self._closing:
                    log.warning("store unavailable (%s); spooling %d events", type(exc).__name__, len(batch))
                    self._spool_now(batch)
                    return
                self.metrics.retries.inc()
                delay = random.uniform(0, min(self.backoff_max, self.backoff_base * 2**attempt))
                await asyncio.sleep(delay)
                continue
            self.failing_since = None
            self.metrics.flush_latency.observe(time.perf_counter() - t0)
            self.metrics.batches.inc()
            self.metrics.batch_size.observe(len(batch))
            self.metrics.events_written.inc(len(batch))
            return

    def _spool_now(self, events: list[CostEvent], dead: bool = False) -> None:
        try:
            self.spool.append(events, dead=dead)
        except OSError as exc:
            self.metrics.dropped.inc(len(events))
            for ev in events:
                log.error("event dropped: spool unwritable (%s) request_id=%s", type(exc).__name__, ev.request_id)
            return
        (self.metrics.dead_lettered if dead else self.metrics.spooled).inc(len(events))

    async def replay(self) -> int:
        """Write spooled events back to the store; a file is removed only after all of it is stored."""
        replayed = 0
        for path in self.spool.files():
            if path == self.spool._current:
                self.spool._current = None  # start a new file; this one is being replayed
            events = self.spool.read(path)
            try:
                for i in range(0, len(events), self.batch_size):
                    await self.sink.write(events[i : i + self.batch_size])
            except Exception as exc:  # noqa: BLE001 - any store error is counted, retried or spooled
                log.warning("spool replay paused: store unavailable (%s)", type(exc).__name__)
                self.failing_since = self.failing_since or time.monotonic()
                return replayed
            os.remove(path)
            replayed += len(events)
            self.metrics.replayed.inc(len(events))
        if replayed:
            log.info("replayed %d spooled events", replayed)
        return replayed
