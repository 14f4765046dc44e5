"""A local upstream that replays the real recorded provider responses in ../shared/fixtures/.

Status, headers and body come from the recording; the body is written in many small chunks at awkward,
seeded-random offsets (1..97 bytes, so SSE lines, CRLFs, UTF-8 sequences and event-stream frames get split).
Every request it receives is recorded (method, raw path, headers, body) so tests can assert what the proxy
forwarded, and every body it sends is kept so tests can compare bytes.
"""

from __future__ import annotations

import asyncio
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import yaml
from aiohttp import web

ROOT = Path(__file__).resolve().parent.parent


def fixtures_dir() -> Path:
    env = os.environ.get("MODELTRACK_FIXTURES")
    path = Path(env) if env else ROOT.parent / "shared" / "fixtures" / "pydantic-ai-cassettes"
    if not path.is_dir():
        raise RuntimeError(f"recorded fixtures not found at {path} (set MODELTRACK_FIXTURES)")
    return path


@dataclass
class Recording:
    name: str
    index: int
    method: str
    uri: str
    status: int
    reason: str
    headers: list[tuple[str, str]]
    body: bytes
    request_body: Any

    @property
    def path_qs(self) -> str:
        rest = self.uri.split("://", 1)[1]
        return "/" + rest.split("/", 1)[1] if "/" in rest else "/"


_SKIP_HEADERS = {"content-length", "transfer-encoding", "content-encoding", "connection", "keep-alive"}


def load(name: str, index: int = 0) -> Recording:
    path = fixtures_dir() / f"{name}.yaml"
    data = yaml.safe_load(path.read_text())
    it = data["interactions"][index]
    rq, rs = it["request"], it["response"]
    if "parsed_body" in rs:
        body = orjson.dumps(rs["parsed_body"])
    else:
        raw = rs["body"]["string"] if isinstance(rs["body"], dict) else rs["body"]
        body = raw.encode("utf-8") if isinstance(raw, str) else bytes(raw)
    headers = [(k, v) for k, vs in (rs.get("headers") or {}).items() for v in vs if k.lower() not in _SKIP_HEADERS]
    return Recording(
        name=name,
        index=index,
        method=rq["method"],
        uri=rq["uri"],
        status=rs["status"]["code"],
        reason=rs["status"].get("message") or "",
        headers=headers,
        body=body,
        request_body=rq.get("parsed_body"),
    )


def all_recordings() -> list[Recording]:
    out = []
    for p in sorted(fixtures_dir().glob("*.yaml")):
        n = len(yaml.safe_load(p.read_text())["interactions"])
        out.extend(load(p.stem, i) for i in range(n))
    return out


CODINGS = {"gzip-members": "gzip", "zstd-frames": "zstd", "deflate-raw": "deflate"}
"""Variants a streaming upstream legitimately produces, and the Content-Encoding each is sent as."""


def compress(data: bytes, encoding: str) -> bytes:
    """``encoding`` is a coding, or a variant: ``gzip-members`` (each half its own gzip member, back to back),
    ``zstd-frames`` (two zstd frames), ``deflate-raw`` (deflate without the zlib wrapper)."""
    import gzip
    import zlib

    import brotli
    import zstandard

    half = len(data) // 2
    # mtime=0: a gzip header holds the current second, so two compressions of one body must not differ by it.
    if encoding == "gzip":
        return gzip.compress(data, mtime=0)
    if encoding == "gzip-members":
        return gzip.compress(data[:half], mtime=0) + gzip.compress(data[half:], mtime=0)
    if encoding == "deflate":
        return zlib.compress(data)
    if encoding == "deflate-raw":
        c = zlib.compressobj(wbits=-zlib.MAX_WBITS)
        return c.compress(data) + c.flush()
    if encoding == "br":
        return bytes(brotli.compress(data))
    if encoding == "zstd":
        return bytes(zstandard.ZstdCompressor().compress(data))
    if encoding == "zstd-frames":
        z = zstandard.ZstdCompressor()
        return bytes(z.compress(data[:half])) + bytes(z.compress(data[half:]))
    raise ValueError(encoding)


def split_awkwardly(body: bytes, seed: int) -> list[bytes]:
    rnd = random.Random(seed)
    chunks, i = [], 0
    while i < len(body):
        n = rnd.randint(1, 97)
        chunks.append(body[i : i + n])
        i += n
    return chunks


def _asks_for_usage(body: bytes) -> bool:
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        return False
    opts = doc.get("stream_options") if isinstance(doc, dict) else None
    return isinstance(opts, dict) and bool(opts.get("include_usage"))


def without_usage(sse: bytes) -> bytes:
    """An OpenAI chat stream as it is sent to a client that did not ask for usage: each chunk re-serialised
    without its ``usage`` member, the usage-only chunk left out (written independently of the proxy's byte edit,
    so that comparing the two means something)."""
    out = []
    for event in sse.split(b"\n\n"):
        if not event.startswith(b"data: {"):
            out.append(event)
            continue
        chunk = orjson.loads(event[6:])
        if not chunk.get("choices") and chunk.get("usage"):
            continue
        chunk.pop("usage", None)
        out.append(b"data: " + orjson.dumps(chunk))
    return b"\n\n".join(out)


@dataclass
class Received:
    method: str
    raw_path: str
    raw_headers: list[tuple[bytes, bytes]]
    body: bytes


@dataclass
class ReplayUpstream:
    """``current`` is the recording served to every request until changed."""

    current: Recording | None = None
    received: list[Received] = field(default_factory=list)
    chunked: bool = True
    delay: float = 0.0
    seed: int = 1234
    encoding: str = ""
    """serve the recorded body compressed with this Content-Encoding (gzip, deflate, br, zstd, or a variant in
    ``CODINGS``)"""
    tail_delay: float = 0.0
    """seconds to wait before ending a chunked body (the terminating chunk), after all its data was sent"""
    usage_as_asked: bool = True
    """answer OpenAI chat streams as OpenAI does: without ``stream_options.include_usage`` in the request there
    is no usage-only final chunk and no ``usage`` member in the chunks (derived from the recording, which asked)"""
    finished: list[float] = field(default_factory=list)
    """monotonic times at which a response ended (completed, or the proxy closed the connection)."""

    def app(self) -> web.Application:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self.handle)
        return app

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        request_body = body
        self.received.append(Received(request.method, request.raw_path, list(request.raw_headers), body))
        rec = self.current
        if rec is None:
            return web.json_response({"error": {"message": "no recording loaded", "type": "replay"}}, status=599)
        resp = web.StreamResponse(status=rec.status, reason=rec.reason)
        for k, v in rec.headers:
            resp.headers.add(k, v)
        resp.headers["x-request-id"] = f"upstream-{rec.name[:20]}-{rec.index}"
        body = rec.body
        # Only OpenAI-style streams that were recorded with include_usage (their chunks carry "usage":null);
        # Groq and others send usage whether asked or not.
        if self.usage_as_asked and b'"usage":null' in body and not _asks_for_usage(request_body):
            body = without_usage(body)
        body = compress(body, self.encoding) if self.encoding else body
        if self.encoding:
            resp.headers["Content-Encoding"] = CODINGS.get(self.encoding, self.encoding)
        if not self.chunked:
            resp.content_length = len(body)
        try:
            await resp.prepare(request)
            for chunk in split_awkwardly(body, self.seed) if self.chunked else [body]:
                await resp.write(chunk)
                if self.delay:
                    await asyncio.sleep(self.delay)
            if self.tail_delay:
                await asyncio.sleep(self.tail_delay)
            await resp.write_eof()
        finally:
            self.finished.append(time.monotonic())
        return resp
