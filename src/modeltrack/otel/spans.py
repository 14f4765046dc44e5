"""One OpenTelemetry span per stored cost event, with the GenAI semantic conventions (:mod:`.attributes`), built
and exported by the OpenTelemetry SDK (:mod:`.build`) in a process of its own (:mod:`.worker`).

Guarantees (tests/test_otel.py, against receivers built on the official ``opentelemetry-proto`` messages, over
OTLP/HTTP and OTLP/gRPC):

* **Exactly the stored events.** Spans are made from the batches the pipeline's store accepted (``on_stored``),
  so what a trace backend holds equals what the store holds, field by field.
* **Never in the request's way.** The loop only hands a batch to a bounded queue (``put_nowait``). A thread of
  this process sends each batch to the worker and waits for its answer; the worker builds, encodes and sends
  the spans, on its own GIL and at ``SCHED_IDLE`` (:mod:`modeltrack.sched`): it gets only CPU time the proxy
  does not want. A slow or dead receiver fills the queue, and what does not fit is dropped and counted
  (``modeltrack_otel_spans_total{outcome="dropped"}``), never waited for.
* **It waits for a busy proxy.** While the requests keep this process's core busy, the next batch is held, so
  the export does not take the CPU the requests need (:meth:`SpanExport._hold`); it goes when the load eases.
* **Behind, it catches up.** When ``behind_after`` stored batches (half the queue) wait behind the next one, the
  batch goes whatever the load, and an idle worker is replaced by one at the normal policy (nice 19; an idle
  one gets no CPU on busy cores), kept for ``normal_for`` seconds after the last time it was behind; then it is
  set idle again. So a burst of load costs the export a delay, and only a load sustained past half the queue
  (~6 s at 10,000 req/s) costs the requests CPU; what that costs is in bench/README.md.
* **A worker that dies is replaced.** The batch it held is counted ``failed``; the next batch starts a new one.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import orjson

from ..events import json_lines
from ..sched import IDLE, CpuShare, set_idle

if TYPE_CHECKING:
    from ..events import CostEvent
    from ..metrics import Metrics
    from .target import Target

log = logging.getLogger("modeltrack.otel")


class _Closing(Exception):
    """close() gave up waiting: what is still queued is not given to a new worker."""


GATHER_SECONDS = 0.5
"""How long the feeder waits for more stored batches to join a small one (a span is exported at most this much
later than it would be alone)."""
GATHER_MAX = 2_048
BUSY_SHARE = 0.75
"""A proxy process that used this share of one core or more since the last look is busy: its one event loop is
close to saturated, and a batch is held (:meth:`SpanExport._hold`). At 2,000 req/s a proxy uses ~0.2 here."""
HOLD_CHECK_SECONDS = 0.1


class SpanExport:
    """The exporter's worker process, the thread that feeds it, and their bounded queue of stored batches."""

    def __init__(
        self,
        target: Target,
        metrics: Metrics,
        max_queued_batches: int = 64,
        timeout: float | None = None,
        *,
        idle: bool = True,
        behind_after: int | None = None,
        normal_for: float = 10.0,
        busy: Callable[[], bool] | None = None,
    ) -> None:
        """``idle``: run the worker at ``SCHED_IDLE`` where the platform allows it, except for ``normal_for``
        seconds after ``behind_after`` batches (default: half of ``max_queued_batches``) were waiting. ``busy``:
        whether the requests keep this process busy now (default: it used :data:`BUSY_SHARE` of a core or more
        since the last look), when a batch is held (:meth:`_hold`)."""
        self.target = target
        self.metrics = metrics
        self.timeout = timeout
        self.idle = idle and IDLE is not None
        self.behind_after = behind_after if behind_after is not None else max(1, max_queued_batches // 2)
        self.normal_for = normal_for
        self.at_idle = False  # the running worker's policy
        self._normal_until = 0.0
        share = CpuShare()
        self.busy = busy or (lambda: share() >= BUSY_SHARE)
        self._ending = False  # close() was called: nothing is held any more
        self.queue: queue.Queue[tuple[int, bytes] | None] = queue.Queue(max_queued_batches)  # (events, JSON lines)
        self.worker: subprocess.Popen[bytes] | None = None
        self._lock = threading.Lock()  # the worker is started by the feeder and stopped by close()
        self._closing = False
        self._thread = threading.Thread(target=self._run, name="modeltrack-otel", daemon=True)
        self._thread.start()

    def offer(self, events: Sequence[CostEvent]) -> None:
        """From the loop (the pipeline's ``on_stored``): never blocks; a full queue drops the batch, counted. A
        batch is queued as its JSON lines: while a busy proxy holds the export, tens of thousands of events wait,
        and bytes are never scanned by the garbage collector, as event objects would be at every full collection.
        Those lines are the ones the store was given (``sinks.Batch.docs``, encoded once per event when
        it was journaled), so a span is made from the stored bytes and the loop only joins them: encoding the
        batch again cost the loop ~5 µs a request at saturation (bench/README.md, sixteenth session)."""
        if not events:
            return
        if not self.queue.full():  # a batch about to be dropped is not encoded first
            with contextlib.suppress(queue.Full):
                self.queue.put_nowait((len(events), b"".join(json_lines(events))))
                return
        self.metrics.otel_spans.labels("dropped").inc(len(events))

    def _start(self) -> subprocess.Popen[bytes]:
        config = orjson.dumps({"target": self.target.to_dict(), "timeout": self.timeout})
        env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")} | dict(self.target.env)
        worker = subprocess.Popen(
            [sys.executable, "-m", "modeltrack.otel.worker", config.decode()],
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            close_fds=True,
        )
        self.at_idle = False
        if time.monotonic() >= self._normal_until:
            self._set_idle(worker.pid)
        return worker

    def _set_idle(self, pid: int) -> None:
        if not self.idle:
            return
        try:
            set_idle(pid)
        except (ProcessLookupError, FileNotFoundError):  # it just ended: the next send starts another
            return
        except OSError as exc:  # e.g. a seccomp profile that forbids it: the worker keeps nice 19
            log.warning("otel: cannot run the exporter at SCHED_IDLE (%s); it keeps nice 19", type(exc).__name__)
            self.idle = False
            return
        self.at_idle = True

    def _hold(self) -> int:
        """Hold the next batch while this process is busy (its requests keep a core) and fewer than
        ``behind_after`` batches wait behind it; then return how many wait. Even at ``SCHED_IDLE`` a worker that
        runs beside a saturated proxy costs it ~8 % of its throughput (waking, it waits for the core; bench/
        README.md), so the export waits for the load to ease, up to the same bound that restarts it."""
        while True:
            behind = self.queue.qsize()
            if behind >= self.behind_after or self._ending or not self.busy():
                return behind
            time.sleep(HOLD_CHECK_SECONDS)

    def _pace(self, behind: int) -> None:
        """Before a batch is sent, with ``behind`` stored batches waiting: an idle worker that fell behind is
        replaced by one at the normal policy (raising a policy in place needs a privilege); a worker that has
        kept up for ``normal_for`` seconds is set idle again. Not while closing: what is queued then waits for
        no new worker."""
        if not self.idle or self._closing:
            return
        if behind >= self.behind_after:
            self._normal_until = time.monotonic() + self.normal_for
            if self.at_idle:
                log.warning(
                    "otel: stored batches waiting for export: %d; the exporter restarted at nice 19 for %.0f s",
                    behind,
                    self.normal_for,
                )
                # Killed: between batches it holds nothing, and an idle process on busy cores could take long to
                # exit by itself. The next send starts the new one.
                self._stop_worker(0)
        elif not self.at_idle and time.monotonic() >= self._normal_until:
            with self._lock:
                worker = self.worker
            if worker is not None and worker.poll() is None:
                self._set_idle(worker.pid)

    def _send(self, payload: bytes) -> tuple[int, int]:
        """(exported, failed) for one batch (an event's JSON per line), from the worker's answer."""
        with self._lock:
            if self._closing:
                raise _Closing
            if self.worker is None or self.worker.poll() is not None:
                self.worker = self._start()
            worker = self.worker
        stdin, stdout = worker.stdin, worker.stdout
        assert stdin is not None and stdout is not None
        stdin.write(len(payload).to_bytes(4, "big") + payload)
        stdin.flush()
        answer = stdout.readline()
        if not answer:
            raise EOFError("the worker stopped")
        exported, failed = answer.split()
        return int(exported), int(failed)

    def _gather(self) -> tuple[int, bytes, bool]:
        """The next batch to export (how many events, their JSON lines), and whether close() asked to stop after
        it. The store's batches are joined, up to :data:`GATHER_MAX` events or :data:`GATHER_SECONDS` after the
        first: the worker's cost per span doubles for batches of ten (one OTLP request each) against batches of
        hundreds."""
        first = self.queue.get()
        if first is None:
            return 0, b"", True
        count, parts = first[0], [first[1]]
        deadline, last = time.monotonic() + GATHER_SECONDS, False
        while count < GATHER_MAX:
            try:
                more = self.queue.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                break
            if more is None:
                last = True
                break
            count += more[0]
            parts.append(more[1])
        return count, b"".join(parts), last

    def _run(self) -> None:
        with self._lock:  # started now, so its imports are done before the first batch comes
            if not self._closing:
                self.worker = self._start()
        last, left = False, 0
        while not last:
            count, payload, last = self._gather()
            if not count:
                continue
            try:
                self._pace(self._hold())
                exported, failed = self._send(payload)
            except Exception as exc:  # noqa: BLE001 - the worker died or could not read a batch: never the thread
                exported, failed = 0, count
                if isinstance(exc, _Closing) or self._closing:  # close() gave up: logged once, below
                    left += count
                else:
                    why = type(exc).__name__
                    log.warning("otel: %d spans not exported (%s); the worker is replaced", count, why)
                    self._stop_worker(0)
            if exported:
                self.metrics.otel_spans.labels("exported").inc(exported)
            if failed:
                self.metrics.otel_spans.labels("failed").inc(failed)
        if left:
            log.warning("otel: %d spans still queued at shutdown were not exported (counted failed)", left)

    def _stop_worker(self, timeout: float) -> None:
        """End of input for the worker: it exports what it holds and exits (killed after ``timeout``)."""
        with self._lock:
            worker, self.worker = self.worker, None
        if worker is None:
            return
        if worker.stdin is not None:
            with contextlib.suppress(OSError):
                worker.stdin.close()
        try:
            worker.wait(timeout)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait()
        if worker.stdout is not None:
            worker.stdout.close()

    def close(self, timeout: float = 5.0) -> None:
        """Export what is queued (up to ``timeout``), then stop the thread and the worker. What is still queued
        then is counted ``failed`` and logged once."""
        self._ending = True
        try:
            self.queue.put(None, timeout=timeout)
            ended = True
        except queue.Full:  # the receiver is slower than the store
            ended = False
        self._thread.join(timeout)
        with self._lock:
            self._closing = True  # a batch still waiting is not given to a new worker
        self._stop_worker(timeout)
        if not ended:  # the thread now fails what is queued at once: room for the end comes quickly
            with contextlib.suppress(queue.Full):
                self.queue.put(None, timeout=timeout)
        self._thread.join(timeout)
