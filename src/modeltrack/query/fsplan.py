"""Which Firestore slice documents answer a question (:mod:`modeltrack.sinks.slices`): the slice that holds its
dimensions (:func:`slice_for`), and how its range is cut into weeks, days and hours (:func:`whole_weeks`,
:func:`horizon`, with :mod:`.stitch`). :mod:`.firestore` reads what this names. Held by
tests/test_firestore_analytics.py (every question equals SQLite's answer, and reads the documents stated)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date, datetime, timedelta

from ..sinks import slices
from .base import Filters
from .times import hour_key


@dataclass(frozen=True)
class Slice:
    """Which slices answer a question: split by ``dim`` (and what it carries), in the organisation scopes
    ``orgs``, pinned on a value of ``pin`` (a team, or one of :data:`slices.PINS`) or not (``ALL``); ``select``
    the filters the cells must match."""

    dim: str
    orgs: tuple[str, ...]
    pinned: str
    select: Filters
    value: str | None = None  # a filter on one user (key, prompt id): only its shard is read
    only: frozenset[str] | None = None  # these users' cells only: their shards, and a mask on their cells
    users: int = slices.USER_SHARDS  # the store's user shards (slicemeta.Marks.user_shards)
    values: int = slices.VALUE_SHARDS  # and its value shards, for keys and prompt ids
    pin: str = slices.PIN  # the dimension it is pinned on (when ``pinned`` is not ALL): the team or one of PINS

    @property
    def on_a_pin(self) -> bool:
        """Pinned on the app, the feature or the model (:data:`slices.PINS`): those documents count from their own
        mark (``Marks.pins``) and have no week documents."""
        return self.pinned != slices.ALL and self.pin in slices.PINS

    def names(self, kind: str) -> list[str]:
        """The slice documents' names, for buckets of ``kind``. A key's or a prompt id's cells are in the main
        document when a version before :data:`slices.SPREAD` wrote them, in their value shard since: both are
        read, and each event is counted in one of them only."""
        parts: Iterable[str] = ("main",)
        if self.dim == "user":  # one user's shard, those of a few, or every shard
            if self.value is not None:
                parts = [slices.part_of("user", self.value, self.users)]
            elif self.only is not None:
                parts = sorted({slices.part_of("user", u, self.users) for u in self.only})
            else:
                parts = slices.user_parts(self.users)
        elif self.dim in slices.SPREAD:
            if self.value is not None:
                parts = ("main", slices.part_of(self.dim, self.value, values=self.values))
            else:
                parts = ("main", *slices.value_parts(self.values))
        return [slices.slice_name(kind, o, self.pinned, part) for o in self.orgs for part in parts]


def slice_for(f: Filters, group_by: tuple[str, ...]) -> Slice | None:
    """The slices that hold a question, or None (then the hourly rollups answer it): every dimension it groups
    or filters by, besides the organisation and one pinned dimension, must be carried by one slice. A filter on
    the team pins the team, as before the other pins; then no pin; then the app, the feature or the model
    (:data:`slices.PINS`), which only a store's newer buckets have (``Marks.pins``)."""
    wanted = dict(f.items())
    org = wanted.pop("org", None)
    orgs = (org,) if org is not None else ("", slices.ALL)  # events without an org, and every org's
    for on in (slices.PIN, "", *slices.PINS):
        rest = dict(wanted)
        pinned = slices.ALL
        if on:
            if on not in rest or on in group_by:
                continue
            pinned = slices.pin_of(on, str(rest.pop(on)))
        needed = {*group_by, *rest} - {"cache_hit"}
        for dim in ("provider", "model", *slices.SLICED):
            if dim == on or (on in slices.PINS and (dim == "user" or dim in slices.SPREAD)):
                continue  # pinned on the app, the feature or the model: main documents only
            if needed <= set(slices.carried(dim)):
                value = rest.get(dim) if dim == "user" or dim in slices.SPREAD else None
                return Slice(
                    dim, orgs, pinned, Filters(**rest), None if value is None else str(value), pin=on or slices.PIN
                )
    return None


def whole_weeks(days: list[str], since: str) -> tuple[list[str], list[str]]:
    """The UTC weeks (their Mondays) whose seven days are all in ``days`` and that the week documents cover
    (from ``since``, a Monday or ``""``), and the days left to read by day. A week is only read for a question
    without hours: its one row has no day to stamp."""
    have = set(days)
    weeks = [
        d for d in days if d >= since and slices.week_of(d) == d and all(plus_days(d, i) in have for i in range(1, 7))
    ]
    covered = {plus_days(w, i) for w in weeks for i in range(7)}
    return weeks, [d for d in days if d not in covered]


def plus_days(day: str, n: int) -> str:
    return (date.fromisoformat(day) + timedelta(days=n)).isoformat()


def hours(start: datetime, end: datetime) -> list[str]:
    n = int((end - start).total_seconds() // 3600)
    return [hour_key(start + timedelta(hours=i)) for i in range(n)]
