"""daphne on uvloop: ``python -m chat.server`` takes daphne's own arguments.

daphne runs Twisted on an asyncio event loop that it creates when
``daphne.server`` is first imported, and has no option to choose the loop.
Setting uvloop's policy before that import puts Twisted, and with it every
socket and every answer, on uvloop: in bench/RESULTS.md that cut the relay's
CPU per token by 12-15 % under load.
Where uvloop is not installed (it does not support Windows) this is plain daphne.

Three more things a streaming server wants, each measured in bench/RESULTS.md:
Twisted writes a socket's bytes at once (``write_eagerly``), the garbage
collector leaves what was loaded alone and collects young objects less often
(``collect_less``), and SIGTERM drains before daphne stops (``drain_on_sigterm``).
"""

from __future__ import annotations

import asyncio
import gc
import sys
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
    collect_less()
    drain_on_sigterm()
    from daphne.cli import CommandLineInterface

    sys.argv[0] = "daphne"
    CommandLineInterface.entrypoint()


if __name__ == "__main__":
    main()
