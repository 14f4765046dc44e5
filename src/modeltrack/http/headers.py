"""What of the client's headers goes upstream, what of the upstream's goes back, and what ModelTrack reads.

Request side: the client's header lines pass through byte-for-byte, in order, duplicates and spelling kept, less
hop-by-hop fields (and those the ``Connection`` header names, RFC 9110 §7.6.1), ``Host`` and the framing
fields (the proxy writes its own), and ``X-ModelTrack-*``: those are ModelTrack's, read here and never
forwarded.

Response side: the upstream's fields go back less hop-by-hop ones (and those its ``Connection`` names) and the
framing fields, which the server writes itself.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Final

from ..labels import sanitize
from .names import length_mask, lower

HOP_BY_HOP: Final = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"te",
        b"trailer",
        b"trailers",
        b"transfer-encoding",
        b"upgrade",
    }
)
_DROP_REQUEST: Final = HOP_BY_HOP | {b"host", b"content-length", b"expect"}
_DROP_RESPONSE: Final = HOP_BY_HOP | {b"content-length"}
_PLAIN_CONNECTION: Final = frozenset({b"keep-alive", b"close"})  # name no other field: the common case, no extra work
UPSTREAM_ID_HEADERS: Final[tuple[bytes, ...]] = (
    b"x-request-id",
    b"request-id",
    b"x-amzn-requestid",
    b"apim-request-id",
    b"x-goog-request-id",
)
ATTR_HEADERS: Final[dict[bytes, str]] = {
    b"x-modeltrack-team": "team",
    b"x-modeltrack-app": "app",
    b"x-modeltrack-feature": "feature",
    b"x-modeltrack-session-id": "session_id",
    b"x-modeltrack-user": "user",
    b"x-modeltrack-prompt": "prompt_id",
    # Per-request switches for the spend controls (not attribution: never stored on the event).
    b"x-modeltrack-no-route": "no_route",
    b"x-modeltrack-cache": "cache",
    b"x-modeltrack-cache-ttl": "cache_ttl",
}
KEY_HEADER: Final = b"x-modeltrack-key"
_DROP_REQUEST_LENGTHS: Final = length_mask(_DROP_REQUEST)
_RESPONSE_NAMED_LENGTHS: Final = length_mask([*_DROP_RESPONSE, b"content-encoding", *UPSTREAM_ID_HEADERS])
MAX_ATTR_LEN: Final = 128
PROPERTY_PREFIX: Final = b"x-modeltrack-property-"
MAX_PROPERTIES: Final = 16
"""Custom properties per request: enough to tag an experiment or a tenant, never a place to smuggle a payload
(they are stored on every event, and each value is capped at ``MAX_ATTR_LEN``)."""
MAX_PROPERTY_NAME: Final = 64


def connection_tokens(pairs: Iterable[tuple[bytes, bytes]]) -> set[bytes]:
    """Field names the ``Connection`` header lists: hop-by-hop for this one connection."""
    out: set[bytes] = set()
    for k, v in pairs:
        if len(k) == 10 and lower(k) == b"connection":
            out.update(t.strip().lower() for t in v.split(b","))
    return out


def forward_headers(
    raw_headers: Iterable[tuple[bytes, bytes]],
) -> tuple[list[tuple[bytes, bytes]], dict[str, Any], bytes]:
    """Split the client's headers into (header lines for the upstream, attribution values, the first
    ``X-ModelTrack-Key`` value, even an empty one, or ``b""`` when there is none). Attribution is strings, plus
    ``properties`` (a dict) when ``X-ModelTrack-Property-<name>`` headers were sent.

    The key is read here, in the one pass that already lower-cases every ``x-modeltrack-`` name, rather than by a
    second scan of the headers (``Request.header``: ~800 CPU instructions a keyed request, bench/README.md,
    twenty-ninth session). It is a secret: returned apart, never put in the attribution that events are made of."""
    out: list[tuple[bytes, bytes]] = []
    attrs: dict[str, Any] = {}
    key: bytes | None = None
    # Typed as a list, so that compiled, each pair is unpacked by index, not by iterating the tuple.
    pairs: list[tuple[bytes, bytes]] = raw_headers if isinstance(raw_headers, list) else list(raw_headers)
    extra_hop: set[bytes] | None = None
    for k, v in pairs:
        if len(k) == 10 and lower(k) == b"connection":
            if extra_hop is None:
                extra_hop = set()
            extra_hop.update(t.strip().lower() for t in v.split(b","))
    for k, v in pairs:
        # Only a name of a dropped field's length is lower-cased and looked up, and only one that starts "x?m" in
        # either case is checked for "x-modeltrack-" (not the SDKs' X-Stainless-* ones): most pass straight on.
        n = len(k)
        lk = b""
        if extra_hop is not None:
            lk = lower(k)
            if lk in _DROP_REQUEST or (lk in extra_hop and not lk.startswith(b"x-modeltrack-")):
                continue  # (ModelTrack's own fields are read below even when Connection names them: never forwarded)
        elif (_DROP_REQUEST_LENGTHS >> (n if n < 61 else 61)) & 1:
            lk = lower(k)
            if lk in _DROP_REQUEST:
                continue
        if n > 12 and (k[0] | 32) == 120 and (k[2] | 32) == 109:
            if not lk:
                lk = lower(k)
            if not lk.startswith(b"x-modeltrack-"):
                out.append((k, v))
                continue
            field = ATTR_HEADERS.get(lk)
            if field is not None:
                attrs[field] = sanitize(v.decode("latin-1"), MAX_ATTR_LEN)
            elif n == 16 and lk == KEY_HEADER:
                if key is None:  # the first one, as a client's first header of a name is read everywhere
                    key = v
            elif len(lk) > len(PROPERTY_PREFIX) and lk.startswith(PROPERTY_PREFIX):
                props = attrs.setdefault("properties", {})
                if len(props) < MAX_PROPERTIES:
                    name = sanitize(lk[len(PROPERTY_PREFIX) :].decode("latin-1"), MAX_PROPERTY_NAME)
                    props[name] = sanitize(v.decode("latin-1"), MAX_ATTR_LEN)
            continue
        out.append((k, v))
    return out, attrs, key if key is not None else b""


class ResponseHead:
    """The upstream's response head, filtered for the client: the header block to send, the body's
    ``Content-Encoding`` (for metering) and the provider's request id."""

    __slots__ = ("block", "encoding", "upstream_id")

    def __init__(self, headers: list[tuple[bytes, bytes]], extra_codings: bytes = b"") -> None:
        block: list[bytes] = []
        encoding: bytes | None = None
        ids: dict[bytes, bytes] = {}
        named: set[bytes] = set()
        for k, v in headers:
            n = len(k)
            if not (_RESPONSE_NAMED_LENGTHS >> (n if n < 61 else 61)) & 1:
                block.append(b"%s: %s\r\n" % (k, v))  # a name of none of the lengths below: passed on as it is
                continue
            lk = lower(k)
            if lk in _DROP_RESPONSE:
                if lk == b"connection" and v.lower() not in _PLAIN_CONNECTION:
                    named |= connection_tokens([(k, v)])
                continue
            if lk == b"content-encoding":
                encoding = v if encoding is None else encoding + b", " + v
                continue
            if lk in UPSTREAM_ID_HEADERS and v:
                ids.setdefault(lk, v)
            block.append(b"%s: %s\r\n" % (k, v))
        if named and named - _DROP_RESPONSE:
            # Fields the Connection header names are hop-by-hop for this connection only (RFC 9110 §7.6.1):
            # rare enough that a second pass is cheaper than bookkeeping in the first.
            block = [b"%s: %s\r\n" % (k, v) for k, v in headers if _kept(k.lower(), named)]
            if b"content-encoding" in named:
                encoding = None
        if extra_codings:
            # Transfer codings other than chunked stay on the body (llhttp does not undo them) and the framing
            # header naming them is hop-by-hop: the client learns of them here, or it would read coded bytes.
            encoding = extra_codings if encoding is None else encoding + b", " + extra_codings
        if encoding is not None:
            block.append(b"content-encoding: %s\r\n" % encoding)
        self.block = b"".join(block)
        self.encoding = encoding.decode("latin-1") if encoding is not None else None
        self.upstream_id: str | None = None
        if ids:
            for name in UPSTREAM_ID_HEADERS:  # in order of preference, not of arrival
                if name in ids:
                    self.upstream_id = sanitize(ids[name].decode("latin-1"), 128)
                    break


def _kept(lk: bytes, named: set[bytes]) -> bool:
    return lk not in _DROP_RESPONSE and lk not in named and lk != b"content-encoding"


_CONTROL: Final = bytes(range(9)) + bytes(range(10, 32)) + b"\x7f"


def clean_reason(reason: bytes) -> bytes:
    """The reason phrase without control characters (RFC 9112 §4: HTAB, SP, VCHAR, obs-text only)."""
    return reason.translate(None, _CONTROL)


class HeaderView(Mapping[str, str]):
    """Case-insensitive, read-only view of raw header pairs (first value wins), built on first use: what the
    router and the meters ask (``"x-goog-api-key" in h``, ``h.get("Content-Type")``)."""

    __slots__ = ("_map", "_pairs")

    def __init__(self, pairs: list[tuple[bytes, bytes]]) -> None:
        self._pairs = pairs
        self._map: dict[str, bytes] | None = None

    def _lookup(self) -> dict[str, bytes]:
        m = self._map
        if m is None:
            m = self._map = {}
            for k, v in self._pairs:
                m.setdefault(k.decode("latin-1").lower(), v)
        return m

    def __getitem__(self, name: str) -> str:
        return self._lookup()[name.lower()].decode("latin-1")

    def get(self, name: str, default: Any = None) -> Any:  # type: ignore[override]
        """``Mapping.get`` without building the map: one scan of the raw pairs, as :meth:`__contains__` does
        (a meter asks for ``Content-Type`` once a response; Mapping's own ``get`` is interpreted code that
        decodes and lower-cases every name first, ~5,000 CPU instructions)."""
        m = self._map
        if m is not None:
            found = m.get(name.lower())
            return default if found is None else found.decode("latin-1")
        lname = name.lower().encode("latin-1")
        n = len(lname)
        for k, v in self._pairs:
            if len(k) == n and lower(k) == lname:
                return v.decode("latin-1")
        return default

    def __contains__(self, name: object) -> bool:
        if not isinstance(name, str):
            return False
        if self._map is not None:
            return name.lower() in self._map
        # A scan of the raw pairs: the router asks two or three such questions of a request, cheaper than
        # decoding and lower-casing every name into a map.
        lname = name.lower().encode("latin-1")
        n = len(lname)
        for k, _ in self._pairs:
            if len(k) == n and lower(k) == lname:
                return True
        return False

    def __iter__(self) -> Any:
        return iter(self._lookup())

    def __len__(self) -> int:
        return len(self._lookup())
