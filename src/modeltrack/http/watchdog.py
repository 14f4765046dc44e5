"""Idle deadlines for exchanges: the upstream may be silent for ``timeout`` seconds while we wait on it.

One ticker per distinct timeout serves every exchange that uses it: registering is a set insertion, instead of
a timer armed and cancelled for every request (a per-chunk ``sock_read`` timer once cost ~13% of the proxy's
CPU on streams, and even a per-request timer is a heap push and a cancel). The ticker runs four times per period
while it has exchanges to watch; an exchange whose progress counter did not move for four whole ticks while it
was waiting on the upstream is idle. So a silent upstream is cut off between ``timeout`` and 1.25 × ``timeout``
after its last byte; a slow *client* (we paused reading the upstream for it) is never taken for an idle upstream.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable


class IdleWatchdog:
    """One exchange's idle deadline. ``progress`` is bumped for every chunk; ``waiting`` is false while the
    exchange has paused reading the upstream for a slow client."""

    __slots__ = ("_idle", "_on_idle", "_seen", "_ticker", "fired", "progress", "waiting")

    def __init__(self, ticker: Ticker, on_idle: Callable[[], None]) -> None:
        self._ticker = ticker
        self._on_idle = on_idle
        self._idle = 0
        self._seen = -1  # the first tick after registration only takes a reading: no partial period counts
        self.progress = 0
        self.waiting = True
        self.fired = False
        ticker.add(self)

    def _tick(self) -> bool:
        """True when the deadline passed (the watchdog has fired and must be dropped)."""
        if self.waiting and self.progress == self._seen:
            self._idle += 1
        else:
            self._idle = 0
        self._seen = self.progress
        if self._idle >= 4:
            self.fired = True
            self._on_idle()
            return True
        return False

    def stop(self) -> None:
        self._ticker.discard(self)


class Ticker:
    """Ticks four times per ``timeout`` while it has watchdogs."""

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self._watched: set[IdleWatchdog] = set()
        self._handle: asyncio.TimerHandle | None = None

    def add(self, wd: IdleWatchdog) -> None:
        self._watched.add(wd)
        if self._handle is None:
            self._handle = asyncio.get_running_loop().call_later(self.timeout / 4, self._tick)

    def discard(self, wd: IdleWatchdog) -> None:
        self._watched.discard(wd)

    def _tick(self) -> None:
        fired = [wd for wd in list(self._watched) if wd._tick()]
        self._watched.difference_update(fired)
        if self._watched:
            self._handle = asyncio.get_running_loop().call_later(self.timeout / 4, self._tick)
        else:
            self._handle = None


class Watchdogs:
    """The tickers of one proxy, one per distinct timeout (per-provider read timeouts)."""

    def __init__(self) -> None:
        self._tickers: dict[float, Ticker] = {}

    def watch(self, timeout: float, on_idle: Callable[[], None]) -> IdleWatchdog:
        ticker = self._tickers.get(timeout)
        if ticker is None:
            ticker = self._tickers[timeout] = Ticker(timeout)
        return IdleWatchdog(ticker, on_idle)
