"""A fast fake OpenAI-compatible upstream for the benchmark (a yardstick, not product code).

``POST /v1/chat/completions`` streams ``chat.completion.chunk`` events. The last
user message says what to stream: ``bench id=<id> n=<tokens> rate=<per second>``
(``rate=0``: as fast as possible). Token ``i`` is the word ``w<i>`` plus a space,
so the client can count tokens in the text it receives, and check the text.
The upstream records when it wrote each token; ``GET /emissions?id=<id>`` returns
those times (``time.time()``), so added latency is measured against the moment
a token really left the upstream, not against a schedule it may have missed.

Run: ``python -m bench.upstream`` (prints ``listening <port>``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import time
from typing import Any

CHUNK = (
    b'data: {"id":"chatcmpl-bench","object":"chat.completion.chunk","created":0,'
    b'"model":"bench","choices":[{"index":0,"delta":{"content":"%s"},"finish_reason":null}]}\n\n'
)
ROLE = (
    b'data: {"id":"chatcmpl-bench","object":"chat.completion.chunk","created":0,"model":"bench",'
    b'"choices":[{"index":0,"delta":{"role":"assistant","content":""},"finish_reason":null}]}\n\n'
)
FINISH = (
    b'data: {"id":"chatcmpl-bench","object":"chat.completion.chunk","created":0,"model":"bench",'
    b'"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}\n\n'
)
USAGE = (
    b'data: {"id":"chatcmpl-bench","object":"chat.completion.chunk","created":0,"model":"bench",'
    b'"choices":[],"usage":{"prompt_tokens":%d,"completion_tokens":%d,"total_tokens":%d}}\n\n'
)
DONE = b"data: [DONE]\n\n"
PARAMS = re.compile(r"bench id=(\S+) n=(\d+) rate=([\d.]+)")
BURST = 16  # events per write when streaming as fast as possible


def token(i: int) -> str:
    return f"w{i} "


def expected_text(n: int) -> str:
    return "".join(token(i) for i in range(n))


def chunked(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


class Upstream:
    def __init__(self) -> None:
        self.emissions: dict[str, list[float]] = {}

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                request_line, *header_lines = head.decode("latin-1").split("\r\n")
                headers = {
                    k.strip().lower(): v.strip()
                    for k, _, v in (line.partition(":") for line in header_lines if line)
                }
                body = await reader.readexactly(int(headers.get("content-length", "0")))
                method, path, _ = request_line.split(" ", 2)
                if method == "GET" and path.startswith("/emissions"):
                    await self.send_emissions(writer, path)
                elif method == "POST" and path.endswith("/chat/completions"):
                    if json.loads(body).get("stream"):
                        await self.stream(writer, body)
                    else:
                        await self.complete(writer)
                else:
                    writer.write(b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n")
                    await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass  # the client closed the connection
        finally:
            writer.close()

    async def send_emissions(self, writer: asyncio.StreamWriter, path: str) -> None:
        stream_id = path.partition("id=")[2]
        body = json.dumps(self.emissions.pop(stream_id, [])).encode()
        writer.write(
            b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s"
            % (len(body), body)
        )
        await writer.drain()

    async def complete(self, writer: asyncio.StreamWriter) -> None:
        """A non-streaming completion: the title the relay asks for after a first answer."""
        body = json.dumps(
            {
                "id": "chatcmpl-bench-title",
                "object": "chat.completion",
                "model": "bench",
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": "Bench conversation"},
                        "finish_reason": "stop",
                    }
                ],
                "usage": {"prompt_tokens": 40, "completion_tokens": 3, "total_tokens": 43},
            }
        ).encode()
        writer.write(
            b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s"
            % (len(body), body)
        )
        await writer.drain()

    async def stream(self, writer: asyncio.StreamWriter, body: bytes) -> None:
        messages = json.loads(body)["messages"]
        match = PARAMS.search(messages[-1]["content"])
        if match is None:
            raise ValueError("not a bench request")
        stream_id, n, rate = match.group(1), int(match.group(2)), float(match.group(3))
        times: list[float] = []
        self.emissions[stream_id] = times
        writer.write(
            b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
            b"transfer-encoding: chunked\r\n\r\n" + chunked(ROLE)
        )
        clock = time.time
        if rate > 0:
            start = clock()
            for i in range(n):
                delay = start + i / rate - clock()
                if delay > 0:
                    await asyncio.sleep(delay)
                writer.write(chunked(CHUNK % token(i).encode()))
                times.append(clock())
                if writer.transport.get_write_buffer_size() > 65536:
                    await writer.drain()
        else:
            for first in range(0, n, BURST):
                last = min(n, first + BURST)
                writer.write(
                    chunked(b"".join(CHUNK % token(i).encode() for i in range(first, last)))
                )
                now = clock()
                times.extend(now for _ in range(first, last))
                await writer.drain()
                await asyncio.sleep(0)  # let the other streams write too
        writer.write(chunked(FINISH + USAGE % (5, n, 5 + n) + DONE) + b"0\r\n\r\n")
        await writer.drain()


async def serve(port: int) -> None:
    upstream = Upstream()
    server = await asyncio.start_server(upstream.handle, "127.0.0.1", port, backlog=4096)
    print(f"listening {server.sockets[0].getsockname()[1]}", flush=True)
    async with server:
        await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    run(serve(args.port))


def run(main: Any) -> None:
    """Run with uvloop when it is installed: the yardsticks should not be the bottleneck."""
    try:
        import uvloop
    except ImportError:
        asyncio.run(main)
    else:
        uvloop.run(main)


if __name__ == "__main__":
    main()
