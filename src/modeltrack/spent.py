"""What the controls in the request path read of a recorded request, worked out once by the recorder from values it
already holds: the budgets' scope key, the cost in nano-USD for the pending spend and for settling a reservation,
and the tokens a TPM limit counts.

Why not read them off the event: :class:`~modeltrack.events.CostEvent` is an interpreted class, and each of its
attributes read from compiled code is a generic attribute lookup (~160 CPU instructions). A request with a key,
its limits and a budget read ~22 of them after it ended (bench/README.md, "twenty-fourth session"). The event
stays the record; this is the request path's copy of a few of its values, built only when a control will read it.

:meth:`Spent.of` builds one from an event, for the callers that hold only the event; both ways give the same
figures (tests/test_controls.py::test_spent_from_the_recorder_matches_spent_from_the_event).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

from .rounding import nearest

NAN: Final = float("nan")

if TYPE_CHECKING:
    from .events import CostEvent


class Spent:
    """``key``: (team, app, feature, user, provider, model, org, key_id), in the order of
    :data:`modeltrack.controls.match.DIMENSIONS`. ``cost_nano``: the priced cost (0 when free or unpriced), added
    to the budgets' pending spend. ``settle_nano``: what a reservation settles to: the cost; 0 for a request that
    never reached a billable answer; -1 when no usage was metered (the reservation is kept, the safe side).
    ``tokens``: what a TPM limit counts (:func:`limit_tokens`). ``stamp``, ``rid``: the event's timestamp and id;
    ``wall``: the epoch seconds the timestamp was written from, NaN when not known (then the timestamp is compared
    instead: :meth:`modeltrack.controls.budgets.Budgets.on_spent`)."""

    __slots__ = ("cost_nano", "key", "rid", "settle_nano", "stamp", "tokens", "wall")

    def __init__(
        self,
        key: tuple[str | None, ...],
        cost_usd: float | None,
        status: int,
        tokens: int | None,
        stamp: str,
        rid: str,
        wall: float = NAN,
    ) -> None:
        self.key = key
        self.cost_nano = nearest(cost_usd * 1e9) if cost_usd else 0
        self.settle_nano = self.cost_nano if cost_usd is not None else (0 if status >= 400 or status == 0 else -1)
        self.tokens = tokens
        self.stamp = stamp
        self.rid = rid
        self.wall = wall

    @staticmethod
    def of(ev: CostEvent) -> Spent:
        key = (ev.team, ev.app, ev.feature, ev.user, ev.provider, ev.model, ev.org, ev.key_id)
        total = ev.input_tokens + ev.output_tokens + ev.cache_read_tokens + ev.cache_write_tokens
        tokens = limit_tokens(ev.status, ev.cache_hit, ev.usage_source, total)
        return Spent(key, ev.cost_usd, ev.status, tokens, ev.timestamp, ev.request_id)


def limit_tokens(status: int, cache_hit: bool, usage_source: str, total: int) -> int | None:
    """The tokens a TPM limit counts for a recorded request: every kind of input and output (``total``); 0 for
    a request that never reached a billable answer; None when the usage is unknown (the reservation is kept)."""
    if cache_hit or usage_source in ("missing", "none"):
        return 0 if (status >= 400 or status == 0 or cache_hit) else None
    return total
