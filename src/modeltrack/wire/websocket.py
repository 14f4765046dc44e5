"""WebSocket messages read off one direction of a tunnel as its bytes pass, never re-framed or re-sent.

The frames are parsed by the ``websockets`` library's sans-I/O protocol (RFC 6455: masking, fragmentation,
control frames interleaved in a fragmented message, UTF-8 of text frames, the size bound), so ModelTrack
hand-writes no frame parser. The tunnel forwards the peer's own bytes; this reader only sees copies, and whatever
the library would answer (a pong, a close reply) is dropped: the peers answer each other.

Guarantees (tests/test_realtime.py):

* a message (all its fragments) larger than ``max_message`` fails the reader (``failed`` says why) before it is
  buffered whole; the tunnel then closes both sides;
* a frame that breaks the protocol (an unmasked client frame, a bad opcode, invalid UTF-8 in a text message)
  fails the reader the same way;
* every complete data message (text or binary, since Gemini Live sends its JSON in binary frames) is returned
  once, in order; ``permessage-deflate`` is never negotiated through the proxy (the upgrade request goes out
  without ``Sec-WebSocket-Extensions``), so a message is its frames' payload.
"""

from __future__ import annotations

import logging

from websockets.exceptions import PayloadTooBig
from websockets.frames import Frame, Opcode
from websockets.protocol import OPEN, Protocol, Side

_QUIET = logging.Logger("modeltrack.websocket.frames")
_QUIET.disabled = True  # the library's own debug lines quote frames (prompts, audio): outside the logging tree, off
_DATA = (Opcode.TEXT, Opcode.BINARY)


class MessageReader:
    """The data messages of one direction: ``from_client`` for the frames a client sends (masked)."""

    __slots__ = ("_parts", "_protocol", "closed", "failed")

    def __init__(self, *, from_client: bool, max_message: int) -> None:
        # A reader of client frames stands where the server does, and the other way round.
        side = Side.SERVER if from_client else Side.CLIENT
        self._protocol = Protocol(side, state=OPEN, max_size=max_message, logger=_QUIET)
        self._parts: list[bytes] = []
        self.failed: str | None = None
        self.closed = False  # this side sent a Close frame

    def feed(self, data: bytes) -> list[bytes]:
        """The messages that ``data`` completed (usually none or one). Fed *before* ``data`` is forwarded: a frame
        whose header announces more than the bound fails here, and the tunnel never sends it on."""
        if self.failed is not None:
            return []
        p = self._protocol
        p.receive_data(data)
        p.data_to_send()  # what the library would answer: the real peer answers
        out: list[bytes] = []
        parts = self._parts
        for frame in p.events_received():
            if not isinstance(frame, Frame):
                continue  # (a handshake event: never, in the OPEN state)
            op = frame.opcode
            if op in _DATA:
                parts.clear()
            elif op is not Opcode.CONT:
                self.closed = self.closed or op is Opcode.CLOSE
                continue  # ping, pong, close: forwarded as they are, nothing to read
            parts.append(bytes(frame.data))
            if frame.fin:
                out.append(parts[0] if len(parts) == 1 else b"".join(parts))
                parts.clear()
        if p.parser_exc is not None:
            too_big = isinstance(p.parser_exc, PayloadTooBig)
            self.failed = "message_too_large" if too_big else "websocket_protocol_error"
            parts.clear()
        return out
