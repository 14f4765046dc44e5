"""CPU instructions per request, counted by callgrind: a plain request, one with a ModelTrack key and its RPM/TPM
limits, and one with a block budget on its team too, each through its own ``modeltrack serve`` run under
``valgrind --tool=callgrind``.

Why beside the wrk rows: on a shared 2-core VM, throughput ratios between two targets move by 10 to 15 points
from one round to the next (bench/README.md), so a 5 % budget cannot be read off them. An instruction count does
not depend on the host's other tenants: the same build gives the same count within ~1 % run to run. What it
leaves out is memory stalls, and it over-counts timers (under valgrind a request takes ~50× longer, so each
request carries ~50× its share of the once-a-second ticks); both affect the three targets alike.

How: the process starts under callgrind and answers 200 requests to warm up. Its counters are zeroed
(``callgrind_control --zero``), it idles for ``IDLE_SECONDS`` and they are dumped (``--dump``): its idle rate. Then
zeroed again, it answers ``N`` more requests from 4 keep-alive connections, and they are dumped again: every
thread of the process, the store writer's included. *Gross* is that over ``N``; *net* subtracts the idle rate
for as long as the requests took first.

Each target is measured in ``len(LAYOUTS)`` processes, and the row is their median. Why: CPython finds a class's
attributes through a 4,096-entry cache indexed by the class's version tag and the *address* of the attribute's
name. Under valgrind (no address randomisation) a process's layout is the same every run, so which hot (class,
name) pairs collide in that cache is fixed per process, and differs between processes that load different code:
misses cost one process 370 and another 2,300 instructions a request (bench/README.md, twenty-fifth session). An
unused environment variable of a different length per run (``BENCH_LAYOUT_PAD``) moves the interpreter's early
allocations, and with them its names' addresses: three layouts per target, compared layout by layout.

The plain processes also count a streamed event: ``STREAMS`` SSE chat streams of ``STREAM_EVENTS`` events each,
unpaced, from the same upstream (its ``/v1/stream``), net of the idle rate as above. Each event is one upstream
read through the parser, the meter and the client's write; the request's own work is spread over the events.
And a stream's start: ``STARTS`` one-event streams, each on a new client connection (the upstream connections
are the pool's kept ones), all of each: the accept, the request, the exchange, its one event, its cost event and
the close. A burst of new streams waits on the sum of these (bench/README.md, thirty-seventh session).
"""

from __future__ import annotations

import glob
import http.client
import json
import os
import shutil
import statistics
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

from bench.harness import COMMANDS, Proc, modeltrack
from bench.sysinfo import wait_port

N = 2000
CONNECTIONS = 4
IDLE_SECONDS = 10.0
STREAMS = 10
STREAM_EVENTS = 1000
STARTS = 400
LAYOUTS = (0, 9, 40)  # lengths of the unused environment variable that moves each process's layout


def _fire(port: int, headers: dict[str, str], body: str, n: int) -> None:
    def one(count: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        for _ in range(count):
            conn.request("POST", "/v1/chat/completions", body, headers)
            r = conn.getresponse()
            r.read()
            if r.status != 200:
                raise RuntimeError(f"instructions bench: {r.status} from the proxy")
        conn.close()

    threads = [threading.Thread(target=one, args=(n // CONNECTIONS,)) for _ in range(CONNECTIONS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def _stream(port: int, headers: dict[str, str], body: str) -> None:
    def one() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
        conn.request("POST", f"/v1/stream?n={STREAM_EVENTS}&ms=0", body, headers)
        r = conn.getresponse()
        events = r.read().count(b"\n\n")
        if r.status != 200 or events < STREAM_EVENTS:
            raise RuntimeError(f"instructions bench: {r.status}, {events} events from the proxy's stream")
        conn.close()

    threads = [threading.Thread(target=one) for _ in range(STREAMS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def _starts(port: int, headers: dict[str, str], body: str) -> None:
    """``STARTS`` one-event streams, each on a new client connection, 4 at a time: what a burst of new streams
    costs the proxy a stream (bench/README.md, thirty-seventh session: a cold burst's TTFB is the sum of these)."""

    def one(count: int) -> None:
        for _ in range(count):
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
            conn.request("POST", "/v1/stream?n=1&ms=0", body, headers)
            r = conn.getresponse()
            events = r.read().count(b"\n\n")
            conn.close()
            if r.status != 200 or events < 1:
                raise RuntimeError(f"instructions bench: {r.status}, {events} events from the proxy's stream")

    threads = [threading.Thread(target=one, args=(STARTS // CONNECTIONS,)) for _ in range(CONNECTIONS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def _total(path: str) -> int:
    with open(path) as f:
        for line in f:
            if line.startswith(("summary:", "totals:")):
                return int(line.split()[1])
    raise RuntimeError(f"no totals in {path}")


def _wait_healthy(port: int, proc: subprocess.Popen[bytes], timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError("instructions bench: the proxy under valgrind exited")
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            conn.request("GET", "/healthz")
            conn.getresponse().read()
            return
        except OSError:
            time.sleep(0.5)
    raise RuntimeError("instructions bench: the proxy under valgrind never answered")


def _counted(pid: int, out: Path, during: Callable[[], None]) -> tuple[int, int]:
    """The instructions the process ran while ``during`` ran: (every thread, the event loop's thread alone)."""
    before = set(glob.glob(f"{out}.{pid}.*"))
    subprocess.run(["callgrind_control", "--zero", str(pid)], check=True, capture_output=True)
    during()
    subprocess.run(["callgrind_control", "--dump", str(pid)], check=True, capture_output=True)
    dumps = sorted(set(glob.glob(f"{out}.{pid}.*")) - before)  # one file per thread: ``.N-01`` is the main one
    if not dumps:
        raise RuntimeError("instructions bench: callgrind wrote no dump")
    return sum(_total(d) for d in dumps), sum(_total(d) for d in dumps if d.endswith("-01"))


def measure(
    name: str,
    tmp: Path,
    up_port: int,
    body: str,
    headers: dict[str, str],
    env: dict[str, str] | None = None,
    streams: bool = False,
) -> dict[str, float]:
    """Instructions per request of one ``modeltrack serve`` under callgrind (its store: ``tmp/{name}.db``):
    ``gross``, everything the process ran while it answered, over ``N``; ``net``, less what it runs when idle
    for as long (its timers: see the module docstring). With ``streams``, also ``stream_event``: net
    instructions per streamed event, and ``stream_start``: per one-event stream on a new client connection."""
    p = modeltrack(name, tmp, up_port, env=env)
    out = tmp / f"callgrind-{name}.out"
    p.cmd = ["valgrind", "--tool=callgrind", "--separate-threads=yes", f"--callgrind-out-file={out}.%p", *p.cmd]
    COMMANDS.append(" ".join(p.cmd))
    log = (tmp / f"{name}.log").open("wb")
    proc = subprocess.Popen(p.cmd, env={**os.environ, **p.env}, stdout=log, stderr=log)
    try:
        _wait_healthy(p.port, proc)
        _fire(p.port, headers, body, 200)
        time.sleep(1)
        idle, idle_loop = (n / IDLE_SECONDS for n in _counted(proc.pid, out, lambda: time.sleep(IDLE_SECONDS)))
        t0 = time.monotonic()
        total, loop = _counted(proc.pid, out, lambda: _fire(p.port, headers, body, N))
        took = time.monotonic() - t0
        row = {
            "gross": total / N,
            "net": (total - idle * took) / N,
            "loop": (loop - idle_loop * took) / N,
            "idle_per_s": idle,
        }
        if streams:
            row["stream_event"] = _net(
                proc.pid, out, idle, lambda: _stream(p.port, headers, body), STREAMS * STREAM_EVENTS
            )
            row["stream_start"] = _net(proc.pid, out, idle, lambda: _starts(p.port, headers, body), STARTS)
        return row
    finally:
        _stop(proc)


def measure_nginx(nginx: Proc, tmp: Path, body: str, headers: dict[str, str]) -> dict[str, float]:
    """The bench's nginx counted the same way, for scale: ``net`` per plain request and ``stream_start``. One
    process (its configuration says ``master_process off``), the same upstream and requests; as for ModelTrack,
    what the kernel does for it is not counted."""
    out = tmp / "callgrind-nginx.out"
    cmd = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}.%p", *nginx.cmd]
    COMMANDS.append(" ".join(cmd))
    log = (tmp / "cg-nginx.log").open("wb")
    proc = subprocess.Popen(cmd, stdout=log, stderr=log)
    try:
        wait_port(nginx.port, timeout=120)
        _fire(nginx.port, headers, body, 200)
        time.sleep(1)
        idle = _counted(proc.pid, out, lambda: time.sleep(IDLE_SECONDS))[0] / IDLE_SECONDS
        return {
            "net": _net(proc.pid, out, idle, lambda: _fire(nginx.port, headers, body, N), N),
            "stream_start": _net(proc.pid, out, idle, lambda: _starts(nginx.port, headers, body), STARTS),
        }
    finally:
        _stop(proc)


def _net(pid: int, out: Path, idle: float, during: Callable[[], None], count: int) -> float:
    """Instructions per unit of what ``during`` did, less the idle rate for as long as it took."""
    t0 = time.monotonic()
    total, _ = _counted(pid, out, during)
    return (total - idle * (time.monotonic() - t0)) / count


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(60)
    except subprocess.TimeoutExpired:
        proc.kill()


def run(tmp: Path, up_port: int, body: str, auth: str, nginx: Proc | None = None) -> dict[str, list[dict[str, float]]]:
    """``plain``, ``key`` and ``key_budget`` instructions per request, one measurement per layout (in the order of
    :data:`LAYOUTS`), and with ``nginx`` (a single-process configuration, not started) ``nginx``, one
    measurement; empty without valgrind."""
    if shutil.which("valgrind") is None or shutil.which("callgrind_control") is None:
        return {}
    from bench.controls import KEYED_BUDGET, make_key

    base = {"Content-Type": "application/json", "Authorization": f"Bearer {auth}"}
    controls = tmp / "cg-budget.json"
    controls.write_text(json.dumps(KEYED_BUDGET))
    rows: dict[str, list[dict[str, float]]] = {"plain": [], "key": [], "key_budget": []}
    for i, pad in enumerate(LAYOUTS):
        layout = {"BENCH_LAYOUT_PAD": "x" * pad}
        rows["plain"].append(measure(f"cg-plain-{i}", tmp, up_port, body, base, layout, streams=True))
        key = make_key(tmp / f"cg-key-{i}.db")
        rows["key"].append(measure(f"cg-key-{i}", tmp, up_port, body, {**base, "X-ModelTrack-Key": key}, layout))
        key = make_key(tmp / f"cg-key-budget-{i}.db")
        env = {"MODELTRACK_CONTROLS_FILE": str(controls), **layout}
        rows["key_budget"].append(
            measure(f"cg-key-budget-{i}", tmp, up_port, body, {**base, "X-ModelTrack-Key": key}, env)
        )
    if nginx is not None:
        rows["nginx"] = [measure_nginx(nginx, tmp, body, base)]
    return rows


def report(rows: dict[str, list[dict[str, float]]]) -> list[str]:
    if not rows:
        return [
            "Instructions per request (callgrind): not measured, valgrind is not installed "
            "(`apt-get install valgrind`).",
            "",
        ]
    plain = rows["plain"]
    lines = [
        f"Instructions per request (callgrind, {N:,} requests from {CONNECTIONS} connections, every thread of the "
        f"process; the median of {len(LAYOUTS)} processes a target, each with its own memory layout; see "
        "bench/instructions.py). The host's noise does not move these. *Net* leaves out what the process runs "
        f"when idle (its timers, measured over {IDLE_SECONDS:.0f} s), which valgrind's slowness would otherwise "
        "charge to each request ~50 times over. *vs plain* is the median of the ratios layout by layout, their "
        "range beside it:",
        "",
        "| target | net instructions per request | vs plain | (range) | the event loop's thread (net) | vs plain "
        "| gross | vs plain | idle, per second |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, label in (("plain", "plain"), ("key", "key + RPM/TPM limits"), ("key_budget", "key + limits + budget")):
        runs = rows[name]

        def med(field: str, runs: list[dict[str, float]] = runs) -> float:
            return statistics.median(r[field] for r in runs)

        def ratios(field: str, runs: list[dict[str, float]] = runs) -> list[float]:
            return [r[field] / p[field] for r, p in zip(runs, plain, strict=True)]

        net = ratios("net")
        lines.append(
            f"| {label} | {med('net'):,.0f} | {statistics.median(net):.1%} | {min(net):.1%}–{max(net):.1%} | "
            f"{med('loop'):,.0f} | {statistics.median(ratios('loop')):.1%} | {med('gross'):,.0f} | "
            f"{statistics.median(ratios('gross')):.1%} | {med('idle_per_s'):,.0f} |"
        )
    for field, what in (
        (
            "stream_event",
            f"A streamed event (the plain processes, {STREAMS} unpaced SSE chat streams of {STREAM_EVENTS:,} "
            "events each, net)",
        ),
        (
            "stream_start",
            f"A stream's start on a new client connection (the plain processes, {STARTS} one-event streams, each "
            "on a connection of its own, the upstream's kept; all of each, its event and its cost event included; "
            "net)",
        ),
    ):
        values = [r[field] for r in plain if field in r]
        if values:
            lines += [
                "",
                f"{what}: **{statistics.median(values):,.0f}** instructions "
                f"({min(values):,.0f}–{max(values):,.0f} over the layouts).",
            ]
    starts = [r["stream_start"] for r in plain if "stream_start" in r]
    for ng in rows.get("nginx", []):
        mt_plain = statistics.median(r["net"] for r in plain)
        lines += [
            "",
            f"nginx, counted the same way for scale (one process, its user-space work only, like ModelTrack's): "
            f"{ng['net']:,.0f} instructions a plain request (ModelTrack {mt_plain / ng['net']:.1f}×)"
            + (
                f", {ng['stream_start']:,.0f} a stream's start (ModelTrack "
                f"{statistics.median(starts) / ng['stream_start']:.1f}×)."
                if starts
                else "."
            ),
        ]
    return [*lines, ""]
