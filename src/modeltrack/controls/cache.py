"""The response cache: repeated identical requests answered by ModelTrack, byte for byte, at no cost.

**Tenant isolation is the key.** An entry is found only by a request that carries the same credential (a hash of
``Authorization`` / ``x-api-key`` / ``api-key`` / ``x-goog-api-key``, or the access key id of a SigV4
signature, never the key itself), the same client token, the same org (of its ModelTrack key), the same
provider, method, path and query, the same body (canonical JSON: key order and whitespace do not matter) and
the same headers that change the answer
(``anthropic-version``, ``anthropic-beta``, ``OpenAI-Organization``, ``OpenAI-Project``, and
``Accept-Encoding``, since the stored bytes may be compressed). All of it goes through SHA-256; the store holds
digests and response bytes, never a key or a prompt.

**What is stored:** only complete 2xx responses whose usage was metered without error, exactly as the client
received them (status, reason, headers less hop-by-hop, body), with the original's model, tokens and cost for
the hit's event. A stream is replayed as a stream (chunked), a sized body with its length.

**Backends:** in memory (an LRU bounded in bytes, entries expire by TTL), or Redis (``redis://``) shared by
replicas, where ``SET ... PX`` does the expiry and Redis's own ``maxmemory`` policy the bound.
"""

from __future__ import annotations

import hashlib
import mmap
import struct
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import orjson

if TYPE_CHECKING:
    from ..events import CostEvent

_CREDENTIALS = (b"authorization", b"x-api-key", b"api-key", b"x-goog-api-key")
_ANSWER_HEADERS = (
    b"anthropic-version",
    b"anthropic-beta",
    b"openai-organization",
    b"openai-project",
    b"accept-encoding",
)
_MAGIC = b"MTC1"
OFF_HEAP_BYTES = 64 * 1024
"""Bodies this large are kept in their own anonymous mapping, outside the allocator's heap: long-lived megabyte
objects interleaved with a proxy's short-lived buffers fragment the heap, and a cache of N MB then costs several
times N in RSS. An evicted mapping goes back to the OS whole. Smaller bodies stay ordinary bytes (one mapping
each would be wasteful, and the number of mappings a process may have is limited)."""


class Capture:
    """The client's copy of a response, kept for the cache as it is written. A sized body that is large goes
    straight into a mapping of its announced length (see ``OFF_HEAP_BYTES``); other bodies collect their
    chunks. Past ``limit`` bytes the capture gives up (``keep`` returns False): the response is unaffected."""

    __slots__ = ("_map", "_parts", "entry", "limit", "size")

    def __init__(self, entry: Entry, length: int | None, limit: int) -> None:
        self.entry = entry
        self.limit = limit
        self.size = 0
        self._parts: list[bytes] = []
        self._map = mmap.mmap(-1, length) if length is not None and OFF_HEAP_BYTES <= length <= limit else None

    def keep(self, data: bytes) -> bool:
        self.size += len(data)
        if self.size > self.limit:
            return False
        if self._map is not None:
            if self.size > len(self._map):
                return False  # longer than announced: the server clips it; not a cacheable answer
            self._map.write(data)
        else:
            self._parts.append(data)
        return True

    def finish(self) -> Entry:
        if self._map is not None:
            body: bytes | memoryview = memoryview(self._map)[: self.size]
        elif self.size >= OFF_HEAP_BYTES:
            m = mmap.mmap(-1, self.size)
            for p in self._parts:
                m.write(p)
            body = memoryview(m)  # the mapping lives as long as the view: unmapped when the entry is dropped
        else:
            body = b"".join(self._parts)
        self._parts = []
        self.entry.body = body
        return self.entry


@dataclass(slots=True)
class Entry:
    status: int
    reason: bytes
    block: bytes  # the response's header lines as the client got them
    body: bytes | memoryview
    sized: bool
    meta: dict[str, Any]  # model, tokens, cost_usd, usage_source, stream: for the hit's event

    @property
    def size(self) -> int:
        return len(self.body) + len(self.block) + 256

    def dumps(self) -> bytes:
        head = orjson.dumps(
            {
                "status": self.status,
                "reason": self.reason.decode("latin-1"),
                "block": self.block.decode("latin-1"),
                "sized": self.sized,
                "meta": self.meta,
            }
        )
        return b"".join((_MAGIC, struct.pack(">I", len(head)), head, self.body))

    @classmethod
    def loads(cls, blob: bytes) -> Entry | None:
        if blob[:4] != _MAGIC:
            return None
        (n,) = struct.unpack(">I", blob[4:8])
        head = orjson.loads(blob[8 : 8 + n])
        return cls(
            head["status"],
            head["reason"].encode("latin-1"),
            head["block"].encode("latin-1"),
            blob[8 + n :],
            head["sized"],
            head["meta"],
        )


def entry_meta(ev: CostEvent) -> dict[str, Any]:
    """What a stored entry keeps of the event that captured it: a hit's own event reports these figures (and
    costs nothing), never the request's body."""
    return {
        "model": ev.model,
        "requested_model": ev.requested_model,
        "input_tokens": ev.input_tokens,
        "output_tokens": ev.output_tokens,
        "cache_read_tokens": ev.cache_read_tokens,
        "cache_write_tokens": ev.cache_write_tokens,
        "reasoning_tokens": ev.reasoning_tokens,
        "cost_usd": ev.cost_usd,
        "stream": ev.stream,
        "stored_at": time.time(),
    }


def _credential(headers: list[tuple[bytes, bytes]]) -> bytes:
    parts = []
    for k, v in headers:
        lk = k.lower()
        if lk in _CREDENTIALS:
            if lk == b"authorization" and v.startswith(b"AWS4-HMAC-SHA256"):
                # SigV4: the signature changes with every request; the access key id names the principal.
                cred = v.split(b"Credential=", 1)[-1].split(b"/", 1)[0]
                parts.append(b"sigv4:" + cred)
            else:
                parts.append(lk + b":" + v)
    return hashlib.sha256(b"\n".join(sorted(parts))).digest()


def cache_key(
    provider: str,
    method: str,
    target: bytes,
    headers: list[tuple[bytes, bytes]],
    body: bytes,
    parsed: Any,
    client_token: bytes,
    org: str = "",
) -> str:
    """The entry's name (see the module docstring for what goes in, and why). ``org``: the org of the request's
    ModelTrack key; entries of one org are never another's (tests/test_tenants.py), whatever else they share."""
    h = hashlib.sha256()
    h.update(b"modeltrack-cache-v1\0")
    h.update(org.encode() + b"\0")
    h.update(_credential(headers))
    h.update(hashlib.sha256(client_token).digest())
    h.update(f"\0{provider}\0{method}\0".encode())
    h.update(target)
    for name in _ANSWER_HEADERS:
        values = sorted(v.strip() for k, v in headers if k.lower() == name)
        h.update(b"\0" + name + b"=" + b",".join(values))
    h.update(b"\0")
    if isinstance(parsed, (dict, list)):
        h.update(orjson.dumps(parsed, option=orjson.OPT_SORT_KEYS))
    else:
        h.update(body)
    return h.hexdigest()


class Backend(Protocol):
    name: str

    async def get(self, key: str) -> Entry | None: ...

    async def put(self, key: str, entry: Entry, ttl: float) -> None: ...

    async def close(self) -> None: ...


class MemoryCache:
    """An LRU bounded in bytes (body + headers + a fixed overhead per entry); expired entries are dropped when
    met. Inserting past the bound evicts the least recently used entries first."""

    name = "memory"

    def __init__(self, max_bytes: int, gauge: Any = None) -> None:
        self.max_bytes = max_bytes
        self.bytes = 0
        self.gauge = gauge  # modeltrack_response_cache_bytes
        self._entries: OrderedDict[str, tuple[float, Entry]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    async def get(self, key: str) -> Entry | None:
        item = self._entries.get(key)
        if item is None:
            return None
        expires, entry = item
        if expires <= time.monotonic():
            self._drop(key)
            return None
        self._entries.move_to_end(key)
        return entry

    async def put(self, key: str, entry: Entry, ttl: float) -> None:
        size = entry.size
        if size > self.max_bytes:
            return
        if key in self._entries:
            self._drop(key)
        while self.bytes + size > self.max_bytes and self._entries:
            self._drop(next(iter(self._entries)))
        self._entries[key] = (time.monotonic() + ttl, entry)
        self.bytes += size
        if self.gauge is not None:
            self.gauge.set(self.bytes)

    def _drop(self, key: str) -> None:
        _, entry = self._entries.pop(key)
        self.bytes -= entry.size
        if self.gauge is not None:
            self.gauge.set(self.bytes)

    async def close(self) -> None:
        self._entries.clear()
        self.bytes = 0


class RedisCache:
    """Entries shared by every replica: one Redis string per entry, expiring with its TTL."""

    name = "redis"

    def __init__(self, url: str, prefix: str = "modeltrack:cache:") -> None:
        import redis.asyncio as redis

        self._redis: Any = redis.Redis.from_url(url, socket_timeout=2.0, socket_connect_timeout=2.0)
        self.prefix = prefix

    async def get(self, key: str) -> Entry | None:
        blob = await self._redis.get(self.prefix + key)
        return Entry.loads(blob) if blob else None

    async def put(self, key: str, entry: Entry, ttl: float) -> None:
        await self._redis.set(self.prefix + key, entry.dumps(), px=max(1, int(ttl * 1000)))

    async def close(self) -> None:
        await self._redis.aclose()


def open_backend(spec_backend: str, max_bytes: int, gauge: Any = None) -> Backend:
    if spec_backend == "memory":
        return MemoryCache(max_bytes, gauge)
    return RedisCache(spec_backend)
