"""What the controls decide for one request (:class:`Decision`), from the rules its attribution falls under
(:class:`Plan`): the records :class:`modeltrack.controls.engine.Controls` hands the proxy and gets back when the
request ends."""

from __future__ import annotations

from dataclasses import dataclass

from .budgetstate import Admission, Refusal
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


class Decision:
    """What the controls decided for one request, and what they need to know when it ends.

    A plain class whose defaults live on the class: the usual controlled request sets three of its eleven fields
    (Controls.decide_now), so only those are written per request."""

    refusal: Refusal | None = None
    route: Route | None = None
    routed_from: str | None = None
    cache_key: str | None = None
    cache_ttl: float = 0.0
    hit: Entry | None = None
    capture_limit: int = 0  # the largest response the cache keeps (bytes)
    head: bytes = b""  # response header lines the client gets in addition to the upstream's

    def __init__(self, path: str, body: bytes, admission: Admission | None = None) -> None:
        self.path = path
        self.body = body
        self.admission = admission

    @property
    def refused(self) -> bool:
        return self.refusal is not None


def header_value(text: str) -> bytes:
    """A rule's or budget's name as a response header's value: printable, Latin-1, at most 512 bytes."""
    return "".join(ch for ch in text if ch.isprintable()).encode("latin-1", "replace")[:512]
