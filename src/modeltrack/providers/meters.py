"""Reusable meter skeletons: a JSON-body meter and an SSE meter.

Provider modules subclass these and implement only the mapping from the provider's JSON to a ``Usage``.
Both skeletons swallow every parse failure into ``MeterResult.error``: a meter must never raise into the
proxy, because the client's bytes are already flowing.
"""

from __future__ import annotations

from typing import Any, Final

from mypy_extensions import mypyc_attr

from ..wire.sse import SSEEvent, SSESplitter
from .base import MeterResult, RequestInfo, error_code, loads

MAX_JSON_BODY: Final = 64 * 1024 * 1024
"""Non-streaming bodies are kept (as references to the chunks, not copied) up to this size for metering."""


@mypyc_attr(allow_interpreted_subclasses=True)  # (scripts/compile: the providers' plug-ins subclass it)
class JSONBodyMeter:
    """Meters a non-streaming JSON response: collect chunk references, parse once at the end."""

    __slots__ = ("_chunks", "_overflow", "_size", "info", "status")

    ended = False  # a sized body is complete only when the exchange says so

    def __init__(self, info: RequestInfo, status: int) -> None:
        self.info = info
        self.status = status
        self._chunks: list[bytes] = []
        self._size = 0
        self._overflow = False

    def feed(self, chunk: bytes) -> None:
        if self._overflow:
            return
        self._size += len(chunk)
        if self._size > MAX_JSON_BODY:
            self._overflow = True
            self._chunks = []
            return
        self._chunks.append(chunk)

    def finish(self, complete: bool) -> MeterResult:
        if self._overflow:
            return MeterResult(model=self.info.model, error="response_too_large_to_meter")
        raw = b"".join(self._chunks)
        self._chunks = []
        obj = loads(raw) if raw else None
        if not isinstance(obj, (dict, list)):
            if not complete:
                err = "truncated"
            elif self.status >= 400:
                err = f"http_{self.status}"  # a non-JSON error body: keep the status, not the text
            else:
                err = "invalid_json" if raw else "empty_body"
            return MeterResult(model=self.info.model, error=err)
        try:
            result = self.from_json(obj)
        except Exception:  # noqa: BLE001 - must never raise into the request path
            return MeterResult(model=self.info.model, error="meter_error")
        if result.model is None:
            result.model = self.info.model
        if not complete:
            result.error = result.error or "truncated"
        return result

    def from_json(self, obj: Any) -> MeterResult:
        raise NotImplementedError


@mypyc_attr(allow_interpreted_subclasses=True)  # (scripts/compile: the providers' plug-ins subclass it)
class SSEMeter:
    """Meters an SSE response. Subclasses implement ``on_event`` (cheap: byte checks first) and ``result``."""

    def __init__(self, info: RequestInfo, status: int) -> None:
        self.info = info
        self.status = status
        self._splitter = SSESplitter()
        self.model: str | None = None
        self.error: str | None = None
        self.ended = False  # subclasses set it on the stream's own end marker
        self.failed = False

    def feed(self, chunk: bytes) -> None:
        if self.failed:
            return
        try:
            for ev in self._splitter.feed(chunk):
                self.on_event(ev)
        except Exception:  # noqa: BLE001 - must never raise into the request path
            self.failed = True
            self.error = self.error or "meter_error"

    def finish(self, complete: bool) -> MeterResult:
        if not self.failed:
            try:
                for ev in self._splitter.close():
                    self.on_event(ev)
            except Exception:  # noqa: BLE001 - must never raise into the request path
                self.failed = True
                self.error = self.error or "meter_error"
        try:
            result = self.result(complete)
        except Exception:  # noqa: BLE001 - must never raise into the request path
            result = MeterResult(error="meter_error")
        if result.model is None:
            result.model = self.model or self.info.model
        if result.error is None:
            result.error = self.error
        if not complete and result.error is None:
            result.error = "truncated"
        return result

    def error_from(self, data: bytes) -> None:
        obj = loads(data)
        err = obj.get("error") if isinstance(obj, dict) else None
        self.error = error_code(err if err is not None else (obj.get("type") if isinstance(obj, dict) else None))

    def on_event(self, ev: SSEEvent) -> None:
        raise NotImplementedError

    def result(self, complete: bool) -> MeterResult:
        raise NotImplementedError


def dig(obj: Any, *keys: str) -> Any:
    for key in keys:
        if not isinstance(obj, dict):
            return None
        obj = obj.get(key)
    return obj
