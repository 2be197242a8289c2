"""A per-token cost budget: ``python -m bench.costs`` (issue #13).

Why: ``python -m bench`` measures what the relay costs as a whole (tokens per relay
CPU-second), not which step of a token's way costs what, so a change to one step can
only be judged by a whole, noisy benchmark run, and nobody can say how much of the
relay's CPU per token our code explains. This times each step on its own, with the
app's real code and no socket: the upstream read and its parsing (``chat.network``),
the SSE decoder, the chunk interpretation, the frame, the socket's delivery, the
fan-out, Channels' consumer ``send``, and the ASGI ``send`` of daphne and of uvicorn
into their real websocket protocols over a transport that discards what is written.
The database work of an answer (turn setup, checkpoints, final save and usage,
title), on SQLite and on PostgreSQL, is divided by the 300 tokens of an answer of the
bench's 100-stream scenario. The sum stands beside the relay CPU per token that the
bench measured (bench/RESULTS.md) for our relay, the bare Python relay and Node:
what the sum does not explain is the event loop (waking tasks, polling, timers),
the system calls and what no step here does.

Each figure is the median of ``timeit`` repeats (5; ``--quick``: 2, tiny batches, SQLite
only) of a batch of operations, in CPU microseconds of this process
(``time.process_time``: the same clock as the bench's "relay CPU", steadier than wall
time on a shared machine), with the garbage collector on, as in a server. Everything
asynchronous runs on uvloop: the parent on daphne's own loop as ``python -m chat.server``
sets it up. The database work runs in a child process per database (Django is set up
once per process), through the real ``database_sync_to_async`` hop.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import timeit
import uuid
import warnings
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import KW_ONLY, asdict, dataclass
from datetime import timedelta
from functools import partial
from pathlib import Path
from typing import Any

from bench.upstream import CHUNK, DONE, FINISH, ROLE, USAGE, chunked, expected_text, token

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "RESULTS.md"
HEADING = "## Per-token cost budget (python -m bench.costs)"
START, END = "<!-- costs:start -->", "<!-- costs:end -->"
RESULTS_START, RESULTS_END = "<!-- results:start -->", "<!-- results:end -->"  # bench.report's
SCENARIO = "100 streams × 300 tokens at 30/s"  # the bench's table the budget is set beside
TOKENS = 300  # tokens of one answer in that scenario
RATE = 30.0  # tokens a second of each stream there
STREAMS = 100  # answers running at once there: the rows of one checkpoint
CHECKPOINTS = int(TOKENS / RATE / 1.0)  # one a second (CHAT_CHECKPOINT_INTERVAL) per answer
UPSTREAM_URL = "http://127.0.0.1:9/v1"  # never connected to: every socket here is a null one
TOKEN = token(150)  # a token mid-answer, as the bench upstream writes it ("w150 ")
EVENT = CHUNK % TOKEN.encode()  # one chat.completion.chunk event: the body of one read
ONE_READ = chunked(EVENT)  # the bytes of one network read (a chunked body, as bench/upstream.py)
HEAD = (
    b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
    b"transfer-encoding: chunked\r\n\r\n" + chunked(ROLE)
)
MESSAGE_ID = "5b0cf1c2-3a4e-4d5f-8a6b-7c8d9e0f1a2b"
CONVERSATION_ID = uuid.UUID("9e8d7c6b-5a4f-4e3d-8c2b-1a0f9e8d7c6b")
# The rows the sums and the loop's share are computed from.
READ, READ_WAITING = "1. upstream read + parse", "1 when each read waits"
DELIVERY, WOKEN, LOOP_TURN = "7. delivery", "7 with a wake per frame", "one loop turn"
DAPHNE, UVICORN = "9. ASGI send (daphne)", "9 under uvicorn instead"
REAL_SOCKET = "9 ({}) over a real socket"
HANDSHAKE = (
    b"GET /ws/chat/ HTTP/1.1\r\nHost: 127.0.0.1:8000\r\nUpgrade: websocket\r\n"
    b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
    b"Sec-WebSocket-Version: 13\r\nOrigin: http://127.0.0.1:8000\r\n\r\n"
)


@dataclass(frozen=True)
class Effort:
    repeat: int
    scale: float  # multiplies the operations in a batch
    turns: int  # answers a database batch handles

    def ops(self, full: int) -> int:
        return max(10, int(full * self.scale))


FULL = Effort(repeat=5, scale=1.0, turns=40)
QUICK = Effort(repeat=2, scale=0.02, turns=3)


@dataclass
class Row:
    """One line of the budget: a stage, what it times, and how often a token pays it."""

    stage: str
    timed: str
    per_op_us: float
    _: KW_ONLY
    ops_per_token: float = 1.0
    ops_label: str = "1"
    summed: bool = True

    @property
    def per_token_us(self) -> float:
        return self.per_op_us * self.ops_per_token


def per_op(batch: Callable[[], object], ops: int, repeat: int) -> float:
    """Median CPU microseconds of one operation; ``batch`` runs ``ops`` of them."""
    timer = timeit.Timer(batch, setup=gc.enable, timer=time.process_time)
    return statistics.median(timer.repeat(repeat=repeat, number=1)) / ops * 1e6


def on(
    loop: asyncio.AbstractEventLoop, work: Callable[[], Awaitable[object]]
) -> Callable[[], object]:
    """A batch that runs ``work`` to its end on ``loop``."""
    return lambda: loop.run_until_complete(work())


# Null sockets -----------------------------------------------------------------------


class NullTransport(asyncio.Transport):
    """A connected socket that discards what is written to it: no buffer, no system call.

    Closed, it tells its protocol soon after, as a real transport does.
    """

    def __init__(self, protocol: asyncio.BaseProtocol | None = None) -> None:
        super().__init__()
        self.protocol = protocol
        self.closing = False

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        addresses = {"peername": ("127.0.0.1", 50000), "sockname": ("127.0.0.1", 8000)}
        return addresses.get(name, default)

    def write(self, data: Any) -> None:
        pass

    def writelines(self, list_of_data: Any) -> None:
        pass

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        if not self.closing and self.protocol is not None:
            asyncio.get_running_loop().call_soon(self.protocol.connection_lost, None)
        self.closing = True

    def abort(self) -> None:
        self.close()

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def is_reading(self) -> bool:
        return True

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        pass

    def get_write_buffer_size(self) -> int:
        return 0

    def can_write_eof(self) -> bool:
        return False


class ScriptedSocket(NullTransport):
    """A socket whose peer answers a request at once: each reply arrives as one network read.

    All of them at once (they wait in the connection's buffer), or ``trickling``: one a
    loop turn, so that each read has to wait for its bytes, as at 30 tokens a second.
    """

    def __init__(
        self, protocol: asyncio.Protocol, replies: list[bytes], *, trickling: bool
    ) -> None:
        super().__init__(protocol)
        self.reader = protocol
        self.replies = replies
        self.trickling = trickling

    def write(self, data: Any) -> None:
        if not self.trickling:
            for reply in self.replies:
                self.reader.data_received(reply)
            return
        loop = asyncio.get_running_loop()
        replies = iter(self.replies)

        def arrive() -> None:
            reply = next(replies, None)
            if reply is not None:
                self.reader.data_received(reply)  # wakes the reader, which runs first
                loop.call_soon(arrive)

        arrive()


def upstream_replies(tokens: int) -> list[bytes]:
    """What the bench upstream writes for one answer, one write (one read here) per token."""
    events = [chunked(CHUNK % token(i).encode()) for i in range(tokens)]
    end = chunked(FINISH + USAGE % (5, tokens, 5 + tokens) + DONE) + b"0\r\n\r\n"
    return [HEAD, *events, end]


def null_socket_transport(replies: list[bytes], *, trickling: bool = False) -> Any:
    """``chat.network.Transport`` whose connections are scripted sockets: all else is real."""
    from chat import network

    class Scripted(network.Transport):
        async def _connect(self, key: network.Key, timeout: float | None) -> network.Connection:
            protocol = network._Protocol()
            protocol.connection_made(ScriptedSocket(protocol, replies, trickling=trickling))
            assert protocol.transport is not None
            return network.Connection(key, protocol.transport, protocol)

    return Scripted()


# Per token: the upstream side ---------------------------------------------------------


def parse_only(effort: Effort) -> Row:
    import httptools

    from chat.network import _feed, _Message

    ops = effort.ops(20_000)
    message = _Message()
    parser = message.parser = httptools.HttpResponseParser(message)
    _feed(parser, HEAD)
    message.take_body(True)

    def batch() -> None:
        for _ in range(ops):
            _feed(parser, ONE_READ)
            message.take_body(True)

    return Row(
        "of which llhttp alone",
        "`chat.network._feed` (httptools `feed_data`) + `_Message.take_body` of one read",
        per_op(batch, ops, effort.repeat),
        summed=False,
    )


def upstream_reads(loop: asyncio.AbstractEventLoop, effort: Effort) -> list[Row]:
    import httpx

    ops = effort.ops(2_000)
    replies = upstream_replies(ops)

    def reads(trickling: bool) -> float:
        async def work() -> None:
            transport = null_socket_transport(replies, trickling=trickling)
            async with httpx.AsyncClient(transport=transport) as client:
                url = f"{UPSTREAM_URL}/chat/completions"
                response = await client.send(client.build_request("POST", url), stream=True)
                async for _ in response.aiter_raw():
                    pass

        return per_op(on(loop, work), ops, effort.repeat)

    return [
        Row(
            READ,
            "`_Protocol.data_received`, `Connection.read` (its bytes already there), llhttp, "
            "httpx's `aiter_raw`: httpx on `chat.network.Transport`, on a null socket",
            reads(False),
        ),
        Row(
            READ_WAITING,
            "the same, each read's bytes arriving a loop turn after it began to wait "
            "(its future, the loop turn, the wake; the connection's one deadline moved), "
            "as at 30 tokens/s",
            reads(True),
            summed=False,
        ),
    ]


def sse_decode(effort: Effort) -> Row:
    from chat.sse import SSEDecoder

    ops = effort.ops(20_000)
    decoder = SSEDecoder()

    def batch() -> None:
        for _ in range(ops):
            decoder.feed(EVENT)

    return Row("2. SSE decode", "`SSEDecoder.feed` of one event", per_op(batch, ops, effort.repeat))


def chunk_interpretation(effort: Effort) -> Row:
    from chat.sse import SSEDecoder
    from chat.upstream import Answer, _interpret

    ops = effort.ops(20_000)
    events = SSEDecoder().feed(EVENT)
    answer = Answer()

    # ``_interpret`` feeds the read to a decoder: this one hands back the events already
    # decoded, so that the decoding (row 2) is not counted twice.
    class Decoded:
        @staticmethod
        def feed(chunk: bytes) -> list[Any]:
            return events

    def batch() -> None:
        for _ in range(ops):
            _interpret(Decoded, EVENT, answer)  # type: ignore[arg-type]

    return Row(
        "3. chunk interpretation",
        "`chat.upstream._interpret` of one read, its events already decoded: "
        "`orjson.loads`, `Answer.apply`, `storable`",
        per_op(batch, ops, effort.repeat),
    )


def read_events_whole(loop: asyncio.AbstractEventLoop, effort: Effort) -> Row:
    import httpx

    from chat import upstream

    ops = effort.ops(2_000)
    replies = upstream_replies(ops)
    config = upstream.UpstreamConfig(base_url=UPSTREAM_URL, api_key="sk-bench", model="bench")
    messages = [{"role": "user", "content": "bench"}]

    async def work() -> None:
        # The loop's shared client (``get_client``), on null sockets.
        upstream._clients[loop] = httpx.AsyncClient(transport=null_socket_transport(replies))
        async for _ in upstream.stream_answer(config, messages, upstream.Answer()):
            pass
        await upstream.aclose_client()

    return Row(
        "check: 1–3 in one",
        "`chat.upstream.stream_answer` per read, on null sockets (httpx's generators and its own)",
        per_op(on(loop, work), ops, effort.repeat),
        summed=False,
    )


def generation_bookkeeping(effort: Effort) -> Row:
    from chat import metrics
    from chat.rendering import BlockSplitter

    ops = effort.ops(20_000)

    def batch() -> None:
        splitter = BlockSplitter()
        for _ in range(ops):
            metrics.CHARACTERS.inc(len(TOKEN))
            splitter.feed(TOKEN)

    return Row(
        "4. the generation's bookkeeping",
        "`Generation._stream`'s Prometheus counter and Markdown `BlockSplitter.feed`",
        per_op(batch, ops, effort.repeat),
    )


# Per token: the frame and the socket --------------------------------------------------


def frame_build(effort: Effort) -> tuple[Row, Row]:
    from chat.protocol import dumps, text_frame

    ops = effort.ops(50_000)

    def build() -> None:
        for i in range(ops):
            text_frame("delta", MESSAGE_ID, i, TOKEN)

    frame = text_frame("delta", MESSAGE_ID, 750, TOKEN)

    def encode() -> None:
        for _ in range(ops):
            dumps(frame)

    return (
        Row("5. frame build", "`protocol.text_frame`", per_op(build, ops, effort.repeat)),
        Row(
            "of which encoding",
            "`protocol.dumps` (orjson) of a delta: paid in 7, by `frame_texts`",
            per_op(encode, ops, effort.repeat),
            summed=False,
        ),
    )


async def discard(text: str) -> None:
    """A socket's ``send`` that sends nothing."""


def delivery(frames: int) -> tuple[Any, list[Any]]:
    """A socket's ``Delivery`` showing one running answer, and its next ``frames`` deltas."""
    from chat.conf import conf
    from chat.delivery import Delivery, keys
    from chat.protocol import text_frame

    async def text_of(message_id: uuid.UUID) -> str:
        return ""

    socket = Delivery(
        discard,
        text_of=text_of,
        window=conf.CHAT_SEND_WINDOW,
        slow_timeout=conf.CHAT_SLOW_CLIENT_TIMEOUT,
        frame_limit=conf.CHAT_MAX_FRAME_BYTES,
    )
    socket.shown = CONVERSATION_ID
    socket.positions.update(dict.fromkeys(keys(MESSAGE_ID), 0))
    step = len(TOKEN)
    return socket, [text_frame("delta", MESSAGE_ID, i * step, TOKEN) for i in range(frames)]


def own_task(socket: Any) -> bool:
    """Whether this ``Delivery`` sends from one task for the socket's life (``run`` waits on
    its ``wake`` event) rather than from a sender ``deliver`` starts when one is needed
    (and which, today, waits between the frames of an answer being written).

    chat/delivery.py has had both designs; this drives whichever is there.
    """
    return isinstance(getattr(socket, "wake", None), asyncio.Event)


def delivery_rows(loop: asyncio.AbstractEventLoop, effort: Effort) -> list[Row]:
    from chat.protocol import coalesce

    # Fewer frames than fill a send window (1 MiB): no page echoes pings here.
    ops = effort.ops(5_000)

    async def inline() -> None:
        socket, frames = delivery(ops)
        socket.holding = True  # no sender task: this loop does its work for each frame
        for frame in frames:
            socket.deliver(frame)
            queued = list(socket.outbox)  # the body of ``Delivery.run``'s loop, for one frame
            socket.outbox.clear()
            for each in coalesce(queued):
                await socket.forward(each)
            await socket._pace()

    async def woken() -> None:
        socket, frames = delivery(ops)
        sender = asyncio.create_task(socket.run()) if own_task(socket) else None
        for frame in frames:
            socket.deliver(frame)
            await asyncio.sleep(0)  # the sender sends it, alone
        socket.stop()
        if sender is not None:
            await sender
        await asyncio.sleep(0)  # a sender that ``stop`` started finishes

    async def piled_up() -> None:
        socket, frames = delivery(ops)
        for frame in frames:
            socket.deliver(frame)
        socket.stop()
        await socket.run()

    async def loop_turns() -> None:
        for _ in range(ops):
            await asyncio.sleep(0)

    sender = (
        "its own task, woken"
        if own_task(delivery(0)[0])
        else "the sender, woken (started by the first: an answer is being written)"
    )
    return [
        Row(
            DELIVERY,
            "`Delivery.deliver`, `coalesce`, `forward` (positions), `_pace` (window), "
            "`send_frame` (`frame_texts`) into a `send` that does nothing",
            per_op(on(loop, inline), ops, effort.repeat),
        ),
        Row(
            WOKEN,
            f"the same from the socket's sender: {sender} for each frame (as at 30 "
            "tokens/s), plus one loop turn of the driver",
            per_op(on(loop, woken), ops, effort.repeat),
            summed=False,
        ),
        Row(
            LOOP_TURN,
            "`await asyncio.sleep(0)` on uvloop",
            per_op(on(loop, loop_turns), ops, effort.repeat),
            summed=False,
        ),
        Row(
            "7 when frames pile up",
            f"{ops:,} deltas queued, then `Delivery.run`: merged into one frame, per token",
            per_op(on(loop, piled_up), ops, effort.repeat),
            summed=False,
        ),
    ]


class Sink:
    """A watcher that takes frames and keeps none."""

    def deliver(self, frame: Any) -> None:
        pass


def fan_out(loop: asyncio.AbstractEventLoop, effort: Effort) -> Row:
    from channels.layers import InMemoryChannelLayer

    from chat.fanout import Hub
    from chat.protocol import text_frame

    ops = effort.ops(20_000)
    hub = Hub(layer=InMemoryChannelLayer())
    loop.run_until_complete(hub.subscribe(CONVERSATION_ID, Sink()))
    frame = text_frame("delta", MESSAGE_ID, 750, TOKEN)

    async def work() -> None:
        for _ in range(ops):
            await hub.publish(CONVERSATION_ID, frame)

    return Row(
        "6. fan-out",
        "`Hub.publish` to one local watcher, in-memory layer (no other process)",
        per_op(on(loop, work), ops, effort.repeat),
    )


def frame_text() -> str:
    from chat.protocol import dumps, text_frame

    return dumps(text_frame("delta", MESSAGE_ID, 750, TOKEN))


def consumer_send(
    loop: asyncio.AbstractEventLoop, base_send: Callable[[dict[str, Any]], Awaitable[None]]
) -> Any:
    """The chat consumer, its ``base_send`` wrapped by Channels' session middleware as
    ``AuthMiddlewareStack`` wraps it (a logged-in session, not modified: nothing saved)."""
    from channels.sessions import InstanceSessionWrapper
    from django.conf import settings

    from chat.consumers import ChatConsumer

    cookies = {settings.SESSION_COOKIE_NAME: uuid.uuid4().hex}
    wrapper = InstanceSessionWrapper({"type": "websocket", "cookies": cookies}, base_send)
    loop.run_until_complete(wrapper.resolve_session())
    consumer = ChatConsumer()
    consumer.base_send = wrapper.send
    return consumer


def frame_send(consumer: Any) -> Callable[[str], Awaitable[None]]:
    """What the consumer's ``Delivery`` sends each frame's text with."""
    from chat.consumers import text_sender

    return text_sender(consumer.base_send)


def consumer_hop(loop: asyncio.AbstractEventLoop, effort: Effort) -> Row:
    ops = effort.ops(20_000)
    sent: list[dict[str, Any]] = []

    async def into_list(message: dict[str, Any]) -> None:
        sent.append(message)

    send = frame_send(consumer_send(loop, into_list))
    text = frame_text()

    async def work() -> None:
        for _ in range(ops):
            await send(text)
        sent.clear()

    return Row(
        "8. consumer hop",
        "`consumers.text_sender`: the `websocket.send` message, to the server's ASGI `send` "
        "past Channels' session wrapper (`frame_sender`) → a list",
        per_op(on(loop, work), ops, effort.repeat),
    )


@dataclass
class Server:
    """A real server's websocket, open: the ASGI ``send`` it gave the application, and,
    over a real socket, the browser's end of it (else the transport discards)."""

    send: Callable[[dict[str, Any]], Awaitable[None]]
    finish: asyncio.Event
    browser: socket.socket | None = None

    def drain(self) -> None:
        """Read what the browser's end received, so the server's writes never wait."""
        if self.browser is not None:
            with contextlib.suppress(BlockingIOError):
                while self.browser.recv(1 << 20):
                    pass

    def close(self, loop: asyncio.AbstractEventLoop) -> None:
        self.finish.set()  # the application returns
        loop.run_until_complete(asyncio.sleep(0.05))
        if self.browser is not None:
            self.browser.close()
            loop.run_until_complete(asyncio.sleep(0.05))


def asgi_app(ready: asyncio.Future[Server]) -> Callable[[Any, Any, Any], Awaitable[None]]:
    """An application that accepts, hands over its ``send``, and returns when told."""

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await receive()  # websocket.connect
        await send({"type": "websocket.accept"})
        finish = asyncio.Event()
        ready.set_result(Server(send, finish))
        await finish.wait()

    return app


def tcp_pair() -> tuple[socket.socket, socket.socket]:
    """A connected TCP pair on 127.0.0.1, non-blocking: the server's end, the browser's."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        browser = socket.create_connection(listener.getsockname())
        served, _ = listener.accept()
    for end in (served, browser):
        end.setblocking(False)
    return served, browser


def opened(
    loop: asyncio.AbstractEventLoop, ready: asyncio.Future[Server], browser: socket.socket | None
) -> Server:
    """The server once the application accepted the handshake (sent by ``browser``, if real)."""
    if browser is not None:
        browser.sendall(HANDSHAKE)
    server = loop.run_until_complete(asyncio.wait_for(ready, 10))
    loop.run_until_complete(asyncio.sleep(0.05))  # the handshake's own tasks finish
    server.browser = browser
    server.drain()  # the 101 response
    return server


def daphne_factory(app: Any) -> Any:
    """daphne's websocket factory as ``Server.run`` makes it (``run`` itself is not called:
    the endpoint is never listened on)."""
    from daphne.server import Server as Daphne
    from daphne.ws_protocol import WebSocketFactory

    daphne = Daphne(app, endpoints=["tcp:port=0"], signal_handlers=False)
    daphne.connections = {}
    factory = daphne.ws_factory = WebSocketFactory(daphne, server=daphne.server_name)
    factory.setProtocolOptions(
        autoPingTimeout=daphne.ping_timeout,
        allowNullOrigin=True,
        openHandshakeTimeout=daphne.websocket_handshake_timeout,
        maxMessagePayloadSize=daphne.websocket_max_message_size,
        maxFramePayloadSize=daphne.websocket_max_frame_size,
    )
    build = factory.buildProtocol

    def build_protocol(address: Any) -> Any:
        protocol = build(address)
        protocol._raw_query_string = b""  # as daphne's HTTP protocol hands a socket over
        return protocol

    factory.buildProtocol = build_protocol
    return factory


def daphne_server(loop: asyncio.AbstractEventLoop, *, real: bool) -> Server:
    """daphne's ``WebSocketProtocol`` (autobahn) over a Twisted transport that discards
    writes or, ``real``, over a TCP socket adopted by Twisted's reactor."""
    from twisted.internet import reactor
    from twisted.internet.address import IPv4Address
    from twisted.internet.testing import StringTransport

    class Discarding(StringTransport):
        def write(self, data: bytes) -> None:
            pass

        def writeSequence(self, data: list[bytes]) -> None:
            pass

    ready: asyncio.Future[Server] = loop.create_future()
    factory = daphne_factory(asgi_app(ready))
    if real:
        served, browser = tcp_pair()
        reactor.adoptStreamConnection(served.fileno(), socket.AF_INET, factory)
        served.close()  # Twisted has its own copy of the descriptor
        return opened(loop, ready, browser)
    transport = Discarding(  # type: ignore[no-untyped-call]
        hostAddress=IPv4Address("TCP", "127.0.0.1", 8000),
        peerAddress=IPv4Address("TCP", "127.0.0.1", 50000),
    )
    protocol = factory.buildProtocol(transport.getPeer())  # type: ignore[no-untyped-call]
    protocol.makeConnection(transport)
    protocol.dataReceived(HANDSHAKE)
    return opened(loop, ready, None)


def uvicorn_server(loop: asyncio.AbstractEventLoop, *, real: bool) -> Server:
    """uvicorn's ``websockets`` protocol (``--ws websockets``, as the bench runs it) over
    an asyncio transport that discards writes or, ``real``, over a TCP socket."""
    from uvicorn.config import Config
    from uvicorn.server import ServerState

    with warnings.catch_warnings():  # the legacy websockets API it uses is deprecated
        warnings.simplefilter("ignore")
        from uvicorn.protocols.websockets.websockets_impl import WebSocketProtocol

    ready: asyncio.Future[Server] = loop.create_future()
    config = Config(
        app=asgi_app(ready), ws="websockets", lifespan="off", log_config=None, log_level="warning"
    )

    def protocol() -> WebSocketProtocol:
        return WebSocketProtocol(
            config=config, server_state=ServerState(), app_state={}, _loop=loop
        )

    if real:
        served, browser = tcp_pair()
        loop.run_until_complete(loop.connect_accepted_socket(protocol, served))
        return opened(loop, ready, browser)
    null = protocol()
    null.connection_made(NullTransport(null))
    null.data_received(HANDSHAKE)
    return opened(loop, ready, None)


#: Each server: how to open its websocket, what its ``send`` runs, and where it ends,
#: over a null transport and over a real socket.
SERVERS: dict[str, tuple[Callable[..., Server], str, str, str]] = {
    "daphne": (
        daphne_server,
        "`Server.handle_reply` → `WebSocketProtocol.handle_reply` → autobahn `sendMessage` → ",
        "a Twisted transport that discards",
        "Twisted's TCP transport as `chat.server` makes it write (the send system call at "
        "once; Twisted's buffer and `addWriter` only for what the socket refuses) "
        "on 127.0.0.1, plus one loop turn",
    ),
    "uvicorn": (
        uvicorn_server,
        "uvicorn's `asgi_send` → websockets' (legacy) `send`, framing, `drain` → ",
        "an asyncio transport that discards",
        "uvloop's TCP transport (the send system call) on 127.0.0.1, plus one loop turn",
    ),
}


def server_send(loop: asyncio.AbstractEventLoop, effort: Effort, name: str, *, real: bool) -> Row:
    make, path, null_end, real_end = SERVERS[name]
    server = make(loop, real=real)
    ops = effort.ops(10_000)
    message = {"type": "websocket.send", "text": frame_text()}

    async def work() -> None:
        for i in range(ops):
            await server.send(message)
            if real:
                await asyncio.sleep(0)  # the loop writes (Twisted: when the socket is writable)
                if i % 256 == 255:
                    server.drain()
        await asyncio.sleep(0)
        server.drain()

    cost = per_op(on(loop, work), ops, effort.repeat)
    server.close(loop)
    if real:
        return Row(REAL_SOCKET.format(name), path + real_end, cost, summed=False)
    return Row(
        DAPHNE if name == "daphne" else UVICORN, path + null_end, cost, summed=name == "daphne"
    )


def asgi_send_rows(loop: asyncio.AbstractEventLoop, effort: Effort) -> list[Row]:
    return [
        server_send(loop, effort, "daphne", real=False),
        whole_send(loop, effort),
        server_send(loop, effort, "daphne", real=True),
        server_send(loop, effort, "uvicorn", real=False),
        server_send(loop, effort, "uvicorn", real=True),
    ]


def whole_send(loop: asyncio.AbstractEventLoop, effort: Effort) -> Row:
    ops = effort.ops(10_000)
    daphne = daphne_server(loop, real=False)
    send = frame_send(consumer_send(loop, daphne.send))
    text = frame_text()

    async def work() -> None:
        for _ in range(ops):
            await send(text)

    cost = per_op(on(loop, work), ops, effort.repeat)
    daphne.close(loop)
    return Row(
        "check: 8–9 in one",
        "the consumer's send of a frame's text into daphne, as one call",
        cost,
        summed=False,
    )


def final_render(effort: Effort) -> Row:
    from chat.rendering import render_block

    ops = max(3, effort.ops(200))
    text = expected_text(TOKENS)  # one paragraph: it is rendered once, at the end

    def batch() -> None:
        for _ in range(ops):
            render_block(text)

    return Row(
        "10. last block rendered",
        "`render_block` (markdown-it + nh3) of the 300-token answer, one paragraph",
        per_op(batch, ops, effort.repeat),
        ops_per_token=1 / TOKENS,
        ops_label=f"1/{TOKENS}",
    )


def token_costs(loop: asyncio.AbstractEventLoop, effort: Effort) -> list[Row]:
    """Every per-token row, in the order a token meets them, with the checks among them."""
    build, encode = frame_build(effort)
    deliver, *delivery_notes = delivery_rows(loop, effort)
    read, read_waiting = upstream_reads(loop, effort)
    return [
        read,
        parse_only(effort),
        read_waiting,
        sse_decode(effort),
        chunk_interpretation(effort),
        read_events_whole(loop, effort),
        generation_bookkeeping(effort),
        build,
        fan_out(loop, effort),
        deliver,
        encode,
        *delivery_notes,
        consumer_hop(loop, effort),
        *asgi_send_rows(loop, effort),
        final_render(effort),
    ]


# Per answer: the database ---------------------------------------------------------------


@dataclass(frozen=True)
class Person:
    owner: Any  # chat.models.Owner
    still_allowed: Callable[[], bool]


def people(count: int) -> list[Person]:
    """Users logged in with a session each, as bench/prepare.py makes them."""
    from django.contrib.auth import BACKEND_SESSION_KEY, HASH_SESSION_KEY, SESSION_KEY
    from django.contrib.auth.models import User
    from django.contrib.sessions.backends.db import SessionStore
    from django.db import transaction

    from chat import auth
    from chat.models import Owner

    made = []
    with transaction.atomic():
        users = User.objects.bulk_create(
            [User(username=f"cost-{uuid.uuid4().hex[:12]}", password="!") for _ in range(count)]
        )
        for user in User.objects.filter(username__in=[u.username for u in users]):
            session = SessionStore()
            session[SESSION_KEY] = str(user.pk)
            session[BACKEND_SESSION_KEY] = "django.contrib.auth.backends.ModelBackend"
            session[HASH_SESSION_KEY] = user.get_session_auth_hash()
            session.save()
            scope = {"session": SessionStore(session.session_key), "user": user}
            owner = Owner(user_id=user.pk)
            check = partial(auth.session_is_current, scope, owner)
            made.append(Person(owner, check))
    return made


def timeline() -> list[dict[str, Any]]:
    """An answer's timeline as ``Generation._save`` stores it."""
    from django.utils import timezone

    at = timezone.now().isoformat()
    return [
        {"at": at, "event": "started", "model": "bench"},
        {"at": at, "event": "request_sent", "attempt": 1, "url": "/v1/chat/completions"},
        {"at": at, "event": "response", "status": 200, "request_id": ""},
        {"at": at, "event": "first_token"},
        {"at": at, "event": "finished", "status": "complete", "finish_reason": "stop"},
        {"at": at, "event": "usage", "prompt_tokens": 14, "completion_tokens": TOKENS},
    ]


def database_costs(loop: asyncio.AbstractEventLoop, effort: Effort) -> dict[str, float]:
    """CPU microseconds of each database step of an answer, through Channels' database
    thread: turn setup, one row of a checkpoint, the final save, the day's usage, a title."""
    from django.db import transaction

    from chat import batches, store
    from chat.usage import Usage

    n, repeat = effort.turns, effort.repeat
    crowd = iter(people(2 * n * repeat))
    turns: list[tuple[Any, str]] = []  # (store.Turn, its owner's key)
    question = f"bench id={uuid.uuid4().hex} n={TOKENS} rate={RATE:g}"

    async def start() -> None:
        for _ in range(n):
            person = next(crowd)
            turn = await store.start_turn(
                person.owner, None, question, model="bench", system_prompt="",
                still_allowed=person.still_allowed,
            )  # fmt: skip
            turns.append((turn, person.owner.key))

    results: dict[str, float] = {"turn": per_op(on(loop, start), n, repeat)}
    half = expected_text(TOKENS // 2)  # a checkpoint's text, on average
    rows = [(turn.assistant_message.id, half, "") for turn, _ in turns[:STREAMS]]
    calls = max(2, n // 4)

    async def checkpoint_all() -> None:
        for _ in range(calls):
            await store.save_checkpoints(rows)

    async def checkpoint_one() -> None:
        for i in range(calls):
            await store.save_checkpoints([rows[i % len(rows)]])

    results["checkpoint_row"] = per_op(on(loop, checkpoint_all), calls * len(rows), repeat)
    results["checkpoint_batch_rows"] = len(rows)
    results["checkpoint_alone"] = per_op(on(loop, checkpoint_one), calls, repeat)
    text, usage = expected_text(TOKENS), Usage(14, TOKENS, estimated=False)
    finishing, titled = iter(turns), iter(turns)

    async def finish() -> None:
        for _ in range(n):
            turn, owner_key = next(finishing)
            await store.finish_message(
                turn.assistant_message.id, owner_key=owner_key, usage=usage,
                timeline=timeline(), content=text, reasoning="", refusal="", tool_calls=[],
                status="complete", finish_reason="stop", error_code="", error_detail="",
                model="bench", upstream_request_id="", time_to_first_token=timedelta(seconds=0.01),
                duration=timedelta(seconds=TOKENS / RATE),
            )  # fmt: skip

    async def title() -> None:
        for _ in range(n):
            turn, owner_key = next(titled)
            await store.set_title(
                turn.conversation.id, "Counting words in a benchmark",
                owner_key=owner_key, usage=Usage(60, 6, estimated=False),
            )  # fmt: skip

    results["final"] = per_op(on(loop, finish), n, repeat)
    results["title"] = per_op(on(loop, title), n, repeat)

    @batches.in_db_thread
    def first_usage_of_the_day() -> None:
        # Alone, in the database thread, without its hop: its share of the final save.
        for _ in range(n):
            with transaction.atomic():
                store.record_usage(next(crowd).owner.key, usage, answers=1)

    results["usage"] = per_op(on(loop, first_usage_of_the_day), n, repeat)
    return results


def database_child(url: str, effort: Effort) -> None:
    """In a child process: set Django up on ``url``, migrate, print the costs as JSON."""
    setup_django(url)
    from django.core.management import call_command

    call_command("migrate", interactive=False, verbosity=0)
    import uvloop

    loop = uvloop.new_event_loop()
    asyncio.set_event_loop(loop)
    try:
        costs = database_costs(loop, effort)
    finally:
        settle(loop)
    print(json.dumps(costs))


def in_child(url: str, effort: Effort) -> dict[str, float]:
    command = [sys.executable, "-m", "bench.costs", "--database-child", url]
    command += ["--quick"] if effort is QUICK else []
    done = subprocess.run(
        command, cwd=ROOT, env=django_env(url), capture_output=True, text=True, timeout=900
    )
    if done.returncode:
        raise RuntimeError(f"measuring {url.partition(':')[0]} failed:\n{done.stderr}")
    costs: dict[str, float] = json.loads(done.stdout.strip().splitlines()[-1])
    return costs


@contextlib.contextmanager
def databases(effort: Effort, *, postgres: bool) -> Iterator[dict[str, str]]:
    """A fresh SQLite file (WAL, as the bench) and, unless skipped, a fresh PostgreSQL database."""
    with tempfile.TemporaryDirectory(prefix="chat-costs-") as folder:
        urls = {"SQLite": f"sqlite:///{folder}/costs.sqlite3"}
        if not postgres:
            yield urls
            return
        from bench.processes import postgres_database

        with postgres_database() as url:
            urls["PostgreSQL"] = url
            yield urls


def per_answer(stage: str, timed: str, cost: float, *, times: int = 1, summed: bool = True) -> Row:
    """A row of work done ``times`` per answer, paid by its ``TOKENS`` tokens."""
    return Row(
        stage,
        timed,
        cost,
        ops_per_token=times / TOKENS,
        ops_label=f"{times}/{TOKENS}",
        summed=summed,
    )


def answer_rows(costs: dict[str, float]) -> list[Row]:
    """The per-answer rows of the budget, from one database's costs."""
    batch = f"{costs['checkpoint_batch_rows']:.0f}-row batch"
    return [
        per_answer(
            "11. turn setup",
            "`store.start_turn`: the session check, the limits, the new conversation and "
            "both messages",
            costs["turn"],
        ),
        per_answer(
            "12. checkpoints",
            f"`store.save_checkpoints`: one row of a {batch}, once a second for "
            f"{TOKENS / RATE:g} s",
            costs["checkpoint_row"],
            times=CHECKPOINTS,
        ),
        per_answer(
            "12 for one answer alone",
            "`store.save_checkpoints` of one row (a process running one answer)",
            costs["checkpoint_alone"],
            times=CHECKPOINTS,
            summed=False,
        ),
        per_answer(
            "13. final save + usage",
            "`store.finish_message`: the message row, the day's usage (its first answer)",
            costs["final"],
        ),
        per_answer(
            "of which usage",
            "`store.record_usage` alone (first answer of the day: one INSERT ... ON CONFLICT "
            "DO UPDATE)",
            costs["usage"],
            summed=False,
        ),
        per_answer(
            "14. title",
            "`store.set_title`: the store part only (the title's request upstream is not timed)",
            costs["title"],
        ),
    ]


# Django, loops, the report -----------------------------------------------------------------


def django_env(url: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "CHAT_"))}
    env.update(
        DJANGO_SETTINGS_MODULE="bench.settings", DATABASE_URL=url, BENCH_UPSTREAM_URL=UPSTREAM_URL
    )
    env["PYTHONPATH"] = os.pathsep.join(filter(None, (str(ROOT), env.get("PYTHONPATH"))))
    return env


def setup_django(url: str) -> None:
    os.environ.update(django_env(url))
    import django

    django.setup()


def settle(loop: asyncio.AbstractEventLoop) -> None:
    """Cancel what is left on ``loop`` and let it finish, as ``asyncio.run`` does."""
    tasks = asyncio.all_tasks(loop)
    for task in tasks:
        task.cancel()
    loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
    loop.run_until_complete(loop.shutdown_asyncgens())


def measured_relays(path: Path) -> tuple[str, dict[str, float]]:
    """The bench's run (its "Generated by" line) and the relay CPU microseconds per token
    in its 100-stream table, by relay."""
    text = path.read_text().partition(RESULTS_START)[2].partition(RESULTS_END)[0]
    run = next((line for line in text.splitlines() if line.startswith("Generated by")), "")
    run = run.removeprefix("Generated by ").partition(", ")[0]  # the command and the date
    section = text.partition(f"### {SCENARIO}")[2].partition("\n#")[0]
    lines = [line for line in section.splitlines() if line.startswith("|")]
    if len(lines) < 3:
        return run, {}
    header = [cell.strip() for cell in lines[0].strip("|").split("|")]
    column = header.index("tokens per relay CPU-s")
    relays = {}
    for line in lines[2:]:
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        value = cells[column].replace(",", "")
        if value.replace(".", "").isdigit() and float(value) > 0:
            relays[cells[0]] = 1e6 / float(value)
    return run, relays


@dataclass
class Budget:
    when: str
    load: tuple[float, float]  # 1-minute load average before and after
    effort: str
    rows: list[Row]
    databases: dict[str, list[Row]]
    relays: dict[str, float]
    bench_run: str  # which run of the bench measured ``relays``

    def cost(self, stage: str) -> float:
        return next(r.per_token_us for r in self.rows if r.stage == stage)

    def total(self, database: str = "SQLite", *, server: str = "daphne") -> float:
        """The sum of the stages (with ``server``'s ASGI send, ``database``'s answer work)."""
        rows = [r for r in self.rows if r.summed] + [
            r for r in self.databases.get(database, []) if r.summed
        ]
        total = sum(r.per_token_us for r in rows)
        if server == "uvicorn":
            total += self.cost(UVICORN) - self.cost(DAPHNE)
        return total

    def loop(self, *, server: str = "daphne") -> float:
        """What the rows with the event loop in them measured beyond the stages: a read
        that waits (its future, timer, loop turn, wake), the socket's task woken per frame,
        and the write to a real socket (each less the loop turn its driver adds)."""
        turn = self.cost(LOOP_TURN)
        null = self.cost(DAPHNE if server == "daphne" else UVICORN)
        waiting = self.cost(READ_WAITING) - self.cost(READ)
        woken = self.cost(WOKEN) - self.cost(DELIVERY) - turn
        written = self.cost(REAL_SOCKET.format(server)) - null - turn
        return waiting + woken + written


def us(value: float) -> str:
    return f"{value:,.2f}" if value < 100 else f"{value:,.0f}"


def share(value: float, total: float, *, summed: bool) -> str:
    percent = f"{100 * value / total:.1f} %"
    return percent if summed else f"({percent})"


def budget_table(budget: Budget) -> list[str]:
    rows = budget.rows + budget.databases["SQLite"]
    total = budget.total()
    lines = [
        "| stage | what is timed (the app's real code) | µs per operation "
        "| operations per token | µs per token | share of the sum |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        name = r.stage if r.summed else f"↳ {r.stage}"
        lines.append(
            f"| {name} | {r.timed} | {us(r.per_op_us)} | {r.ops_label} | {us(r.per_token_us)} "
            f"| {share(r.per_token_us, total, summed=r.summed)} |"
        )
    lines.append(
        f"| **sum** (daphne, SQLite: as the bench's django-daphne) | | | | **{us(total)}** "
        "| 100 % |"
    )
    return lines


def database_table(budget: Budget) -> list[str]:
    names = list(budget.databases)
    lines = [
        "| per answer | "
        + " | ".join(f"{n}: µs per operation | {n}: µs per token" for n in names)
        + " |",
        "|---" * (1 + 2 * len(names)) + "|",
    ]
    for i, row in enumerate(budget.databases["SQLite"]):
        cells = []
        for name in names:
            other = budget.databases[name][i]
            cells += [us(other.per_op_us), us(other.per_token_us)]
        name = row.stage if row.summed else f"↳ {row.stage}"
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines


#: The bench's relays the stages add up to: their server and database.
SETUPS = {
    "django-daphne": ("daphne", "SQLite"),
    "django-uvicorn": ("uvicorn", "SQLite"),
    "django-daphne-pg": ("daphne", "PostgreSQL"),
    "django-uvicorn-pg": ("uvicorn", "PostgreSQL"),
}


def relay_table(budget: Budget) -> list[str]:
    lines = [
        f"| relay ({SCENARIO}, bench/RESULTS.md) | relay CPU per token (µs) "
        "| the stages' sum (µs) | explained | with the loop and socket rows (µs) | explained |",
        "|---|---|---|---|---|---|",
    ]
    for relay, cpu in budget.relays.items():
        if relay not in (*SETUPS, "bare-python", "node"):
            continue
        cells = ["–"] * 4
        server, database = SETUPS.get(relay, ("", ""))
        if database in budget.databases:
            total = budget.total(database, server=server)
            more = total + budget.loop(server=server)
            cells = [us(total), f"{100 * total / cpu:.0f} %", us(more), f"{100 * more / cpu:.0f} %"]
        lines.append(f"| {relay} | {cpu:,.1f} | " + " | ".join(cells) + " |")
    return lines


def machine() -> str:
    """The processor, cores and Python."""
    from bench.report import processor

    return f"{processor()}, {os.cpu_count()} cores, Python {platform.python_version()}"


def report(budget: Budget, command: str) -> str:
    before, after = budget.load
    lines = [
        f"Generated by `{command}` on {budget.when}, {machine()}; load average "
        f"{before:.2f} before, {after:.2f} after. {budget.effort}",
        "",
        *budget_table(budget),
        "",
    ]
    if "PostgreSQL" in budget.databases:
        postgres = budget.total("PostgreSQL")
        lines += [
            f"On PostgreSQL instead of SQLite the sum is {us(postgres)} µs (the database "
            "server's own CPU is not in it: it is another process, as in the bench):",
            "",
            *database_table(budget),
            "",
        ]
    lines += [
        f"Under uvicorn instead of daphne the sum is {us(budget.total(server='uvicorn'))} µs. "
        f"Beside the relay CPU per token the bench measured ({budget.bench_run}):",
        "",
        *relay_table(budget),
        "",
    ]
    return "\n".join(lines)


def write_section(text: str, path: Path) -> None:
    """Put ``text`` between this section's markers, adding the section at the end if new."""
    current = path.read_text()
    if START in current and END in current:
        before, _, rest = current.partition(START)
        after = rest.partition(END)[2]
        updated = f"{before}{START}\n{text}\n{END}{after}"
    else:
        updated = f"{current.rstrip()}\n\n{HEADING}\n\n{START}\n{text}\n{END}\n"
    path.write_text(updated)


def as_json(budget: Budget) -> dict[str, Any]:
    data = asdict(budget)
    for rows in (data["rows"], *data["databases"].values()):
        for row in rows:
            row["per_token_us"] = row["per_op_us"] * row["ops_per_token"]
    data["sums"] = {
        "daphne_sqlite": budget.total(),
        "uvicorn_sqlite": budget.total(server="uvicorn"),
    }
    if "PostgreSQL" in budget.databases:
        data["sums"]["daphne_postgresql"] = budget.total("PostgreSQL")
    data["loop"] = {"daphne": budget.loop(), "uvicorn": budget.loop(server="uvicorn")}
    return data


def measure(effort: Effort, *, postgres: bool, relays: Path) -> Budget:
    from chat.server import install_uvloop, lean_sockets, write_eagerly

    # Before daphne.server is imported: its loop (Twisted's) is then uvloop, as in
    # ``python -m chat.server``; every asynchronous step here runs on it, and
    # Twisted writes and daphne's sockets send as that server makes them.
    install_uvloop()
    write_eagerly()
    lean_sockets()
    load = os.getloadavg()[0]
    with databases(effort, postgres=postgres) as urls:
        setup_django(urls["SQLite"])  # the settings only: this process uses no database
        from daphne.server import twisted_loop

        asyncio.set_event_loop(twisted_loop)
        try:
            rows = token_costs(twisted_loop, effort)
        finally:
            settle(twisted_loop)
        per_answer = {name: answer_rows(in_child(url, effort)) for name, url in urls.items()}
    how = (
        f"Median of {effort.repeat} `timeit` repeats, CPU time of the process "
        "(`time.process_time`), garbage collector on, uvloop."
    )
    bench_run, per_token = measured_relays(relays)
    return Budget(
        when=time.strftime("%Y-%m-%d %H:%M"),
        load=(load, os.getloadavg()[0]),
        effort=how,
        rows=rows,
        databases=per_answer,
        bench_run=bench_run,
        relays=per_token,
    )


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.costs", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="tiny batches, SQLite only (tests)")
    parser.add_argument("--no-postgres", action="store_true", help="skip PostgreSQL")
    parser.add_argument("--json", type=Path, help="also write the raw figures as JSON here")
    parser.add_argument(
        "--write", action="store_true", help=f"put the tables in {RESULTS.name}'s section"
    )
    parser.add_argument("--results", type=Path, default=RESULTS, help="the bench's results file")
    parser.add_argument("--database-child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    effort = QUICK if args.quick else FULL
    if args.database_child:
        database_child(args.database_child, effort)
        return
    budget = measure(effort, postgres=not (args.quick or args.no_postgres), relays=args.results)
    command = "python -m bench.costs" + (" --quick" if args.quick else "")
    text = report(budget, command)
    print(text)
    if args.json:
        args.json.write_text(json.dumps(as_json(budget), indent=1))
    if args.write:
        write_section(text, args.results)
        print(f"wrote {args.results}")


if __name__ == "__main__":
    main()
