"""The keep-alive pool of one provider origin: hands out idle connections oldest-released first, opens new ones
up to a per-origin cap, and never hands out a connection that is busy, closing, or that the upstream closed
(the rules are in :mod:`modeltrack.http.upstream`'s docstring; aiohttp's ``connector`` is the model for the split).

Connections are only ever opened to the configured origin (scheme, host, port), directly or through the egress
proxy the environment names for it (:mod:`modeltrack.http.egress`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import select
import socket
import ssl
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Final
from urllib.parse import urlsplit

from .coalesce import Coalescer
from .egress import EgressRoute, TunnelRefused, open_tunnel
from .upstream import BUSY, IDLE, UpstreamConnection

# The clocks as C statics: compiled, a call is then one indirect call, not an attribute lookup on the module
# (~30 ns a call, several a request).
monotonic: Final = time.monotonic
log: Final = logging.getLogger("modeltrack.proxy")  # where every upstream failure is reported

FRESH_RELEASE: Final = 0.002
"""Seconds after its release during which a connection is not reused while a new one may be opened instead. An
upstream that closes right after answering has its FIN on the way for that long; a busy proxy would otherwise
write the next request into a connection that is already closed, and a POST that may have reached the
upstream is never sent twice. Idle connections are reused oldest first, so with steady traffic the oldest one
is well past this age and the pool settles at a few warm connections; only a burst pays a new connection."""


def _why(exc: BaseException) -> str:
    """A content-free description of a connection failure (exception messages can hold URLs or peer text)."""
    if isinstance(exc, socket.gaierror):
        return "DNS lookup failed"
    if isinstance(exc, TunnelRefused):
        return f"the egress proxy refused the tunnel ({exc.status})"
    if isinstance(exc, ssl.SSLCertVerificationError):
        return "the TLS certificate is not trusted (MODELTRACK_CA_BUNDLE adds CAs)"
    if isinstance(exc, ssl.SSLError):
        return "the TLS handshake failed"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    return f"connection failed ({type(exc).__name__})"


class PoolExhausted(Exception):
    """Every connection the origin may have is busy, and none was released within the connect timeout."""


@dataclass(frozen=True, slots=True)
class Origin:
    """Where one provider's requests go: fixed at start-up from its base URL."""

    scheme: str
    host: str
    port: int
    base_path: str
    host_header: bytes

    @classmethod
    def parse(cls, base_url: str) -> Origin:
        u = urlsplit(base_url)
        if u.scheme not in ("http", "https") or not u.hostname:
            raise ValueError("base URL must be http(s)://host[:port][/path]")
        default = 443 if u.scheme == "https" else 80
        port = u.port or default
        host = u.hostname
        shown = f"[{host}]" if ":" in host else host
        header = shown if port == default else f"{shown}:{port}"
        return cls(u.scheme, host, port, u.path.rstrip("/"), header.encode("idna"))

    @property
    def url(self) -> str:
        """``scheme://host[:port]`` (no path, no credentials): what logs and the start-up line show."""
        return f"{self.scheme}://{self.host_header.decode()}"

    def join(self, path: str) -> str:
        """The upstream path for a request path: the base path, then the request's path, without repeating the
        segments they share. ``http://host/v1`` (the form SDK users know) with ``/v1/chat/completions`` is
        ``/v1/chat/completions``, not ``/v1/v1/chat/completions``; ``/openai`` (Groq) with ``/v1/...`` is
        ``/openai/v1/...``."""
        base = self.base_path
        if not base:
            return path
        for i in range(len(base)):
            if (i == 0 or base[i] == "/") and path.startswith(base[i:]):
                rest = path[len(base) - i :]
                if not rest or rest[0] in "/?":
                    return base[:i] + path
        return base + path


_BODY_METHODS: Final = frozenset({"POST", "PUT", "PATCH"})
_WATCH: Final = select.POLLIN | select.POLLPRI | select.POLLERR | select.POLLHUP
_EPOLL_WATCH: Final = select.EPOLLIN | select.EPOLLPRI | select.EPOLLERR | select.EPOLLHUP
SWEEP_EVERY: Final = 0.001
"""Idle sockets are checked for a pending EOF or stray bytes (urllib3's ``is_connection_dropped``) by one
``epoll`` wait over the whole pool at most this often: a system call per acquire would cost several percent of a
request's CPU, and with ``FRESH_RELEASE`` above it, a FIN that follows its answer within a millisecond has been
seen before the connection is reused. epoll, not poll: its wait costs what is ready, not what is registered, so
a pool that keeps 1,000 idle connections after a burst sweeps them for ~1 µs, not ~100 µs (bench/README.md,
thirty-fifth session)."""


def _dropped(fd: int) -> bool:
    """One socket's check, for the rare reuse of a just-released connection at the connection cap."""
    if fd < 0:
        return False
    p = select.poll()
    p.register(fd, _WATCH)
    return bool(p.poll(0))


async def _still_open(conn: UpstreamConnection) -> bool:
    """Yield to the loop once (it reads whatever arrived meanwhile, a FIN included), then check again."""
    await asyncio.sleep(0)
    t = conn.transport
    if conn.state == BUSY and t is not None and not t.is_closing() and not _dropped(conn.fd):
        return True
    conn.close()
    return False


class UpstreamPool:
    """Keep-alive connections to one origin, reused oldest-released first (see ``FRESH_RELEASE``).

    ``max_connections`` caps the connections open or opening at once (0: no cap); past it, a request waits up to
    the connect timeout for one to be released. ``max_idle`` caps how many idle ones are kept.
    """

    def __init__(
        self,
        origin: Origin,
        tls: ssl.SSLContext | None,
        connect_timeout: float,
        *,
        max_connections: int = 0,
        max_idle: int = 100,
        idle_timeout: float = 30.0,
        egress: EgressRoute | None = None,
        connector: Callable[[UpstreamConnection], Awaitable[None]] | None = None,
        coalescer: Coalescer | None = None,
    ) -> None:
        """``connector`` opens the socket for a new connection (default: TCP/TLS to the origin, or through the
        egress proxy); protocol-level tests pass one that attaches a fake transport. ``coalescer``: handed to
        each connection (:mod:`modeltrack.http.coalesce`)."""
        self._coalescer = coalescer
        self.origin = origin
        self._tls = tls if origin.scheme == "https" else None
        self._connect_timeout = connect_timeout
        self._idle_timeout = idle_timeout
        self.max_connections = max_connections
        self.max_idle = max_idle
        self.egress = egress
        self._connect = connector or self._open_socket
        # Plain-HTTP origins behind a forward proxy are asked in absolute form, with the proxy's credentials.
        forward = egress is not None and origin.scheme == "http"
        self.target_prefix = origin.url.encode() if forward else b""
        self.proxy_header = egress.authorization_line if forward and egress is not None else b""
        self._idle: deque[UpstreamConnection] = deque()  # oldest release first
        self._watch = select.epoll()  # every open connection's socket (see SWEEP_EVERY)
        self._watched: dict[int, UpstreamConnection] = {}
        self._swept = 0.0
        self._open = 0  # connections open or being opened
        self._waiters: deque[asyncio.Future[None]] = deque()

    @property
    def open_connections(self) -> int:
        return self._open

    @property
    def idle_connections(self) -> int:
        return len(self._idle)

    async def acquire(self, fresh: bool = False) -> UpstreamConnection:
        """A busy connection for one exchange: an idle pooled one if any (not with ``fresh``), else a new one.
        ``OSError``/``TimeoutError`` if the origin cannot be reached (TLS verification failures are
        ``ssl.SSLError``, an ``OSError``); :class:`PoolExhausted` when the per-origin cap holds for too long."""
        deadline: float | None = None
        while True:
            now = monotonic()
            capped = bool(self.max_connections) and self._open >= self.max_connections
            if not fresh:
                conn = self._take_idle(now, capped)
                if conn is not None:
                    if now - conn.idle_since < FRESH_RELEASE and not await _still_open(conn):
                        continue
                    return conn
            if not capped:
                break
            loop = asyncio.get_running_loop()
            if deadline is None:
                deadline = loop.time() + self._connect_timeout
            waiter = loop.create_future()
            self._waiters.append(waiter)
            try:
                async with asyncio.timeout_at(deadline):
                    await waiter
            except TimeoutError:
                raise PoolExhausted from None
            finally:
                with contextlib.suppress(ValueError):
                    self._waiters.remove(waiter)
        self._open += 1
        conn = UpstreamConnection(self, self._coalescer)
        try:
            async with asyncio.timeout(self._connect_timeout):  # no extra task, unlike wait_for
                await self._connect(conn)
        except BaseException:
            if conn.transport is not None:
                conn.close()  # counted down by forget
            else:
                self._open -= 1
                self._wake()
            raise
        conn.state = BUSY
        return conn

    def _take_idle(self, now: float, recent_ok: bool = False) -> UpstreamConnection | None:
        """The oldest usable idle connection; None if there is none, or only recently released ones and a new
        connection may be opened instead (``recent_ok`` False)."""
        idle = self._idle
        if idle and now - self._swept >= SWEEP_EVERY:
            self._sweep(now)
        while idle:
            conn = idle[0]
            if not recent_ok and now - conn.idle_since < FRESH_RELEASE:
                return None
            if conn.state != IDLE:
                idle.popleft()
                continue  # never hand out, nor close, a connection an exchange holds
            t = conn.transport
            if t is not None and not t.is_closing() and now - conn.idle_since < self._idle_timeout:
                idle.popleft()
                conn.state = BUSY
                conn.reused = True
                return conn
            conn.close()  # still idle and first in the list: forget takes it off the front at once
        return None

    def _sweep(self, now: float) -> None:
        """Close every idle connection whose socket has a pending EOF, an error or stray bytes (a busy one has
        bytes pending as a matter of course: its exchange reads them)."""
        self._swept = now
        for fd, _ in self._watch.poll(0):
            conn = self._watched.get(fd)
            if conn is not None and conn.state == IDLE:
                conn.close()

    def watch(self, conn: UpstreamConnection) -> None:
        """Every open socket is in the pool's epoll set, registered once (not at each release and reuse)."""
        fd = conn.fd
        if fd >= 0:
            try:
                self._watch.register(fd, _EPOLL_WATCH)
            except FileExistsError:  # the same socket, registered again: only its events are set
                self._watch.modify(fd, _EPOLL_WATCH)
            self._watched[fd] = conn

    def _unwatch(self, conn: UpstreamConnection) -> None:
        if self._watched.get(conn.fd) is conn:  # the number may belong to a newer socket by now
            del self._watched[conn.fd]
            with contextlib.suppress(OSError):  # a closed socket has left the epoll set by itself
                self._watch.unregister(conn.fd)

    async def _open_socket(self, proto: UpstreamConnection) -> None:
        loop = asyncio.get_running_loop()
        o = self.origin
        if self.egress is None:
            await loop.create_connection(
                lambda: proto, o.host, o.port, ssl=self._tls, server_hostname=o.host if self._tls else None
            )
        elif self._tls is not None:
            transport = await open_tunnel(loop, self.egress, o.host, o.port)
            tls_transport = await loop.start_tls(transport, proto, self._tls, server_hostname=o.host)
            if tls_transport is None:
                raise ConnectionError("TLS through the egress proxy failed")
            proto.connection_made(tls_transport)
        else:
            await loop.create_connection(lambda: proto, self.egress.host, self.egress.port)

    async def open_raw(self, proto: asyncio.Protocol) -> None:
        """A connection to the same origin outside the pool, for a WebSocket tunnel (:mod:`.upgrade`), with the
        same TLS and egress rules; through an egress proxy it is always a ``CONNECT`` tunnel, since a forward
        proxy does not carry an upgraded connection asked in absolute form."""
        loop = asyncio.get_running_loop()
        o, tls = self.origin, self._tls
        async with asyncio.timeout(self._connect_timeout):
            if self.egress is None:
                await loop.create_connection(
                    lambda: proto, o.host, o.port, ssl=tls, server_hostname=o.host if tls else None
                )
                return
            transport = await open_tunnel(loop, self.egress, o.host, o.port)
            if tls is not None:
                tls_transport = await loop.start_tls(transport, proto, tls, server_hostname=o.host)
                if tls_transport is None:
                    raise ConnectionError("TLS through the egress proxy failed")
                transport = tls_transport
            else:
                transport.set_protocol(proto)
            proto.connection_made(transport)

    def unreachable(self, name: str, exc: BaseException) -> str:
        """Log why the origin of provider ``name`` could not be reached (never the exception's text: it can hold
        URLs or peer text) and return what to tell the client, with the setting to check."""
        why = _why(exc)
        via = f" through the egress proxy {self.egress.describe()}" if self.egress is not None else ""
        fix = f"MODELTRACK_{name.upper()}_BASE_URL" + (" or HTTPS_PROXY/NO_PROXY" if via else "")
        log.warning("upstream %s unreachable at %s%s: %s; check %s", name, self.origin.url, via, why, fix)
        return f"The {name} upstream at {self.origin.url} could not be reached: {why}. Check {fix}."

    def request_head(
        self, method: str, up_path: str, query: str, lines: list[tuple[bytes, bytes]], send: bytes
    ) -> bytes:
        """The request line and headers sent to this origin: its path under the origin's base path (the whole
        URL when the request goes through a plain-HTTP forward proxy), the origin's ``Host``, the proxy's
        authorization if any, the client's lines as :func:`.headers.forward_headers` kept them, and the length of
        the body as sent."""
        origin = self.origin
        path = origin.join(up_path) if origin.base_path else up_path
        up_target = self.target_prefix + (path + "?" + query if query else path).encode("latin-1")
        parts = [b"%s %s HTTP/1.1\r\nHost: %s\r\n" % (method.encode("ascii"), up_target, origin.host_header)]
        if self.proxy_header:
            parts.append(self.proxy_header)
        parts.extend(b"%s: %s\r\n" % kv for kv in lines)
        if send or method in _BODY_METHODS:
            parts.append(b"Content-Length: %d\r\n" % len(send))
        parts.append(b"\r\n")
        return b"".join(parts)

    def release(self, conn: UpstreamConnection) -> None:
        """Pool a connection after a clean exchange. Idempotent: only a busy connection becomes idle."""
        if conn.state != BUSY:
            return
        if len(self._idle) >= self.max_idle:
            conn.close()
            return
        conn.state = IDLE
        conn.idle_since = monotonic()
        self._idle.append(conn)
        if self._waiters:
            self._wake()

    def forget(self, conn: UpstreamConnection, was_idle: bool) -> None:
        """A connection closed: it no longer counts, and is never handed out again. Only an idle one is looked
        for in the idle list: a search is as long as the list, and a pool that keeps 1,000 idle connections
        would otherwise search all of them for every busy connection that closes."""
        self._open -= 1
        self._unwatch(conn)
        if was_idle:
            with contextlib.suppress(ValueError):
                self._idle.remove(conn)
        self._wake()

    def _wake(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    def close(self) -> None:
        for conn in list(self._idle):
            conn.close()
        self._idle.clear()
