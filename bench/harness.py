"""What every benchmark scenario shares: the request every client sends, processes it starts (and the commands it
ran, for the report), `wrk` runs parsed into numbers, and percentiles."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from bench.sysinfo import free_port, wait_port

COMMANDS: list[str] = []
LOAD_KEY = "sk-bench-not-a-key"  # a placeholder: the fake upstream checks no key
BODY = '{"model":"gpt-4o-mini","messages":[{"role":"user","content":"What is the capital of France?"}]}'


@dataclass
class Proc:
    name: str
    cmd: list[str]
    port: int
    env: dict[str, str] = field(default_factory=dict)
    proc: subprocess.Popen[bytes] | None = None

    def start(self, log_dir: Path) -> Proc:
        COMMANDS.append(" ".join(self.cmd))
        log = (log_dir / f"{self.name}.log").open("wb")
        self.proc = subprocess.Popen(self.cmd, env={**os.environ, **self.env}, stdout=log, stderr=log)
        wait_port(self.port)
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()


# --- wrk -------------------------------------------------------------------------------------------------------

_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1000.0}


def wrk(
    url: str,
    conns: int,
    seconds: int,
    lua: Path,
    extra_headers: dict[str, str] | None = None,
    cpus: str | None = None,
) -> dict[str, float]:
    """``cpus`` pins wrk to those cores (``taskset -c``), for the scaling row on a machine with cores to spare."""
    cmd = ["taskset", "-c", cpus] if cpus else []
    cmd += ["wrk", "-t", str(min(conns, 2)), "-c", str(conns), "-d", f"{seconds}s", "--latency", "-s", str(lua)]
    for k, v in (extra_headers or {}).items():
        cmd += ["-H", f"{k}: {v}"]
    cmd.append(url)
    # The bench's own throwaway keys are still keys: the report shows their prefix only.
    COMMANDS.append(re.sub(r"\bmt_[A-Za-z0-9_-]{6,}", "mt_…", " ".join(cmd)))
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    lat = {}
    for pct, val, unit in re.findall(r"^\s+(50|75|90|99)%\s+([\d.]+)(us|ms|s)\s*$", out, re.M):
        lat[f"p{pct}_ms"] = float(val) * _UNITS[unit]
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return {"rps": rps, **lat, "non2xx": float(errors.group(1)) if errors else 0.0}


def closed_loop(url: str, seconds: int) -> dict[str, float]:
    """Each request's own latency at concurrency 1, without wrk's correction (bench/closedloop.py), in a process
    of its own like wrk."""
    cmd = [sys.executable, "-m", "bench.closedloop", url, str(seconds)]
    COMMANDS.append(" ".join(["python", *cmd[1:]]))
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"bench.closedloop failed: {done.stderr.strip()[-500:]}")
    return {k: float(v) for k, v in json.loads(done.stdout).items()}


def pct(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    v = sorted(values)
    return v[min(len(v) - 1, int(len(v) * p))]


def modeltrack(
    name: str, tmp: Path, upstream_port: int, *args: str, env: dict[str, str] | None = None, cpus: str | None = None
) -> Proc:
    """``modeltrack serve`` on a free port against the fake upstream, with its own store and spool; ``cpus`` pins
    it, and the workers it starts, to those cores."""
    port = free_port()
    cmd = ["taskset", "-c", cpus] if cpus else []
    cmd += [sys.executable, "-m", "modeltrack", "serve", *args, "--port", str(port), "--log-level", "warning"]
    cmd += ["--store", f"sqlite:///{tmp}/{name}.db", "--spool-dir", str(tmp / f"spool-{name}")]
    return Proc(name, cmd, port, env={"MODELTRACK_OPENAI_BASE_URL": f"http://127.0.0.1:{upstream_port}", **(env or {})})


def scrape(base_url: str) -> dict[str, float]:
    """A target's Prometheus samples (``/metrics``), by series (``name`` or ``name{label="value"}``)."""
    import urllib.request

    with urllib.request.urlopen(base_url + "/metrics", timeout=10) as r:
        text = r.read().decode()
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            series, _, value = line.rpartition(" ")
            out[series] = float(value)
    return out
