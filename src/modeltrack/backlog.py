"""The backlog: events on disk that the store does not have yet, found and stored again.

Two kinds of file: this process's spool files (``spool-*.jsonl``, a batch the store would not take, or events
that found the queue full) and the journal segments of processes that are gone (``journal-*.jsonl``, unlocked).
A segment another live process holds is skipped (``flock``), and so is one this process's own journal holds.

* **Found off the loop, and not too often** (:meth:`Backlog.found`): the directory is listed on a worker thread
  (an unlink holds its lock while the disk discards the blocks it freed, 20-130 ms on ext4 mounted with
  ``discard``; bench/README.md, "thirteenth session"), and the flusher asks at most every ``interval`` seconds
  (:meth:`Backlog.due`): after every batch, it cost the event loop ~0.1 ms and a hand-over to a thread five
  times a second ("thirty-third session").
* **Removed only once stored** (:meth:`Backlog.replay`): a file goes when every event in it is stored; the
  stores keep one event per ``request_id``, so a file stored twice (its owner deleting it meanwhile) counts once.

Held by tests/test_pipeline.py (a spool file replayed while the store is up; kill -9 then restart; a replay that
fails) and tests/test_workers.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Callable

from .events import CostEvent
from .journal import Journal, Spool, lock, read_events, unlocked
from .metrics import Metrics
from .sinks import Sink


class Backlog:
    def __init__(
        self,
        spool: Spool,
        journal: Journal | None,
        sink: Sink,
        metrics: Metrics,
        *,
        batch_size: int,
        interval: float,
        on_stored: Callable[[list[CostEvent]], None] | None = None,
    ) -> None:
        """``on_stored`` is told of each part of a file the store accepted, as the pipeline's is of a batch."""
        self.spool = spool
        self.journal = journal
        self.sink = sink
        self.metrics = metrics
        self.on_stored = on_stored
        self.batch_size = batch_size
        self.interval = interval
        self._next = 0.0

    def due(self) -> bool:
        """Time to look again: ``interval`` seconds since :meth:`found` last looked."""
        return time.monotonic() >= self._next

    async def found(self) -> bool:
        """Spool files, or journal segments of processes that are gone: listed on a worker thread."""
        self._next = time.monotonic() + self.interval
        own = self.journal.owned() if self.journal is not None else frozenset()
        return await asyncio.to_thread(self._files, own)

    def _files(self, own: frozenset[str]) -> bool:
        if self.spool.files():
            return True
        return any(unlocked(p) for p in self.spool.files("journal-") if p not in own)

    def _own(self, path: str) -> bool:
        return self.journal is not None and self.journal.owns(path)

    async def replay(self) -> tuple[int, Exception | None]:
        """Store the spool files and orphaned journal segments, a file at a time. Return the events stored, and
        the store's error if it failed (that file and the later ones are kept, for the next replay)."""
        replayed = 0
        paths = self.spool.files() + [p for p in self.spool.files("journal-") if not self._own(p)]
        for path in paths:
            self.spool.hand_over(path)
            try:
                fd = os.open(path, os.O_RDONLY)
            except FileNotFoundError:
                continue
            try:
                if not lock(fd, blocking=False):
                    continue  # a live process is writing it
                if os.fstat(fd).st_nlink == 0:
                    continue
                # Read through the descriptor: the owner of a closed journal segment deletes it once every event
                # in it is stored, maybe while this reads; the events are then stored again, once.
                events = await asyncio.to_thread(read_events, path, fd)
                try:
                    for i in range(0, len(events), self.batch_size):
                        await self.sink.write(events[i : i + self.batch_size])
                        if self.on_stored is not None:
                            self.on_stored(events[i : i + self.batch_size])
                except Exception as exc:  # noqa: BLE001 - store still down: keep the file, try later
                    return replayed, exc
                # A live process's journal segment is unlocked a moment before its owner deletes it (every
                # event in it stored): whichever of the two removes it first, the other finds it gone. Its events
                # were stored again, idempotently (the sinks keep one per request_id).
                with contextlib.suppress(FileNotFoundError):
                    os.remove(path)
            finally:
                os.close(fd)
            replayed += len(events)
            self.metrics.replayed.inc(len(events))
        return replayed, None
