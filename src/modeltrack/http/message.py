"""The messages of the client-facing server (:mod:`modeltrack.http.server`): a parsed request with its body arriving in
the background, the errors a request is refused with, and the head of a response. Kept apart from the
connection protocol so that the proxy, the app and the tests can use them without the protocol's machinery."""

from __future__ import annotations

import asyncio
from typing import Final

from .names import lower

RETRY_AFTER_SECONDS: Final = 1
REASONS: Final[dict[int, bytes]] = {
    200: b"OK",
    400: b"Bad Request",
    401: b"Unauthorized",
    403: b"Forbidden",
    404: b"Not Found",
    405: b"Method Not Allowed",
    408: b"Request Timeout",
    413: b"Content Too Large",
    429: b"Too Many Requests",
    431: b"Request Header Fields Too Large",
    500: b"Internal Server Error",
    502: b"Bad Gateway",
    503: b"Service Unavailable",
    504: b"Gateway Timeout",
    505: b"HTTP Version Not Supported",
}


class RequestError(Exception):
    """A request that cannot be served as sent: answered with ``status`` and a JSON error, then closed."""

    def __init__(self, status: int, kind: str, message: str) -> None:
        super().__init__(kind)
        self.status = status
        self.kind = kind
        self.message = message

    @property
    def extra_headers(self) -> bytes:
        return b"retry-after: %d\r\n" % RETRY_AFTER_SECONDS if self.status == 503 else b""


def too_large() -> RequestError:
    return RequestError(413, "request_too_large", "Request body exceeds MODELTRACK_MAX_BODY_BYTES.")


def overloaded() -> RequestError:
    return RequestError(503, "overloaded", "ModelTrack is at its request or body-buffer ceiling; retry shortly.")


class Request:
    """One parsed request. Headers are the raw ``(name, value)`` byte pairs in arrival order; the body arrives
    in the background and is awaited with :meth:`read`."""

    __slots__ = (
        "_admitted",
        "_done",
        "_parts",
        "_reserved",
        "_size",
        "_waiter",
        "error",
        "expect_continue",
        "headers",
        "keep_alive",
        "method",
        "refused",
        "target",
        "version",
        "websocket",
    )

    def __init__(self, method: str, target: bytes, headers: list[tuple[bytes, bytes]], version: str) -> None:
        self.method = method
        self.target = target
        self.headers = headers
        self.version = version
        self.keep_alive = True
        self.expect_continue = False
        self.error: RequestError | None = None  # set: the body will not be read (too large, malformed, refused)
        self.refused = False  # answered by the server itself, in its turn, without calling the handler
        self.websocket = False  # a GET asking to upgrade to WebSocket: the handler tunnels it or refuses it
        self._parts: list[bytes] = []
        self._size = 0
        self._done = False
        self._waiter: asyncio.Future[None] | None = None
        self._admitted = False
        self._reserved = 0  # body bytes counted against the process's Limits

    @property
    def complete(self) -> bool:
        """The whole body has arrived (or it failed): :meth:`read` will not wait."""
        return self._done or self.error is not None

    def header(self, lname: bytes) -> bytes | None:
        """The first value of a header, by lower-case name (a linear scan: requests carry ~10 headers)."""
        for k, v in self.headers:
            if len(k) == len(lname) and lower(k) == lname:
                return v
        return None

    def _fail(self, error: RequestError) -> None:
        if self.error is None:
            self.error = error
        self._parts.clear()
        self._wake()

    def _finish(self) -> None:
        self._done = True
        self._wake()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def read(self) -> bytes:
        """The whole body. Raises :class:`RequestError` (413 too large, 400 malformed, 503 over the buffer
        ceiling); callers bound the wait (slow bodies)."""
        if not self.complete:
            self._waiter = asyncio.get_running_loop().create_future()
            await self._waiter
        if self.error is not None:
            raise self.error
        parts = self._parts
        if len(parts) == 1:
            return parts[0]
        body = b"".join(parts)
        self._parts = [body]  # one copy of a large body, not two
        return body


def response_head(
    status: int,
    reason: bytes,
    header_block: bytes,
    length: int | None,
    chunked: bool,
    keep_alive: bool = False,
    http10: bool = False,
) -> bytes:
    if chunked:
        framing = b"transfer-encoding: chunked\r\n"
    else:
        framing = b"" if length is None else b"content-length: %d\r\n" % length
    if keep_alive:
        conn = b"connection: keep-alive\r\n" if http10 else b""
    else:
        conn = b"connection: close\r\n"
    return b"HTTP/1.1 %d %s\r\n%s%s%s\r\n" % (status, reason, header_block, framing, conn)
