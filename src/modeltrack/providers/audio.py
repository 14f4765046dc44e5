"""The length of an uploaded audio file, read from its own headers (tinytag: MP3, M4A/MP4, OGG/Opus, FLAC, WAV,
AIFF, WMA), for a transcription answered as plain text, SRT or VTT: such an answer names no duration, and
models such as ``whisper-1`` are billed per second of audio. A format tinytag cannot read (WebM, say) or a file
it cannot parse gives None: the request is then ``unpriced``, never $0.

MP3 without a Xing/VBRI header is estimated from its first frames' bit rate (tinytag), which is exact for
constant bit rate files.
(tests/test_other_units.py::test_a_plain_text_transcript_is_priced_by_the_audio_length)"""

from __future__ import annotations

import io


def audio_seconds(data: bytes | memoryview) -> float | None:
    """Seconds of audio in ``data``, or None when its format or headers cannot be read."""
    from tinytag import TinyTag, TinyTagException

    try:
        tag = TinyTag.get(file_obj=io.BytesIO(data), tags=False, duration=True)
    except (TinyTagException, ValueError, OSError):
        return None
    seconds = tag.duration
    return float(seconds) if isinstance(seconds, (int, float)) and seconds > 0 else None
