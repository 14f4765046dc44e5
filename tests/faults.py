"""Real servers and fault injection for pipeline tests: the Firestore emulator, and a TCP proxy that can cut
connections or black-hole responses (the "commit applied, answer lost" ambiguity)."""

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
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"emulator exited: {self.log.read_text()[-2000:]}")
            with contextlib.suppress(OSError):
                with urllib.request.urlopen(f"http://{self.host}/", timeout=1) as r:
                    if r.status == 200:
                        return
            time.sleep(0.25)
        raise RuntimeError("Firestore emulator did not start in 90 s")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, 15)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, 9)


@contextlib.contextmanager
def emulator_running(emu: FirestoreEmulator) -> Iterator[FirestoreEmulator]:
    """Started, with ``FIRESTORE_EMULATOR_HOST`` pointing the Firestore client at it; stopped and the variable
    restored after (the test session's emulator, and the bench's)."""
    emu.start()
    old = os.environ.get("FIRESTORE_EMULATOR_HOST")
    os.environ["FIRESTORE_EMULATOR_HOST"] = emu.host
    try:
        yield emu
    finally:
        emu.stop()
        if old is None:
            os.environ.pop("FIRESTORE_EMULATOR_HOST", None)
        else:
            os.environ["FIRESTORE_EMULATOR_HOST"] = old


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
