"""Client writes made while upstream reads are delivered are held to the end of the loop's turn, and then leave
together.

Why: a write to a socket whose reader sleeps wakes that reader, and on a virtual machine waking a peer whose
vCPU has gone idle is the dearest single thing a proxied request does (bench/README.md, "eighteenth session":
16 µs of a plain request's ~120 at saturation, inside the kernel's ``sock_def_readable``). Under load the loop
delivers the reads of many upstream responses in one turn; written as each completes, every response wakes its
client again. Held to the end of the turn, one turn's responses reach the clients in one burst, and a client
woken by the first is still awake for the rest. nginx gets the same from its event loop's batching; here it
bought a fifth more throughput and a sixth less CPU a request (bench/README.md).

What holds (tests/test_coalesce.py, and every byte-for-byte test through real servers):

* **order**: once a write to a connection is held, every later write to it joins the held ones until they are
  written, whoever makes it, so a connection's bytes leave in the order they were written;
* **nothing waits past the turn**: the flush is queued with ``call_soon`` when the first write of a turn is
  held, from the read callback, and the loop runs its queue before it polls for I/O again;
* **closing flushes first**: a close, an abort or a half-close of the connection writes what is held first
  (:class:`~modeltrack.http.writer.ResponseWriter`); a connection the client closed drops it;
* **no added latency when nothing shares the turn**: with one request in flight, or none, nothing is held, so
  concurrency 1 pays nothing (not even the ``call_soon``).

Only writes made inside an upstream read are held (:meth:`UpstreamConnection.data_received
<modeltrack.http.upstream.UpstreamConnection.data_received>` counts itself in :attr:`Coalescer.holding`):
those are the ones that come many to a turn. A handler's own answers (refusals, cache hits) and the WebSocket
tunnels write at once, unless something of their connection is already held.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Protocol

from ..logs import log_exception_safely
from .limits import Limits

log = logging.getLogger("modeltrack.http.server")


class Held(Protocol):
    """A connection whose writes can be held (:class:`~modeltrack.http.writer.ResponseWriter`)."""

    def flush_held(self) -> None: ...


class Coalescer:
    """One per process (its loop): the connections with writes held in the current turn."""

    __slots__ = ("_limits", "_waiting", "holding")

    def __init__(self, limits: Limits) -> None:
        """``limits``: the process's request counters; writes are held only while more than one request is in
        flight."""
        self._limits = limits
        self._waiting: list[Held] = []
        self.holding = 0  # > 0 while an upstream read is delivered

    def hold(self, conn: Held) -> bool:
        """Whether ``conn``'s write should be held (it then keeps it, and is flushed at the end of the turn)."""
        if not self.holding or self._limits.requests < 2:
            return False
        waiting = self._waiting
        if not waiting:
            asyncio.get_running_loop().call_soon(self._flush)
        waiting.append(conn)
        return True

    def _flush(self) -> None:
        waiting, self._waiting = self._waiting, []
        for conn in waiting:
            try:
                conn.flush_held()
            except Exception as exc:  # noqa: BLE001 - one broken socket must not keep the others' bytes
                log_exception_safely("held write failed", exc, log.name)
