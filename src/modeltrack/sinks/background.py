"""The store writer's CPU priority: each batch the proxy hands to SQLite is written at Linux's ``SCHED_IDLE``, so the
proxy's event loop, and the clients and upstreams that share its cores, never wait for a core because of it.

Why: a flush's SQLite work (inserts, index updates, rollups) is a few milliseconds of CPU on the writer's thread.
On a machine whose cores are busy (the 2-core bench: load generator, upstream, proxy), a process woken by a
request then waited for the writer's time slice to end: at concurrency 1, 1 % of requests took ~3 ms more (p99
3.3–3.7 ms). At ``SCHED_IDLE`` the writer gives the core up as soon as anything else wants it: p99 1.8–2.1 ms,
with the same throughput at 64 connections and the writer keeping up (bench/README.md, eleventh session). A
thread at ``SCHED_IDLE`` holding the GIL does not stall the loop for long either: a loop waiting for the GIL
leaves its core idle, and the writer runs there.

Guarantees (tests/test_pipeline.py::test_the_store_writer_runs_at_idle_priority_and_gives_it_back,
``test_a_starved_writer_writes_at_normal_priority_for_a_while``):

* **Only the batch's write.** The policy is set when the write starts and put back when it ends, so the executor
  thread's other work (key reloads, budget reads) keeps its priority.
* **Never starved.** A write that took longer than :data:`STARVED_SECONDS` (the machine had no idle CPU for it)
  makes the writes of the next :data:`HOLD_SECONDS` run at normal priority, and says so in the log.
* Where ``SCHED_IDLE`` does not exist, or is refused, writes run as before.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Callable, Iterator

log = logging.getLogger("modeltrack.pipeline")

STARVED_SECONDS = 1.0
"""A batch write that took longer than this at idle priority is taken as starved of CPU."""
HOLD_SECONDS = 30.0
"""How long writes then run at normal priority before idle priority is tried again."""
_IDLE: int | None = getattr(os, "SCHED_IDLE", None)
_ORDINARY = frozenset(getattr(os, name) for name in ("SCHED_OTHER", "SCHED_BATCH") if hasattr(os, name))


class Background:
    """One store's writes at idle priority, with the starvation guard (module docstring)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.normal_until = 0.0
        self.starved = 0  # writes that were starved of CPU at idle priority

    @contextlib.contextmanager
    def batch(self) -> Iterator[bool]:
        """Run the body (one batch's write, on its thread) at ``SCHED_IDLE``; yields whether it does."""
        start = self.clock()
        before = _policy()
        # (A real-time thread is left as it is: its priority could not be given back as it was.)
        idle = _IDLE is not None and before in _ORDINARY and start >= self.normal_until and _set(_IDLE)
        try:
            yield idle
        finally:
            if idle:
                assert before is not None
                _set(before)
                took = self.clock() - start
                if took > STARVED_SECONDS:
                    self.normal_until = self.clock() + HOLD_SECONDS
                    self.starved += 1
                    log.info(
                        "store writer: a batch waited %.1f s for idle CPU; writing at normal priority for %.0f s",
                        took,
                        HOLD_SECONDS,
                    )


def _policy() -> int | None:
    try:
        return os.sched_getscheduler(0)  # 0: the calling thread (Linux schedules threads one by one)
    except (AttributeError, OSError):
        return None


def _set(policy: int) -> bool:
    try:
        os.sched_setscheduler(0, policy, os.sched_param(0))
    except (AttributeError, OSError):
        return False
    return True
