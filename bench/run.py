"""`make bench`: ModelTrack's own overhead, side by side with a direct connection and nginx, in one run.

Everything talks to the same cheap fake upstream (bench/upstream.py). Load comes from `wrk` (outside Python) for
request/response scenarios and from a small asyncio client for stream timing. Results are reported as ratios
to the direct connection and to nginx (the machine is shared and noisy; ratios survive that better than absolute
numbers) and written to bench/results/latest.md plus a PNG chart.

    python -m bench.run [--quick] [--peers]      (--peers adds LiteLLM proxy, installed in its own venv)
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path
from typing import Any

from bench.harness import BODY, COMMANDS, LOAD_KEY, Proc, closed_loop, modeltrack, scrape, wrk
from bench.streams import streams
from bench.sysinfo import free_port, rss_kb

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"


# --- streams (the client: bench/streams.py) ------------------------------------------------------------------


async def open_streams_rss(url: str, pid: int, count: int) -> int:
    """Peak RSS of ``pid`` while ``count`` slow streams are open at once."""
    peak = 0
    task = asyncio.create_task(streams(url, count, 10, 400))
    while not task.done():
        peak = max(peak, rss_kb(pid))
        await asyncio.sleep(0.1)
    await task
    return peak


async def big_stream_rss(url: str, pid: int, total_bytes: int) -> tuple[int, int, float]:
    before = rss_kb(pid)
    peak = before
    pad = 65536
    n = total_bytes // (pad + 300)
    task = asyncio.create_task(streams(url, 1, n, 0, pad))
    while not task.done():
        peak = max(peak, rss_kb(pid))
        await asyncio.sleep(0.05)
    r = await task
    return before, peak, r["mb_per_s"]


# --- peers -----------------------------------------------------------------------------------------------------


def pinned_scaling(tmp: Path, up_port: int, up_pid: int, lua: Path, secs: int) -> dict[str, dict[str, float]]:
    """1 → 2 workers with every part on its own cores (issue O): wrk on core 0, the upstream on core 1, the proxy
    on core 2, then its two workers on cores 2 and 3. Nothing on fewer than 4 cores (see the report)."""
    if (os.cpu_count() or 1) < 4 or shutil.which("taskset") is None:
        return {}
    subprocess.run(["taskset", "-p", "-c", "1", str(up_pid)], check=True, capture_output=True)
    out: dict[str, dict[str, float]] = {}
    try:
        for name, workers, cpus in (("pinned: 1 worker", "1", "2"), ("pinned: 2 workers", "2", "2,3")):
            p = modeltrack(name.replace(" ", "-").replace(":", ""), tmp, up_port, "--workers", workers, cpus=cpus)
            p.start(tmp)
            try:
                url = f"http://127.0.0.1:{p.port}/v1/chat/completions"
                wrk(url, 8, 1, lua, cpus="0")
                r64, r1 = wrk(url, 64, secs, lua, cpus="0"), wrk(url, 1, secs, lua, cpus="0")
                out[name] = {
                    "rps": r64["rps"],
                    "c64_p99_ms": r64.get("p99_ms", 0),
                    "non2xx": r64["non2xx"],
                    "c1_p50_ms": r1.get("p50_ms", 0),
                    "c1_p99_ms": r1.get("p99_ms", 0),
                }
            finally:
                p.stop()
    finally:
        all_cpus = f"0-{(os.cpu_count() or 1) - 1}"
        subprocess.run(["taskset", "-p", "-c", all_cpus, str(up_pid)], check=False, capture_output=True)
    return out


def nginx(port: int, upstream: int, tmp: Path, single: bool = False) -> Proc:
    """The nginx target, one worker; ``single``: no master process either, for callgrind (bench/instructions.py)."""
    tmp.mkdir(parents=True, exist_ok=True)
    conf = tmp / "nginx.conf"
    master = "master_process off;" if single else ""
    conf.write_text(f"""
worker_processes 1;
{master}
daemon off;
pid {tmp}/nginx.pid;
error_log {tmp}/nginx-error.log warn;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  client_body_temp_path {tmp}/ncb; proxy_temp_path {tmp}/npt; fastcgi_temp_path {tmp}/nft;
  uwsgi_temp_path {tmp}/nut; scgi_temp_path {tmp}/nst;
  # idle connections kept: ModelTrack's default, MODELTRACK_UPSTREAM_MAX_IDLE
  upstream up {{ server 127.0.0.1:{upstream}; keepalive 1024; }}
  server {{
    listen 127.0.0.1:{port} backlog=4096;
    location / {{
      proxy_pass http://up;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_buffering off;
      proxy_request_buffering off;
    }}
  }}
}}
""")
    return Proc("nginx", [shutil.which("nginx") or "/usr/sbin/nginx", "-c", str(conf)], port)


def litellm(port: int, upstream: int, tmp: Path) -> Proc | None:
    venv = ROOT / "bench" / ".venv-litellm"
    exe = venv / "bin" / "litellm"
    if not exe.exists():
        print("installing LiteLLM proxy into bench/.venv-litellm (once) ...", flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(venv / "bin" / "pip"), "install", "-q", "litellm[proxy]"], check=True)
    cfg = tmp / "litellm.yaml"
    cfg.write_text(f"""model_list:
  - model_name: gpt-4o-mini
    litellm_params:
      model: openai/gpt-4o-mini
      api_base: http://127.0.0.1:{upstream}/v1
      api_key: sk-bench
""")
    return Proc(
        "litellm",
        [str(exe), "--config", str(cfg), "--port", str(port), "--num_workers", "1"],
        port,
        # The master key is the key the load script already sends (wrk's Lua headers win over -H: a second
        # key on the command line would be ignored and every request answered 401).
        env={"LITELLM_LOCAL_MODEL_COST_MAP": "True", "LITELLM_MASTER_KEY": LOAD_KEY},
    )


# --- report ----------------------------------------------------------------------------------------------------


def machine() -> list[str]:
    def ver(pkg: str) -> str:
        try:
            return metadata.version(pkg)
        except metadata.PackageNotFoundError:
            return "-"

    nginx_v = subprocess.run(["nginx", "-v"], capture_output=True, text=True).stderr.strip()
    wrk_v = subprocess.run(["wrk", "-v"], capture_output=True, text=True).stdout.splitlines()[:1]
    return [
        f"- date: {time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime())}",
        f"- machine: {os.cpu_count()} cores, {platform.platform()}, {platform.processor() or platform.machine()}",
        f"- python {platform.python_version()}; modeltrack {ver('modeltrack')}, httptools {ver('httptools')}, "
        f"uvloop {ver('uvloop')}, orjson {ver('orjson')}",
        f"- {nginx_v}; {(wrk_v or ['wrk ?'])[0]}",
    ]


def chart(rows: dict[str, dict[str, float]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(rows)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    palette = ["#888", "#2a7", "#27c", "#58e", "#c72"]
    axes[0].bar(names, [rows[n]["rps"] for n in names], color=[palette[i % len(palette)] for i in range(len(names))])
    axes[0].tick_params(axis="x", labelrotation=20)
    axes[1].tick_params(axis="x", labelrotation=20)
    axes[0].set_title("Non-streaming chat, 64 connections (req/s)")
    axes[1].bar(names, [rows[n].get("c1_p50_ms", 0) for n in names], label="p50")
    axes[1].bar(
        names,
        [rows[n].get("c1_p99_ms", 0) - rows[n].get("c1_p50_ms", 0) for n in names],
        bottom=[rows[n].get("c1_p50_ms", 0) for n in names],
        label="p99",
        alpha=0.6,
    )
    axes[1].set_title("Latency at concurrency 1 (ms)")
    axes[1].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="short runs (harness smoke test)")
    ap.add_argument("--peers", action="store_true", help="also benchmark LiteLLM proxy")
    args = ap.parse_args()
    secs = 2 if args.quick else 10
    for tool in ("wrk", "nginx"):
        if shutil.which(tool) is None and not Path("/usr/sbin/nginx").exists():
            subprocess.run(["apt-get", "install", "-y", "-qq", tool], check=True)
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    tmp = Path(tempfile.mkdtemp(prefix="mt-bench-"))
    lua = tmp / "post.lua"
    lua.write_text(
        f"wrk.method = 'POST'\nwrk.body = '{BODY}'\nwrk.headers['Content-Type'] = 'application/json'\n"
        f"wrk.headers['Authorization'] = 'Bearer {LOAD_KEY}'\n"
    )
    up_port, ng_port, ll_port = free_port(), free_port(), free_port()
    procs: dict[str, Proc] = {}
    try:
        procs["upstream"] = Proc("upstream", [sys.executable, "-m", "bench.upstream", str(up_port)], up_port).start(tmp)
        procs["nginx"] = nginx(ng_port, up_port, tmp).start(tmp)
        procs["modeltrack"] = modeltrack("modeltrack", tmp, up_port).start(tmp)
        mt_port = procs["modeltrack"].port
        targets = {
            "direct": f"http://127.0.0.1:{up_port}",
            "nginx": f"http://127.0.0.1:{ng_port}",
            "modeltrack": f"http://127.0.0.1:{mt_port}",
        }
        headers: dict[str, dict[str, str]] = {}
        if args.peers:
            ll = litellm(ll_port, up_port, tmp)
            if ll is not None:
                procs["litellm"] = ll.start(tmp)
                time.sleep(3)
                targets["litellm"] = f"http://127.0.0.1:{ll_port}"

        rows: dict[str, dict[str, float]] = {}
        for name, url in targets.items():
            wrk(url + "/v1/chat/completions", 8, 1, lua, headers.get(name))  # warm-up
            before = scrape(url) if name == "modeltrack" else {}
            r64 = wrk(url + "/v1/chat/completions", 64, secs, lua, headers.get(name))
            if name == "modeltrack":
                # Does the store writer keep up under load? Events stored during the run against requests served.
                after = scrape(url)
                written = "modeltrack_events_written_total"
                keeping_up = {
                    "served": r64["rps"] * secs,
                    "stored": after.get(written, 0) - before.get(written, 0),
                    "queued": after.get("modeltrack_queue_depth", 0),
                }
            r1 = wrk(url + "/v1/chat/completions", 1, secs, lua, headers.get(name))
            rows[name] = {
                "rps": r64["rps"],
                "c64_p99_ms": r64.get("p99_ms", 0),
                "non2xx": r64["non2xx"],
                "c1_p50_ms": r1.get("p50_ms", 0),
                "c1_p99_ms": r1.get("p99_ms", 0),
            }
            if name in ("direct", "nginx", "modeltrack"):
                own = closed_loop(url + "/v1/chat/completions", min(secs, 5))
                rows[name] |= {"own_p50_ms": own["p50_ms"], "own_p99_ms": own["p99_ms"], "own_n": own["requests"]}
                rows[name]["own_s"] = min(secs, 5)
            print(name, rows[name], flush=True)

        # Scaling: the same proxy with --workers 2 (SO_REUSEPORT), non-streaming load only.
        procs["modeltrack-2w"] = modeltrack("modeltrack-2w", tmp, up_port, "--workers", "2").start(tmp)
        w2_port = procs["modeltrack-2w"].port
        url2 = f"http://127.0.0.1:{w2_port}/v1/chat/completions"
        wrk(url2, 8, 1, lua)
        r64 = wrk(url2, 64, secs, lua)
        r1 = wrk(url2, 1, secs, lua)
        rows["modeltrack --workers 2"] = {
            "rps": r64["rps"],
            "c64_p99_ms": r64.get("p99_ms", 0),
            "non2xx": r64["non2xx"],
            "c1_p50_ms": r1.get("p50_ms", 0),
            "c1_p99_ms": r1.get("p99_ms", 0),
        }
        procs.pop("modeltrack-2w").stop()
        rows.update(pinned_scaling(tmp, up_port, procs["upstream"].pid, lua, secs))

        from bench import controls as cbench

        control_rows = cbench.run(tmp, up_port, lua, secs, targets["modeltrack"])
        print("controls", control_rows, flush=True)
        from bench import instructions as ibench

        ng_single = nginx(free_port(), up_port, tmp / "cg-nginx", single=True)
        instruction_rows = ibench.run(tmp, up_port, BODY, LOAD_KEY, ng_single)
        print("instructions", instruction_rows, flush=True)

        n_streams = 100 if args.quick else 500
        paced: dict[str, dict[str, Any]] = {}
        again: dict[str, dict[str, Any]] = {}
        unpaced: dict[str, dict[str, Any]] = {}
        for name in ("direct", "nginx", "modeltrack"):
            paced[name] = asyncio.run(streams(targets[name], n_streams, 100, 20))
            # The same burst again at once: the connections the first one opened upstream are kept (ModelTrack's
            # pool, nginx's keepalive), where the first burst had to open them.
            again[name] = asyncio.run(streams(targets[name], n_streams, 100, 20))
            unpaced[name] = asyncio.run(streams(targets[name], 8, 2000 if args.quick else 20000, 0, 200))
            print(
                name,
                "paced",
                {k: v for k, v in paced[name].items() if k != "digests"},
                "unpaced",
                {k: v for k, v in unpaced[name].items() if k != "digests"},
                flush=True,
            )
        identical = (
            paced["direct"]["digests"] == paced["modeltrack"]["digests"] and len(paced["direct"]["digests"]) == 1
        )

        mt_pid = procs["modeltrack"].pid
        open_rss = asyncio.run(open_streams_rss(targets["modeltrack"], mt_pid, 200 if args.quick else 1000))
        gb = 50_000_000 if args.quick else 1_000_000_000
        before, peak, big_mbs = asyncio.run(big_stream_rss(targets["modeltrack"], mt_pid, gb))

        sys.path.insert(0, str(ROOT))
        from bench import pipeline as pbench
        from bench import pricing as prbench

        prow, trow = asyncio.run(pbench.main_async(20_000 if args.quick else 100_000, firestore=False))[:2]
        price = prbench.run(20_000 if args.quick else 200_000)
        from bench import batches as bbench

        batch_row = bbench.run(tmp, 2_000 if args.quick else 20_000)
        from bench import realtime as rtbench

        realtime_row = rtbench.run(tmp, 10 if args.quick else 50, 5 if args.quick else 20, 20)

        from bench import api as abench

        api_rows = abench.run(tmp, 100_000 if args.quick else 1_000_000, 10 if args.quick else 30)
    finally:
        for p in reversed(list(procs.values())):
            p.stop()

    d, ng, mt = rows["direct"], rows["nginx"], rows["modeltrack"]
    add_ttfb = paced["modeltrack"]["ttfb_p99_ms"] - paced["direct"]["ttfb_p99_ms"]
    add_late = paced["modeltrack"]["late_p99_ms"] - paced["direct"]["late_p99_ms"]
    ng_ttfb = paced["nginx"]["ttfb_p99_ms"] - paced["direct"]["ttfb_p99_ms"]
    ng_late = paced["nginx"]["late_p99_ms"] - paced["direct"]["late_p99_ms"]
    n_open = 200 if args.quick else 1000
    lines = [
        "# ModelTrack benchmark",
        "",
        *machine(),
        "",
        "One run, same machine, same fake upstream (bench/upstream.py). Ratios are what to compare.",
        "",
        "## Non-streaming chat completions",
        "",
        "| target | req/s (64 conns) | vs direct | p99 ms (64) | p50 ms (conc. 1) | p99 ms (conc. 1) |",
        "|---|---|---|---|---|---|",
    ]
    for name, r in rows.items():
        lines.append(
            f"| {name} | {r['rps']:,.0f} | {r['rps'] / d['rps']:.0%} | {r['c64_p99_ms']:.2f} | "
            f"{r['c1_p50_ms']:.3f} | {r['c1_p99_ms']:.3f} |"
        )
    for name, r in rows.items():
        if r["non2xx"]:
            lines.append(f"\n**{name} answered {r['non2xx']:,.0f} non-2xx responses: its figures are not comparable.**")
    lines += [
        "",
        f"Added latency at concurrency 1 (ModelTrack − direct): p50 **{mt['c1_p50_ms'] - d['c1_p50_ms']:.3f} ms**, "
        f"p99 **{mt['c1_p99_ms'] - d['c1_p99_ms']:.3f} ms** (issue O's targets ≤ 0.2 / ≤ 1 ms; issue 6's ≤ 0.5 / ≤ "
        f"1.5 ms). Throughput **{mt['rps'] / ng['rps']:.0%} of nginx** (issue O's target ≥ 25%), "
        f"{mt['rps'] / d['rps']:.0%} of direct (issue 6's target ≥ 30%).",
        "",
        "wrk corrects its latencies for coordinated omission: at concurrency 1, each response slower than two mean "
        "cycles adds a sample for every further cycle it lasted, so one 3 ms stall counts as about ten slow requests. "
        "The targets are judged on wrk's figures. Beside them, each request's own latency (a closed-loop client that "
        f"keeps every latency as measured, {mt['own_s']:.0f} s each, bench/closedloop.py): "
        + ", ".join(
            f"{n} p50 {rows[n]['own_p50_ms']:.3f} / p99 {rows[n]['own_p99_ms']:.3f} ms "
            f"({rows[n]['own_n']:,.0f} requests)"
            for n in ("direct", "nginx", "modeltrack")
        )
        + f"; added by ModelTrack p50 **{mt['own_p50_ms'] - d['own_p50_ms']:+.3f} ms**, "
        f"p99 **{mt['own_p99_ms'] - d['own_p99_ms']:+.3f} ms**.",
    ]
    w2 = rows["modeltrack --workers 2"]
    lines.append(
        f"Scaling 1 → 2 workers: {mt['rps']:,.0f} → {w2['rps']:,.0f} req/s (**{w2['rps'] / mt['rps']:.2f}×**; "
        f"wrk and the upstream share the same {os.cpu_count()} cores)."
    )
    if "pinned: 1 worker" in rows:
        p1, p2 = rows["pinned: 1 worker"]["rps"], rows["pinned: 2 workers"]["rps"]
        lines.append(
            f"Pinned (wrk on core 0, the upstream on core 1, the proxy on cores 2 and 3, `taskset`): {p1:,.0f} → "
            f"{p2:,.0f} req/s, **{p2 / p1:.2f}×** (target ≥ 1.8×)."
        )
    else:
        lines.append(
            f"Pinned scaling (target ≥ 1.8×) is not measured on {os.cpu_count()} cores: it needs 4, one for wrk, one "
            "for the upstream and one per worker; on fewer, the workers share cores with the load they serve."
        )
    if "litellm" in rows:
        lines.append(
            f"LiteLLM: {rows['litellm']['rps']:,.0f} req/s — ModelTrack is "
            f"**{mt['rps'] / max(rows['litellm']['rps'], 1e-9):.1f}×** (target ≥ 20×)."
        )
    lines += ["", *cbench.report(control_rows, mt), *ibench.report(instruction_rows)]
    lines += [
        f"## Streams ({n_streams} concurrent, 100 events 20 ms apart; and 8 unpaced streams)",
        "",
        "| target | TTFB p50 ms | TTFB p99 ms | event lateness p50 ms | p99 ms | unpaced MB/s | unpaced events/s |",
        "|---|---|---|---|---|---|---|",
    ]
    for name in paced:
        pc, un = paced[name], unpaced[name]
        lines.append(
            f"| {name} | {pc['ttfb_p50_ms']:.2f} | {pc['ttfb_p99_ms']:.2f} | {pc['late_p50_ms']:.2f} | "
            f"{pc['late_p99_ms']:.2f} | {un['mb_per_s']:.1f} | {un['events_per_s']:,.0f} |"
        )
    lines += [
        "",
        f"Added by ModelTrack: TTFB p99 **{add_ttfb:.2f} ms**, per-event lateness p99 **{add_late:.2f} ms** "
        f"(issue O's targets ≤ 5 ms; issue 6's ≤ 1 ms); bytes identical to direct: **{identical}**. Unpaced throughput "
        f"{unpaced['modeltrack']['mb_per_s'] / unpaced['nginx']['mb_per_s']:.0%} of nginx (target ≥ 50%).",
        "",
        f"Added by nginx, the standard, to the same streams: TTFB p99 **{ng_ttfb:.2f} ms**, per-event lateness p99 "
        f"**{ng_late:.2f} ms**. The client is bench/streams.py: raw protocols on uvloop, all {n_streams} streams "
        "started at once, TTFB from before each connection is opened.",
        "",
        f"The same {n_streams} streams again, right after, on the upstream connections the first burst opened "
        f"(ModelTrack's pool and nginx's keepalive keep them): TTFB p99 direct {again['direct']['ttfb_p99_ms']:.2f}, "
        f"nginx {again['nginx']['ttfb_p99_ms']:.2f}, modeltrack {again['modeltrack']['ttfb_p99_ms']:.2f} ms; added "
        f"by ModelTrack **{again['modeltrack']['ttfb_p99_ms'] - again['direct']['ttfb_p99_ms']:.2f} ms**, by nginx "
        f"{again['nginx']['ttfb_p99_ms'] - again['direct']['ttfb_p99_ms']:.2f} ms; lateness p99 added by ModelTrack "
        f"{again['modeltrack']['late_p99_ms'] - again['direct']['late_p99_ms']:.2f} ms.",
        "",
        "## Memory and the cost pipeline",
        "",
        f"- RSS with {n_open} concurrent open streams: **{open_rss / 1024:.0f} MB** (target ≤ 150 MB)",
        f"- one {gb / 1e9:.2f} GB stream: RSS {before / 1024:.0f} → peak {peak / 1024:.0f} MB "
        f"(**+{(peak - before) / 1024:.1f} MB**, target < 20 MB) at {big_mbs:.0f} MB/s",
        f"- pipeline into SQLite: drain {prow['drain_per_s']:,.0f} events/s, end-to-end "
        f"{prow['end_to_end_per_s']:,.0f} events/s (target ≥ 20,000), through the writer process; with the writer in "
        f"a thread {trow['drain_per_s']:,.0f} / {trow['end_to_end_per_s']:,.0f}. Enqueue p50 "
        f"{prow['enqueue_p50_us']:.1f} µs, "
        f"p99 **{prow['enqueue_p99_us']:.1f} µs** "
        f"(target < 20 µs; includes the crash-safe journal write)",
        f"- pricing: **{price['us_per_event']:.2f} µs** per event (target < 5 µs)",
        *bbench.report(batch_row),
        *rtbench.report(realtime_row),
        f"- the store writer under load: {keeping_up['stored']:,.0f} events stored while the 64-connection run served "
        f"{keeping_up['served']:,.0f} requests (**{keeping_up['stored'] / max(keeping_up['served'], 1):.0%}**), "
        f"{keeping_up['queued']:,.0f} queued at its end (target: the queue stays within a batch, 2,000)",
        "",
        *abench.report(api_rows),
        "## Commands",
        "",
        "```",
        *COMMANDS,
        "```",
        "",
    ]
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / ("quick.md" if args.quick else "latest.md")
    out.write_text("\n".join(lines))
    chart(rows, out.with_suffix(".png"))
    print("\n".join(lines))
    print(f"wrote {out} and {out.with_suffix('.png')}")


if __name__ == "__main__":
    main()
