"""The pipeline's files on local disk: the write-ahead journal every event is appended to before ``enqueue``
returns, and the spool a batch goes to when the store cannot take it (``spool-*.jsonl`` for replay,
``deadletter.jsonl`` for permanent rejects). Both are JSON lines, one event a line, and both are ``flock``ed
while a process writes them, so several workers share a directory and a replay only ever reads the files of
processes that are gone (:func:`unlocked`).

Held by tests/test_pipeline.py: a ``kill -9`` of the proxy under load loses nothing, a replay is idempotent,
segments rotate and close as plain JSON lines, and an unwritable journal is counted while events are still
stored.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import mmap
import os
import time
from collections.abc import Iterable

import orjson

from .events import CostEvent

log = logging.getLogger("modeltrack.pipeline")


def lock(fd: int, blocking: bool) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        return True
    except BlockingIOError:
        return False


def read_events(path: str) -> list[CostEvent]:
    out = []
    with open(path, "rb") as f:
        data = f.read()
    end = data.find(b"\x00")  # a journal segment's reserved, never-written tail (JSON lines hold no NUL)
    if end >= 0:
        data = data[:end]
    for raw in data.split(b"\n"):
        line = raw.strip()
        if not line:
            continue
        try:
            out.append(CostEvent.from_dict(orjson.loads(line)))
        except (orjson.JSONDecodeError, TypeError):
            # A torn last line from a crash mid-write: the event never finished enqueueing.
            log.warning("skipping a corrupt line in %s", os.path.basename(path))
    return out


class Spool:
    """Append-only JSONL files, fsync'd per batch: ``spool-*.jsonl`` for replay, ``deadletter.jsonl`` for
    permanent rejects. Files are ``flock``ed while written or replayed, so several workers can share one
    directory: a replay never reads (and deletes) a file another process is appending to."""

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

    def append(self, data: bytes, dead: bool = False) -> None:
        """Append JSON lines (already encoded) and fsync."""
        os.makedirs(self.dir, mode=0o700, exist_ok=True)
        while True:
            path = os.path.join(self.dir, "deadletter.jsonl") if dead else self._path()
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            try:
                lock(fd, blocking=True)
                if os.fstat(fd).st_nlink == 0:  # replayed and removed while we waited: start a new file
                    self._current = None
                    continue
                os.write(fd, data)
                os.fsync(fd)
            finally:
                os.close(fd)
            break
        if not dead:
            self._lines += data.count(b"\n")

    def files(self, prefix: str = "spool-") -> list[str]:
        if not os.path.isdir(self.dir):
            return []
        return sorted(
            os.path.join(self.dir, f) for f in os.listdir(self.dir) if f.startswith(prefix) and f.endswith(".jsonl")
        )


class Journal:
    """Write-ahead journal: every event is appended before ``enqueue`` returns, so a crash or ``kill -9`` of the
    process loses nothing. Events are acked once stored or spooled; a segment is deleted when it is closed and
    fully acked. Segments of a dead process (not ``flock``ed) are replayed at start-up — idempotently, since
    stores dedupe on ``request_id``.

    A segment is a file of ``segment_bytes`` reserved up front (``posix_fallocate``: a full disk fails here,
    cleanly, never later as a SIGBUS) and memory-mapped: an append is a memory copy into the page cache, which
    the kernel writes back even if the process is killed the next instant — the guarantee of an unbuffered
    ``write`` (no fsync; a power cut is out of scope) without a system call per event. Unused space reads as
    NUL bytes, which JSON lines never contain; a closed segment is truncated to what was written.
    """

    def __init__(self, directory: str, segment_bytes: int = 16 * 1024 * 1024) -> None:
        self.dir = directory
        self.segment_bytes = segment_bytes
        self._fd = -1
        self._map: mmap.mmap | None = None
        self._pos = 0
        self._seg = 0
        self._paths: dict[int, str] = {}
        self._pending: dict[int, int] = {}

    def _rotate(self) -> None:
        self._close_segment()
        os.makedirs(self.dir, mode=0o700, exist_ok=True)
        self._seg += 1
        path = os.path.join(self.dir, f"journal-{os.getpid()}-{time.time_ns()}-{self._seg}.jsonl")
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            lock(fd, blocking=True)
            os.posix_fallocate(fd, 0, self.segment_bytes)
            # Pre-faulted (MAP_POPULATE): otherwise every 4 KiB page's first write is a page fault in some
            # request's enqueue.
            self._map = mmap.mmap(fd, self.segment_bytes, flags=mmap.MAP_SHARED | getattr(mmap, "MAP_POPULATE", 0))
        except OSError:
            os.close(fd)
            with contextlib.suppress(OSError):
                os.remove(path)
            raise
        self._fd = fd
        self._pos = 0
        self._paths[self._seg] = path
        self._pending[self._seg] = 0

    def _close_segment(self) -> None:
        if self._fd < 0:
            return
        if self._map is not None:
            self._map.close()
            self._map = None
        with contextlib.suppress(OSError):
            os.ftruncate(self._fd, self._pos)  # drop the reserved tail: a closed segment is plain JSONL
        fd, self._fd = self._fd, -1
        # Deleted (once every event in it is stored) while our lock still holds it: another process's replay
        # never picks up a segment whose events are all stored. Closing releases the lock.
        self._maybe_delete(self._seg)
        os.close(fd)

    def append(self, line: bytes) -> int:
        """Return the segment id to ack later, or 0 if the journal could not be written (counted)."""
        n = len(line)
        try:
            if self._map is None or self._pos + n > self.segment_bytes:
                if n > self.segment_bytes:
                    return 0
                self._rotate()
        except OSError:
            return 0
        pos = self._pos
        self._map[pos : pos + n] = line  # type: ignore[index]
        self._pos = pos + n
        self._pending[self._seg] += 1
        return self._seg

    def ack(self, segs: Iterable[int]) -> None:
        for seg in segs:
            if seg:
                self._pending[seg] -= 1
                if self._pending[seg] == 0 and seg != self._seg:
                    self._maybe_delete(seg)

    def _maybe_delete(self, seg: int) -> None:
        if self._pending.get(seg) == 0 and not (seg == self._seg and self._fd >= 0):
            with contextlib.suppress(OSError):
                os.remove(self._paths[seg])
            self._pending.pop(seg, None)
            self._paths.pop(seg, None)

    def close(self) -> None:
        self._close_segment()


def unlocked(path: str) -> bool:
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:
        return lock(fd, blocking=False)
    finally:
        os.close(fd)
