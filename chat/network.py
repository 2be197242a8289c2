"""The upstream's HTTP/1.1 connections: an httpx transport on asyncio sockets and llhttp.

A relay reads one token per network read, so the cost of a read is paid per
token. httpx's own transport reads through httpcore: anyio (which pauses and
resumes the socket around every receive), then h11's pure-Python state
machine, five async generators and two context managers per read. In the
benchmark that was the largest part of the relay's CPU at 500 streams
(bench/RESULTS.md). This transport keeps the socket reading into a buffer
(pausing only past ``HIGH_WATER`` bytes), waits on a plain future with one
timer per read only while it has to wait, and parses responses with llhttp
(``httptools``, the parser of Node.js and uvicorn): one C call per read.

It is an ``httpx.AsyncBaseTransport``: httpx still builds requests, applies
timeouts and decodes bodies. What is ours is small: HTTP/1.1 only, one request
per connection at a time, idle connections kept per host for reuse, and
httpx's exception classes for every failure, raised where httpcore raises them
(an error after the response headers surfaces while the body is read, after
the body bytes that came before it). No proxies: with ``CHAT_UPSTREAM_PROXY``
set, the chat app uses httpx's own transport instead.
"""

from __future__ import annotations

import asyncio
import ssl
from collections import deque
from collections.abc import AsyncIterator
from typing import Any, cast

import httptools
import httpx

HIGH_WATER = 1024 * 1024  # pause the socket when this much is buffered unread
LOW_WATER = 256 * 1024
READ_SIZE = 64 * 1024
MAX_HEAD = 64 * 1024  # the status line and headers together

Key = tuple[str, str, int]  # scheme, host, port


#: uvloop's clock moves in milliseconds: a timer may fire up to one early.
CLOCK_STEP = 0.001


class _Protocol(asyncio.Protocol):
    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.chunks: deque[bytes] = deque()
        self.buffered = 0
        self.eof = False
        self.error: BaseException | None = None
        self.waiter: asyncio.Future[None] | None = None
        self.reading_paused = False
        self.writing_paused = False
        self.drained: asyncio.Future[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # No isinstance check: uvloop's transports do not subclass asyncio's.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self.chunks.append(data)
        self.buffered += len(data)
        if self.buffered > HIGH_WATER and not self.reading_paused and self.transport:
            self.transport.pause_reading()
            self.reading_paused = True
        self._wake()

    def eof_received(self) -> bool:
        self.eof = True
        self._wake()
        return False  # let the transport close itself

    def connection_lost(self, exc: BaseException | None) -> None:
        self.eof = True
        self.error = exc
        self._wake()
        self.writing_paused = False
        if self.drained is not None and not self.drained.done():
            self.drained.set_result(None)

    def pause_writing(self) -> None:
        self.writing_paused = True

    def resume_writing(self) -> None:
        self.writing_paused = False
        if self.drained is not None and not self.drained.done():
            self.drained.set_result(None)

    def _wake(self) -> None:
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)


def _expire(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_exception(httpx.ReadTimeout("The server sent nothing in time."))


class Connection:
    """One socket to an upstream, read through the protocol's buffer."""

    def __init__(self, key: Key, transport: asyncio.Transport, protocol: _Protocol) -> None:
        self.key = key
        self._transport = transport
        self._protocol = protocol
        # One timer per connection, not one per read (a stream reads once a token):
        # a wait moves the deadline; the timer, when it fires, expires the read
        # waiting then only if its deadline has passed, and otherwise goes off again
        # at the new one.
        self._loop: asyncio.AbstractEventLoop | None = None  # asked once: a system call each time
        self._deadline = 0.0
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0

    @property
    def reusable(self) -> bool:
        """Idle and still open: the server neither closed it nor sent anything unasked."""
        protocol = self._protocol
        return not (protocol.eof or protocol.chunks or self._transport.is_closing())

    async def read(self, timeout: float | None) -> bytes:
        """The next bytes received; ``b""`` once the server closed its side."""
        protocol = self._protocol
        if not protocol.chunks and not protocol.eof:
            loop = self._loop
            if loop is None:
                loop = self._loop = asyncio.get_running_loop()
            waiter = protocol.waiter = loop.create_future()
            if timeout is not None:
                self._deadline = deadline = loop.time() + timeout
                if self._timer is None or self._timer_at > deadline:
                    self._arm(loop, deadline)
            else:
                self._deadline = float("inf")
            try:
                await waiter
            finally:
                protocol.waiter = None
        if protocol.chunks:
            data = protocol.chunks.popleft()
            if len(data) > READ_SIZE:
                protocol.chunks.appendleft(data[READ_SIZE:])
                data = data[:READ_SIZE]
            protocol.buffered -= len(data)
            if protocol.reading_paused and protocol.buffered < LOW_WATER:
                self._transport.resume_reading()
                protocol.reading_paused = False
            return data
        if protocol.error is not None:
            raise httpx.ReadError(str(protocol.error) or type(protocol.error).__name__)
        return b""

    async def write(self, data: bytes, timeout: float | None) -> None:
        protocol = self._protocol
        if protocol.error is not None or self._transport.is_closing():
            raise httpx.WriteError("The connection is closed.")
        self._transport.write(data)
        if protocol.writing_paused:
            protocol.drained = asyncio.get_running_loop().create_future()
            try:
                async with asyncio.timeout(timeout):
                    await protocol.drained
            except TimeoutError:
                raise httpx.WriteTimeout("The server did not take the request in time.") from None
            finally:
                protocol.drained = None

    def _arm(self, loop: asyncio.AbstractEventLoop, at: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer_at = at
        self._timer = loop.call_at(at, self._check_deadline, loop)

    def _check_deadline(self, loop: asyncio.AbstractEventLoop) -> None:
        self._timer = None
        waiter = self._protocol.waiter
        if waiter is None or waiter.done() or self._deadline == float("inf"):
            return  # no read waits: the next one arms the timer again
        if self._deadline - loop.time() > CLOCK_STEP:
            self._arm(loop, self._deadline)  # bytes came since: wait for the new deadline
        else:
            _expire(waiter)

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._transport.close()


class _Message:
    """llhttp's callbacks for one response: what it parsed so far."""

    def __init__(self) -> None:
        self.parser: Any = None  # set once the parser exists: it calls back into this
        self.on_message_begin()

    def on_message_begin(self) -> None:
        self.headers: list[tuple[bytes, bytes]] = []
        self.body: list[bytes] = []
        self.head_done = False
        self.complete = False
        self.keep_alive = False

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        self.head_done = True

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        self.complete = True
        # Asked now: once this callback returns, llhttp has moved on to the next message.
        self.keep_alive = self.parser.should_keep_alive()

    def take_body(self, joined: bool) -> list[bytes]:
        pieces = [b"".join(self.body)] if joined and len(self.body) > 1 else self.body
        self.body = []
        return pieces


class ResponseStream(httpx.AsyncByteStream):
    """A response body read from its connection as it arrives, one network read at a time."""

    def __init__(
        self,
        pool: Transport,
        connection: Connection,
        message: _Message,
        read_timeout: float | None,
        error: httpx.RemoteProtocolError | None,
    ) -> None:
        self._pool = pool
        self._connection = connection
        self._message = message  # and its parser, ``message.parser``
        self._read_timeout = read_timeout
        self._error = error  # met while the headers were read, after them
        # No length and not chunked: the body ends when the server closes.
        headers = {name.lower(): value for name, value in message.headers}
        self._until_close = b"content-length" not in headers and b"transfer-encoding" not in headers
        # What one read brought is handed over at once, except in a compressed body:
        # a decoder fails a whole piece at once, so its chunks stay as the server sent
        # them and the text before a broken one is kept.
        self._joined = headers.get(b"content-encoding", b"identity").strip().lower() == b"identity"
        self._closed = False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        message = self._message
        for piece in message.take_body(self._joined):
            yield piece
        while not message.complete:
            if self._error is not None:
                raise self._error
            data = await self._connection.read(self._read_timeout)
            if not data:
                if self._until_close:
                    message.complete = True
                    break
                raise httpx.RemoteProtocolError(
                    "The server closed the connection before the end of the response body."
                )
            self._error = _feed(message.parser, data)
            for piece in message.take_body(self._joined):
                yield piece
        await self.aclose()

    async def aclose(self) -> None:
        """Keep the connection for another request if the response was read whole."""
        if self._closed:
            return
        self._closed = True
        whole = self._message.complete and self._error is None and not self._until_close
        if whole and self._message.keep_alive:
            self._pool.release(self._connection)
        else:
            self._connection.close()  # mid-body: this is what stops the upstream


def _feed(parser: Any, data: bytes) -> httpx.RemoteProtocolError | None:
    try:
        parser.feed_data(data)
    except httptools.HttpParserError as exc:
        return httpx.RemoteProtocolError(f"The server sent a malformed response ({exc}).")
    return None


class Transport(httpx.AsyncBaseTransport):
    """HTTP/1.1 to the upstream over pooled asyncio connections, parsed by llhttp."""

    def __init__(
        self, *, ssl_context: ssl.SSLContext | None = None, max_idle_per_host: int = 100
    ) -> None:
        self._ssl_context = ssl_context
        self._max_idle = max_idle_per_host
        self._idle: dict[Key, list[Connection]] = {}

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        url = request.url
        if url.scheme not in ("http", "https"):
            raise httpx.UnsupportedProtocol(f"Requests to {url.scheme}: URLs are not supported.")
        port = url.port or (443 if url.scheme == "https" else 80)
        key: Key = (url.scheme, url.host, port)
        head = [b"%s %s HTTP/1.1\r\n" % (request.method.encode("ascii"), url.raw_path)]
        for name, value in request.headers.raw:
            if b"\r" in name or b"\n" in name or b"\r" in value or b"\n" in value:
                # A line break would let a setting's value smuggle in headers of its own.
                raise httpx.LocalProtocolError(f"The header {name!r} holds a line break.")
            head.append(b"%s: %s\r\n" % (name, value))
        timeouts = request.extensions.get("timeout", {})
        connection = self._idle_connection(key) or await self._connect(key, timeouts.get("connect"))
        try:
            body = await request.aread()
            await connection.write(b"".join(head) + b"\r\n" + body, timeouts.get("write"))
            return await self._response(connection, timeouts.get("read"))
        except BaseException:
            connection.close()
            raise

    async def _response(self, connection: Connection, read_timeout: float | None) -> httpx.Response:
        message = _Message()
        parser = message.parser = httptools.HttpResponseParser(message)
        received = 0
        while True:
            data = await connection.read(read_timeout)
            if not data:
                raise httpx.RemoteProtocolError(
                    "The server closed the connection without answering."
                )
            received += len(data)
            error = _feed(parser, data)
            if message.head_done:
                status = parser.get_status_code()
                if 100 <= status < 200 and status != 101:
                    if error is not None:
                        raise error
                    # An informational response (100 Continue): the real one follows.
                    message.head_done = False
                    continue
                break
            if error is not None:
                raise error
            if received > MAX_HEAD:
                raise httpx.RemoteProtocolError("The server sent an oversized response head.")
        if status == 101:
            raise httpx.RemoteProtocolError("The server switched protocols.")
        stream = ResponseStream(self, connection, message, read_timeout, error)
        return httpx.Response(
            status, headers=message.headers, stream=stream, extensions={"http_version": b"HTTP/1.1"}
        )

    def _idle_connection(self, key: Key) -> Connection | None:
        idle = self._idle.get(key)
        while idle:
            connection = idle.pop()
            if connection.reusable:
                return connection
            connection.close()
        return None

    async def _connect(self, key: Key, timeout: float | None) -> Connection:
        scheme, host, port = key
        context = None
        if scheme == "https":
            if self._ssl_context is None:  # made once: loading the system's CAs takes a while
                self._ssl_context = ssl.create_default_context()
            context = self._ssl_context
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(timeout):
                transport, protocol = await loop.create_connection(
                    _Protocol,
                    host,
                    port,
                    ssl=context,
                    server_hostname=host if context is not None else None,
                )
        except TimeoutError:
            raise httpx.ConnectTimeout(f"Connecting to {host}:{port} timed out.") from None
        except OSError as exc:  # refused, unknown host, TLS verification (ssl.SSLError)
            raise httpx.ConnectError(str(exc) or type(exc).__name__) from exc
        return Connection(key, transport, protocol)

    def release(self, connection: Connection) -> None:
        """Keep a connection whose response was read whole, if there is room."""
        idle = self._idle.setdefault(connection.key, [])
        if connection.reusable and len(idle) < self._max_idle:
            idle.append(connection)
        else:
            connection.close()

    async def aclose(self) -> None:
        for idle in self._idle.values():
            for connection in idle:
                connection.close()
        self._idle.clear()
