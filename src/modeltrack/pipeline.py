"""Bounded in-memory queue → batches → sink, with retry, spool and replay. Nothing is dropped silently.

* ``enqueue`` is synchronous and O(1): request handlers never await store I/O.
* The flusher writes up to ``batch_size`` events, or whatever is queued every ``flush_interval`` seconds.
* Transient store errors are retried with exponential backoff and full jitter; after ``max_retries`` the batch
  goes to the local spool (JSONL, fsync'd) and is replayed later (:mod:`.backlog`). Permanent errors go to a
  dead-letter file.
* When the queue is full, new events go straight to the spool. Only if the spool cannot be written is an
  event dropped: counted in ``modeltrack_events_dropped_total`` and logged with its request id.
* Sinks are idempotent on ``request_id``, so a replay or retry after an ambiguous failure never duplicates.
* A written batch's events are let go of :data:`RELEASE_STEP` at a time, one step per turn of the event loop
  (:func:`release`): freed at once, a batch of ~900 held the loop 0.5-1.4 ms.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import random
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .backlog import Backlog
from .events import CostEvent, json_lines
from .journal import Journal, Spool
from .metrics import Metrics
from .sinks import Batch, Sink, is_transient

if TYPE_CHECKING:
    from .config import Settings

log = logging.getLogger("modeltrack.pipeline")

RELEASE_STEP = 100
"""Events freed per turn of the event loop once their batch is written: ~0.06 ms of the loop a step."""


def release(loop: asyncio.AbstractEventLoop, held: list[Any]) -> None:
    """Free the last :data:`RELEASE_STEP` of ``held`` now, and the rest on later turns of ``loop``. A batch freed
    in one go (its last reference dropped as the flusher's step ended) freed ~900 events with their strings and
    numbers: the step that took the store's answer held the event loop 0.5-1.4 ms where its own work took 0.13
    ms, and a request in flight waited that long (bench/README.md, "thirty-third session").
    Callbacks between the steps run in between, so a request waits for one step at most."""
    del held[-RELEASE_STEP:]
    if held:
        loop.call_soon(release, loop, held)


class Pipeline:
    def __init__(
        self,
        sink: Sink,
        metrics: Metrics,
        *,
        spool_dir: str,
        batch_size: int,
        flush_interval: float,
        max_queue: int,
        journal: bool,
        max_retries: int = 5,
        retry_budget: float = 10.0,
        backoff_base: float = 0.1,
        backoff_max: float = 5.0,
        probe_interval: float = 1.0,
        on_stored: Callable[[list[CostEvent]], None] | None = None,
    ) -> None:
        """``batch_size``, ``flush_interval``, ``max_queue`` and ``journal`` are settings (their defaults live in
        ``config.Settings``); the retry and probe timings are the pipeline's own. ``on_stored`` is told of every
        batch the store accepted (the budgets keep their spend between two reads of the store with it)."""
        self.sink = sink
        self.metrics = metrics
        self.spool = Spool(spool_dir)
        self.journal = Journal(spool_dir) if journal else None
        self.backlog = Backlog(
            self.spool, self.journal, sink, metrics, batch_size=batch_size, interval=probe_interval, on_stored=on_stored
        )
        self.batch_size = batch_size
        self.flush_interval = flush_interval
        self.max_queue = max_queue
        self.max_retries = max_retries
        self.retry_budget = retry_budget  # seconds one batch may spend on retries before it is spooled
        self.store_down = False  # a batch was given up on: later ones go to the spool until the store answers
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max
        self.probe_interval = probe_interval
        self._next_probe = 0.0
        # The queue, as three deques side by side (an event, its journal segment, its JSON line) rather than one of
        # tuples: a tuple per event was one more object for the collector to walk while it waited (~1,000 at a
        # time at 4,000 requests/s) and for a flush to touch, and the lines and ids are not the collector's at
        # all. A flush takes from each deque without touching the events (bench/README.md, "thirty-second").
        self._events: collections.deque[CostEvent] = collections.deque()
        self._segs: collections.deque[int] = collections.deque()
        self._lines: collections.deque[bytes] = collections.deque()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._writing = 0
        self._journal_failures = 0
        self._replay_failures = 0
        self.failing_since: float | None = None
        self.on_stored = on_stored

    @classmethod
    def from_settings(cls, sink: Sink, metrics: Metrics, settings: Settings, **tunables: Any) -> Pipeline:
        return cls(
            sink,
            metrics,
            spool_dir=settings.spool_dir,
            batch_size=settings.batch_size,
            flush_interval=settings.flush_interval_ms / 1000.0,
            max_queue=settings.queue_size,
            journal=settings.journal,
            **tunables,
        )

    # -- request path -----------------------------------------------------------------------------------
    def enqueue(self, ev: CostEvent) -> None:
        """O(1), no awaiting: journal the event, queue it, wake the flusher when a batch is full."""
        line = ev.to_line()  # encoded once: journal, spool and store all reuse these bytes
        seg = 0
        if self.journal is not None:
            seg = self.journal.append(line)
            if not seg:
                # Not lost (it is queued), but no longer crash-safe: say so, without flooding the log.
                self.metrics.journal_errors.inc()
                self._journal_failures += 1
                if self._journal_failures in (1, 10, 100) or self._journal_failures % 10_000 == 0:
                    log.warning(
                        "journal unwritable (%d failures so far); events are not crash-safe until it recovers",
                        self._journal_failures,
                    )
        if len(self._events) >= self.max_queue or (self._closing and self._task is None):
            self._spool_now([ev], [line], [seg])
            return
        self._events.append(ev)
        self._segs.append(seg)
        self._lines.append(line)
        if len(self._events) >= self.batch_size:
            self._wake.set()

    @property
    def depth(self) -> int:
        return len(self._events)

    # -- lifecycle --------------------------------------------------------------------------------------
    async def start(self) -> None:
        """Never fails because the store is down: the proxy serves, events are retried/spooled, /readyz says why."""
        try:
            await self.sink.open()
        except Exception as exc:  # noqa: BLE001 - e.g. an unreachable store at start-up
            log.error(
                "store unavailable at start-up (%s); events will be spooled until it recovers", type(exc).__name__
            )
            self.failing_since = time.monotonic()
        else:
            try:
                await self.replay()
            except Exception as exc:  # noqa: BLE001 - as in the flusher: never a reason not to start
                self._replay_failed(exc)
        self._task = asyncio.create_task(self._run(), name="modeltrack-flusher")

    async def close(self, grace: float = 10.0) -> None:
        """Drain the queue to the store within ``grace`` seconds; with time left, store the spool too (on Cloud
        Run ``/tmp`` is memory: a spool left behind there is gone with the instance); spool whatever is left.
        Never raises."""
        deadline = time.monotonic() + grace
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
        self.spool_queue()
        left = deadline - time.monotonic()
        if left > 0 and self.spool.files():
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.replay(), left)
        if self.journal is not None:
            self.journal.close()
        with contextlib.suppress(Exception):
            await self.sink.close()

    def spool_queue(self) -> int:
        """Move everything still queued to the spool (shutdown, second signal). Synchronous on purpose."""
        n = len(self._events)
        if n:
            events, lines, segs = list(self._events), list(self._lines), list(self._segs)
            self._events.clear()
            self._lines.clear()
            self._segs.clear()
            self._spool_now(events, lines, segs)
        return n

    async def drained(self, poll: float = 0.002) -> None:
        """Wait until nothing is queued and no batch is being written."""
        while self._events or self._writing:  # noqa: ASYNC110 - two conditions, polled rarely (tests, bench)
            await asyncio.sleep(poll)

    async def flush(self) -> None:
        """Return when everything queued now is written — including a batch the flusher is writing."""
        while self._events:
            await self._write_batch(*self._take())
        await self.drained()

    # -- flusher ----------------------------------------------------------------------------------------
    def _take(self) -> tuple[Batch, list[int]]:
        """The next batch (its events, with their lines as ``docs``) and the events' journal segments."""
        if len(self._events) <= self.batch_size:  # all of it (the usual case below ~10,000 events/s): in C
            batch, segs, lines = Batch(self._events), list(self._segs), list(self._lines)
            self._events.clear()
            self._segs.clear()
            self._lines.clear()
        else:
            n = self.batch_size
            events, seg, line = self._events.popleft, self._segs.popleft, self._lines.popleft
            batch = Batch([events() for _ in range(n)])
            lines, segs = [line() for _ in range(n)], [seg() for _ in range(n)]
        batch.docs = lines
        return batch, segs

    async def _run(self) -> None:
        while True:
            if not self._events:
                if self._closing:
                    return
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), self.flush_interval)
            elif len(self._events) < self.batch_size and not self._closing:
                # Give a partial batch a moment to fill, bounded by the flush interval.
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), self.flush_interval)
            if self._events:
                await self._write_batch(*self._take())
            self.metrics.queue_depth.set(len(self._events))
            if self._closing:
                continue
            try:
                if self.failing_since is not None:
                    if not self._events:
                        await self._probe()
                elif self.backlog.due() and await self.backlog.found():
                    await self.replay()
            except Exception as exc:  # noqa: BLE001 - a replay's surprise must not stop the flusher (and the queue)
                self._replay_failed(exc)

    def _replay_failed(self, exc: Exception) -> None:
        self._replay_failures += 1
        if self._replay_failures in (1, 10, 100) or self._replay_failures % 1000 == 0:
            log.error(
                "spool/journal replay failed (%s, %d times so far); new events are still stored",
                type(exc).__name__,
                self._replay_failures,
            )

    async def _probe(self) -> None:
        """The store failed and nothing new is queued to find out whether it is back: ask it ourselves, at most
        every ``probe_interval`` seconds, so the spool is replayed (and ``/readyz`` recovers) without traffic. An
        unready pod gets no traffic, so waiting for the next request would wait forever."""
        now = time.monotonic()
        if now < self._next_probe:
            return
        self._next_probe = now + self.probe_interval
        if await self.backlog.found():
            await self.replay()  # a write is the real test: it clears the failing state only if it succeeds
        elif await self.sink.ping():
            self.failing_since = None
            self.store_down = False
            log.info("store reachable again")

    async def _write_batch(self, events: Batch, segs: list[int]) -> None:
        self._writing += 1
        try:
            await self._write_batch_inner(events, segs)
        finally:
            self._writing -= 1
            # The events' last references, bar ours, go with this frame: taken into a list of our own (the batch
            # itself may still be held, by the OpenTelemetry exporter's queue: never emptied here), they are freed
            # a step at a time instead of all at once as the flusher's step ends.
            if len(events) > RELEASE_STEP:
                loop = asyncio.get_running_loop()
                loop.call_soon(release, loop, list(events))

    async def _write_batch_inner(self, events: Batch, segs: list[int]) -> None:
        if self.store_down:
            # A circuit breaker: the store gave up on an earlier batch and has not answered since. Retrying every
            # batch against a dead store (a cut network makes each attempt wait for its full deadline) would hold
            # every later event in memory for minutes; the spool holds them instead, and the probe replays it.
            self._spool_now(events, events.docs, segs)
            return
        attempt = 0
        started = time.monotonic()
        while True:
            t0 = time.perf_counter()
            try:
                await self.sink.write(events)
            except Exception as exc:  # noqa: BLE001 - any store error is counted, retried or spooled
                self.metrics.write_errors.labels(type(exc).__name__).inc()
                if self.failing_since is None:
                    self.failing_since = time.monotonic()
                if not is_transient(exc):
                    log.error(
                        "store rejected a batch permanently (%s); dead-lettering %d events, first request_id=%s",
                        type(exc).__name__,
                        len(events),
                        events[0].request_id,
                    )
                    self._spool_now(events, events.docs, segs, dead=True)
                    return
                attempt += 1
                if attempt > self.max_retries or self._closing or time.monotonic() - started > self.retry_budget:
                    log.warning(
                        "store unavailable (%s); spooling %d events, and later ones until it answers again",
                        type(exc).__name__,
                        len(events),
                    )
                    self.store_down = True
                    self._spool_now(events, events.docs, segs)
                    return
                self.metrics.retries.inc()
                await asyncio.sleep(random.uniform(0, min(self.backoff_max, self.backoff_base * 2**attempt)))
                continue
            self.failing_since = None
            self.store_down = False
            self.metrics.flush_latency.observe(time.perf_counter() - t0)
            self.metrics.batches.inc()
            self.metrics.batch_size.observe(len(events))
            self.metrics.events_written.inc(len(events))
            self._ack(segs)
            if self.on_stored is not None:
                self.on_stored(events)
            return

    def _ack(self, segs: list[int]) -> None:
        if self.journal is not None:
            self.journal.ack(segs)

    def _spool_now(
        self, events: list[CostEvent], lines: list[bytes] | None, segs: list[int], dead: bool = False
    ) -> None:
        try:
            self.spool.append(b"".join(lines if lines is not None else json_lines(events)), dead=dead)
        except OSError as exc:
            # Not acked: if the journal has them, they are replayed at the next start.
            self.metrics.dropped.inc(len(events))
            for ev in events:
                log.error("event dropped: spool unwritable (%s) request_id=%s", type(exc).__name__, ev.request_id)
            return
        (self.metrics.dead_lettered if dead else self.metrics.spooled).inc(len(events))
        self._ack(segs)

    async def replay(self) -> int:
        """Store spooled events and orphaned journals (of dead processes): :meth:`.Backlog.replay`."""
        replayed, exc = await self.backlog.replay()
        if exc is not None:
            if self.failing_since is None:
                log.warning("replay paused: store unavailable (%s)", type(exc).__name__)
                self.failing_since = time.monotonic()
            return replayed
        if self.failing_since is not None:
            log.info("store reachable again")
            self.failing_since = None
        self.store_down = False
        if replayed:
            log.info("replayed %d events from the spool/journal", replayed)
        return replayed
