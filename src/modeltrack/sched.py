"""A helper process's CPU policy: ``SCHED_IDLE``, so that it only gets CPU time nothing else wants; how much CPU
this process uses (:class:`CpuShare`), for a helper that should wait while the requests keep it busy; and how much
the machine leaves idle (:class:`SpareCores`), for a helper raised to the normal policy that may go back.

Why not ``nice 19``: at nice 19 the kernel still lets a helper finish its slice while a proxy thread woken on the
same core waits, 2-4 ms (``perf sched timehist``, bench/README.md); a ``SCHED_IDLE`` task is preempted at once.
Used by the store writer (:mod:`modeltrack.sinks.process`) and the span exporter (:mod:`modeltrack.otel.spans`),
whose parents set it on the child. Lowering a policy needs no privilege; raising it back does (CAP_SYS_NICE, which
a container rarely has), so a helper that must run at the normal policy again is restarted instead.
"""

from __future__ import annotations

import os
import time

IDLE = getattr(os, "SCHED_IDLE", None)
"""Linux only; elsewhere a helper runs at its parent's policy."""


def set_idle(pid: int) -> None:
    """Every thread of process ``pid`` at ``SCHED_IDLE`` (a policy is a thread's; threads it starts later inherit
    it from the thread that starts them). OSError when the platform or a seccomp profile refuses."""
    if IDLE is None:
        raise OSError("SCHED_IDLE is not available on this platform")
    for tid in os.listdir(f"/proc/{pid}/task"):
        os.sched_setscheduler(int(tid), IDLE, os.sched_param(0))


class CpuShare:
    """Calling it returns the share of one core this process used (user and system time, every thread) since the
    previous call, or since it was made: 1.0 is a core kept busy."""

    def __init__(self) -> None:
        self._at = (time.monotonic(), time.process_time())

    def __call__(self) -> float:
        now = (time.monotonic(), time.process_time())
        (wall, cpu), self._at = self._at, now
        return (now[1] - cpu) / max(now[0] - wall, 1e-6)


class SpareCores:
    """Calling it returns how many cores of the machine sat idle, on average, since the previous call (or since it
    was made): ``/proc/stat``'s idle and iowait time. 0.0 where that cannot be read, which never lets a helper's
    policy be lowered early (:class:`modeltrack.sinks.process.ProcessWriter`)."""

    def __init__(self, path: str = "/proc/stat") -> None:
        self.path = path
        self._tick = float(os.sysconf("SC_CLK_TCK")) if hasattr(os, "sysconf") else 100.0
        self._at = self._read()

    def _read(self) -> tuple[float, float] | None:
        try:
            with open(self.path, "rb") as f:
                cpu = f.readline().split()  # cpu user nice system idle iowait ...
            return time.monotonic(), (int(cpu[4]) + int(cpu[5])) / self._tick
        except (OSError, IndexError, ValueError):
            return None

    def __call__(self) -> float:
        now = self._read()
        at, self._at = self._at, now
        if now is None or at is None:
            return 0.0
        return (now[1] - at[1]) / max(now[0] - at[0], 1e-6)
