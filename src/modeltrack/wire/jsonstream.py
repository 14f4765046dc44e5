"""Incremental splitter for a streamed JSON array (Gemini ``streamGenerateContent`` without ``alt=sse``).

The upstream sends ``[{...}`` then ``,\\r\\n{...}`` ... ``]`` as the model produces output. We need each
top-level element's bytes (to find the last ``usageMetadata``) without waiting for the closing bracket, so we
track string/escape state and brace depth. Only structural bytes are visited: a regex skips over everything
else, which keeps the per-chunk cost low even for large elements.
"""

from __future__ import annotations

import re

_STRUCTURAL = re.compile(rb'["\\{}\[\]]')


class JSONArraySplitter:
    __slots__ = ("_depth", "_escape", "_in_str", "_parts", "error")

    def __init__(self) -> None:
        self._depth = 0  # 0 = outside the array, 1 = inside the array, >1 = inside an element
        self._in_str = False
        self._escape = False
        self._parts: list[bytes] = []
        self.error: str | None = None

    def feed(self, chunk: bytes) -> list[bytes]:
        """Return the complete top-level elements (objects or arrays) that end in this chunk."""
        out: list[bytes] = []
        if self.error:
            return out
        start = 0 if self._depth > 1 else -1
        pos = 0
        n = len(chunk)
        while pos < n:
            if self._escape:
                self._escape = False
                pos += 1
                continue
            m = _STRUCTURAL.search(chunk, pos)
            if m is None:
                break
            i = m.start()
            c = chunk[i]
            pos = i + 1
            if self._in_str:
                if c == 0x5C:  # backslash
                    self._escape = True
                elif c == 0x22:
                    self._in_str = False
                continue
            if c == 0x22:
                self._in_str = True
            elif c in (0x7B, 0x5B):  # { [
                self._depth += 1
                if self._depth == 2:
                    start = i
                    self._parts = []
            elif c in (0x7D, 0x5D):  # } ]
                self._depth -= 1
                if self._depth < 0:
                    self.error = "invalid_json_stream"
                    return out
                if self._depth == 1:
                    self._parts.append(chunk[start : i + 1])
                    out.append(b"".join(self._parts))
                    self._parts = []
                    start = -1
        if self._depth > 1 and start >= 0:
            self._parts.append(chunk[start:])
        return out

    @property
    def complete(self) -> bool:
        """True once the outer array has been closed (or was never opened)."""
        return self._depth == 0 and not self._in_str
