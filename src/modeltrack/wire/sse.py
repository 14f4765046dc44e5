"""Incremental, byte-level Server-Sent Events splitter.

Why bytes and not text: the proxy forwards upstream bytes untouched, and the meter only needs a handful of
events per stream. Decoding every chunk to ``str`` would cost time and break on a UTF-8 sequence split across
chunks. Lines are split on ``\\n``, ``\\r\\n`` and ``\\r`` (the SSE spec's three terminators), including a
CRLF split across two chunks; the ``data`` of an event is returned as the raw bytes, joined with ``\\n``
for multi-line data, exactly as the spec describes. Nothing is JSON-decoded here.
"""

from __future__ import annotations

from typing import NamedTuple


class SSEEvent(NamedTuple):
    event: bytes
    """The ``event:`` field, or ``b""`` when the stream did not set one (the spec's default "message")."""
    data: bytes


class SSESplitter:
    """Feed it chunks, get complete events back.

    ``feed`` returns only completed events; ``close`` flushes a final event that lacked its trailing blank line
    (common when an upstream connection drops, and valid input for metering).
    """

    __slots__ = ("_buf", "_data", "_event", "_has_data", "_skip_lf")

    def __init__(self) -> None:
        self._buf = b""
        self._skip_lf = False
        self._event = b""
        self._data: list[bytes] = []
        self._has_data = False

    def feed(self, chunk: bytes) -> list[SSEEvent]:
        if self._skip_lf:
            # The previous chunk ended in CR: a LF opening this chunk belongs to that CRLF, not a blank line.
            self._skip_lf = False
            if chunk[:1] == b"\n":
                chunk = chunk[1:]
        buf = self._buf + chunk if self._buf else chunk
        end = max(buf.rfind(b"\n"), buf.rfind(b"\r"))
        if end < 0:
            self._buf = buf
            return []
        complete = buf[: end + 1]
        self._buf = buf[end + 1 :]
        if complete[-1:] == b"\r" and not self._buf:
            # Only when the CR was the very last byte can the next chunk's first byte be its LF.
            self._skip_lf = True
        out: list[SSEEvent] = []
        for line in complete.splitlines():
            self._line(line, out)
        return out

    def close(self) -> list[SSEEvent]:
        out: list[SSEEvent] = []
        if self._buf:
            self._line(self._buf, out)
            self._buf = b""
        self._line(b"", out)
        return out

    def _line(self, line: bytes, out: list[SSEEvent]) -> None:
        if not line:
            if self._has_data or self._event:
                out.append(SSEEvent(self._event, b"\n".join(self._data)))
            self._event = b""
            self._data = []
            self._has_data = False
            return
        if line[0] == 0x3A:  # ":" comment / keep-alive
            return
        colon = line.find(b":")
        if colon < 0:
            name, value = line, b""
        else:
            name = line[:colon]
            value = line[colon + 1 :]
            if value[:1] == b" ":
                value = value[1:]
        if name == b"data":
            self._data.append(value)
            self._has_data = True
        elif name == b"event":
            self._event = value
        # "id" and "retry" carry nothing the meter needs; unknown fields are ignored per the spec.
