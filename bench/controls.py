"""The spend controls' cost on the request path, measured against plain ModelTrack in the same run:

* **controls on, nothing matching**: a controls file with budgets, routing rules and a cache rule, none of which
  apply to the benchmark's traffic (what most requests of a real deployment see);
* **response-cache hits** of a 10 kB answer at concurrency 1, next to the same answer fetched directly and
  through ModelTrack without the cache;
* **a ModelTrack key with rate limits and a budget** (issue K): every request carries an ``mt_`` key whose team
  has a block budget, and the key RPM and TPM limits (large enough never to refuse), so the row is the cost of
  checking them, not of refusals.

**Interleaved rounds.** On a 2-core machine shared with wrk and the upstream, two back-to-back runs of the same
target differ by up to 20 %, more than the 5 % these rows are judged by. So the targets whose cost is compared
(plain, key, key + budget, OpenTelemetry) are also measured in ``ROUNDS`` short rounds, each round running every
target once and starting with the next one (no target always runs after the same neighbour, whose store writer may
still be catching up). Each target is compared with plain within each round, and the median of those ratios is
reported with its quartiles: the throughput, and the proxy's own CPU time per request (``/proc``, all its threads),
which does not depend on how the cores were shared as much as throughput does.
"""

from __future__ import annotations

import contextlib
import json
import statistics
import sys
from pathlib import Path

from bench.harness import Proc, modeltrack, scrape, wrk
from bench.sysinfo import cpu_seconds, free_port

OTLP_RECEIVER = """
import http.server, sys
class H(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.send_response(200); self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", "0"); self.end_headers()
    def log_message(self, *a): pass
http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
"""
"""A stand-in OTLP/HTTP receiver (answers every export with 200): what the export costs the proxy, not a
collector's speed."""

NOTHING_MATCHES = {
    "budgets": [
        {"name": "other-team", "match": {"team": "nobody"}, "period": "monthly", "limit_usd": 100},
        {"name": "opus", "match": {"model": "claude-opus-*"}, "period": "daily", "limit_usd": 10},
    ],
    "routes": [
        {"name": "opus-down", "match": {"model": "claude-opus-*"}, "action": "downgrade", "to": "claude-sonnet-4-5"},
        {"name": "interns", "match": {"app": "intern-*"}, "action": "block", "status": 403},
    ],
    "cache": {"rules": [{"match": {"feature": "faq"}}]},
}
CACHE_ON = {"cache": {"max_bytes": 64 * 1024 * 1024}}
ROUNDS = 8
PACED_RPS = 2_000
"""The offered rate of the paced runs: well below saturation for every target, so each serves the same load
and its CPU time per request is the cost of the work itself (at saturation, a slower target also batches fewer
requests per loop turn, which inflates its CPU per request)."""
KEYED_BUDGET = {
    "budgets": [{"name": "bench-team", "match": {"team": "bench"}, "period": "monthly", "limit_usd": 10**6}]
}


def make_key(store_path: Path) -> str:
    """A team and a key with RPM and TPM limits in the bench store, through the same admin code as the API."""
    import asyncio

    from modeltrack.accounts import Actor, Admin, open_accounts

    async def go() -> str:
        store = open_accounts(f"sqlite:///{store_path}")
        assert store is not None
        admin, op = Admin(store), Actor.operator("bench")
        try:
            team, _ = await admin.create(op, "teams", {"name": "bench"})
            _, secret = await admin.create(
                op, "keys", {"name": "load", "team_id": team["id"], "rpm": 10**9, "tpm": 10**12}
            )
        finally:
            await store.close()
        assert secret is not None
        return secret

    return asyncio.run(go())


def run(tmp: Path, up_port: int, lua: Path, secs: int, plain_url: str) -> dict[str, dict[str, float]]:
    rows: dict[str, dict[str, float]] = {}
    procs: list[Proc] = []
    try:
        quiet = tmp / "controls-nothing-matches.json"
        quiet.write_text(json.dumps(NOTHING_MATCHES))
        p = modeltrack("modeltrack-controls", tmp, up_port, env={"MODELTRACK_CONTROLS_FILE": str(quiet)}).start(tmp)
        procs.append(p)
        url = f"http://127.0.0.1:{p.port}/v1/chat/completions"
        wrk(url, 8, 1, lua)
        r64, r1 = wrk(url, 64, secs, lua), wrk(url, 1, secs, lua)
        rows["modeltrack + controls (none match)"] = _row(r64, r1)

        # A key with its RPM/TPM limits, then the same with a block budget on its team: the two costs apart.
        secret = first = make_key(tmp / "modeltrack-keys.db")
        k = modeltrack("modeltrack-keys", tmp, up_port).start(tmp)
        procs.append(k)
        kurl, key = f"http://127.0.0.1:{k.port}/v1/chat/completions", {"X-ModelTrack-Key": secret}
        wrk(kurl, 8, 1, lua, key)
        rows["modeltrack + key, rate limits"] = _row(wrk(kurl, 64, secs, lua, key), wrk(kurl, 1, secs, lua, key))
        keyed = tmp / "controls-keyed-budget.json"
        keyed.write_text(json.dumps(KEYED_BUDGET))
        secret = make_key(tmp / "modeltrack-keys-budget.db")
        env = {"MODELTRACK_CONTROLS_FILE": str(keyed)}
        kb = modeltrack("modeltrack-keys-budget", tmp, up_port, env=env).start(tmp)
        procs.append(kb)
        kurl, key = f"http://127.0.0.1:{kb.port}/v1/chat/completions", {"X-ModelTrack-Key": secret}
        wrk(kurl, 8, 1, lua, key)
        rows["modeltrack + key, rate limits, budget"] = _row(
            wrk(kurl, 64, secs, lua, key), wrk(kurl, 1, secs, lua, key)
        )

        # OpenTelemetry export on, to a receiver on this machine: spans are made on the exporter's own thread.
        otlp_port = free_port()
        r = Proc("otlp-receiver", [sys.executable, "-c", OTLP_RECEIVER, str(otlp_port)], otlp_port).start(tmp)
        procs.append(r)
        env = {"MODELTRACK_OTEL_ENDPOINT": f"http://127.0.0.1:{otlp_port}"}
        o = modeltrack("modeltrack-otel", tmp, up_port, env=env).start(tmp)
        procs.append(o)
        ourl = f"http://127.0.0.1:{o.port}/v1/chat/completions"
        wrk(ourl, 8, 1, lua)
        otel_url = f"http://127.0.0.1:{o.port}"
        otel_catch_up(otel_url, o.pid, otel_counts(otel_url), 0.0)  # the warm-up's spans are out first
        before = otel_counts(otel_url), children_cpu(o.pid)
        rows["modeltrack + OpenTelemetry export"] = _row(wrk(ourl, 64, secs, lua), wrk(ourl, 1, secs, lua))
        rows["OpenTelemetry exporter"] = otel_catch_up(otel_url, o.pid, *before)

        # The interleaved rounds (see the module docstring), against a plain ModelTrack started like the others.
        plain = modeltrack("modeltrack-paired", tmp, up_port).start(tmp)
        procs.append(plain)
        purl = f"http://127.0.0.1:{plain.port}/v1/chat/completions"
        wrk(purl, 8, 1, lua)
        paired = {
            "plain": (plain, purl, None),
            "key, rate limits": (k, f"http://127.0.0.1:{k.port}/v1/chat/completions", {"X-ModelTrack-Key": first}),
            "key, rate limits, budget": (kb, kurl, key),
            "OpenTelemetry export": (o, ourl, None),
        }
        paced = lua.with_name("paced.lua")
        paced.write_text(lua.read_text() + f"\nfunction delay() return {64 * 1000 / PACED_RPS:.3f} end\n")
        samples: dict[str, list[tuple[float, float, float, float]]] = {name: [] for name in paired}
        names = list(paired)
        each = max(2, secs * 3 // 10)
        for round_ in range(ROUNDS):
            # Each round starts with the next target: no target always follows the same one.
            for name in names[round_ % len(names) :] + names[: round_ % len(names)]:
                proc, target, headers = paired[name]
                before = cpu_seconds(proc.pid)
                r = wrk(target, 64, each, lua, headers)
                served = r["rps"] * each
                cpu = (cpu_seconds(proc.pid) - before) / max(served, 1) * 1e6
                if proc is o:  # the spans of the run at saturation are out before the paced run is timed
                    otel_catch_up(otel_url, o.pid, otel_counts(otel_url), 0.0)
                before, worker = cpu_seconds(proc.pid), children_cpu(proc.pid)
                r2 = wrk(target, 64, each, paced, headers)
                paced_served = max(r2["rps"] * each, 1)
                at_rate = (cpu_seconds(proc.pid) - before) / paced_served * 1e6
                worker_at_rate = (children_cpu(proc.pid) - worker) / paced_served * 1e6
                samples[name].append((r["rps"], cpu, at_rate, worker_at_rate))
        base = samples["plain"]
        for name, got in samples.items():
            rps, cpu, at_rate, worker_at_rate = (sorted(col) for col in zip(*got, strict=True))
            mid = len(got) // 2
            # The comparison with plain is made within each round (the same minutes of a shared machine), then
            # its median taken: the machine's drift between rounds cancels out.
            vs = [sorted(g[i] / b[i] for g, b in zip(got, base, strict=True)) for i in range(3)]
            rows[f"interleaved: {name}"] = {
                "rps": rps[mid],
                "cpu_us": cpu[mid],
                "paced_cpu_us": at_rate[mid],
                "paced_worker_cpu_us": worker_at_rate[mid],
                "rps_vs_plain": statistics.median(vs[0]),
                "rps_vs_plain_q1": statistics.quantiles(vs[0], n=4)[0],
                "rps_vs_plain_q3": statistics.quantiles(vs[0], n=4)[2],
                "cpu_vs_plain": statistics.median(vs[1]),
                "paced_vs_plain": statistics.median(vs[2]),
            }

        cache = tmp / "controls-cache.json"
        cache.write_text(json.dumps(CACHE_ON))
        c = modeltrack("modeltrack-cache", tmp, up_port, env={"MODELTRACK_CONTROLS_FILE": str(cache)}).start(tmp)
        procs.append(c)
        ten_kb = "/v1/chat/completions?size=10000"
        hit = {"X-ModelTrack-Cache": "on"}
        wrk(f"http://127.0.0.1:{c.port}{ten_kb}", 1, 1, lua, hit)  # the first is a miss; every later one a hit
        rows["10 kB: cache hit"] = _row(
            wrk(f"http://127.0.0.1:{c.port}{ten_kb}", 64, secs, lua, hit),
            wrk(f"http://127.0.0.1:{c.port}{ten_kb}", 1, secs, lua, hit),
        )
        rows["10 kB: through ModelTrack, no cache"] = _row(
            wrk(plain_url + ten_kb, 64, secs, lua), wrk(plain_url + ten_kb, 1, secs, lua)
        )
        rows["10 kB: direct"] = _row(
            wrk(f"http://127.0.0.1:{up_port}{ten_kb}", 64, secs, lua),
            wrk(f"http://127.0.0.1:{up_port}{ten_kb}", 1, secs, lua),
        )
    finally:
        for p in procs:
            p.stop()
    return rows


def children_cpu(pid: int, module: str = "modeltrack.otel.worker") -> float:
    """CPU seconds used so far by the children of a process that run ``module``: ModelTrack's OpenTelemetry
    exporter worker, not its store writer (both are children). A worker that was replaced takes its CPU with it."""
    total = 0.0
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):
            for child in (task / "children").read_text().split():
                with contextlib.suppress(OSError):
                    if module.encode() in Path(f"/proc/{child}/cmdline").read_bytes().split(b"\0"):
                        total += cpu_seconds(int(child))
    return total


def otel_counts(base_url: str) -> tuple[float, float, float]:
    """(events stored, spans exported, spans dropped or failed) so far, from the proxy's own metrics."""
    m = scrape(base_url)
    spans = [m.get(f'modeltrack_otel_spans_total{{outcome="{o}"}}', 0.0) for o in ("exported", "dropped", "failed")]
    return m.get("modeltrack_events_written_total", 0.0), spans[0], spans[1] + spans[2]


def otel_catch_up(
    base_url: str, pid: int, before: tuple[float, float, float], cpu_before: float, wait: float = 120.0
) -> dict[str, float]:
    """Once the load has stopped: how many of the events stored during it were exported as spans by then, how
    long the exporter (at its lower CPU priority) took to export the rest, how many were lost (dropped or
    failed), and the exporter's CPU per span."""
    import time

    stored, at_end, _ = otel_counts(base_url)
    start = time.monotonic()
    while True:
        stored, exported, lost = otel_counts(base_url)
        if exported + lost >= stored or time.monotonic() - start > wait:
            break
        time.sleep(0.2)
    spans = exported - before[1]
    return {
        "stored": stored - before[0],
        "exported_at_end": at_end - before[1],
        "exported": spans,
        "lost": lost - before[2],
        "catch_up_s": time.monotonic() - start,
        "cpu_us_per_span": (children_cpu(pid) - cpu_before) / max(spans, 1) * 1e6,
    }


def _exporter_line(e: dict[str, float]) -> str:
    return (
        f"The spans are built and sent by the exporter's own process, at a lower CPU priority: "
        f"{e['cpu_us_per_span']:.0f} µs of CPU per span. Of the {e['stored']:,.0f} events stored during those runs, "
        f"{e['exported_at_end']:,.0f} had been exported when the load stopped, and {e['exported']:,.0f} "
        f"{e['catch_up_s']:.1f} s later; {e['lost']:,.0f} were dropped or failed."
    )


def _row(r64: dict[str, float], r1: dict[str, float]) -> dict[str, float]:
    return {
        "rps": r64["rps"],
        "c64_p99_ms": r64.get("p99_ms", 0),
        "non2xx": r64["non2xx"],
        "c1_p50_ms": r1.get("p50_ms", 0),
        "c1_p99_ms": r1.get("p99_ms", 0),
    }


def report(rows: dict[str, dict[str, float]], plain: dict[str, float]) -> list[str]:
    ctl, hit = rows["modeltrack + controls (none match)"], rows["10 kB: cache hit"]
    keyed = rows["modeltrack + key, rate limits"]
    budgeted = rows["modeltrack + key, rate limits, budget"]
    miss, direct = rows["10 kB: through ModelTrack, no cache"], rows["10 kB: direct"]
    lines = [
        "## Spend controls",
        "",
        "| target | req/s (64 conns) | p99 ms (64) | p50 ms (conc. 1) | p99 ms (conc. 1) |",
        "|---|---|---|---|---|",
    ]
    interleaved = {name.split(": ", 1)[1]: r for name, r in rows.items() if name.startswith("interleaved: ")}
    for name, r in [("modeltrack (controls off)", plain), *rows.items()]:
        if name.startswith("interleaved: ") or name == "OpenTelemetry exporter":
            continue
        lines.append(
            f"| {name} | {r['rps']:,.0f} | {r['c64_p99_ms']:.2f} | {r['c1_p50_ms']:.3f} | {r['c1_p99_ms']:.3f} |"
        )
    lines += [
        "",
        f"Controls on with no rule matching: **{ctl['rps'] / plain['rps']:.0%}** of the throughput with controls off, "
        f"p50 at concurrency 1 {ctl['c1_p50_ms'] - plain['c1_p50_ms']:+.3f} ms (target: within noise).",
        "A request with a ModelTrack key and its RPM/TPM limits: "
        f"**{keyed['rps'] / plain['rps']:.0%}** of the throughput of a plain request, p50 at concurrency 1 "
        f"{keyed['c1_p50_ms'] - plain['c1_p50_ms']:+.3f} ms (target: within 5 %); with a block budget on its team "
        f"too: **{budgeted['rps'] / plain['rps']:.0%}**, {budgeted['c1_p50_ms'] - plain['c1_p50_ms']:+.3f} ms.",
        "With OpenTelemetry export on (one span per stored event, to a receiver on this machine): "
        f"**{rows['modeltrack + OpenTelemetry export']['rps'] / plain['rps']:.0%}** of the throughput of a plain "
        f"request (target: within 5 %). {_exporter_line(rows['OpenTelemetry exporter'])}",
        f"A 10 kB response-cache hit answers at p50 **{hit['c1_p50_ms']:.3f} ms** (target < 1 ms), against "
        f"{miss['c1_p50_ms']:.3f} ms through ModelTrack to the upstream and {direct['c1_p50_ms']:.3f} ms direct; "
        f"{hit['rps']:,.0f} hits/s at 64 connections.",
        "",
    ]
    if interleaved:
        base = interleaved["plain"]
        lines += [
            f'Interleaved, {ROUNDS} rounds, each starting with the next target (medians; "vs plain" is the median of '
            "the ratios within each round, its quartiles beside it; see bench/controls.py):",
            "",
            "| target | req/s (64 conns) | vs plain | (quartiles) | proxy CPU µs per request | vs plain | "
            f"CPU µs per request at {PACED_RPS:,} req/s | vs plain |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for name, r in interleaved.items():
            lines.append(
                f"| {name} | {r['rps']:,.0f} | {r['rps_vs_plain']:.0%} | {r['rps_vs_plain_q1']:.0%}–"
                f"{r['rps_vs_plain_q3']:.0%} | {r['cpu_us']:.0f} | {r['cpu_vs_plain']:.0%} | {r['paced_cpu_us']:.0f} | "
                f"{r['paced_vs_plain']:.0%} |"
            )
        otel = interleaved.get("OpenTelemetry export")
        if otel is not None:
            lines += [
                "",
                "The proxy's CPU excludes the OpenTelemetry exporter's worker process, which used "
                f"{otel['paced_worker_cpu_us']:.0f} µs per request at {PACED_RPS:,} req/s on top "
                f"({(otel['paced_cpu_us'] + otel['paced_worker_cpu_us']) / base['paced_cpu_us']:.0%} of plain, both "
                "processes together).",
            ]
        lines.append("")
    return lines
