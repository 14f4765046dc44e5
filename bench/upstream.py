"""The cheapest possible fake LLM upstream, so the proxy's cost dominates: a raw asyncio protocol on uvloop.

* ``POST /v1/chat/completions`` → a fixed chat.completion JSON with usage (shape from the OpenAI recording);
  ``?size=N``: the same answer padded to about ``N`` bytes (the response-cache scenario).
* ``POST /v1/stream?n=100&ms=20&pad=0`` → an SSE chat stream of ``n`` chunk events (+ a usage chunk and
  ``[DONE]``), ``ms`` apart (0 = unpaced), each event padded by ``pad`` bytes of content.

    python -m bench.upstream PORT
"""

from __future__ import annotations

import asyncio
import sys
from typing import cast
from urllib.parse import parse_qs

CHAT = (
    b'{"id":"chatcmpl-bench","object":"chat.completion","created":1782955817,"model":"gpt-4o-mini-2024-07-18",'
    b'"choices":[{"index":0,"message":{"role":"assistant","content":"Paris.","refusal":null},"logprobs":null,'
    b'"finish_reason":"stop"}],"usage":{"prompt_tokens":53,"completion_tokens":15,"total_tokens":68,'
    b'"prompt_tokens_details":{"cached_tokens":0,"audio_tokens":0},"completion_tokens_details":'
    b'{"reasoning_tokens":0,"audio_tokens":0}},"service_tier":"default","system_fingerprint":"fp_d0469e1700"}'
)
CHUNK = (
    b'data: {"id":"chatcmpl-bench","object":"chat.completion.chunk","created":1782955817,'
    b'"model":"gpt-4o-mini-2024-07-18","service_tier":"default","system_fingerprint":"fp_d0469e1700",'
    b'"choices":[{"index":0,"delta":{"content":"%s"},"logprobs":null,"finish_reason":null}],"usage":null}\n\n'
)
USAGE = (
    b'data: {"id":"chatcmpl-bench","object":"chat.completion.chunk","created":1782955817,'
    b'"model":"gpt-4o-mini-2024-07-18","choices":[],"usage":{"prompt_tokens":53,"completion_tokens":%d,'
    b'"total_tokens":%d}}\n\ndata: [DONE]\n\n'
)
JSON_HEAD = (
    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nx-request-id: req_bench\r\nContent-Length: %d\r\n\r\n"
)
SSE_HEAD = (
    b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream; charset=utf-8\r\nx-request-id: req_bench\r\n"
    b"Transfer-Encoding: chunked\r\n\r\n"
)


_TASKS: set[asyncio.Future[None]] = set()


def sized(n: int) -> bytes:
    return CHAT.replace(b'"Paris."', b'"Paris.' + b" " * max(n - len(CHAT), 0) + b'"')


def chunked(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


class Upstream(asyncio.Protocol):
    def __init__(self) -> None:
        self.buf = b""
        self.transport: asyncio.Transport | None = None
        self.paused = False
        self.resumed: asyncio.Event | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's transports are not asyncio subclasses

    def pause_writing(self) -> None:
        self.resumed = asyncio.Event()

    def resume_writing(self) -> None:
        if self.resumed is not None:
            self.resumed.set()
            self.resumed = None

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while True:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = self.buf[:end].decode("latin-1")
            length = 0
            for line in head.split("\r\n")[1:]:
                k, _, v = line.partition(":")
                if k.strip().lower() == "content-length":
                    length = int(v)
            if len(self.buf) < end + 4 + length:
                return
            self.buf = self.buf[end + 4 + length :]
            target = head.split(" ", 2)[1]
            assert self.transport is not None
            if target.startswith("/v1/stream"):
                q = parse_qs(target.partition("?")[2])
                task = asyncio.ensure_future(
                    self.stream(int(q.get("n", ["100"])[0]), int(q.get("ms", ["0"])[0]), int(q.get("pad", ["0"])[0]))
                )
                _TASKS.add(task)  # keep a reference until done (the loop holds only weak ones)
                task.add_done_callback(_TASKS.discard)
            elif "size=" in target:
                body = sized(int(parse_qs(target.partition("?")[2])["size"][0]))
                self.transport.write(JSON_HEAD % len(body) + body)
            else:
                self.transport.write(JSON_HEAD % len(CHAT) + CHAT)

    async def stream(self, n: int, ms: int, pad: int) -> None:
        t = self.transport
        assert t is not None
        t.write(SSE_HEAD)
        content = b"x" * max(pad, 1)
        loop = asyncio.get_running_loop()
        start = loop.time()
        for i in range(n):
            if t.is_closing():
                return
            if ms:
                delay = start + i * ms / 1000 - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
            t.write(chunked(CHUNK % content))
            if self.resumed is not None:
                await self.resumed.wait()
        t.write(chunked(USAGE % (n, n + 53)) + b"0\r\n\r\n")


def main() -> None:
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    port = int(sys.argv[1])

    async def serve() -> None:
        server = await asyncio.get_running_loop().create_server(Upstream, "127.0.0.1", port, backlog=4096)
        async with server:
            await server.serve_forever()

    asyncio.run(serve())


if __name__ == "__main__":
    main()
