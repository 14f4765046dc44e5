"""Run ``modeltrack serve`` as a real subprocess (the way users run it) for black-box tests."""

from __future__ import annotations

import asyncio
import atexit
import os
import signal
import ssl
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import aiohttp
from bench.sysinfo import free_port


async def wait_http_ok(
    url: str, timeout: float, alive: Callable[[], bool] = lambda: True, ssl_ctx: ssl.SSLContext | None = None
) -> bool:
    """Poll ``url`` until it answers 200 (True), the timeout passes or ``alive()`` turns false (False)."""
    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession() as s:
        while time.monotonic() < deadline and alive():
            try:
                async with s.get(url, ssl=ssl_ctx if ssl_ctx is not None else True) as r:
                    if r.status == 200:
                        return True
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.05)
    return False


_STARTED: list[subprocess.Popen[bytes]] = []


@atexit.register
def _kill_leftovers() -> None:
    """A test that fails before ``stop()`` must not leave a proxy running after the session."""
    for p in _STARTED:
        if p.poll() is None:
            p.kill()


class ProxyProcess:
    """``modeltrack serve`` in a subprocess on a free port. ``ca``: serve over TLS (MODELTRACK_TLS_CERT/KEY in
    ``env``) and trust this CA bundle when checking on it."""

    python = sys.executable

    def __init__(self, tmp: Path, env: dict[str, str], args: list[str] | None = None, ca: str | None = None) -> None:
        self.port = free_port()
        self.ca = ca
        self.log_path = tmp / "proxy.log"
        self.store = f"sqlite:///{tmp}/events.db"
        self.env = {
            **os.environ,
            "MODELTRACK_PORT": str(self.port),
            "MODELTRACK_STORE": self.store,
            "MODELTRACK_SPOOL_DIR": str(tmp / "spool"),
            "MODELTRACK_FLUSH_INTERVAL_MS": "50",
            **env,
        }
        self.args = args or []
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"{'https' if self.ca else 'http'}://{'localhost' if self.ca else '127.0.0.1'}:{self.port}"

    @property
    def metrics_port(self) -> int:
        return int(self.env.get("MODELTRACK_METRICS_PORT") or self.port)

    async def start(self) -> None:
        log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "modeltrack", "serve", *self.args], env=self.env, stdout=log, stderr=log
        )
        _STARTED.append(self.proc)
        proc = self.proc
        ctx = ssl.create_default_context(cafile=self.ca) if self.ca else None
        if not await wait_http_ok(self.url + "/healthz", 20, alive=lambda: proc.poll() is None, ssl_ctx=ctx):
            raise RuntimeError(f"proxy did not become healthy: {self.log_path.read_text()[-2000:]}")

    async def stop(self, sig: int = signal.SIGTERM, timeout: float = 20) -> int:
        assert self.proc is not None
        self.proc.send_signal(sig)
        for _ in range(int(timeout * 20)):
            if self.proc.poll() is not None:
                return self.proc.returncode
            await asyncio.sleep(0.05)
        self.proc.kill()
        raise RuntimeError("proxy did not exit on signal")

    async def wait(self, timeout: float = 30) -> int:
        assert self.proc is not None
        for _ in range(int(timeout * 20)):
            if self.proc.poll() is not None:
                return self.proc.returncode
            await asyncio.sleep(0.05)
        raise RuntimeError("proxy did not exit")

    def events_cli(self) -> bytes:
        return subprocess.run(
            [sys.executable, "-m", "modeltrack", "events", "--store", self.store],
            check=True,
            capture_output=True,
            env=self.env,
        ).stdout
