"""daphne on uvloop: ``python -m chat.server`` takes daphne's own arguments.

daphne runs Twisted on an asyncio event loop that it creates when
``daphne.server`` is first imported, and has no option to choose the loop.
Setting uvloop's policy before that import puts Twisted, and with it every
socket and every answer, on uvloop: in bench/RESULTS.md that cut the relay's
CPU per token by 12-15 % under load.
Where uvloop is not installed (it does not support Windows) this is plain daphne.

Four more things a streaming server wants, each measured in bench/RESULTS.md:
Twisted writes a socket's bytes at once (``write_eagerly``), an idle socket
holds less (``lean_sockets``), the garbage collector leaves what was loaded
alone and collects young objects less often (``collect_less``), and SIGTERM
drains before daphne stops (``drain_on_sigterm``).
"""

from __future__ import annotations

import asyncio
import gc
import inspect
import sys
import types
from collections import deque
from typing import Any


def install_uvloop() -> str:
    """Make the loops created from now on uvloop's; return the name of the loop in use."""
    if "daphne.server" in sys.modules:
        raise RuntimeError("daphne.server was imported first: its event loop already exists")
    try:
        import uvloop
    except ImportError:
        return "asyncio"
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    from daphne.server import twisted_loop

    # Checked rather than assumed: a daphne that makes its loop another way runs on asyncio.
    return "uvloop" if isinstance(twisted_loop, uvloop.Loop) else "asyncio"


def write_eagerly() -> None:
    """Send a socket's bytes at once when nothing is waiting to go before them.

    Twisted's TCP transport only buffers in ``write``: it asks the loop to watch
    the socket for writability (an ``epoll_ctl``), sends on the loop's next turn,
    then stops watching (another ``epoll_ctl``). Every websocket frame paid that:
    14.7 µs a frame through daphne over a real socket, where uvicorn's write,
    which sends first and buffers only what the socket refuses, costs 8.7 µs
    (``python -m bench.costs``). This makes Twisted's ``write`` do the same: send
    what the socket takes now, and hand only the rest to Twisted's buffer, whose
    order, flow control (producers) and closing rules then apply as before.
    Bytes already buffered, a TLS connection (its layer writes for it), a closing
    connection and anything but plain bytes all take Twisted's own way.
    """
    from twisted.internet import tcp

    buffered_write = tcp.Connection.write
    if getattr(buffered_write, "eager", False):
        return

    def write(self: Any, data: bytes) -> None:
        if (
            type(data) is bytes
            and data
            and self.connected
            and not (self.TLS or self.disconnecting or self._writeDisconnecting)
            and not self.dataBuffer
            and not self._tempDataBuffer
        ):
            try:
                sent = self.socket.send(data)
            except (BlockingIOError, InterruptedError):
                sent = 0
            except OSError:
                sent = 0  # a lost connection: Twisted's own write path finds out and reports it
            if sent == len(data):
                return
            data = data[sent:]
        buffered_write(self, data)  # type: ignore[no-untyped-call]  # twisted is untyped here

    write.eager = True  # type: ignore[attr-defined]
    tcp.Connection.write = write  # type: ignore[method-assign]


class InputQueue:
    """A connection's queue of events for its application, as daphne uses one.

    daphne makes an ``asyncio.Queue`` per connection, only to ``put_nowait`` and
    ``get``: four deques (items, getters, putters, and the waiters of its
    ``join`` event) of 760 bytes each, 3 KB of an idle socket's 31
    (``python -m bench.memory``). This one holds its items in a deque made when
    there is something to hold and dropped when empty, and its getters (one, for
    an application waiting for its next event) in a list. ``get`` is
    ``asyncio.Queue.get`` without a size limit: first come, first served, and a
    getter cancelled after an item was meant for it wakes the next one, so no item
    waits while someone waits for it.
    """

    __slots__ = ("_getters", "_items")

    def __init__(self) -> None:
        self._items: deque[Any] | None = None
        self._getters: list[asyncio.Future[None]] = []

    def qsize(self) -> int:
        return len(self._items) if self._items else 0

    def empty(self) -> bool:
        return not self._items

    def put_nowait(self, item: Any) -> None:
        if self._items is None:
            self._items = deque()
        self._items.append(item)
        self._wake_next()

    async def get(self) -> Any:
        while not self._items:
            getter = asyncio.get_running_loop().create_future()
            self._getters.append(getter)
            try:
                await getter
            except BaseException:
                getter.cancel()  # a no-op if it was woken: the next one is woken below
                if getter in self._getters:
                    self._getters.remove(getter)
                if self._items and not getter.cancelled():
                    self._wake_next()
                raise
        item = self._items.popleft()
        if not self._items:
            self._items = None
        return item

    def _wake_next(self) -> None:
        while self._getters:
            getter = self._getters.pop(0)
            if not getter.done():
                getter.set_result(None)
                return


class _Path:
    """What daphne reads of a socket's opening request once it is open: its path."""

    __slots__ = ("path",)

    def __init__(self, path: str) -> None:
        self.path = path


def _reads(function: Any, text: str) -> bool:
    """Whether ``function``'s source still has ``text``: a step below changes what a
    dependency does, so it applies only while the code it was written against is there."""
    try:
        return text in inspect.getsource(function)
    except (OSError, TypeError):  # no source to read: assume it differs
        return False


def lean_sockets() -> list[str]:
    """Hold less per open socket, send with less; return the steps taken (all five on
    daphne 4.2 and autobahn 26).

    With these and ``chat.middleware.SessionAuthMiddleware``, an idle socket's
    Python memory went from 30.8 KB to 17.8 KB (``python -m bench.memory``) and
    its RSS from 33.2 KB to 19.3-19.5 KB on PostgreSQL (bench/RESULTS.md):

    - ``queue``: each connection's queue of events for its application is an
      :class:`InputQueue` (3 KB less).
    - ``options``: autobahn copies 29 options of the server (timeouts, sizes,
      pings) into every connection, unless the connection's class has them: they
      are set on a class made per set of options, so a connection's own
      attributes drop from 101 to 72 and their table from 3,328 bytes to 1,584.
    - ``handshake``: once a socket is open, what only its handshake needed is let
      go: the request's bytes and parsed headers, and the response's text (the
      application's scope keeps its own copy of the headers, as ASGI has it).
    - ``one-write frames``: a message daphne sends (one frame: not fragmented,
      compressed, masked, queued or logged) is framed and written in one step,
      where autobahn's ``sendMessage`` checks its arguments' types, then frames
      it in ``sendFrame`` and writes it in ``sendData``, formatting a debug line
      for every frame whether or not debug logging is on. Anything else goes
      autobahn's way. The bytes written and the traffic counted are the same.
    - ``upgraded request``: the HTTP request a socket was upgraded from is let go
      by its HTTP channel, which kept it (headers, cookies, body) as a request
      never finished; Twisted's channel reads that list only to answer further
      HTTP requests, which an upgraded connection no longer sends it. The channel
      is let go by the socket too, where it stayed as the producer of its writes:
      it pauses and resumes nothing while a request is being handled, and this
      one always is.

    Each step applies only where daphne and autobahn still read as the step
    expects (``_reads``); a step left out shows in ``python -m bench.memory``.
    """
    import daphne.server
    from autobahn.websocket.protocol import WebSocketProtocol as Autobahn
    from daphne.http_protocol import WebRequest
    from daphne.ws_protocol import WebSocketFactory, WebSocketProtocol

    taken: list[str] = []
    if getattr(WebSocketFactory.buildProtocol, "lean", False):
        return taken
    if daphne.server.asyncio is asyncio and _reads(
        daphne.server.Server.create_application, "asyncio.Queue()"
    ):
        queues = types.ModuleType("asyncio")  # daphne.server's asyncio, with this Queue
        queues.__dict__.update(vars(asyncio), Queue=InputQueue)
        daphne.server.asyncio = queues
        taken.append("queue")

    options = tuple(WebSocketProtocol.CONFIG_ATTRS)
    OPEN = Autobahn.STATE_OPEN
    from_class = _reads(Autobahn._connectionMade, "if not hasattr(self, configAttr)")
    build = WebSocketFactory.buildProtocol

    def open_and_let_go(self: Any) -> None:
        WebSocketProtocol.onOpen(self)
        self.http_request_data = self.http_response_data = self.http_headers = None
        self.request = _Path(self.request.path)

    send_message = Autobahn.sendMessage
    frame = 'raw = b"".join([b0.to_bytes(1, "big"), b1.to_bytes(1, "big"), el, mv, plm])'
    counted = "self.trafficStats.outgoingWebSocketMessages += 1"
    one_write = _reads(Autobahn.sendFrame, frame) and _reads(send_message, counted)

    def sendMessage(
        self: Any,
        payload: bytes,
        isBinary: bool = False,
        fragmentSize: int | None = None,
        sync: bool = False,
        doNotCompress: bool = False,
    ) -> None:
        length = len(payload)
        if (
            self.state != OPEN
            or fragmentSize is not None
            or sync
            or self.send_queue
            or self._perMessageCompress is not None
            or self.trackedTimings
            or self.logFrames
            or self.logOctets
            or self.maskServerFrames
            or type(payload) is not bytes
            or 0 < self.maxMessagePayloadSize < length
            or 0 < self.autoFragmentSize < length
        ):
            send_message(self, payload, isBinary, fragmentSize, sync, doNotCompress)  # type: ignore[no-untyped-call]
            return
        stats = self.trafficStats
        stats.outgoingWebSocketMessages += 1
        stats.outgoingOctetsAppLevel += length
        stats.outgoingOctetsWebSocketLevel += length
        stats.outgoingWebSocketFrames += 1
        first = 0x82 if isBinary else 0x81  # FIN, and the opcode of binary or text
        if length <= 125:
            header = bytes((first, length))
        elif length <= 0xFFFF:
            header = bytes((first, 126)) + length.to_bytes(2, "big")
        else:
            header = bytes((first, 127)) + length.to_bytes(8, "big")
        data = header + payload
        stats.outgoingOctetsWireLevel += len(data)
        self.transport.write(data)

    def buildProtocol(self: Any, addr: Any) -> Any:
        values = {name: getattr(self, name) for name in options} if from_class else {}
        made = self.__dict__.get("protocol")
        if made is None or made.options != values:
            self.protocol = type(
                "WebSocketProtocol",
                (WebSocketFactory.protocol,),
                {
                    # A function among them (autobahn's compression callback) stays a
                    # function, not a method of the connection.
                    **{name: staticmethod(value) for name, value in values.items()},
                    "options": values,
                    "onOpen": open_and_let_go,
                    "__module__": __name__,
                    **({"sendMessage": sendMessage} if one_write else {}),
                },
            )
        return build(self, addr)

    buildProtocol.lean = True  # type: ignore[attr-defined]
    WebSocketFactory.buildProtocol = buildProtocol
    taken += ["options", "handshake"] if from_class else ["handshake"]
    taken += ["one-write frames"] if one_write else []

    process = WebRequest.process
    if _reads(process, "transport, self.transport = self.transport, None"):

        def process_then_let_go(self: Any) -> Any:
            processed = process(self)
            channel = self.channel
            requests = getattr(channel, "requests", None)
            if self.transport is None and requests and self in requests:  # daphne took it
                requests.remove(self)
                transport = getattr(channel, "transport", None)
                if getattr(transport, "producer", None) is channel:
                    # Its pauses are no-ops while a request is being handled, as this
                    # one forever is: the socket's writes flow the same without it.
                    transport.unregisterProducer()  # type: ignore[union-attr]
            return processed

        WebRequest.process = process_then_let_go
        taken.append("upgraded request")
    return taken


#: Collections of the youngest generation after this many new objects (CPython: 700).
YOUNG_THRESHOLD = 10_000


def collect_less() -> None:
    """Tune the garbage collector for a server that keeps many answers in flight.

    Each token leaves short-lived objects (its chunk, its frame, a future), and at
    500 streams those still waiting when a young collection runs get promoted; the
    full collections that follow walk every object the process has, Django's
    included, and every stream waits meanwhile: 7-8 of them and 2.3-2.5 s spent
    collecting in a run at 500 streams (``gc.callbacks``), 11 % of the relay's
    samples (py-spy). Objects made while starting (the settings, the models, the
    URLs) are frozen once the server runs, so no collection walks them again, and
    young collections run every 10,000 new objects rather than 700: no full
    collection and 0.3 s spent collecting in the same run, and a lower p99
    (bench/RESULTS.md).
    """
    from twisted.internet import reactor

    gc.set_threshold(YOUNG_THRESHOLD, *gc.get_threshold()[1:])
    reactor.callWhenRunning(gc.freeze)  # the app is loaded by then


def drain_on_sigterm() -> None:
    """On SIGTERM, drain before daphne stops (a deploy then interrupts no answer).

    daphne cancels every application as soon as its reactor begins to stop, so a
    drain that starts then could no longer tell the pages to reconnect: the
    signal is taken first, the drain run, and only then the reactor stopped.
    """
    from twisted.internet import reactor

    draining: set[asyncio.Future[None]] = set()  # held until done: the loop keeps weak refs

    async def drain_then_stop() -> None:
        from chat import lifespan  # Django is set up by now: the application is loaded

        try:
            await lifespan.drain()
        finally:
            reactor.stop()  # type: ignore[misc]  # twisted's reactor is untyped

    def start_draining() -> None:
        if not draining:  # a second SIGTERM while draining changes nothing
            draining.add(asyncio.ensure_future(drain_then_stop()))

    def on_sigterm(number: int, frame: object = None) -> None:
        reactor.callFromThread(start_draining)

    # Twisted installs ``reactor.sigTerm`` as the SIGTERM handler when it starts to run.
    reactor.sigTerm = on_sigterm


def main() -> None:
    loop = install_uvloop()
    print(f"chat.server: daphne on the {loop} event loop", file=sys.stderr, flush=True)
    write_eagerly()
    lean = lean_sockets()
    print(f"chat.server: lean sockets: {', '.join(lean) or 'none'}", file=sys.stderr, flush=True)
    collect_less()
    drain_on_sigterm()
    from daphne.cli import CommandLineInterface

    sys.argv[0] = "daphne"
    CommandLineInterface.entrypoint()


if __name__ == "__main__":
    main()
