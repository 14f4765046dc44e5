"""Size limits of the HTTP layer, and the load ceilings one process shares across all its client connections.

Why ceilings: every request may buffer up to ``MODELTRACK_MAX_BODY_BYTES`` before it is forwarded, so without a
cap on the total a flood of large bodies is a flood of memory. As uvicorn's ``limit_concurrency``, a request
past a ceiling is answered ``503`` with ``Retry-After`` at once, before its body is read, and the connection is
closed; everything already admitted is unaffected.
"""

from __future__ import annotations

from typing import Final

MAX_HEADER_BYTES: Final = 64 * 1024
"""Request and response header blocks above this are refused (431 from clients, 502 from upstreams)."""
MAX_HEADERS: Final = 200


class Limits:
    """Counters for one process: requests in flight, and request-body bytes buffered or promised.

    A request is admitted with the body size its ``Content-Length`` promises (reserved up front, so a thousand
    clients promising 30 MiB each cannot all start); a chunked body takes bytes as they arrive. 0 means no cap.
    """

    __slots__ = ("buffered", "max_buffered", "max_requests", "requests")

    def __init__(self, max_requests: int = 0, max_buffered: int = 0) -> None:
        self.max_requests = max_requests
        self.max_buffered = max_buffered
        self.requests = 0
        self.buffered = 0

    def admit(self, declared: int) -> bool:
        if self.max_requests and self.requests >= self.max_requests:
            return False
        if self.max_buffered and declared and self.buffered + declared > self.max_buffered:
            return False
        self.requests += 1
        self.buffered += declared
        return True

    def take(self, n: int) -> bool:
        """Count ``n`` more body bytes; False when that passes the ceiling (the request is then refused)."""
        self.buffered += n
        return not self.max_buffered or self.buffered <= self.max_buffered

    def release(self, requests: int, nbytes: int) -> None:
        self.requests -= requests
        self.buffered -= nbytes
