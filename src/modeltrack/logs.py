"""Logging set-up with a last line of defence against secrets.

The code never passes headers, bodies, URLs with query strings or exception messages from the network to the
logger. As defence in depth, every record is also scrubbed of anything that looks like a credential (bearer
tokens, ``key=`` query parameters, provider key prefixes, AWS signatures) before it is formatted.
"""

from __future__ import annotations

import logging
import re
import sys
import traceback

_PATTERNS = [
    re.compile(r"(?i)(bearer\s+)[^\s,;\"']+"),
    re.compile(
        r"(?i)((?:api[-_]?key|key|x-api-key|x-goog-api-key|token|signature|credential|"
        r"x-amz-security-token)[\"']?\s*[=:]\s*[\"']?)[^\s&,;\"']+"
    ),
    re.compile(r"\b(sk-[A-Za-z0-9_\-]{4})[A-Za-z0-9_\-]+"),
    re.compile(r"\b(AIza)[A-Za-z0-9_\-]{10,}"),
    re.compile(r"\b((?:AKIA|ASIA))[A-Z0-9]{12,}"),
]


def scrub(text: str) -> str:
    for pat in _PATTERNS:
        text = pat.sub(lambda m: m.group(1) + "[REDACTED]", text)
    return text


class RedactingFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return scrub(super().format(record))


class ContentFreeServerErrors(logging.Filter):
    """A parser error's message can quote the bytes it choked on (a header line with an API key, model output).
    Should one ever reach a log record with its traceback (asyncio logs exceptions escaping a protocol callback),
    keep the fact, drop the content."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if exc is not None and type(exc).__name__ in _PARSER_ERRORS:
            record.msg = "rejected malformed HTTP (%s)"
            record.args = (type(exc).__name__,)
            record.exc_info = None
            record.exc_text = None
            record.levelno, record.levelname = logging.INFO, "INFO"
        return True


_PARSER_ERRORS = {
    "HttpParserError",
    "HttpParserCallbackError",
    "HttpParserInvalidStatusError",
    "HttpParserInvalidMethodError",
    "HttpParserInvalidURLError",
    "HttpParserUpgrade",
}


def log_exception_safely(what: str, exc: BaseException, logger: str = "modeltrack") -> None:
    """Log where it failed (type and stack frames) but never the exception's message: messages of parse errors
    can quote response bytes, and those may hold model output or a key."""
    frames = "".join(traceback.format_tb(exc.__traceback__))
    logging.getLogger(logger).error("%s: %s\n%s", what, type(exc).__name__, frames)


def setup(level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(RedactingFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.addFilter(ContentFreeServerErrors())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # Third-party loggers stay at INFO even in debug mode: their debug output is not ours to vet.
    for name in ("asyncio", "google", "grpc", "urllib3"):
        logging.getLogger(name).setLevel(max(logging.INFO, root.level))
