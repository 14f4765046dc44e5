"""Bounded, printable Prometheus label values.

Each attribution label keeps at most ``cap`` distinct values (:class:`LabelCap`); later values are folded into
``__other__`` and counted in ``modeltrack_label_values_folded_total``, so no client can grow the exposition without
bound by sending new team or feature names. Values are sanitised (control characters removed, length capped)
before they can reach the exposition or a response header (tests/test_metrics.py, tests/test_monitoring.py).
"""

from __future__ import annotations

from typing import Final

from prometheus_client import Counter

OTHER: Final = "__other__"
MAX_LABEL_LEN: Final = 64


def sanitize(value: str | None, limit: int = MAX_LABEL_LEN) -> str:
    if not value:
        return ""
    if len(value) <= limit and value.isprintable():
        return value  # the common case, checked in C
    clean = "".join(ch for ch in value[: limit * 2] if ch.isprintable())
    return clean[:limit]


class LabelCap:
    """Bounded set of seen values for one label."""

    __slots__ = ("cap", "folded", "seen")

    def __init__(self, cap: int, folded: Counter, label: str) -> None:
        self.cap = cap
        self.seen: set[str] = set()
        self.folded = folded.labels(label=label)

    def resolve(self, value: str | None) -> str:
        """The label value to use (``OTHER`` past the cap), without counting the fold."""
        v = sanitize(value)
        if v in self.seen:
            return v
        if len(self.seen) < self.cap:
            self.seen.add(v)
            return v
        return OTHER
