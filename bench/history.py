"""Every committed run of `make bench`, read from the git history of bench/results/latest.md: issue O's rows one
line a run, and for each target `make bench` holds, how many runs met it. The figures drift with the host's hour,
so a single run says little; the README shows the latest run and those counts.

Run as ``python -m bench.history [--since YYYY-MM-DD]``; prints a Markdown table (bench/README.md keeps one).
"""

from __future__ import annotations

import argparse
import re
import subprocess
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
LATEST = "bench/results/latest.md"


def _git(*args: str) -> str:
    return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=True).stdout


def _num(pattern: str, text: str) -> float | None:
    m = re.search(pattern, text, re.M)
    return float(m.group(1).replace(",", "")) if m else None


def _streams(name: str, text: str) -> tuple[float, float] | None:
    """A target's TTFB p99 and lateness p99 from the streams table."""
    m = re.search(rf"^\| {name} \| -?[\d.]+ \| (-?[\d.]+) \| -?[\d.]+ \| (-?[\d.]+) \|", text, re.M)
    return (float(m.group(1)), float(m.group(2))) if m else None


def parse(text: str) -> dict[str, Any]:
    """One run's figures (None where that run's report did not have the row yet)."""
    row = r"^\| {} \| ([\d,]+) \|"
    mt, ng = _num(row.format("modeltrack"), text), _num(row.format("nginx"), text)
    direct, nginx = _streams("direct", text), _streams("nginx", text)
    return {
        # nginx's own added TTFB / lateness p99 to the same streams: the standard the streams target is read against.
        "ng_ttfb": nginx[0] - direct[0] if nginx and direct else None,
        "ng_late": nginx[1] - direct[1] if nginx and direct else None,
        # Which client timed the streams: aiohttp's until bench/streams.py (its raw protocols) replaced it.
        "stream_client": "raw" if "bench/streams.py" in text else "aiohttp",
        "date": (re.search(r"^- date: (\S+ \d\d:\d\d)", text, re.M) or [None, "?"])[1],
        "rps": mt,
        "nginx": ng,
        "share": mt / ng if mt and ng else None,
        "c1_p50": _num(r"concurrency 1 \(ModelTrack − direct\): p50 \*\*(-?[\d.]+) ms", text),
        "c1_p99": _num(r"concurrency 1 \(ModelTrack − direct\): p50 \*\*-?[\d.]+ ms\*\*, p99 \*\*(-?[\d.]+) ms", text),
        "ttfb": _num(r"Added by ModelTrack: TTFB p99 \*\*(-?[\d.]+) ms", text),
        "late": _num(r"per-event lateness p99 \*\*(-?[\d.]+) ms", text),
        # The same burst again at once, on the upstream connections the first one opened (from 2026-12-08 00:24).
        "ttfb_again": _num(
            r"on the upstream connections the first burst opened .*?added by ModelTrack \*\*(-?[\d.]+) ms", text
        ),
        "ng_ttfb_again": _num(r"on the upstream connections the first burst opened .*?by nginx (-?[\d.]+) ms", text),
        "key": _num(r"^\| key \+ RPM/TPM limits \| [\d,]+ \| ([\d.]+)%", text),
        "budget": _num(r"^\| key \+ limits \+ budget \| [\d,]+ \| ([\d.]+)%", text),
        # The other targets' rows, for the tally (met) only.
        "otel": _num(r"^\| OpenTelemetry export \| [\d,]+ \| (\d+)%", text),
        "cache_hit": _num(r"cache hit answers at p50 \*\*([\d.]+) ms", text),
        "unpaced": _num(r"Unpaced throughput (\d+)% of nginx", text),
        "e2e": _num(r"end-to-end ([\d,]+) events/s", text),
        "writer_queued": _num(r"\(\*\*\d+%\*\*\), ([\d,]+) queued at its end", text),
        "open_rss": _num(r"concurrent open streams: \*\*(\d+) MB", text),
        "pricing": _num(r"pricing: \*\*([\d.]+) µs", text),
        "breakdown_p95": _num(r"Worst 30-day breakdown p95: \*\*(\d+) ms", text),
        "page_p50": _num(r"Overview page in Chromium.*?p50 \*\*(\d+) ms", text),
        "export_rss": max(
            (float(v) for v in re.findall(r"^Export of .* \*\*\+([\d.]+) MB\*\* while streaming", text, re.M)),
            default=None,
        ),
    }


def runs(since: str = "") -> list[tuple[str, dict[str, Any]]]:
    """(commit, figures) for each commit that changed the results, oldest first."""
    out = []
    for line in _git("log", "--reverse", "--format=%h %as", "--", LATEST).splitlines():
        commit, day = line.split()
        if day < since:
            continue
        out.append((commit, parse(_git("show", f"{commit}:{LATEST}"))))
    return out


def _f(v: float | None, fmt: str) -> str:
    return "–" if v is None else format(v, fmt)


def table(rows: list[tuple[str, dict[str, Any]]]) -> str:
    lines = [
        "| run (UTC) | commit | req/s, 64 conns | nginx | share of nginx (≥ 25 %) | conc. 1 added p50 / p99 ms "
        "(≤ 0.2 / ≤ 1) | 500 streams added TTFB / lateness p99 ms (≤ 5) | the same, nginx's | stream client | "
        "key + limits / + budget, instructions (≤ 105 %) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for commit, r in rows:
        share = "–" if r["share"] is None else f"{r['share']:.0%}"
        lines.append(
            f"| {r['date']} | {commit} | {_f(r['rps'], ',.0f')} | {_f(r['nginx'], ',.0f')} | {share} | "
            f"{_f(r['c1_p50'], '+.3f')} / {_f(r['c1_p99'], '+.3f')} | {_f(r['ttfb'], '+.1f')} / "
            f"{_f(r['late'], '+.1f')} | {_f(r['ng_ttfb'], '+.1f')} / {_f(r['ng_late'], '+.1f')} | "
            f"{r['stream_client']} | {_f(r['key'], '.1f')} / {_f(r['budget'], '.1f')} |"
        )
    return "\n".join(lines)


# Each target: the figure it reads, and the test. Issue O's first, then the earlier issues' that `make bench` holds.
TARGETS: dict[str, tuple[str, Any]] = {
    "≥ 25 % of nginx's throughput (O)": ("share", lambda v: v >= 0.25),
    "concurrency 1, added p50 ≤ 0.2 ms (O)": ("c1_p50", lambda v: v <= 0.2),
    "concurrency 1, added p99 ≤ 1 ms (O)": ("c1_p99", lambda v: v <= 1.0),
    "500 paced streams, added TTFB p99 ≤ 5 ms (O)": ("ttfb", lambda v: v <= 5.0),
    "500 paced streams, added lateness p99 ≤ 5 ms (O)": ("late", lambda v: v <= 5.0),
    "the same TTFB target, met by nginx (the standard)": ("ng_ttfb", lambda v: v <= 5.0),
    "the same lateness target, met by nginx": ("ng_late", lambda v: v <= 5.0),
    "the same burst again, on the kept upstream connections: added TTFB p99 ≤ 5 ms (O)": (
        "ttfb_again",
        lambda v: v <= 5.0,
    ),
    "the same, by nginx on its kept connections": ("ng_ttfb_again", lambda v: v <= 5.0),
    "key + limits ≤ 105 % of a plain request's instructions (O)": ("key", lambda v: v <= 105.0),
    "key + limits + budget ≤ 105 % (O)": ("budget", lambda v: v <= 105.0),
    "OpenTelemetry export ≥ 95 % of plain's throughput, interleaved (N)": ("otel", lambda v: v >= 95),
    "a 10 kB cache hit, p50 < 1 ms": ("cache_hit", lambda v: v < 1.0),
    "unpaced SSE ≥ 50 % of nginx's throughput": ("unpaced", lambda v: v >= 50),
    "the pipeline into SQLite end to end ≥ 20,000 events/s": ("e2e", lambda v: v >= 20_000),
    "the store writer's queue within a batch (2,000) at saturation": ("writer_queued", lambda v: v <= 2_000),
    "RSS with 1,000 open streams ≤ 150 MB": ("open_rss", lambda v: v <= 150),
    "pricing < 5 µs an event": ("pricing", lambda v: v < 5.0),
    "the worst 30-day breakdown p95 < 200 ms (1M events, SQLite)": ("breakdown_p95", lambda v: v < 200),
    "the overview page in Chromium, p50 < 1 s": ("page_p50", lambda v: v < 1000),
    "an export of 1M events grows the server's RSS < 50 MB": ("export_rss", lambda v: v < 50),
}


# The streams' figures count only from runs timed by bench/streams.py: aiohttp's client, before it, was slower than
# what it timed, and its rounds varied by ±100 ms (bench/README.md, thirty-fifth session).
STREAM_KEYS = frozenset({"ttfb", "late", "ng_ttfb", "ng_late", "ttfb_again", "ng_ttfb_again"})


def met(rows: list[tuple[str, dict[str, Any]]]) -> dict[str, tuple[int, int]]:
    """How many runs met each target, of the runs that measured it."""
    out = {}
    for name, (key, ok) in TARGETS.items():
        counted = [r for _, r in rows if key not in STREAM_KEYS or r["stream_client"] == "raw"]
        measured = [r[key] for r in counted if r[key] is not None]
        out[name] = (sum(1 for v in measured if ok(v)), len(measured))
    return out


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--since", default="", help="only runs committed on or after this day (YYYY-MM-DD)")
    rows = runs(ap.parse_args().since)
    print(table(rows))
    print()
    for name, (n, of) in met(rows).items():
        print(f"- {name}: met in {n} of {of} runs")
