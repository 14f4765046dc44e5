"""Incremental, byte-level Server-Sent Events splitter.

Why bytes and not text: the proxy forwards upstream bytes untouched, and the meter only needs a handful of
events per stream. Decoding every chunk to ``str`` would cost time and break on a UTF-8 sequence split across
chunks. Lines are split on ``\\n``, ``\\r\\n`` and ``\\r`` (the SSE spec's three terminators), including a
CRLF split across two chunks; the ``data`` of an event is returned as the raw bytes, joined with ``\\n``
for multi-line data, exactly as the spec describes. Nothing is JSON-decoded here.

Compiled with the request path (scripts/compile): a stream's every upstream read passes through ``feed``. The
common read is whole events ending in ``\\n``, so that case skips the terminator search, and an event with one
``data`` line hands that line on without a join (the fuzzed model in tests/test_sse_meters.py holds the rest).
"""

from __future__ import annotations

from typing import Final

_LF: Final = 0x0A
_CR: Final = 0x0D
_SP: Final = 0x20
_COLON: Final = 0x3A


class SSEEvent:
    """One event: its ``event`` name and its ``data``. A plain compiled class (a ``NamedTuple`` is built through
    an interpreted ``__new__``, once per event)."""

    __slots__ = ("data", "event")

    def __init__(self, event: bytes, data: bytes) -> None:
        self.event = event
        """The ``event:`` field, or ``b""`` when the stream did not set one (the spec's default "message")."""
        self.data = data

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, SSEEvent):
            return NotImplemented
        return self.event == other.event and self.data == other.data

    def __repr__(self) -> str:
        return f"SSEEvent(event={self.event!r}, data={self.data!r})"


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
        n = len(buf)
        if n and buf[n - 1] == _LF:
            end = n - 1
        else:
            end = max(buf.rfind(b"\n"), buf.rfind(b"\r"))
            if end < 0:
                self._buf = buf
                return []
        if end + 1 < n:
            self._buf = buf[end + 1 :]
        else:
            self._buf = b""
            # Only when the CR was the very last byte can the next chunk's first byte be its LF.
            self._skip_lf = buf[end] == _CR
        out: list[SSEEvent] = []
        for line in buf[: end + 1].splitlines():
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
                data = self._data
                out.append(SSEEvent(self._event, data[0] if len(data) == 1 else b"\n".join(data)))
                self._data = []
            self._event = b""
            self._has_data = False
            return
        if line[0] == _COLON:  # ":" comment / keep-alive
            return
        if line.startswith(b"data:"):  # nearly every line: startswith is a C call once compiled, find is not
            start = 6 if len(line) > 5 and line[5] == _SP else 5
            self._data.append(line[start:])
            self._has_data = True
            return
        colon = line.find(b":")
        if colon < 0:
            name, value = line, b""
        else:
            name = line[:colon]
            start = colon + 1
            if start < len(line) and line[start] == _SP:
                start += 1
            value = line[start:]
        if name == b"data":
            self._data.append(value)
            self._has_data = True
        elif name == b"event":
            self._event = value
        # "id" and "retry" carry nothing the meter needs; unknown fields are ignored per the spec.
