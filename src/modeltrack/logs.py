"""Logging set-up with a last line of defence against secrets.

The code never passes headers, bodies, URLs with query strings or exception messages from the network to the
logger. As defence in depth, every record is also scrubbed of anything that looks like a credential (bearer
tokens, ``key=`` query parameters, provider key prefixes, AWS signatures) before it is formatted.
"""

from __future__ import annotations

import logging
import re
import sys

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


def setup(level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(RedactingFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # Third-party loggers stay at INFO even in debug mode: their debug output is not ours to vet.
    for name in ("aiohttp", "asyncio", "google", "grpc", "urllib3"):
        logging.getLogger(name).setLevel(max(logging.INFO, root.level))
