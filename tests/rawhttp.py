"""Raw HTTP over sockets for tests: hand-written servers (evil upstreams, canary listeners) and byte-exact
clients. What an HTTP library would tidy up (framing, duplicates, order, malformed lines) is sent as written."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


class RawServer:
    """A TCP server with a hand-written handler: evil upstreams and a canary that must never be contacted."""

    def __init__(self, handler: Handler | None = None) -> None:
        self.handler = handler
        self.connections = 0
        self.closed_at: list[float] = []
        self.server: asyncio.Server | None = None

    async def _handle(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            if self.handler is not None:
                await self.handler(r, w)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            self.closed_at.append(time.monotonic())
            w.close()

    async def __aenter__(self) -> RawServer:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()

    @property
    def port(self) -> int:
        assert self.server is not None
        return int(self.server.sockets[0].getsockname()[1])

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


async def read_request(r: asyncio.StreamReader) -> bytes:
    """One request with a Content-Length body (or none), as raw bytes."""
    head = await r.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":")[1])
    return head + (await r.readexactly(length) if length else b"")


async def read_response(r: asyncio.StreamReader, head_request: bool = False) -> tuple[bytes, bytes]:
    """(head, body) of one response; chunked bodies are de-chunked, close-delimited ones read to EOF."""
    head = await r.readuntil(b"\r\n\r\n")
    lower = head.lower()
    status = int(head.split(b" ", 2)[1])
    if head_request or status in (204, 304) or 100 <= status < 200:
        return head, b""
    if b"transfer-encoding: chunked" in lower:
        body = b""
        while True:
            size = int((await r.readuntil(b"\r\n")).strip(), 16)
            chunk = await r.readexactly(size + 2)
            if size == 0:
                return head, body
            body += chunk[:-2]
    for line in lower.split(b"\r\n"):
        if line.startswith(b"content-length:"):
            return head, await r.readexactly(int(line.split(b":")[1]))
    return head, await r.read()


async def raw(port: int, data: bytes, timeout: float = 5.0) -> bytes:
    """Send ``data`` on a new connection; return what comes back in the first read."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(data)
    await writer.drain()
    try:
        return await asyncio.wait_for(reader.read(65536), timeout)
    finally:
        writer.close()


def post(path: str, body: bytes = b"{}", extra: bytes = b"", version: bytes = b"1.1") -> bytes:
    return b"POST %s HTTP/%s\r\nHost: x\r\nContent-Type: application/json\r\n%sContent-Length: %d\r\n\r\n%s" % (
        path.encode(),
        version,
        extra,
        len(body),
        body,
    )


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


def port_of(url: str) -> int:
    return int(url.rsplit(":", 1)[1])
