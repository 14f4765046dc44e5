"""Decoding a copy of compressed bodies for metering (codec.py): every frame, every member, both deflates,
stacked codings. A decoder that silently stops after its first frame meters half a stream and prices it."""

from __future__ import annotations

import gzip
import zlib

import brotli
import pytest
import zstandard

from modeltrack.wire.codec import decoder_for

from .replay import CODINGS, compress

DATA = b"".join(b'data: {"n":%d,"text":"%s"}\n\n' % (i, b"x" * (i % 50)) for i in range(400))


def decode_in_pieces(encoding: str, blob: bytes, size: int) -> bytes:
    dec = decoder_for(encoding)
    assert dec is not None
    return b"".join(dec.decode(blob[i : i + size]) for i in range(0, len(blob), size))


@pytest.mark.parametrize("variant", ["gzip", "gzip-members", "deflate", "deflate-raw", "br", "zstd", "zstd-frames"])
@pytest.mark.parametrize("size", [1, 7, 4096, 1 << 20])
def test_every_frame_and_member_is_decoded(variant: str, size: int) -> None:
    blob = compress(DATA, variant)
    assert decode_in_pieces(CODINGS.get(variant, variant), blob, size) == DATA


def test_stacked_codings_are_undone_in_reverse_order() -> None:
    blob = gzip.compress(bytes(brotli.compress(DATA)))  # br first, then gzip: "Content-Encoding: br, gzip"
    assert decode_in_pieces("br, gzip", blob, 100) == DATA
    blob = bytes(zstandard.ZstdCompressor().compress(zlib.compress(DATA)))
    assert decode_in_pieces("deflate,zstd", blob, 33) == DATA


def test_identity_and_unknown_codings() -> None:
    dec = decoder_for("identity, gzip")
    assert dec is not None and dec.decode(gzip.compress(b"ok")) == b"ok"
    assert decoder_for("gzip, compress") is None
    assert decoder_for("sdch") is None
