"""Process and port helpers shared by the benchmarks, the soak harness and the tests (one home each)."""

from __future__ import annotations

import contextlib
import os
import socket
import time
from pathlib import Path


def free_port() -> int:
    """A loopback port that was free a moment ago (the kernel's choice)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return
        time.sleep(0.05)
    raise RuntimeError(f"port {port} never opened")


def rss_parts_kb(pid: int) -> tuple[int, int]:
    """(anonymous, file-backed) resident memory of a live process, in KiB ((0, 0) once it is gone): the heap,
    where a leak grows, apart from mapped files (shared libraries, the journal's segments), which are the page
    cache's."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0, 0
    fields = {}
    for line in text.splitlines():
        if line.startswith(("RssAnon:", "RssFile:", "RssShmem:")):
            name, _, value = line.partition(":")
            fields[name] = int(value.split()[0])
    return fields.get("RssAnon", 0), fields.get("RssFile", 0) + fields.get("RssShmem", 0)


def rss_kb(pid: int) -> int:
    """Resident set size of a live process, in KiB (0 once it is gone)."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0
    for line in text.splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a live process (all its threads) has used so far, in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
