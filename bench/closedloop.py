"""Each request's own latency at concurrency 1: one keep-alive connection, a request sent as soon as the last
answer is read, each latency kept as it was measured.

wrk corrects its latencies for coordinated omission (``stats_correct`` in wrk.c): every response that took at
least two mean cycles adds a sample for each further cycle it lasted, so at concurrency 1 one 3 ms stall counts as
about ten slow requests. That is the figure `make bench`'s targets are judged on. This client gives the other
view beside it, the latency each request had (bench/README.md, sixteenth and thirty-third sessions: on the wire,
by tcpdump, the two differ as this client and wrk do).

Run as ``python -m bench.closedloop URL SECONDS``; prints one JSON object (requests, p50_ms, p99_ms, p999_ms).
"""

from __future__ import annotations

import json
import socket
import sys
import time
from urllib.parse import urlsplit

from bench.harness import BODY, LOAD_KEY, pct


def _read_response(s: socket.socket, buf: bytes) -> tuple[bytes, bool]:
    """Read one whole response (Content-Length or chunked); return what came after it, and whether the server
    keeps the connection open (nginx closes a client's after 1,000 requests, its ``keepalive_requests``)."""
    while b"\r\n\r\n" not in buf:
        buf += _recv(s)
    head, _, rest = buf.partition(b"\r\n\r\n")
    fields = dict(
        (k.strip().lower(), v.strip()) for k, _, v in (line.partition(b":") for line in head.split(b"\r\n")[1:])
    )
    keep = fields.get(b"connection", b"").lower() != b"close"
    if b"content-length" in fields:
        n = int(fields[b"content-length"])
        while len(rest) < n:
            rest += _recv(s)
        return rest[n:], keep
    if fields.get(b"transfer-encoding", b"").lower() == b"chunked":
        while b"\r\n0\r\n\r\n" not in b"\r\n" + rest:
            rest += _recv(s)
        return (b"\r\n" + rest).split(b"\r\n0\r\n\r\n", 1)[1], keep
    raise SystemExit(f"a response without a length: {head[:200]!r}")


def _recv(s: socket.socket) -> bytes:
    data = s.recv(65536)
    if not data:
        raise SystemExit("the server closed the connection")
    return data


def _connect(address: tuple[str, int]) -> socket.socket:
    s = socket.create_connection(address, timeout=10)  # (a broken server fails the run, never hangs it)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s


def measure(url: str, seconds: float) -> dict[str, float]:
    u = urlsplit(url)
    body = BODY.encode()
    request = (
        f"POST {u.path or '/'} HTTP/1.1\r\nHost: {u.netloc}\r\nContent-Type: application/json\r\n"
        f"Authorization: Bearer {LOAD_KEY}\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode() + body
    address = (u.hostname or "127.0.0.1", u.port or 80)
    s = _connect(address)
    clock = time.perf_counter
    lat: list[float] = []
    left = b""
    end = clock() + seconds
    while True:
        t0 = clock()
        if t0 >= end:
            break
        s.sendall(request)
        left, keep = _read_response(s, left)
        lat.append(clock() - t0)
        if not keep:  # (a new connection, made between two requests: wrk does not time its connects either)
            s.close()
            s, left = _connect(address), b""
    s.close()
    ms = [v * 1e3 for v in lat]
    return {"requests": float(len(ms)), "p50_ms": pct(ms, 0.5), "p99_ms": pct(ms, 0.99), "p999_ms": pct(ms, 0.999)}


if __name__ == "__main__":
    print(json.dumps(measure(sys.argv[1], float(sys.argv[2]))))
