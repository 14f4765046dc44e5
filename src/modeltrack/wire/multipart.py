"""Fields of a ``multipart/form-data`` body already in memory (an audio upload, bounded by the proxy's body
limit), found by searching for each part's ``Content-Disposition`` name: nothing is decoded or copied but the
part asked for (RFC 7578; the boundary is the body's first line). Held by
tests/test_other_units.py::test_a_plain_text_transcript_is_priced_by_the_audio_length."""

from __future__ import annotations


def _content_start(raw: bytes, name: bytes) -> int | None:
    """Where the content of the part named ``name`` begins (after its headers), or None."""
    at = raw.find(b'name="' + name + b'"')
    if at < 0:
        return None
    start = raw.find(b"\r\n\r\n", at, at + 4096)
    return None if start < 0 else start + 4


def text_field(raw: bytes, name: bytes, limit: int = 256) -> str | None:
    """A short text field (an upload's ``model`` or ``response_format``): its value up to the next line break,
    at most ``limit`` bytes, else None."""
    start = _content_start(raw, name)
    if start is None:
        return None
    end = raw.find(b"\r\n", start, start + limit + 1)
    if end < 0:
        return None
    try:
        return raw[start:end].decode("utf-8").strip() or None
    except UnicodeDecodeError:
        return None


def file_part(raw: bytes, name: bytes) -> memoryview | None:
    """The content of the part named ``name`` (a file), as a view into ``raw``; None without one."""
    if not raw.startswith(b"--"):
        return None
    line_end = raw.find(b"\r\n")
    if line_end < 0:
        return None
    delimiter = b"\r\n" + raw[:line_end]
    start = _content_start(raw, name)
    if start is None:
        return None
    end = raw.find(delimiter, start)
    if end < 0:
        return None
    return memoryview(raw)[start:end]
