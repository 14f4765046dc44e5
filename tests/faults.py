"""Real servers and fault injection for pipeline tests: the Firestore and BigQuery emulators, and a TCP proxy that
can cut connections or black-hole responses (the "commit applied, answer lost" ambiguity)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import TypeVar

from bench.sysinfo import free_port, wait_port

EMULATOR = os.environ.get(
    "MODELTRACK_FIRESTORE_EMULATOR",
    "/usr/lib/google-cloud-sdk/platform/cloud-firestore-emulator/cloud_firestore_emulator",
)


class FirestoreEmulator:
    def __init__(self, port: int, log: Path) -> None:
        self.port = port
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        if not os.path.exists(EMULATOR):
            raise RuntimeError(f"Firestore emulator not found at {EMULATOR}")
        out = open(self.log, "wb")
        self.proc = subprocess.Popen(
            [EMULATOR, "--host", "127.0.0.1", "--port", str(self.port)],
            stdout=out,
            stderr=out,
            start_new_session=True,
        )
        _wait_http(self.proc, f"http://{self.host}/", self.log, "Firestore emulator")

    def stop(self) -> None:
        _stop_group(self.proc)


def _wait_http(proc: subprocess.Popen[bytes], url: str, log: Path, what: str) -> None:
    """Until ``url`` answers 200 (90 s at most), or ``proc`` exits (its log's end is the error)."""
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited: {log.read_text()[-2000:]}")
        with contextlib.suppress(OSError):
            with urllib.request.urlopen(url, timeout=1) as r:
                if r.status == 200:
                    return
        time.sleep(0.25)
    raise RuntimeError(f"{what} did not start in 90 s")


def _stop_group(proc: subprocess.Popen[bytes] | None) -> None:
    if proc is not None and proc.poll() is None:
        os.killpg(proc.pid, 15)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)


@contextlib.contextmanager
def emulator_running(emu: E, variable: str = "FIRESTORE_EMULATOR_HOST") -> Iterator[E]:
    """Started, with ``variable`` (``FIRESTORE_EMULATOR_HOST``, ``BIGQUERY_EMULATOR_HOST``) pointing the client
    at it; stopped and the variable restored after (the test session's emulators, and the bench's)."""
    emu.start()
    old = os.environ.get(variable)
    os.environ[variable] = emu.host
    try:
        yield emu
    finally:
        emu.stop()
        if old is None:
            os.environ.pop(variable, None)
        else:
            os.environ[variable] = old


E = TypeVar("E", "FirestoreEmulator", "BigQueryEmulator")
BQ_VENV = Path(os.environ.get("MODELTRACK_BQ_VENV", Path(__file__).parent.parent / ".venv-bqemulator"))


class BigQueryEmulator:
    """bqemulator (PyPI; scripts/test-tools installs it into its own venv) on free loopback ports, in memory. Its
    DuckDB loads the spatial extension at start: from the PyPI package beside it, through a ``HOME`` of the
    emulator's own (DuckDB looks in ``$HOME/.duckdb/extensions``), so nothing of this machine's is touched."""

    project = "modeltrack-test"

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        exe = BQ_VENV / "bin" / "bqemulator"
        if not exe.exists():
            raise RuntimeError(f"BigQuery emulator not found at {exe}: run scripts/test-tools")
        pattern = "lib/python*/site-packages/duckdb_extension_spatial/extensions/v*/*.duckdb_extension"
        found = sorted(BQ_VENV.glob(pattern))
        if not found:
            raise RuntimeError("duckdb-extension-spatial is missing from the emulator's venv: run scripts/test-tools")
        ext = found[-1]
        home = self.dir / "home"
        target = home / ".duckdb" / "extensions" / ext.parent.name / "linux_amd64"
        target.mkdir(parents=True, exist_ok=True)
        link = target / ext.name
        if not link.exists():
            link.symlink_to(ext)
        log = open(self.dir / "bqemulator.log", "wb")
        self.proc = subprocess.Popen(
            [
                str(exe),
                "start",
                "--rest-port",
                str(self.port),
                "--grpc-port",
                str(free_port()),
                "--project",
                self.project,
                "--log-level",
                "warning",
            ],
            stdout=log,
            stderr=log,
            env={**os.environ, "HOME": str(home)},
            start_new_session=True,
        )
        url = f"http://{self.host}/bigquery/v2/projects/{self.project}/datasets"
        _wait_http(self.proc, url, self.dir / "bqemulator.log", "BigQuery emulator")

    def stop(self) -> None:
        _stop_group(self.proc)


class RedisServer:
    """A throw-away ``redis-server`` (apt) on a loopback port: no persistence, no other clients."""

    def __init__(self, port: int, directory: Path) -> None:
        self.port = port
        self.dir = directory
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        out = open(self.dir / "redis.log", "wb")
        self.proc = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.dir),
            ],
            stdout=out,
            stderr=out,
            start_new_session=True,
        )
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"redis-server exited: {(self.dir / 'redis.log').read_text()[-2000:]}")
            with contextlib.suppress(OSError):
                import socket

                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as sock:
                    sock.sendall(b"PING\r\n")
                    if sock.recv(16).startswith(b"+PONG"):
                        return
            time.sleep(0.1)
        raise RuntimeError("redis-server did not start in 20 s")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)


class FaultyTCPProxy:
    """``pass`` forwards both ways; ``cut()`` drops every connection and refuses new ones; ``blackhole()``
    forwards requests but swallows responses; ``restore()`` goes back to ``pass`` (dropping tainted links)."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = 0
        self.mode = "pass"
        self._server: asyncio.Server | None = None
        self._links: set[asyncio.StreamWriter] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.mode == "cut":
            writer.close()
            return
        try:
            ur, uw = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.close()
            return
        self._links.update((writer, uw))

        async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter, response: bool) -> None:
            with contextlib.suppress(Exception):
                while data := await src.read(65536):
                    if self.mode == "cut":
                        break
                    if response and self.mode == "blackhole":
                        continue
                    dst.write(data)
                    await dst.drain()
            for w in (dst,):
                with contextlib.suppress(Exception):
                    w.close()

        await asyncio.gather(pump(reader, uw, False), pump(ur, writer, True))
        self._links.difference_update((writer, uw))

    def _drop_links(self) -> None:
        for w in list(self._links):
            with contextlib.suppress(Exception):
                w.transport.abort()
        self._links.clear()

    def cut(self) -> None:
        self.mode = "cut"
        self._drop_links()

    def blackhole(self) -> None:
        self.mode = "blackhole"

    def restore(self) -> None:
        self._drop_links()
        self.mode = "pass"

    async def stop(self) -> None:
        self._drop_links()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()


class Tinyproxy:
    """A real forward proxy on a free loopback port, logging every connection it handles."""

    def __init__(self, tmp: Path, auth: tuple[str, str] | None = None) -> None:
        exe = shutil.which("tinyproxy") or "/usr/bin/tinyproxy"
        if not os.path.exists(exe):
            raise RuntimeError("tinyproxy is not installed (apt-get install tinyproxy; `make test` does it)")
        self.port = free_port()
        self.log = tmp / "tinyproxy.log"
        conf = tmp / "tinyproxy.conf"
        lines = [
            f"Port {self.port}",
            "Listen 127.0.0.1",
            "Timeout 30",
            "Allow 127.0.0.1",
            f'LogFile "{self.log}"',
            "LogLevel Info",
            "MaxClients 50",
            "DisableViaHeader Yes",
        ]
        if auth:
            lines.append(f"BasicAuth {auth[0]} {auth[1]}")
        if os.geteuid() == 0:
            lines += ["User root", "Group root"]
        conf.write_text("\n".join(lines) + "\n")
        self.proc = subprocess.Popen([exe, "-d", "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_port(self.port, 10)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def stop(self) -> None:
        self.proc.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(5)
