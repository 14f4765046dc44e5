"""Slices: Firestore's rollups shaped for the questions the dashboard and the API ask (issue N).

Firestore has no GROUP BY: a reader of the hourly rollups streams every document in the range into Python, and
their key includes the user, so a 30-day page read tens of thousands of documents at a million events a day. A
**slice** answers a one-dimension question from one document per day (or hour):

* ``COLL_slices/{bucket}_{hash}_{shard}`` holds, for one bucket (a UTC day ``2026-11-29`` or hour
  ``2026-11-29T20``) and one organisation scope, a field per dimension: a map from each value of that dimension
  (with the cache hit, and for a model its provider: :func:`carried`) to its sums: requests, errors, unpriced,
  tokens by kind, cost, savings and the latency histogram. Its ``slice`` field names the document
  (:func:`slice_name`), ``b`` its bucket. Readers compute the ids of the documents a question needs and read
  them by id (no query, no index), asking for the one dimension they need (a projection), so a document's
  other dimensions never cross the wire.
* A commit adds to one such document per bucket and scope, not one per dimension: in writes, slices cost about
  what the daily and hourly rollups do.
* Each organisation scope has its documents: the event's own org, and ``*`` (all organisations) when it has one,
  so the operator's all-org view is as cheap as an org's.
* **Pinned on the team:** the same documents again per team, for every other dimension. A team-scoped viewer
  (whose every question carries ``team=``) and the dashboard's drill-down from a team are then one-dimension
  questions too.
* **Pinned on the app, the feature and the model** (:data:`PINS`): the main documents again per value of each,
  so the drill-down pages of an app, a feature or a model (a breakdown by team, app, feature, model, provider,
  status or processing) read a slice too; by user, key or prompt id they do not (:data:`PINS` says why). A
  store marks from when they count (``pins``, :mod:`.slicemeta`): before it, those questions are answered from
  the hourly rollups, as all two-dimension questions were.
* The ``user`` dimension is kept in documents of its own, by a hash of the user into the store's user shards
  (:data:`USER_SHARDS` unless it was created with ``?user_shards=N``, recorded in its marks:
  :mod:`.slicemeta`), so a day with many users keeps each document within Firestore's 1 MiB and 20,000 fields.
* **Keys and prompt ids too** (:data:`SPREAD`): a platform can have thousands of each, a cell is ~75 fields
  at a busy value, and the main document allows 20,000. They are kept in documents of their own, by a hash of
  the value into the store's value shards (:data:`VALUE_SHARDS`, or ``?value_shards=N``), so the main document
  holds only dimensions with a few dozen values a day. A version before this kept them in the main document:
  readers read it too (:meth:`modeltrack.query.fsplan.Slice.names`), so either placement is counted once.
* **Weeks, for the user:** the user shards are kept by UTC week too (``week``, its bucket the Monday
  ``2026-11-30``). Every day has nearly every user, so a 30-day question by user read some 30 cells a user from
  day documents; from weeks it reads 4 or 5, with the days outside whole weeks (bench/results/firestore.md).
  Only the user: the other dimensions have a few dozen values a day, and a day document each is already small.

What no slice holds (two dimensions besides the team and the cache hit) is read from the hourly rollups, as
before (:mod:`modeltrack.query.firestore`).

Exactly once: slices are ``Increment`` transforms in the same atomic commit as the events they count, like every
rollup (:mod:`modeltrack.sinks.firestore`). Sums equal SQLite's on the same events
(tests/test_firestore_analytics.py).
"""

from __future__ import annotations

import hashlib
from datetime import date, timedelta
from functools import lru_cache
from typing import TYPE_CHECKING, Any

from ..rollups import HISTOGRAMS, HOURLY_DIMENSIONS, event_row

if TYPE_CHECKING:
    from ..events import CostEvent

ALL = "*"
"""The organisation scope of every organisation's events together (and the unpinned team)."""
PIN = "team"
PINS = ("app", "feature", "model")
"""The dimensions slices are pinned on besides the team (whose pin is the team's value itself, as before them);
a pin of these is :func:`pin_of` (its dimension and value). Their slices hold the main document only: the user,
key and prompt id shards of every pinned value would multiply a commit's documents by ~3.8 (2,263 against 597
for 427 events of one hour of bench/firestore_scale.py's traffic); the main documents add ~30 %. So a breakdown
by user, key or prompt id of one app, feature or model is still read from the hourly rollups."""
USER_SHARDS = 8
SPREAD = ("key_id", "prompt_id")
"""Dimensions whose values can number in the thousands a day, kept out of the main document (module docstring)."""
VALUE_SHARDS = 2
"""The value shards of a store created without ``?value_shards=N``: some 250 busy keys or prompt ids a document
(README, "Firestore analytics at scale")."""
SEP = "\x1f"  # never in an attribution value: HTTP refuses control characters in headers
_NOT_SUMMED = {"hour", *HOURLY_DIMENSIONS}
SLICED = tuple(d for d in HOURLY_DIMENSIONS if d != "cache_hit")
"""The dimensions with slices of their own (every slice also splits by the cache hit: :func:`carried`)."""
USER_HISTOGRAMS = "user_h"
"""The map of the user cells' latency and TTFT histograms, beside their sums in ``user``: ranking thousands of
users reads their sums only, and the histograms of the top rows alone (:meth:`FirestoreReader.aggregate`'s
``values``). Documents written before it hold both in ``user``; readers take either."""
MAPS = (*SLICED, USER_HISTOGRAMS)
"""Every map a slice document holds (deploy/firestore.indexes.json exempts each from indexing)."""
_HISTOGRAMS = frozenset(HISTOGRAMS)


def slice_name(kind: str, org: str, team: str, part: str = "main") -> str:
    """``kind`` ``day``, ``hour`` or ``week`` (user shards only); ``org`` an organisation or :data:`ALL`;
    ``team`` a team (pinned) or :data:`ALL`; ``part`` ``main`` (every dimension but those apart), ``user{shard}``
    or ``values{shard}`` (:data:`SPREAD`)."""
    return SEP.join((kind, org, team, part))


def pin_of(dim: str, value: str) -> str:
    """The ``team`` of :func:`slice_name` for a slice pinned on ``dim``'s ``value``: the value itself for the team
    (the only pin before :data:`PINS`), else the dimension and the value. A value never holds :data:`SEP`, so a
    team's pin never reads as another's."""
    return value if dim == PIN else dim + SEP + value


def part_of(dim: str, value: str | None = None, users: int = USER_SHARDS, values: int = VALUE_SHARDS) -> str:
    """The document of a slice that holds ``dim``'s cell of ``value``: the user's shard of ``users``, a key's or
    a prompt id's shard of ``values``, or ``main`` (every other dimension)."""
    if value is None:
        return "main"
    if dim == "user":
        return f"user{shard_of(value, users)}"
    if dim in SPREAD:
        return f"values{shard_of(value, values)}"
    return "main"


def user_parts(users: int = USER_SHARDS) -> tuple[str, ...]:
    """Every user shard's part, of a store with ``users`` of them."""
    return tuple(f"user{i}" for i in range(users))


def value_parts(values: int = VALUE_SHARDS) -> tuple[str, ...]:
    """Every value shard's part (keys and prompt ids: :data:`SPREAD`), of a store with ``values`` of them."""
    return tuple(f"values{i}" for i in range(values))


def shard_of(value: str, shards: int) -> int:
    """A value's shard of ``shards`` (a user's, a key's, a prompt id's): stable across processes and versions."""
    return int.from_bytes(hashlib.sha256(value.encode()).digest()[:2], "big") % shards


def carried(dim: str) -> tuple[str, ...]:
    """The dimensions a slice of ``dim`` splits by: ``dim`` itself, the response-cache hit (every breakdown shows
    a hit rate), and for ``model`` its provider (what-if groups by both)."""
    return ("cache_hit", "provider", "model") if dim == "model" else ("cache_hit", dim)


def cell_key(row: dict[str, Any], dims: tuple[str, ...]) -> str:
    """A cell's map key: its values joined (never empty: Firestore refuses empty field names)."""
    return SEP.join(str(row[d]) for d in dims)


def cell_values(key: str, dims: tuple[str, ...]) -> dict[str, Any]:
    return {d: int(v) if d in ("status", "cache_hit") else v for d, v in zip(dims, key.split(SEP), strict=True)}


@lru_cache(maxsize=4096)
def week_of(day: str) -> str:
    """The Monday (``YYYY-MM-DD``) of the UTC week a day ``YYYY-MM-DD`` is in: a week document's bucket."""
    d = date.fromisoformat(day)
    return (d - timedelta(days=d.weekday())).isoformat()


def slice_doc_id(name: str, bucket: str, shard: int) -> str:
    """A slice document's id: readers compute it (a lookup by id, never a query). Shard 0 is the only one
    of a store without ``?shards=N``, so raising N later keeps every document found; lowering it hides the
    documents of the shards above, until ``modeltrack admin migrate``."""
    digest = hashlib.sha256(name.encode()).hexdigest()[:24]
    return f"{bucket}_{digest}_{shard}"


Acc = dict[tuple[str, str], dict[str, dict[str, dict[str, int]]]]
"""(slice name, bucket) → dimension → cell key → sums: what a commit adds to the slices."""


def _cells(row: dict[str, Any], users: int, values: int) -> list[tuple[str, str, str, str]]:
    """(slice name, bucket, dimension, cell key) of every slice cell an event's row adds to."""
    hour, org, team = row["hour"], row["org"], row["team"]
    week = week_of(hour[:10])
    cell = cell_key(row, carried("user"))
    apart = {d: part_of(d, str(row[d]), users, values) for d in ("user", *SPREAD)}
    out = []
    pins = ((ALL, ""), (team, PIN), *((pin_of(d, str(row[d])), d) for d in PINS))
    for o in (org, ALL) if org else (org,):
        for pinned, on in pins:
            for kind, bucket in (("day", hour[:10]), ("hour", hour)):
                main = slice_name(kind, o, pinned)
                for dim in SLICED:
                    if dim == on or (on in PINS and dim in apart):
                        continue  # (the other pins keep their main documents only: see PINS)
                    name = slice_name(kind, o, pinned, apart[dim]) if dim in apart else main
                    out.append((name, bucket, dim, cell_key(row, carried(dim))))
            if on in ("", PIN):  # the other pins' user questions read days: 30 a shard, within the goal
                out.append((slice_name("week", o, pinned, apart["user"]), week, "user", cell))
    # A user cell's histogram goes in a map of its own beside its sums (:data:`USER_HISTOGRAMS`).
    out += [(name, bucket, USER_HISTOGRAMS, cell) for name, bucket, dim, cell in out if dim == "user"]
    return out


def _split(row: dict[str, Any]) -> dict[str, list[tuple[str, int]]]:
    """A row's non-zero sums for each map: the user's sums without its histogram, the histogram alone, and
    every sum (``""``) for the other dimensions."""
    sums = [(k, int(v)) for k, v in row.items() if k not in _NOT_SUMMED and v]
    return {
        "": sums,
        "user": [(k, n) for k, n in sums if k not in _HISTOGRAMS],
        USER_HISTOGRAMS: [(k, n) for k, n in sums if k in _HISTOGRAMS],
    }


def add(acc: Acc, ev: CostEvent, users: int = USER_SHARDS, values: int = VALUE_SHARDS) -> None:
    """Count one event in every slice it belongs to (of a store with ``users`` user and ``values`` value
    shards)."""
    add_row(acc, event_row(ev), users=users, values=values)


def add_row(
    acc: Acc,
    row: dict[str, Any],
    fields: dict[tuple[str, str], int] | None = None,
    users: int = USER_SHARDS,
    values: int = VALUE_SHARDS,
) -> None:
    """Count an hourly-rollup row (an event's own, or a stored hourly document) in every slice it belongs to;
    ``fields`` (when given) counts each document's fields, the increments its write will carry."""
    split = _split(row)
    for name, bucket, dim, cell in _cells(row, users, values):
        sums = split[dim] if dim in split else split[""]
        if not sums:  # (a cell written as an empty map would replace what it held: none is written)
            continue
        into = acc.setdefault((name, bucket), {}).setdefault(dim, {}).setdefault(cell, {})
        for k, n in sums:
            if k not in into and fields is not None:
                fields[(name, bucket)] = fields.get((name, bucket), 0) + 1
            into[k] = into.get(k, 0) + n


MAX_TRANSFORMS = 480
"""Firestore applies at most 500 field transforms to one document in one commit; every sum of every cell is an
``Increment``, so a commit stops adding events before a slice document would pass this (a margin kept)."""


def fits(
    acc: Acc,
    fields: dict[tuple[str, str], int],
    row: dict[str, Any],
    users: int = USER_SHARDS,
    values: int = VALUE_SHARDS,
) -> bool:
    """Whether counting ``row`` too keeps every slice document of a commit within :data:`MAX_TRANSFORMS`."""
    split = _split(row)
    extra: dict[tuple[str, str], int] = {}
    for name, bucket, dim, cell in _cells(row, users, values):
        have = acc.get((name, bucket), {}).get(dim, {}).get(cell, {})
        new = sum(1 for k, _ in (split[dim] if dim in split else split[""]) if k not in have)
        if new:
            extra[(name, bucket)] = extra.get((name, bucket), 0) + new
    return all(fields.get(k, 0) + n <= MAX_TRANSFORMS for k, n in extra.items())


def keys(row: dict[str, Any], users: int = USER_SHARDS, values: int = VALUE_SHARDS) -> set[tuple[str, str]]:
    """The slice documents (before write shards) an event's row adds to: what a commit's write count includes."""
    return {(name, bucket) for name, bucket, _, _ in _cells(row, users, values)}
