"""Header names, lower-cased once: the request path compares every header name it reads in lower case (HTTP
field names are case-insensitive), and ``bytes.lower()`` is a method call that allocates, ~550 CPU instructions
from compiled code, several per header of every request. :func:`lower` answers from a memo instead: one dict
lookup, and the lower-cased name it returns is the same object each time, so its hash is computed once and set
and dict lookups on it are cheap too (callgrind figures: bench/README.md, "Instructions per request").

Names only, never values. The memo holds at most ``MEMO_MAX`` names, so a client sending made-up names cannot
grow it; names past that are lower-cased as before. Held by
tests/test_security.py::test_header_names_are_lower_cased_through_a_bounded_memo.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Final

MEMO_MAX: Final = 512
_MEMO: Final[dict[bytes, bytes]] = {}


def lower(name: bytes) -> bytes:
    """``name.lower()``, from the memo when it is there."""
    found = _MEMO.get(name)
    if found is None:
        found = name.lower()
        if len(_MEMO) < MEMO_MAX - 1:
            _MEMO[found] = found  # the lower-case spelling finds itself, and is the value returned for both
            _MEMO[name] = found
    return found


def memo_size() -> int:
    return len(_MEMO)


def length_mask(names: Iterable[bytes]) -> int:
    """A bit per length of ``names`` (61 bytes and more share bit 61, so the mask stays a small integer, which
    compiled code shifts natively). A name whose length has no bit is none of them: it is passed on without being
    lower-cased or looked up (``mask >> min(len(name), 61) & 1``), as most header names are."""
    mask = 0
    for name in names:
        mask |= 1 << min(len(name), 61)
    return mask
