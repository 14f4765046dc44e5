"""Writes that come many to a loop turn are held until the turn has made them all, and then leave together: the
responses written to clients while upstream reads are delivered, and the requests written upstream by the
handlers that one turn started.

Why: a write to a socket whose reader sleeps wakes that reader, and on a virtual machine waking a peer whose
vCPU has gone idle is the dearest single thing a proxied request does (bench/README.md, "eighteenth session":
16 µs of a plain request's ~120 at saturation, inside the kernel's ``sock_def_readable``). Under load the loop
delivers many upstream reads in one turn, then starts the handlers of many requests; written one by one, each
response wakes its client again and each request wakes the upstream again. Held, one turn's writes reach their
peers in one burst, and a peer woken by the first is still awake for the rest. Together they bought a third
more throughput, and a quarter less CPU a request, at saturation (bench/README.md).

What holds (tests/test_coalesce.py, and every byte-for-byte test through real servers):

* **nothing is held when nothing shares the turn**: with one request in flight, or none, every write goes at
  once, so concurrency 1 pays nothing;
* **order**: once a write to a client connection is held, every later write to it joins the held ones until
  they are written, whoever makes it, so a connection's bytes leave in the order they were written (a request
  is one write, on a connection that carries nothing else until it is answered);
* **nothing waits past its turn**: a response is held from an upstream read callback, and its flush is queued
  with ``call_soon`` then, which the loop runs before it polls for I/O again; a request is held only while a
  handler the same turn created has yet to start, and the last of them to start writes the held requests
  before it runs (a handler cancelled before it started counts as started: :class:`~.server.Connection`);
* **bounded**: past :data:`MAX_HELD` held connections, what is held is written at once, so in a long turn (500
  streams' reads) no write waits behind more than that many others;
* **closing writes first**: a close, an abort or a half-close of a client connection writes what is held first
  (:class:`~.writer.ResponseWriter`); a connection the client closed drops it. A request held on an upstream
  connection that closed was provably never sent, so it may be retried (:mod:`~.upstream`).

A handler's own answers (refusals, cache hits) and the WebSocket tunnels write at once, unless something of their
connection is already held.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Final, Protocol

from ..logs import log_exception_safely
from .limits import Limits

log: Final = logging.getLogger("modeltrack.http.server")

MAX_HELD: Final = 16
"""Connections whose writes are held at once, in each direction."""


class Held(Protocol):
    """A connection whose writes can be held: a client's (:class:`~.writer.ResponseWriter`) or an upstream's
    (:class:`~.upstream.UpstreamConnection`)."""

    def flush_held(self) -> None: ...


class Coalescer:
    """One per process (its loop): the connections with writes held in the current turn."""

    __slots__ = ("_limits", "_requests", "_responses", "holding", "starting")

    def __init__(self, limits: Limits) -> None:
        """``limits``: the process's request counters; writes are held only while more than one request is in
        flight."""
        self._limits = limits
        self._responses: list[Held] = []
        self._requests: list[Held] = []
        self.holding = 0  # > 0 while an upstream read is delivered
        self.starting = 0  # handlers created and not yet started

    # -- responses, held from upstream reads ----------------------------------------------------------------
    def hold_response(self, conn: Held) -> bool:
        """Whether a client connection's write should be held (it then keeps it, and is flushed at the end of
        the turn)."""
        if not self.holding or self._limits.requests < 2:
            return False
        waiting = self._responses
        if not waiting:
            asyncio.get_running_loop().call_soon(self._flush_responses)
        elif len(waiting) >= MAX_HELD:
            self._flush_responses()  # the turn's flush stays queued, for what is held after this
        self._responses.append(conn)
        return True

    def _flush_responses(self) -> None:
        waiting, self._responses = self._responses, []
        _flush(waiting)

    # -- requests, held from the handlers one turn started --------------------------------------------------
    def created(self) -> None:
        """A handler was created; it starts in a later step of the loop."""
        self.starting += 1

    def started(self) -> None:
        """A handler started (or was cancelled before it could): the last of a turn's writes what is held."""
        self.starting -= 1
        if self.starting <= 0:
            self.starting = 0
            if self._requests:
                waiting, self._requests = self._requests, []
                _flush(waiting)

    def hold_request(self, conn: Held) -> bool:
        """Whether an upstream connection's request should be held (it then keeps it)."""
        if self.starting <= 0 or self._limits.requests < 2:
            return False
        waiting = self._requests
        if len(waiting) >= MAX_HELD:
            self._requests = []
            _flush(waiting)
        self._requests.append(conn)
        return True


def _flush(waiting: list[Held]) -> None:
    for conn in waiting:
        try:
            conn.flush_held()
        except Exception as exc:  # noqa: BLE001 - one broken socket must not keep the others' bytes
            log_exception_safely("held write failed", exc, log.name)
