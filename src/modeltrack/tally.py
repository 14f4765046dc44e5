"""A series' tally: what one label combination counted since the last scrape, in a plain list of floats.

Why a list and not the instruments: a prometheus-client instrument's ``inc`` takes a lock per call, eight calls a
request (issue O). :meth:`modeltrack.metrics.Metrics.count` adds to a tally instead, and :func:`fold_histogram`
and the ``_fold`` of :class:`~modeltrack.metrics.Metrics` move it into the instruments when something reads them.
The folded exposition is the same, sample for sample, as observing each request directly
(tests/test_metrics.py::test_tallies_fold_into_the_same_exposition).

The layout (:data:`SLOTS` floats): the counters named in :data:`COUNTED`, then for each histogram (duration,
overhead, time to first token) its bucket counts, +Inf last, and its sum. :func:`slot` finds a value's bucket.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final

OVERHEAD_BUCKETS: Final[tuple[float, ...]] = (
    25e-6,
    50e-6,
    100e-6,
    250e-6,
    500e-6,
    1e-3,
    2.5e-3,
    5e-3,
    10e-3,
    25e-3,
    50e-3,
    0.1,
)
DURATION_BUCKETS: Final[tuple[float, ...]] = (
    *(0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
    *(20.0, 30.0, 60.0, 120.0, 300.0, 600.0),
)
TTFT_BUCKETS: Final[tuple[float, ...]] = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0)

INF: Final = float("inf")
COUNTED: Final[tuple[str, ...]] = (
    *("requests", "input", "output", "cache_read", "cache_write", "reasoning", "cost"),
    *("prompt_savings", "savings", "unpriced"),
)
DUR_BOUNDS: Final[tuple[float, ...]] = (*DURATION_BUCKETS, INF)
OVER_BOUNDS: Final[tuple[float, ...]] = (*OVERHEAD_BUCKETS, INF)
TTFT_BOUNDS: Final[tuple[float, ...]] = (*TTFT_BUCKETS, INF)
DUR: Final = len(COUNTED)
"""Where the duration histogram's buckets start; its sum is at ``OVER - 1``."""
OVER: Final = DUR + len(DUR_BOUNDS) + 1
TTFT: Final = OVER + len(OVER_BOUNDS) + 1
SLOTS: Final = TTFT + len(TTFT_BOUNDS) + 1
STATUS_CLASS: Final[tuple[str, ...]] = ("", "1xx", "2xx", "3xx", "4xx", "5xx")
"""By ``status // 100`` (1 to 5): no string built per request."""


def slot(bounds: tuple[float, ...], x: float) -> int:
    """The index of the first bound ``>= x`` (``bisect_left``; the last bound is +Inf, so there is one). A scan
    from the first bound: compiled, it compares native floats, and a request's values sit in the first few buckets.
    ``bisect.bisect_left`` took ~770 CPU instructions a call here, most of them its argument parsing and generic
    comparisons, three calls a request (bench/README.md, "twenty-sixth session"). A NaN lands in the first bucket,
    as with ``bisect_left``."""
    i = 0
    while bounds[i] < x:
        i += 1
    return i


def fold_histogram(child: Any, t: list[float], at: int, n: int) -> None:
    """Add a tally's bucket counts and sum to a prometheus-client histogram child. prometheus-client has no public
    call for "n observations in bucket i" (``observe`` takes one value); its ``_buckets`` (per-bucket counts,
    +Inf last) and ``_sum`` are what ``observe`` adds to, in 0.x (pinned; the test named above compares the two)."""
    for i in range(n):
        if t[at + i]:
            child._buckets[i].inc(t[at + i])
    child._sum.inc(t[at + n])


class FoldFirst:
    """A collector with no samples of its own, registered first: collecting it folds the tallies (``fold``) before
    the registry reads the instruments."""

    def __init__(self, fold: Callable[[], None]) -> None:
        self.fold = fold

    def describe(self) -> list[Any]:
        return []

    def collect(self) -> list[Any]:
        self.fold()
        return []


@dataclass(slots=True)
class Series:
    """The metric children for one label combination; ``children`` holds those created on first use; ``tally``
    what was counted since the last fold."""

    requests: Any
    duration: Any
    overhead: Any
    folds: tuple[Any, ...]
    labels: tuple[str, ...]  # the attribution labels: (org,) provider, model, team, app, feature
    provider: str
    model: str
    children: dict[str, Any]
    tally: list[float] = field(default_factory=lambda: [0.0] * SLOTS)
    dirty: bool = False
