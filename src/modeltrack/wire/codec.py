"""Decompress a *copy* of a compressed response for metering; the client still gets the compressed bytes.

Shaped after httpx's ``_decoders.py`` (one small decoder per coding, a multi-decoder for stacked codings), with
two gaps of the naive approach closed, because a body the meter silently stops reading is a cost silently lost:

* every frame is decoded: a zstd body may be several frames and a gzip body several members (both legal, and
  what a streaming upstream produces when it flushes); the decoders start over on ``unused_data``;
* ``deflate`` is zlib-wrapped by the RFC but raw in practice from some servers: the first bytes decide.

Decoder errors stop metering (reported as an error type on the event) but never affect the bytes sent to the
client.
"""

from __future__ import annotations

import zlib
from typing import Any, Protocol

from ..providers.base import Meter, MeterResult

MAX_INFLATE = 256 * 1024 * 1024  # a decompression bomb must not take the proxy down


class Decoder(Protocol):
    def decode(self, data: bytes) -> bytes: ...


class _Restarting:
    """Decoders whose stream may hold several independent frames/members back to back: a new decoder starts
    on what follows a finished frame, whether that is in the same piece or the next one."""

    def __init__(self) -> None:
        self._d = self._new()

    def _new(self) -> Any:
        raise NotImplementedError

    def decode(self, data: bytes) -> bytes:
        out = []
        while data:
            if self._d.eof:
                self._d = self._new()
            out.append(self._d.decompress(data))
            data = self._d.unused_data if self._d.eof else b""
        return b"".join(out)


class GZipDecoder(_Restarting):
    def _new(self) -> Any:
        return zlib.decompressobj(zlib.MAX_WBITS | 16)


class ZStandardDecoder(_Restarting):
    def _new(self) -> Any:
        import zstandard

        return zstandard.ZstdDecompressor().decompressobj()


class DeflateDecoder:
    """zlib-wrapped deflate (RFC 9110), or raw deflate as some servers send it: the first two bytes decide (a
    zlib header has compression method 8 and a check value divisible by 31), not whether a first piece fails,
    since a one-byte first piece fails neither way."""

    def __init__(self) -> None:
        self._d: Any = None
        self._head = b""

    def decode(self, data: bytes) -> bytes:
        if self._d is None:
            self._head += data
            if len(self._head) < 2:
                return b""
            cmf, flg = self._head[0], self._head[1]
            wrapped = cmf & 0x0F == 8 and (cmf << 8 | flg) % 31 == 0
            self._d = zlib.decompressobj(zlib.MAX_WBITS if wrapped else -zlib.MAX_WBITS)
            data, self._head = self._head, b""
        return bytes(self._d.decompress(data))


class BrotliDecoder:
    def __init__(self) -> None:
        import brotli

        self._d = brotli.Decompressor()

    def decode(self, data: bytes) -> bytes:
        return bytes(self._d.process(data)) if data else b""


class MultiDecoder:
    """Codings applied one after the other (``Content-Encoding: br, gzip``): undone in reverse order."""

    def __init__(self, children: list[Decoder]) -> None:
        self._children = list(reversed(children))

    def decode(self, data: bytes) -> bytes:
        for child in self._children:
            data = child.decode(data)
        return data


_DECODERS: dict[str, type[Any]] = {
    "gzip": GZipDecoder,
    "x-gzip": GZipDecoder,
    "deflate": DeflateDecoder,
    "br": BrotliDecoder,
    "zstd": ZStandardDecoder,
}


def decoder_for(content_encoding: str) -> Decoder | None:
    """A decoder for a ``Content-Encoding`` value (a comma-separated list), or None if one coding is unknown."""
    names = [c.strip().lower() for c in content_encoding.split(",") if c.strip() and c.strip().lower() != "identity"]
    try:
        children = [_DECODERS[name]() for name in names]
    except (KeyError, ImportError):
        return None
    return children[0] if len(children) == 1 else MultiDecoder(children)


class DecodingMeter:
    def __init__(self, inner: Meter, encoding: str) -> None:
        self.inner = inner
        self.error: str | None = None
        self._out = 0
        self._dec = decoder_for(encoding)
        if self._dec is None:
            self.error = "unsupported_content_encoding"

    @property
    def ended(self) -> bool:
        return self.inner.ended

    def feed(self, chunk: bytes) -> None:
        if self._dec is None or self.error:
            return
        try:
            data = self._dec.decode(chunk)
        except Exception:  # noqa: BLE001 - must never raise into the request path
            self.error = "invalid_compressed_body"
            return
        self._out += len(data)
        if self._out > MAX_INFLATE:
            self.error = "decompressed_body_too_large"
            return
        if data:
            self.inner.feed(data)

    def finish(self, complete: bool) -> MeterResult:
        res = self.inner.finish(complete and self.error is None)
        if self.error:
            res.error = res.error or self.error
        return res


def metering_view(meter: Meter, content_encoding: str | None) -> Meter:
    if not content_encoding or content_encoding.strip().lower() == "identity":
        return meter
    return DecodingMeter(meter, content_encoding)
