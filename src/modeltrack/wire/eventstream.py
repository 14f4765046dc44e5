"""AWS ``application/vnd.amazon.eventstream`` frame decoder, CRC-checked, incremental.

Bedrock's ConverseStream and InvokeModelWithResponseStream send binary frames::

    total_len u32 | headers_len u32 | prelude_crc u32 | headers | payload | message_crc u32

Both CRCs are CRC-32 (zlib). A frame that fails either check stops decoding (everything after it is suspect) and
sets ``error``; the bytes still reach the client untouched, only metering gives up.
"""

from __future__ import annotations

import struct
import zlib
from typing import NamedTuple

_PRELUDE = struct.Struct(">III")
MAX_FRAME = 16 * 1024 * 1024  # AWS caps messages at 16 MiB; anything larger is garbage, not a frame.


class Frame(NamedTuple):
    headers: dict[str, object]
    payload: bytes


class EventStreamError(ValueError):
    pass


def _parse_headers(raw: bytes) -> dict[str, object]:
    headers: dict[str, object] = {}
    i, n = 0, len(raw)
    while i < n:
        name_len = raw[i]
        name = raw[i + 1 : i + 1 + name_len].decode("utf-8", "replace")
        i += 1 + name_len
        if i >= n:
            raise EventStreamError("truncated header")
        kind = raw[i]
        i += 1
        value: object
        if kind == 0:
            value = True
        elif kind == 1:
            value = False
        elif kind == 2:
            value, i = raw[i], i + 1
        elif kind == 3:
            value, i = struct.unpack_from(">h", raw, i)[0], i + 2
        elif kind == 4:
            value, i = struct.unpack_from(">i", raw, i)[0], i + 4
        elif kind in (5, 8):
            value, i = struct.unpack_from(">q", raw, i)[0], i + 8
        elif kind in (6, 7):
            (length,) = struct.unpack_from(">H", raw, i)
            data = raw[i + 2 : i + 2 + length]
            value = data.decode("utf-8", "replace") if kind == 7 else data
            i += 2 + length
        elif kind == 9:
            value, i = raw[i : i + 16], i + 16
        else:
            raise EventStreamError("unknown header type")
        if i > n:
            raise EventStreamError("truncated header")
        headers[name] = value
    return headers


class EventStreamDecoder:
    __slots__ = ("_buf", "error")

    def __init__(self) -> None:
        self._buf = bytearray()
        self.error: str | None = None

    def feed(self, chunk: bytes) -> list[Frame]:
        if self.error:
            return []
        self._buf += chunk
        frames: list[Frame] = []
        buf = self._buf
        offset = 0
        try:
            while len(buf) - offset >= 12:
                total, hlen, pcrc = _PRELUDE.unpack_from(buf, offset)
                if zlib.crc32(buf[offset : offset + 8]) != pcrc:
                    raise EventStreamError("prelude_crc_mismatch")
                if total < 16 or total > MAX_FRAME or hlen > total - 16:
                    raise EventStreamError("invalid_frame_length")
                if len(buf) - offset < total:
                    break
                frame = bytes(buf[offset : offset + total])
                (mcrc,) = struct.unpack_from(">I", frame, total - 4)
                if zlib.crc32(frame[: total - 4]) != mcrc:
                    raise EventStreamError("message_crc_mismatch")
                headers = _parse_headers(frame[12 : 12 + hlen])
                frames.append(Frame(headers, frame[12 + hlen : total - 4]))
                offset += total
        except (EventStreamError, struct.error, IndexError) as exc:
            self.error = str(exc) if isinstance(exc, EventStreamError) else "invalid_frame"
            self._buf = bytearray()
            return frames
        del buf[:offset]
        return frames


def encode_frame(headers: dict[str, str], payload: bytes) -> bytes:
    """Encode a frame with string headers (used by tests and the benchmark upstream, not on the hot path)."""
    hb = b"".join(
        bytes([len(k)]) + k.encode() + b"\x07" + struct.pack(">H", len(v.encode())) + v.encode()
        for k, v in headers.items()
    )
    total = 16 + len(hb) + len(payload)
    prelude = struct.pack(">II", total, len(hb))
    prelude += struct.pack(">I", zlib.crc32(prelude))
    body = prelude + hb + payload
    return body + struct.pack(">I", zlib.crc32(body))
