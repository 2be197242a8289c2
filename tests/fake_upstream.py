"""A fake OpenAI-compatible server on a real local socket, scripted reply by reply.

It speaks HTTP/1.1 by hand so that a test controls every byte: chunked SSE
bodies, pauses, a hang until the client goes away, a reset, raw garbage. It
records each request and whether the client closed the connection early,
which is how tests prove that a stop really closes the upstream.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import ssl
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

# Steps of a reply body --------------------------------------------------------


@dataclass(frozen=True)
class Pause:
    """Wait this many seconds before the next step (the pace of a model)."""

    seconds: float


@dataclass(frozen=True)
class Gate:
    """Wait until the test sets this event."""

    event: asyncio.Event


@dataclass(frozen=True)
class Raw:
    """Write bytes as they are, outside the chunked framing (to break it)."""

    data: bytes


class _Marker:
    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


HANG = _Marker("HANG")  # send nothing more until the client closes the connection
RESET = _Marker("RESET")  # abort the TCP connection (RST)

Step = bytes | Pause | Gate | Raw | _Marker


@dataclass
class Reply:
    status: int = 200
    headers: dict[str, str] = field(default_factory=lambda: {"content-type": "text/event-stream"})
    body: Sequence[Step] = ()
    #: Delay before the status line is sent (a slow first byte).
    delay: float = 0.0
    #: Bytes sent instead of any HTTP response (then the connection is closed).
    garbage: bytes = b""


@dataclass
class Request:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    #: Set when the client closed the connection before the reply was finished.
    client_closed: asyncio.Event = field(default_factory=asyncio.Event)
    #: Set when the whole reply was written.
    completed: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def finished(self) -> bool:
        return self.completed.is_set()

    @property
    def json(self) -> Any:
        return json.loads(self.body)


# Builders of OpenAI-shaped bodies -----------------------------------------------


def event(payload: Any, *, name: str | None = None) -> bytes:
    """One SSE event carrying ``payload`` as JSON."""
    head = f"event: {name}\n".encode() if name else b""
    return head + b"data: " + json.dumps(payload).encode() + b"\n\n"


def chunk(
    content: str | None = None,
    *,
    finish_reason: str | None = None,
    role: str | None = None,
    **delta: Any,
) -> bytes:
    """One ``chat.completion.chunk`` event with a single choice."""
    fields: dict[str, Any] = dict(delta)
    if role is not None:
        fields["role"] = role
    if content is not None:
        fields["content"] = content
    return event(
        {
            "id": "chatcmpl-fake",
            "object": "chat.completion.chunk",
            "created": 1,
            "model": "fake-model",
            "choices": [{"index": 0, "delta": fields, "finish_reason": finish_reason}],
        }
    )


def usage_chunk(prompt: int, completion: int) -> bytes:
    return event(
        {
            "id": "chatcmpl-fake",
            "object": "chat.completion.chunk",
            "created": 1,
            "model": "fake-model",
            "choices": [],
            "usage": {
                "prompt_tokens": prompt,
                "completion_tokens": completion,
                "total_tokens": prompt + completion,
            },
        }
    )


DONE = b"data: [DONE]\n\n"


def completion(
    texts: Iterable[str],
    *,
    finish_reason: str = "stop",
    usage: tuple[int, int] | None = (5, 7),
    done: bool = True,
    pace: float = 0.0,
) -> list[Step]:
    """The body of a normal streamed answer made of ``texts``, as OpenAI sends it."""
    steps: list[Step] = [chunk("", role="assistant")]
    for text in texts:
        if pace:
            steps.append(Pause(pace))
        steps.append(chunk(text))
    steps.append(chunk(finish_reason=finish_reason))
    if usage is not None:
        steps.append(usage_chunk(*usage))
    if done:
        steps.append(DONE)
    return steps


def stream(*steps: Step, headers: dict[str, str] | None = None) -> Reply:
    return Reply(200, headers or {"content-type": "text/event-stream"}, steps)


def hanging(*texts: str) -> Reply:
    """An answer that sends ``texts``, then nothing more until the client goes away."""
    return stream(chunk("", role="assistant"), *(chunk(text) for text in texts), HANG)


def paused(before: Sequence[str], gate: asyncio.Event, after: Sequence[str]) -> Reply:
    """An answer that sends ``before``, waits for the test to set ``gate``, then ends normally."""
    return gated(*before, gate, *after)


def gated(*parts: str | asyncio.Event) -> Reply:
    """An answer that sends each text in turn and, at each event, waits for the test to
    set it; then it ends normally."""
    steps: list[Step] = [chunk(part) if isinstance(part, str) else Gate(part) for part in parts]
    return stream(chunk("", role="assistant"), *steps, *completion([])[1:])


def json_error(status: int, message: str, headers: dict[str, str] | None = None) -> Reply:
    body = json.dumps({"error": {"message": message, "type": "error", "code": None}}).encode()
    return Reply(status, {"content-type": "application/json", **(headers or {})}, [body])


def json_completion(content: str, usage: tuple[int, int] = (30, 4)) -> Reply:
    """A non-streaming ``chat.completion``, as for a title request."""
    body = {
        "id": "chatcmpl-fake",
        "object": "chat.completion",
        "created": 1,
        "model": "fake-model",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": content},
                "finish_reason": "stop",
            }
        ],
        "usage": {
            "prompt_tokens": usage[0],
            "completion_tokens": usage[1],
            "total_tokens": sum(usage),
        },
    }
    return Reply(200, {"content-type": "application/json"}, [json.dumps(body).encode()])


def html_error(status: int) -> Reply:
    body = f"<html><body><h1>{status} Bad Gateway</h1></body></html>".encode()
    return Reply(status, {"content-type": "text/html"}, [body])


# The server ------------------------------------------------------------------------


class FakeUpstream:
    """Serve scripted replies in order; ``url`` is the ``OPENAI_BASE_URL`` to use."""

    def __init__(self) -> None:
        self.replies: deque[Reply] = deque()
        self.requests: list[Request] = []
        self.open_connections = 0
        self.request_arrived = asyncio.Event()
        self.idle = asyncio.Event()
        self.idle.set()
        self._server: asyncio.Server | None = None
        self._tls: ssl.SSLContext | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def url(self) -> str:
        assert self._server is not None
        host, port = self._server.sockets[0].getsockname()[:2]
        scheme = "https" if self._tls else "http"
        return f"{scheme}://{'localhost' if self._tls else host}:{port}/v1"

    def script(self, *replies: Reply) -> None:
        self.replies.extend(replies)

    async def start(self, *, tls: ssl.SSLContext | None = None) -> None:
        self._tls = tls
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0, ssl=tls)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def wait_idle(self, timeout: float = 5.0) -> None:
        """Wait until every connection is closed: a response left open would hang here."""
        async with asyncio.timeout(timeout):
            await self.idle.wait()

    async def wait_for_request(self, count: int = 1, timeout: float = 5.0) -> Request:
        """Wait until ``count`` requests have arrived; return the last of them."""
        async with asyncio.timeout(timeout):
            while len(self.requests) < count:
                self.request_arrived.clear()
                await self.request_arrived.wait()
        return self.requests[count - 1]

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self.open_connections += 1
        self.idle.clear()
        try:
            request = await self._read_request(reader)
            if request is None:
                return
            self.requests.append(request)
            self.request_arrived.set()
            reply = self.replies.popleft() if self.replies else json_error(500, "no scripted reply")
            watcher = asyncio.create_task(self._watch_close(reader, request))
            try:
                await self._send(writer, reply, request)
            finally:
                watcher.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await watcher
        except (ConnectionError, asyncio.IncompleteReadError):
            pass  # the client went away; ``client_closed`` already says so
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()
            self.open_connections -= 1
            if not self.open_connections:
                self.idle.set()
            self._tasks.discard(task)

    async def _read_request(self, reader: asyncio.StreamReader) -> Request | None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError:
            return None
        lines = head.decode("latin-1").split("\r\n")
        method, path, _ = lines[0].split(" ", 2)
        headers = {}
        for line in lines[1:]:
            if ":" in line:
                name, value = line.split(":", 1)
                headers[name.strip().lower()] = value.strip()
        body = await reader.readexactly(int(headers.get("content-length", "0")))
        return Request(method, path, headers, body)

    async def _watch_close(self, reader: asyncio.StreamReader, request: Request) -> None:
        with contextlib.suppress(ConnectionError):
            while await reader.read(4096):
                pass
        if not request.finished:
            request.client_closed.set()

    async def _send(self, writer: asyncio.StreamWriter, reply: Reply, request: Request) -> None:
        if reply.delay:
            # A slow first byte, cut short if the client gives up meanwhile.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(request.client_closed.wait(), reply.delay)
            if request.client_closed.is_set():
                return
        if reply.garbage:
            writer.write(reply.garbage)
            await writer.drain()
            request.completed.set()
            return
        reasons = {200: "OK", 401: "Unauthorized", 404: "Not Found", 429: "Too Many Requests"}
        head = [f"HTTP/1.1 {reply.status} {reasons.get(reply.status, 'Status')}"]
        head += [f"{name}: {value}" for name, value in reply.headers.items()]
        head += ["transfer-encoding: chunked", "connection: close", "x-request-id: req-fake-1"]
        writer.write(("\r\n".join(head) + "\r\n\r\n").encode("latin-1"))
        await writer.drain()
        for step in reply.body:
            if isinstance(step, bytes):
                writer.write(b"%x\r\n%s\r\n" % (len(step), step))
                await writer.drain()
            elif isinstance(step, Pause):
                await asyncio.sleep(step.seconds)
            elif isinstance(step, Gate):
                await step.event.wait()
            elif isinstance(step, Raw):
                writer.write(step.data)
                await writer.drain()
            elif step is HANG:
                await request.client_closed.wait()
                return
            elif step is RESET:
                writer.transport.abort()
                return
        request.completed.set()
        writer.write(b"0\r\n\r\n")
        await writer.drain()
