"""The pipeline's store writes, done by a child process: the store's work never holds the proxy's GIL.

Why: the SQLite writer thread held the GIL while it bound each batch's rows, and the event loop waited for it. At
concurrency 1 that put 2–5 ms on the p99 of a request that arrived during a flush (bench/README.md, "the p99 at
concurrency 1"); giving the thread a lower priority traded that for a priority inversion. In a process of its own
the writer shares no lock with the loop, and the kernel runs it on the other core.

It runs at ``SCHED_IDLE`` (Linux): it gets only CPU time nothing else wants. At a mere nice 19 the kernel still let
it finish its slice while the proxy, woken on the same core, waited 2–4 ms for it (``perf sched timehist``); idle,
it is preempted at once by the tasks of its own task group. (The kernel weighs another autogroup or cgroup as a
whole: a client started from another session, or in another container, is not one of them, and ``wrk`` so started
waited up to a tick, 4 ms, behind the writer: bench/README.md, "thirty-second session".) In a thread that was
unsafe (it held the GIL the loop needed); in a process it holds nothing the loop waits for, except SQLite's write
lock for the length of a batch. So a writer that is starved (runnable, without CPU, for ``starved_after`` seconds:
every core busy) is restarted at the normal policy for ``normal_for`` seconds, and a batch's transaction never
holds that lock long on a busy machine. For the same reason a writer that falls behind (``behind_after`` events,
four batches by default, still queued behind the one it is handed) is restarted at the normal policy, keeps it for
``normal_for`` seconds (less once the load has eased and the machine has cores to spare) and then while it is still
behind, and is made idle again by the first batch after (lowering a policy needs no restart): idle on a machine
whose cores are all busy, it would never catch up, and the queue, the proxy's memory and then the spool would grow
(tests/test_monitoring.py, the random-team flood). A writer a batch or two behind is left idle: it catches up when
the load eases, and a restart (a new interpreter starting) would cost the proxy more CPU.

Guarantees, unchanged from an in-process sink (tests/test_store_writer.py):

* A batch is stored exactly once. The child answers a batch only after the store accepted it; a batch it had
  stored when it died is stored again on retry, and the sinks keep one event per ``request_id``. The pipeline's
  journal, spool and retries are the parent's, as before: the child is only the hand that writes.
* A child that dies is noticed at once (its pipe closes), the batch fails as a transient error, and the next
  write starts a new child. A write that is cancelled (a shutdown past its grace) kills the child, whose answer
  would otherwise be read as the next batch's.
* Errors cross as their type name and whether they are worth a retry, never as their message.
* The child ignores SIGINT and SIGTERM (a Ctrl-C reaches the whole process group): the parent drains its queue
  into it, then closes its stdin, and it exits. If the parent is killed, the closed pipe ends the child too.

Only :meth:`write` goes to the child. Reads, claims and pings are the parent's own sink's: they are rare, and
the rest of the proxy (budgets, batches, keys) shares that sink.

The wire: the parent sends ``!I`` (payload length) and the batch's JSON lines, each ending in ``\\n`` (the bytes
the journal already holds); the child answers one JSON line: ``{"ok": true}`` or ``{"error": NAME,
"transient": BOOL}``. The child's side is :mod:`.writer`.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import struct
import sys
import time
from collections.abc import Callable
from typing import Any

import orjson

from ..events import CostEvent, json_lines
from ..sched import IDLE, SpareCores, set_idle
from .base import Sink

log = logging.getLogger("modeltrack.pipeline")

HEADER = struct.Struct("!I")
START_TIMEOUT = 60.0
"""Seconds a new child may take to import and open the store (Firestore's first connection can take seconds)."""
STOP_TIMEOUT = 10.0


class StoreWriterGone(ConnectionError):
    """The writer process ended (or never started): transient, the next write starts another."""


class RemoteStoreError(Exception):
    """An error the writer process met, named as it was there (metrics and logs keep the store's own names)."""

    transient = False


def _runnable(pid: int) -> dict[int, int]:
    """The process's threads that are runnable or running (state R), with the CPU time each has had (ns,
    ``schedstat``); empty when /proc cannot tell."""
    out: dict[int, int] = {}
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{tid}/stat", "rb") as f:
                if f.read().rsplit(b")", 1)[1].split()[0] != b"R":
                    continue
            with open(f"/proc/{pid}/task/{tid}/schedstat", "rb") as f:
                out[int(tid)] = int(f.read().split()[0])
    except (OSError, IndexError, ValueError):
        return {}
    return out


RECHECK = 0.05
"""Seconds a thread must stay runnable without running to count as starved (see ProcessWriter._check_starved)."""


@functools.cache
def remote_error(name: str, transient: bool) -> type[RemoteStoreError]:
    safe = name if name.isidentifier() else "RemoteStoreError"
    return type(safe, (RemoteStoreError,), {"transient": transient})


class ProcessWriter:
    """A :class:`~.base.Sink` whose writes a child process performs (``MODELTRACK_STORE_WRITER=process``)."""

    def __init__(
        self,
        sink: Sink,
        url: str,
        *,
        idle: bool = True,
        starved_after: float = 0.5,
        normal_for: float = 10.0,
        backlog: Callable[[], int] = lambda: 0,
        behind_after: int = 8000,
        spare_cores: Callable[[], float] | None = None,
        min_normal: float = 1.0,
    ) -> None:
        """``sink`` is the parent's own sink for the same ``url`` (reads, claims, pings). ``idle``: run the child
        at ``SCHED_IDLE`` where the platform has it; ``starved_after`` and ``normal_for`` bound how long it may
        wait for CPU inside a batch, and how long it then keeps the normal policy. ``backlog`` tells how many
        events wait behind the batch being written (the pipeline's queue): ``behind_after`` or more and the
        writer is not keeping up, so it, too, is given the normal policy: for ``normal_for`` seconds, and after
        that for as long as it is still behind. Within those seconds a writer promoted for lagging (a starved
        one keeps its period) is made idle again as soon as it has caught up, has had the normal policy for
        ``min_normal`` seconds, and ``spare_cores`` (the machine's idle cores since it was last asked;
        :class:`~modeltrack.sched.SpareCores` by default) finds half a core idle: the load has eased, and idle
        it keeps up on what is spare. Once a period at most: a promotion within ``normal_for`` seconds of such
        an early return keeps the whole period, so a machine whose idle time the writer cannot have (a CPU
        quota) restarts it at most twice a period."""
        self.inner = sink
        self.name = sink.name
        self.url = url
        self.idle = idle and IDLE is not None
        self.starved_after = starved_after
        self.normal_for = normal_for
        self.backlog = backlog
        self.behind_after = behind_after
        self._proc: asyncio.subprocess.Process | None = None
        self._lock = asyncio.Lock()
        self._normal_until = 0.0  # monotonic time until which the child keeps the normal policy
        self._behind = False  # the last batch found ``behind_after`` or more events waiting behind it
        self.spare_cores = spare_cores if spare_cores is not None else SpareCores()
        self.min_normal = min_normal
        self._promoted_at = 0.0
        self._early_at = -1e9  # when the writer last went back to idle before its period was over
        self._early_ok = False  # this promotion may end early (see ``__init__``)
        self._at_idle = False
        self.started = 0  # children started (a restart after a crash or a failed promotion adds one)
        self.promotions = 0  # times a starved child was restarted at the normal policy
        self._batches = 0  # batches handed to a child so far (a starvation check knows its batch by this count)
        self._done = 0  # the count of the last batch that ended

    @property
    def pid(self) -> int | None:
        return None if self._proc is None or self._proc.returncode is not None else self._proc.pid

    async def open(self) -> None:
        await self.inner.open()
        async with self._lock:
            await self._spawn()

    async def _spawn(self) -> None:
        env = {k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"}
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "modeltrack.sinks.writer",
            self.url,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            env=env,
        )
        self._proc = proc
        self._at_idle = False
        self.started += 1
        try:
            await asyncio.wait_for(self._answer(), START_TIMEOUT)  # the store opened, or why not
        except BaseException:
            self._kill()
            raise
        self._set_policy(proc.pid)

    async def _answer(self) -> None:
        proc = self._proc
        assert proc is not None and proc.stdout is not None
        line = await proc.stdout.readline()
        if not line:
            self._kill()
            raise StoreWriterGone("the store writer process ended")
        reply: dict[str, Any] = orjson.loads(line)
        if "error" in reply:
            raise remote_error(str(reply["error"]), bool(reply.get("transient")))("in the store writer process")

    async def write(self, events: list[CostEvent]) -> None:
        payload = json_lines(events)
        async with self._lock:
            waiting = self.backlog()
            self._behind = waiting >= self.behind_after
            if self._behind and self._at_idle and self.pid is not None:
                # Every core is busy and the queue grows: idle, the writer would only fall further behind
                # (tests/test_monitoring.py::test_random_team_flood_keeps_series_bounded). Between two batches
                # it holds nothing, so a restart costs only the new child's start. It keeps the normal policy
                # for ``normal_for`` seconds (so at most one restart a period; less once the machine has cores to
                # spare: see ``__init__``), then while it is still behind; the first batch after finds it idle
                # again (:meth:`_set_policy`). Kept until ``normal_for`` seconds after it was last behind, a
                # writer promoted in a burst ran at the proxy's priority for the first 10 s after it, and requests
                # waited behind it: p99 at concurrency 1 3.0-4.6 ms in those 10 s, 1.05-1.46 ms in the next
                # (bench/README.md, "thirty-second session").
                self._promote(f"{waiting} events wait for the store", lagging=True)
            while True:
                promotions = self.promotions
                try:
                    await self._send(payload)
                    return
                except StoreWriterGone:
                    if self.promotions == promotions:
                        raise  # the child died on its own: the pipeline retries, and counts it
                    # Killed here, to restart it at the normal policy: not the store's failure. Handed at once to
                    # the new child (which keeps that policy for ``normal_for`` seconds, so this loops at most
                    # once a period); given to the pipeline as a failure, a slow first attempt used up the batch's
                    # retry budget and every later batch was spooled (tests/test_store_writer.py, the starved
                    # child; tests/test_pipeline.py, ten thousand requests on the Firestore emulator).

    async def _send(self, payload: list[bytes]) -> None:
        """One attempt: the batch's lines to the child (started first if there is none), and its answer. The lines
        go as they are (``writelines``, one ``writev``): joined first, 1,000 lines of 700 bytes took the event
        loop 0.18-0.36 ms to join and send through the pipe, against 0.13-0.17 ms (bench/README.md,
        "thirty-second session")."""
        if self.pid is None:
            await self._spawn()
        proc = self._proc
        assert proc is not None and proc.stdin is not None
        self._set_policy(proc.pid)
        self._batches += 1
        watch = asyncio.get_running_loop().call_later(
            self.starved_after, self._check_starved, proc.pid, self._batches, None
        )
        try:
            proc.stdin.writelines([HEADER.pack(sum(map(len, payload))), *payload])
            await proc.stdin.drain()
            await self._answer()
        except (BrokenPipeError, ConnectionResetError):
            self._kill()
            raise StoreWriterGone("the store writer process ended") from None
        except RemoteStoreError:
            raise
        except BaseException:
            self._kill()  # cancelled mid-batch: its answer must never be taken for the next batch's
            raise
        finally:
            self._done = self._batches
            watch.cancel()

    def _set_policy(self, pid: int) -> None:
        """Idle, unless a starved or lagging batch asked for the normal policy less than ``normal_for`` seconds
        ago, or the writer is still behind. Lowering a running child's policy needs no privilege: no restart."""
        if not self.idle or self._at_idle:
            return
        now = time.monotonic()
        if now < self._normal_until:
            # Asked at every batch of the period (and at the promotion), so the spare cores are measured over the
            # time since the last batch, never over an idle hour before the burst.
            spare = self.spare_cores()
            if self._behind or not (self._early_ok and now - self._promoted_at >= self.min_normal and spare >= 0.5):
                return
            self._early_at = now
            self._normal_until = now
        elif self._behind:
            return
        try:
            set_idle(pid)  # every thread of it: SQLite runs on the child's worker thread
        except OSError as exc:  # e.g. a seccomp profile that forbids it: keep the normal policy
            log.warning(
                "store writer: cannot run at SCHED_IDLE (%s); it keeps the proxy's priority", type(exc).__name__
            )
            self.idle = False
            return
        self._at_idle = True

    def _check_starved(self, pid: int, batch: int, seen: dict[int, int] | None) -> None:
        """A batch has taken ``starved_after`` seconds; from then until it ends, the child is looked at every
        :data:`RECHECK` seconds. If a thread of the idle child is runnable and stays so for
        :data:`RECHECK` seconds without running at all, every core is busy and it is starved inside its
        transaction, holding SQLite's write lock: kill it (the transaction rolls back) and let the batch be
        retried by a new child, which keeps the normal policy for ``normal_for`` seconds. A child waiting on its
        store (a Firestore commit), or one that runs, is left alone. Raising the child's policy in place would
        need CAP_SYS_NICE, which a container rarely has; a restart works everywhere, costs ~0.1 s, and happens
        at most once a period."""
        if not self._at_idle or self.pid != pid or batch != self._batches or self._done == batch:
            return
        now = _runnable(pid)  # which threads are runnable, and how much CPU each has had
        if seen is not None and any(tid in now and now[tid] == ran for tid, ran in seen.items()):
            self._promote(f"starved of CPU for {self.starved_after:.1f} s inside a batch")
            return  # :meth:`write` hands its batch to a new child at once
        # Not seen starving yet: look again while the batch lasts. One look used to end the watch when it found
        # no thread runnable at that instant, or one that had run a sliver (SCHED_IDLE still gets one), and a
        # starved batch then took seconds (tests/test_store_writer.py, the starved child, failed so).
        asyncio.get_running_loop().call_later(RECHECK, self._check_starved, pid, batch, now or None)

    def _promote(self, why: str, lagging: bool = False) -> None:
        """Kill the idle child; the next write starts one that keeps the normal policy for ``normal_for`` s."""
        self.promotions += 1
        now = time.monotonic()
        self._promoted_at = now
        # A starved child keeps its whole period: the cores the machine has to spare need not be its own (an
        # affinity, a cpuset, a quota), and it was just seen getting none of them.
        self._early_ok = lagging and now - self._early_at > self.normal_for
        self._normal_until = now + self.normal_for
        self.spare_cores()  # the period's first measure starts here
        log.warning(
            "store writer %s (every core is busy): restarted at normal priority for %s%.0f s",
            why,
            "up to " if self._early_ok else "",
            self.normal_for,
        )
        self._kill()

    def _kill(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None and proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()

    async def read(self, since: str | None = None, limit: int | None = None) -> list[CostEvent]:
        return await self.inner.read(since, limit)

    async def claim(self, key: str, at: str) -> bool:
        return await self.inner.claim(key, at)

    async def recall(self, key: str) -> str | None:
        return await self.inner.recall(key)

    async def ping(self) -> bool:
        return await self.inner.ping()

    async def close(self) -> None:
        """Close the child's stdin and wait for it to finish the batch it holds and exit; then the parent's sink."""
        async with self._lock:
            proc, self._proc = self._proc, None
            if proc is not None and proc.returncode is None:
                assert proc.stdin is not None
                proc.stdin.close()
                try:
                    await asyncio.wait_for(proc.wait(), STOP_TIMEOUT)
                except TimeoutError:
                    with contextlib.suppress(ProcessLookupError):
                        proc.kill()
                    await proc.wait()
        await self.inner.close()
