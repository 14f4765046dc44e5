"""The stream-timing client of `make bench`: many SSE streams at once, each on its own connection, from one
process on uvloop, each a raw asyncio protocol with httptools' response parser (both C).

Why not aiohttp's client, as before: with 500 streams started together, the client was the slowest part of the
exchange. It spent ~170 ms opening its connections and sending its requests, one Python coroutine at a time, and
how long varied by ±100 ms from one round to the next. A server slower than a fast one by 100 ms could hide in
that, and the "added" figures it gave nginx over the same upstream ranged from −103 to +36 ms over nine runs.
This client starts the same 500 streams in ~20–40 ms, so what a stream waits for is the server's work.

Measured per stream, as before: TTFB, from before the connection is opened to the first body bytes (so a server's
accepting and reading the request count); each event's lateness against the upstream's schedule (event ``i`` is
due ``i × ms`` after the first); the decoded body's SHA-256, to compare bytes across targets.
``tests/test_bench_smoke.py::test_stream_client_times_and_hashes_each_stream`` holds it to a real server.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from typing import Any
from urllib.parse import urlsplit

import httptools

from bench.harness import BODY, pct


class _Stream(asyncio.Protocol):
    """One request on its own connection, its response parsed and timed as it arrives."""

    def __init__(self, request: bytes, n: int, ms: int, t0: float, out: _Results) -> None:
        self.request, self.n, self.ms, self.t0, self.out = request, n, ms, t0, out
        self.parser = httptools.HttpResponseParser(self)
        self.transport: asyncio.Transport | None = None
        self.first: float | None = None
        self.now = 0.0
        self.seen = 0
        self.digest = hashlib.sha256()
        self.complete = False
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        transport.write(self.request)  # type: ignore[attr-defined]

    def data_received(self, data: bytes) -> None:
        self.now = time.perf_counter()  # one clock read for every event in this read
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(exc)

    def on_headers_complete(self) -> None:
        status = self.parser.get_status_code()
        if status != 200:
            self._fail(RuntimeError(f"stream bench: status {status}"))

    def on_body(self, body: bytes) -> None:
        now, out = self.now, self.out
        if self.first is None:
            self.first = now
            out.ttfb.append(now - self.t0)
        k = body.count(b"\n\n")
        if self.ms:
            for _ in range(k):
                if self.seen < self.n:
                    out.late.append(now - (self.first + self.seen * self.ms / 1000))
                self.seen += 1
        out.events += k
        out.nbytes += len(body)
        self.digest.update(body)

    def on_message_complete(self) -> None:
        self.complete = True
        self.out.digests.add(self.digest.hexdigest())
        if self.transport is not None:
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.complete:
            self._fail(exc or ConnectionError("stream bench: the server closed the stream before its end"))
        elif not self.done.done():
            self.done.set_result(None)

    def _fail(self, exc: BaseException) -> None:
        if not self.done.done():
            self.done.set_exception(exc)
        if self.transport is not None:
            self.transport.close()


class _Results:
    def __init__(self) -> None:
        self.ttfb: list[float] = []
        self.late: list[float] = []
        self.digests: set[str] = set()
        self.nbytes = 0
        self.events = 0


async def streams(url: str, concurrency: int, n: int, ms: int, pad: int = 0) -> dict[str, Any]:
    """``concurrency`` simultaneous streams of ``n`` events ``ms`` apart (0: unpaced), each padded by ``pad``
    bytes, from the fake upstream's ``/v1/stream`` or anything in front of it: TTFB and per-event lateness
    percentiles (ms), throughput, and the set of body digests (one element when every stream had the same
    bytes)."""
    loop = asyncio.get_running_loop()
    u = urlsplit(url)
    host, port = u.hostname or "127.0.0.1", u.port or 80
    request = (
        b"POST /v1/stream?n=%d&ms=%d&pad=%d HTTP/1.1\r\nHost: %s:%d\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n%s" % (n, ms, pad, host.encode(), port, len(BODY), BODY.encode())
    )
    out = _Results()

    async def one() -> None:
        t0 = time.perf_counter()
        _, stream = await loop.create_connection(lambda: _Stream(request, n, ms, t0, out), host, port)
        await stream.done

    t = time.perf_counter()
    await asyncio.gather(*(one() for _ in range(concurrency)))
    elapsed = time.perf_counter() - t
    return {
        "ttfb_p50_ms": pct(out.ttfb, 0.5) * 1000,
        "ttfb_p99_ms": pct(out.ttfb, 0.99) * 1000,
        "late_p50_ms": pct(out.late, 0.5) * 1000 if out.late else 0.0,
        "late_p99_ms": pct(out.late, 0.99) * 1000 if out.late else 0.0,
        "mb_per_s": out.nbytes / elapsed / 1e6,
        "events_per_s": out.events / elapsed,
        "digests": out.digests,
    }
