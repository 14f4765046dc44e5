"""Egress through a corporate forward proxy: ``HTTPS_PROXY``, ``HTTP_PROXY``, ``ALL_PROXY`` and ``NO_PROXY``,
read the way curl and Python's ``urllib`` read them (the lower-case name wins; ``NO_PROXY`` matching is
``urllib.request.proxy_bypass_environment``'s).

Why this is careful: the traffic through it carries the callers' API keys. It only ever goes to a proxy the
operator's environment names, never to one a request names (no ``Proxy:`` header is read — the "httpoxy"
mistake), and the proxy's own credentials are sent in ``Proxy-Authorization`` and never logged. HTTPS upstreams
are reached through a ``CONNECT`` tunnel, so the proxy sees only the host name and encrypted bytes; plain-HTTP
upstreams are asked in absolute form through it, as every HTTP client does.
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Mapping
from dataclasses import dataclass
from urllib import request as urllib_request
from urllib.parse import unquote, urlsplit

from .limits import MAX_HEADER_BYTES


class EgressError(ValueError):
    """A proxy variable that cannot be used, with what to write instead."""


class TunnelRefused(ConnectionError):
    """The egress proxy answered the ``CONNECT`` with something other than 2xx."""

    def __init__(self, status: int) -> None:
        super().__init__(f"egress proxy refused CONNECT with {status}")
        self.status = status


@dataclass(frozen=True, slots=True)
class EgressRoute:
    host: str
    port: int
    authorization: bytes = b""  # the Proxy-Authorization value (Basic), from the proxy URL's user info

    @property
    def authorization_line(self) -> bytes:
        return b"Proxy-Authorization: " + self.authorization + b"\r\n" if self.authorization else b""

    def describe(self) -> str:
        """What the start-up line shows: never the credentials."""
        shown = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{shown}:{self.port}" + (" (with credentials)" if self.authorization else "")


def proxy_variables(env: Mapping[str, str]) -> dict[str, str]:
    """``{"https": ..., "http": ..., "all": ..., "no": ...}`` from the environment, lower-case names first. As
    in ``urllib``, ``HTTP_PROXY`` in upper case is ignored under CGI (``REQUEST_METHOD`` set): there it can come
    from a request's ``Proxy:`` header."""
    out: dict[str, str] = {}
    for scheme in ("https", "http", "all", "no"):
        value = env.get(f"{scheme}_proxy")
        if value is None and not (scheme == "http" and "REQUEST_METHOD" in env):
            value = env.get(f"{scheme.upper()}_PROXY")
        if value:
            out[scheme] = value.strip()
    return out


def route_for(scheme: str, host: str, port: int, variables: Mapping[str, str]) -> EgressRoute | None:
    """The proxy an upstream at ``scheme://host:port`` must be reached through, or None (direct)."""
    url = variables.get(scheme) or variables.get("all")
    if not url:
        return None
    if "no" in variables:
        bypass = urllib_request.proxy_bypass_environment  # type: ignore[attr-defined]  # public, not in typeshed
        if bypass(f"{host}:{port}", {"no": variables["no"]}) or bypass(host, {"no": variables["no"]}):
            return None
    return parse_proxy_url(url, f"{scheme.upper()}_PROXY")


def parse_proxy_url(url: str, name: str) -> EgressRoute:
    raw = url if "://" in url else "http://" + url
    u = urlsplit(raw)
    if u.scheme != "http":
        raise EgressError(
            f"{name}: only http:// forward proxies are supported (HTTPS upstreams still get end-to-end TLS through "
            f"a CONNECT tunnel); write {name}=http://HOST:PORT"
        )
    if not u.hostname:
        raise EgressError(f"{name}: no host in the proxy URL; write {name}=http://HOST:PORT")
    try:
        port = u.port or 80
    except ValueError:
        raise EgressError(f"{name}: the port is not a number; write {name}=http://HOST:PORT") from None
    auth = b""
    if u.username is not None:
        creds = f"{unquote(u.username)}:{unquote(u.password or '')}".encode()
        auth = b"Basic " + base64.b64encode(creds)
    return EgressRoute(u.hostname, port, auth)


class _Tunnel(asyncio.Protocol):
    """Reads the proxy's answer to ``CONNECT``; what follows belongs to the TLS layer."""

    def __init__(self, answered: asyncio.Future[int]) -> None:
        self._answered = answered
        self._buf = b""

    def data_received(self, data: bytes) -> None:
        if self._answered.done():
            return
        self._buf += data
        end = self._buf.find(b"\r\n\r\n")
        if end < 0:
            if len(self._buf) > MAX_HEADER_BYTES:
                self._answered.set_exception(ConnectionError("egress proxy answer too large"))
            return
        line = self._buf.split(b"\r\n", 1)[0].split(b" ", 2)
        if len(line) < 2 or not line[0].startswith(b"HTTP/1.") or not line[1].isdigit():
            self._answered.set_exception(ConnectionError("egress proxy sent an invalid answer to CONNECT"))
            return
        self._answered.set_result(int(line[1]))

    def connection_lost(self, exc: Exception | None) -> None:
        if not self._answered.done():
            self._answered.set_exception(ConnectionError("egress proxy closed the CONNECT tunnel"))


async def open_tunnel(loop: asyncio.AbstractEventLoop, route: EgressRoute, host: str, port: int) -> asyncio.Transport:
    """A TCP stream to ``host:port`` through the proxy (``CONNECT``), ready for TLS. Raises an ``OSError``."""
    answered: asyncio.Future[int] = loop.create_future()
    transport, _ = await loop.create_connection(lambda: _Tunnel(answered), route.host, route.port)
    authority = (f"[{host}]" if ":" in host else host).encode("idna") + b":%d" % port
    transport.write(b"CONNECT %s HTTP/1.1\r\nHost: %s\r\n%s\r\n" % (authority, authority, route.authorization_line))
    try:
        status = await answered
    except BaseException:
        transport.abort()
        raise
    if not 200 <= status < 300:
        transport.abort()
        raise TunnelRefused(status)
    return transport
