"""What the controls decide for one request (:class:`Decision`), from the rules its attribution falls under
(:class:`Plan`): the records :class:`modeltrack.controls.engine.Controls` hands the proxy and gets back when the
request ends."""

from __future__ import annotations

from dataclasses import dataclass

from .budgetstate import Admission
from .cache import Entry
from .spec import Budget, ControlsSpec, Route


@dataclass(frozen=True, slots=True)
class Plan:
    """The rules whose scope a combination of attribution, provider and model falls under (a routing rule's
    trigger and a budget's spend are checked per request)."""

    spec: ControlsSpec
    routes: tuple[Route, ...]
    budgets: tuple[Budget, ...]
    cache_ttl: float | None  # the first matching cache rule's TTL; None: no cache rule applies

    empty: bool = False  # none of the above: the request is not the controls' business
    blocks: bool = False  # a matching budget refuses when spent: the request reserves its worst case


class Decision(Admission):
    """What the controls decided for one request, and what they need to know when it ends.

    It is the request's :class:`Admission` too (the budgets' reservations it holds, their warnings): the usual
    controlled request makes one record, not two, and frees one (Controls.decide_now, whose budgets reserve into
    it; ~340 CPU instructions a budgeted request, bench/README.md, thirtieth session). A plain class whose
    defaults live on the class: the usual controlled request sets few of its fields, so only those are written
    per request."""

    route: Route | None = None
    routed_from: str | None = None
    cache_key: str | None = None
    cache_ttl: float = 0.0
    hit: Entry | None = None
    capture_limit: int = 0  # the largest response the cache keeps (bytes)
    head: bytes = b""  # response header lines the client gets in addition to the upstream's

    def __init__(self, path: str, body: bytes) -> None:
        # (The admission's fields are written here, not by its __init__: compiled, that would be one more call.)
        self.first = None
        self.more = None
        self.amount = 0
        self.refusal = None
        self.headers = ()
        self.path = path
        self.body = body

    @property
    def refused(self) -> bool:
        return self.refusal is not None


def header_value(text: str) -> bytes:
    """A rule's or budget's name as a response header's value: printable, Latin-1, at most 512 bytes."""
    return "".join(ch for ch in text if ch.isprintable()).encode("latin-1", "replace")[:512]
