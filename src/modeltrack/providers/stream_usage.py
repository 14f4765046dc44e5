"""Exact costs for OpenAI-style chat streams whose client did not ask for usage, without the client noticing.

Such a stream reports no token counts at all, so ModelTrack asks for them: ``"stream_options":
{"include_usage": true}`` is spliced into the request (every other byte as sent). Asking changes the answer in
two ways the client never asked for, and :class:`WithheldUsage` undoes both on the way back, while the meter
still reads the upstream's bytes:

* every chunk gains a ``"usage":null`` member: removed, as bytes, from each event;
* one extra final chunk carries the usage with ``"choices": []``: withheld. Forwarded, it breaks the most common
  streaming loop there is, ``chunk.choices[0].delta.content``, with an ``IndexError``.

Events are forwarded as soon as they are complete (only an event split across two reads waits for its end);
everything else passes byte for byte. A compressed stream (``Content-Encoding``) cannot be edited without
recompressing it, so it passes unchanged (the README says so).
"""

from __future__ import annotations

import re
from typing import Any

import orjson

from .base import RequestInfo, has

INJECTED = b'"stream_options":{"include_usage":true},'

_EVENT_END = re.compile(rb"\r\n\r\n|\n\n|\r\r")
_USAGE_NULL = re.compile(rb'\s*,\s*"usage"\s*:\s*null(?=\s*[,}])|"usage"\s*:\s*null\s*,\s*')
_NO_CHOICES = re.compile(rb'"choices"\s*:\s*\[\s*\]')
_USAGE_OBJECT = re.compile(rb'"usage"\s*:\s*\{')


def inject(info: RequestInfo, raw: bytes, body: Any) -> bytes:
    """The request body asking for usage, or ``raw`` unchanged when the client decided for itself."""
    opts = body.get("stream_options")
    if isinstance(opts, dict) and opts.get("include_usage") is not None:
        return raw  # the client decided; respect it
    info.extra["stream_usage_injected"] = True
    if opts is None:
        i = raw.find(b"{")
        return raw[: i + 1] + INJECTED + raw[i + 1 :]
    new = dict(body)
    new["stream_options"] = {**opts, "include_usage": True}
    return orjson.dumps(new)


class WithheldUsage:
    """The client's view of a stream whose usage ModelTrack asked for (see the module docstring)."""

    __slots__ = ("_rest",)

    def __init__(self) -> None:
        self._rest = b""  # the start of an event whose end has not arrived yet

    def feed(self, data: bytes) -> bytes:
        buf = self._rest + data if self._rest else data
        out = []
        start = 0
        for m in _EVENT_END.finditer(buf):
            out.append(self._event(buf[start : m.end()]))
            start = m.end()
        self._rest = buf[start:]
        return b"".join(out)

    def flush(self) -> bytes:
        rest, self._rest = self._rest, b""
        return self._event(rest) if rest else b""

    @staticmethod
    def _event(event: bytes) -> bytes:
        if not has(event, b'"usage"'):
            return event
        if _NO_CHOICES.search(event) and _USAGE_OBJECT.search(event):
            return b""  # the usage-only chunk the client never asked for
        return _USAGE_NULL.sub(b"", event)
