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
from collections import Counter
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, NamedTuple

import orjson

from .events import CostEvent

log = logging.getLogger("modeltrack.pipeline")


def lock(fd: int, blocking: bool) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        return True
    except BlockingIOError:
        return False


def read_events(path: str, fd: int | None = None) -> list[CostEvent]:
    """The events of a journal segment or spool file; through ``fd`` when the caller holds the file open (and
    locked): its owner may delete the path meanwhile, once every event in it is stored."""
    out = []
    with open(path, "rb") if fd is None else open(os.dup(fd), "rb") as f:
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

    def hand_over(self, path: str) -> None:
        """``path`` is about to be replayed: if it is the file being appended to, the next append starts a new
        one, so that nothing is written to a file the replay will delete."""
        if path == self._current:
            self._current = None

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


class _Segment(NamedTuple):
    fd: int
    map: mmap.mmap
    path: str


_WARM_CHUNK = 4 << 20


def _open_segment(path: str, size: int) -> _Segment:
    """Create, lock, reserve and map a segment: run on the journal's helper thread, off the event loop."""
    os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        lock(fd, blocking=True)
        os.posix_fallocate(fd, 0, size)
        # Its pages read into the page cache here, so a request's first write to each is a minor fault (0.6 us
        # an event, worst 0.1 ms, against 1.7 ms cold). Not MAP_POPULATE: CPython 3.11's mmap.mmap() holds the
        # GIL through the mmap() call, and populating 16 MiB under load held it 70-90 ms, stalling the event
        # loop (perf: the loop thread in a futex wait while this thread ran in __mm_populate); reads
        # release it.
        scratch = bytearray(min(_WARM_CHUNK, size))
        for offset in range(0, size, _WARM_CHUNK):
            os.preadv(fd, [scratch], offset)
        seg_map = mmap.mmap(fd, size, flags=mmap.MAP_SHARED)
    except OSError:
        os.close(fd)
        with contextlib.suppress(OSError):
            os.remove(path)
        raise
    return _Segment(fd, seg_map, path)


def _retire(seg: _Segment, length: int) -> None:
    """Unmap a closed segment, truncate it to what was written (plain JSONL) and close it: on the helper thread."""
    try:
        seg.map.close()
        with contextlib.suppress(OSError):
            os.ftruncate(seg.fd, length)  # drop the reserved tail (the file may be deleted already: harmless)
    finally:
        os.close(seg.fd)  # releases the lock


def _remove(path: str) -> None:
    with contextlib.suppress(OSError):
        os.remove(path)


def _discard(seg: _Segment) -> None:
    """An unused spare segment at shutdown: nothing in it, so it goes."""
    with contextlib.suppress(OSError):
        os.remove(seg.path)
    _retire(seg, 0)


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

    Making a segment (reserve and warm 16 MiB), retiring one (unmap, truncate) and deleting one take 4-130 ms of
    system calls: done in the request path, each stalled every request in flight once every ~20,000 events (2 s
    at the bench's rate; bench/README.md, "thirteenth session"). A helper thread does all three, in the order
    they were asked: the next segment is made while the current one fills, so a rotation on the loop is a swap.
    Each of those calls releases the GIL (hence no MAP_POPULATE: see :func:`_open_segment`). Held by
    tests/test_pipeline.py (the journal test: the spare, the helper's closes and deletes, a read while deleted).
    """

    def __init__(self, directory: str, segment_bytes: int = 16 * 1024 * 1024) -> None:
        self.dir = directory
        self.segment_bytes = segment_bytes
        self._fd = -1
        self._map: mmap.mmap | None = None
        self._current: _Segment | None = None
        self._pos = 0
        self._seg = 0
        self._made = 0
        self._paths: dict[int, str] = {}
        self._pending: dict[int, int] = {}
        self._helper: ThreadPoolExecutor | None = None
        self._spare: Future[_Segment] | None = None
        self._spare_path: str | None = None
        self._work: list[Future[None]] = []
        self._removing: set[str] = set()  # acked segments the helper has yet to delete

    def _submit(self, fn: Callable[..., Any], *args: Any) -> Future[Any]:
        if self._helper is None:
            self._helper = ThreadPoolExecutor(1, thread_name_prefix="modeltrack-journal")
        return self._helper.submit(fn, *args)

    def _new_path(self) -> str:
        self._made += 1
        return os.path.join(self.dir, f"journal-{os.getpid()}-{time.time_ns()}-{self._made}.jsonl")

    def _rotate(self) -> None:
        self._close_segment()
        spare, self._spare, self._spare_path = self._spare, None, None
        seg: _Segment | None = None
        if spare is not None:
            with contextlib.suppress(OSError):
                seg = spare.result()  # ready, nearly always: it was begun when the current segment was
        if seg is None:
            seg = _open_segment(self._new_path(), self.segment_bytes)  # the first, or the spare failed: here
        self._seg += 1
        self._current = seg
        self._fd, self._map, self._pos = seg.fd, seg.map, 0
        self._paths[self._seg] = seg.path
        self._pending[self._seg] = 0
        self._spare_path = self._new_path()
        self._spare = self._submit(_open_segment, self._spare_path, self.segment_bytes)

    def _close_segment(self) -> None:
        seg = self._current
        if seg is None:
            return
        self._current, self._map, self._fd = None, None, -1
        # Deleted (once every event in it is stored) while our lock still holds it: another process's replay
        # never picks up a segment whose events are all stored. The helper's close releases the lock.
        self._work = [f for f in self._work if not f.done()]
        self._maybe_delete(self._seg)
        self._work.append(self._submit(_retire, seg, self._pos))

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
        """The events with these segment ids (one id per event; 0, an unjournaled event, is skipped) are stored.
        Counted by ``Counter`` (in C) and applied once per segment: a batch of 2,000 events spans one or two
        segments, and a decrement per event held the event loop ~0.25 ms per 800 events (bench/README.md)."""
        for seg, n in Counter(segs).items():
            if seg:
                self._pending[seg] -= n
                if self._pending[seg] == 0 and seg != self._seg:
                    self._maybe_delete(seg)

    def _maybe_delete(self, seg: int) -> None:
        if self._pending.get(seg) == 0 and not (seg == self._seg and self._fd >= 0):
            # On the helper too: on ext4 mounted with `discard` (usual on cloud VMs), an unlink frees the blocks
            # and waits for the disk's discard, 20-130 ms here (perf: do_unlinkat → blkdev_issue_discard). The
            # helper runs its work in order, so a closed segment is still removed before its lock is released.
            path = self._paths.pop(seg)
            self._removing.add(path)  # still ours until it is gone: no replay reads it meanwhile
            done = self._submit(_remove, path)
            done.add_done_callback(lambda _: self._removing.discard(path))
            self._work.append(done)
            self._pending.pop(seg, None)

    def owns(self, path: str) -> bool:
        """A file this journal holds (a segment, or the spare being made): never another process's to replay."""
        return path == self._spare_path or path in self._removing or path in self._paths.values()

    def owned(self) -> frozenset[str]:
        """The paths :meth:`owns` (a snapshot, for a thread that lists the directory)."""
        spare = [self._spare_path] if self._spare_path else []
        return frozenset((*self._paths.values(), *self._removing, *spare))

    def segments(self) -> dict[int, str]:
        """The segments not yet deleted, by id: the current one and closed ones with events not yet acked."""
        return dict(self._paths)

    def settle(self) -> None:
        """Wait for the helper's work in progress: closed segments truncated and closed, the spare made."""
        work: list[Future[Any]] = [*self._work, *([self._spare] if self._spare is not None else [])]
        for f in work:
            with contextlib.suppress(OSError):
                f.result()
        self._work.clear()

    def close(self) -> None:
        """Close the current segment, drop the unused spare, and wait for the helper to finish both."""
        self._close_segment()
        spare, self._spare, self._spare_path = self._spare, None, None
        if spare is not None:
            with contextlib.suppress(OSError):
                _discard(spare.result())
        self.settle()
        if self._helper is not None:
            self._helper.shutdown(wait=True)
            self._helper = None


def unlocked(path: str) -> bool:
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:
        return lock(fd, blocking=False)
    finally:
        os.close(fd)
