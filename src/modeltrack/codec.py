"""Decompress a *copy* of a compressed response for metering; the client still gets the compressed bytes.

Only used when the upstream chose a ``Content-Encoding``. Decoder errors stop metering (reported as an error
type on the event) but never affect the bytes sent to the client.
"""

from __future__ import annotations

import zlib
from typing import Any

from .providers.base import Meter, MeterResult

MAX_INFLATE = 256 * 1024 * 1024  # a decompression bomb must not take the proxy down


class _Brotli:
    """``brotli.Decompressor`` streams with ``process()``; give it the ``decompress()`` the others have."""

    def __init__(self) -> None:
        import brotli

        self._d = brotli.Decompressor()

    def decompress(self, data: bytes) -> bytes:
        return bytes(self._d.process(data))


def _decoder(encoding: str) -> Any:
    enc = encoding.strip().lower()
    if enc in ("gzip", "x-gzip"):
        return zlib.decompressobj(wbits=31)
    if enc == "deflate":
        return zlib.decompressobj(wbits=47)  # zlib or gzip header, auto-detected
    if enc == "br":
        return _Brotli()
    if enc == "zstd":
        import zstandard

        return zstandard.ZstdDecompressor().decompressobj()
    return None


class DecodingMeter:
    def __init__(self, inner: Meter, encoding: str) -> None:
        self.inner = inner
        self.error: str | None = None
        self._out = 0
        try:
            self._dec = _decoder(encoding)
        except ImportError:
            self._dec = None
        if self._dec is None:
            self.error = "unsupported_content_encoding"

    def feed(self, chunk: bytes) -> None:
        if self._dec is None or self.error:
            return
        try:
            data = self._dec.decompress(chunk)
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
