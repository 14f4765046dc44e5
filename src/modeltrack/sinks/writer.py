"""The store writer process: ``python -m modeltrack.sinks.writer STORE_URL``, started by :mod:`.process`.

It opens the store, answers ``{"ok": true}`` (or the error it met), then stores each batch it is sent and answers
each in turn. It ends when its stdin closes. It ignores SIGINT and SIGTERM: its parent decides when it is done
(and sets its priority). Its stdout carries only answers; anything a library prints goes to stderr, with the logs.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from typing import BinaryIO

import orjson

from ..events import CostEvent
from ..logs import setup
from .base import Batch, is_transient, open_sink
from .process import HEADER

STEP = 500
"""Events a local store writes at a time, yielding the CPU between: see :func:`yield_cpu`."""


def yield_cpu() -> None:
    """Give the core to a task waiting for it. At ``SCHED_IDLE`` a woken proxy thread should preempt the writer
    at once, but on this VM it waited up to a tick (4 ms) behind a writer mid-batch while the other core sat idle
    (``perf sched timehist``). A write in steps of :data:`STEP` events with a yield between bounds that wait to
    a step (~1 ms); each step is stored once, as a whole batch is (the stores keep one event per request id).
    Firestore is not stepped: its commits would count each rollup document once a step instead of once a batch.
    The cost: a commit (and SQLite's fsync) per step, the pipeline bench's drain 24,200-24,500 events/s against
    26,800-27,000 unstepped (200 a step: 20,500-24,400)."""
    if hasattr(os, "sched_yield"):
        os.sched_yield()


def _read_exact(inp: BinaryIO, n: int) -> bytes | None:
    data = inp.read(n)
    return data if len(data) == n else None


def _answer(out: BinaryIO, exc: BaseException | None) -> None:
    if exc is None:
        out.write(b'{"ok":true}\n')
    else:
        out.write(orjson.dumps({"error": type(exc).__name__, "transient": is_transient(exc)}) + b"\n")
    out.flush()


def main(argv: list[str]) -> int:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    setup("WARNING")
    url = argv[1]
    inp = sys.stdin.buffer
    loop = asyncio.new_event_loop()
    sink = open_sink(url)
    try:
        loop.run_until_complete(sink.open())
    except Exception as exc:  # noqa: BLE001 - told to the parent, which retries later
        _answer(out, exc)
        return 1
    _answer(out, None)
    step = STEP if sink.name == "sqlite" else 1 << 30
    try:
        while (head := _read_exact(inp, HEADER.size)) is not None:
            payload = _read_exact(inp, HEADER.unpack(head)[0])
            if payload is None:
                break  # the parent went away mid-batch: it will send it again (or its journal will)
            try:
                docs = payload.splitlines(keepends=True)
                for i in range(0, len(docs), step):
                    batch = Batch()
                    batch.docs = docs[i : i + step]
                    batch.extend(CostEvent.from_dict(orjson.loads(line)) for line in batch.docs)
                    loop.run_until_complete(sink.write(batch))
                    yield_cpu()
            except Exception as exc:  # noqa: BLE001 - every store error is the parent's to count and retry
                _answer(out, exc)
            else:
                _answer(out, None)
    finally:
        loop.run_until_complete(sink.close())
        loop.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
