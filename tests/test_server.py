"""``python -m chat.server``: daphne, as the README serves it, on uvloop."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from chat.server import InputQueue, install_uvloop
from tests.servers import ROOT, daphne, prepare_site

pytestmark = pytest.mark.integration


def test_it_serves_the_project_on_uvloop(tmp_path: Path) -> None:
    with daphne(prepare_site(tmp_path)) as site:
        assert "chat.server: daphne on the uvloop event loop\n" in site.log
        assert httpx.get(site.url + "/accounts/login/").status_code == 200


def test_it_refuses_once_daphne_made_its_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "daphne.server", sys.modules[__name__])
    with pytest.raises(RuntimeError, match="already exists"):
        install_uvloop()


#: Run in a child process: Twisted's reactor is one per process. A Twisted TCP
#: server with ``write_eagerly`` writes a burst far over what the socket takes,
#: then small writes, then closes; a client that reads only after all that must
#: get every byte in order. Then small writes to a reading client: sent at once,
#: without the loop watching the socket for writability.
EAGER_WRITES = r"""
import asyncio, socket, sys
from chat.server import install_uvloop, write_eagerly
install_uvloop()
write_eagerly()
from daphne.server import twisted_loop  # Twisted's reactor runs on this loop
from twisted.internet import protocol, reactor
asyncio.set_event_loop(twisted_loop)

watched = []
add_writer = reactor.addWriter
reactor.addWriter = lambda d: (watched.append(d), add_writer(d))[1]

class Writer(protocol.Protocol):
    def connectionMade(self):
        self.factory.made.set_result(self.transport)

def serve():
    made = twisted_loop.create_future()
    factory = protocol.Factory.forProtocol(Writer)
    factory.made = made
    served, client = socket.socketpair()
    served.setblocking(False)
    reactor.adoptStreamConnection(served.fileno(), socket.AF_UNIX, factory)
    served.close()
    return made, client

async def main():
    made, client = serve()
    transport = await made
    burst = bytes(range(256)) * 40_000  # 10 MB: far over the socket's buffer
    transport.write(burst)
    for i in range(1000):
        transport.write(b"<%d>" % i)
    transport.loseConnection()
    expected = burst + b"".join(b"<%d>" % i for i in range(1000))
    got = bytearray()
    loop = asyncio.get_running_loop()
    client.setblocking(False)
    while chunk := await loop.sock_recv(client, 1 << 20):
        got += chunk
    print("in order" if bytes(got) == expected else f"differs: {len(got)} of {len(expected)}")
    print("buffered with a watch" if watched else "never watched")

    made, client = serve()
    transport = await made
    watched.clear()
    for i in range(100):
        transport.write(b"<%d>" % i)
        await asyncio.sleep(0)
    client.setblocking(False)
    got = b""
    expected = b"".join(b"<%d>" % i for i in range(100))
    while len(got) < len(expected):
        got += await loop.sock_recv(client, 65536)
    print("small in order" if got == expected else "small differ")
    print(f"small watched {len(watched)}")
    reactor.stop()

reactor.callWhenRunning(lambda: twisted_loop.create_task(main()))
reactor.run()
"""


def run_script(tmp_path: Path, text: str) -> list[str]:
    """The lines a script printed, run in a process of its own (Twisted's reactor is one
    per process)."""
    script = tmp_path / "script.py"
    script.write_text(text)
    done = subprocess.run(
        [sys.executable, str(script)],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.splitlines()


def test_eager_writes_keep_twisteds_order_and_send_at_once_what_the_socket_takes(
    tmp_path: Path,
) -> None:
    assert run_script(tmp_path, EAGER_WRITES) == [
        "in order",  # a burst the socket refused, then small writes: all of it, in order
        "buffered with a watch",  # what the socket refused went to Twisted's buffer
        "small in order",
        "small watched 0",  # a socket with room: each write sent at once, no watch
    ]


COLLECT_LESS = r"""
import gc
from chat.server import collect_less, install_uvloop
install_uvloop()
from twisted.internet import reactor
collect_less()
loaded = [[i] for i in range(1000)]  # what the application holds once loaded
print(gc.get_threshold()[0], gc.get_freeze_count() > 0)
reactor.callWhenRunning(lambda: (print(gc.get_freeze_count() >= 1000), reactor.stop()))
reactor.run()
"""


def test_the_server_freezes_what_it_loaded_and_collects_young_objects_less_often(
    tmp_path: Path,
) -> None:
    # Before the server runs nothing is frozen; once it runs, what was loaded is.
    assert run_script(tmp_path, COLLECT_LESS) == ["10000 False", "True"]


#: Run in a child process: daphne with ``lean_sockets``, serving an echo app on
#: websockets, opened by a client in the same loop; then what the sockets hold.
LEAN_SOCKETS = r"""
import asyncio, gc, random, sys
from chat.server import InputQueue, install_uvloop, lean_sockets
install_uvloop()
print("steps", lean_sockets())
from daphne.server import Server, twisted_loop
from daphne.http_protocol import WebRequest
from daphne.ws_protocol import WebSocketProtocol
from autobahn.websocket.protocol import WebSocketProtocol as Autobahn
from twisted.internet import reactor
from twisted.web.http import HTTPChannel
import websockets

queues = []

async def echo(scope, receive, send):
    queues.append(receive.__self__)
    while True:
        event = await receive()
        if event["type"] == "websocket.connect":
            await send({"type": "websocket.accept"})
        elif event["type"] == "websocket.receive":
            await send({"type": "websocket.send", "text": scope["path"] + " " + event["text"]})
        else:
            return

class Capture:
    def __init__(self):
        self.writes = []

    def write(self, data):
        self.writes.append(data)

def same_frames(p):
    # Every message in one write, its bytes and the traffic counted as autobahn's own
    # sendMessage writes and counts them, at every edge of a frame's length field.
    random.seed(7)
    sizes = [0, 1, 125, 126, 127, 65535, 65536, 70000]
    sizes += [random.randrange(0, 70000) for _ in range(100)]
    real, p.transport = p.transport, Capture()
    try:
        for size in sizes:
            for binary in (False, True):
                payload = random.randbytes(size)
                counts = [dict(vars(p.trafficStats))]
                p.sendMessage(payload, binary)
                counts.append(dict(vars(p.trafficStats)))
                Autobahn.sendMessage(p, payload, binary)
                counts.append(dict(vars(p.trafficStats)))
                ours, theirs = p.transport.writes[-2:]
                added = [{k: b[k] - a[k] for k in a if isinstance(a[k], int)}
                         for a, b in zip(counts, counts[1:])]
                if ours != theirs or added[0] != added[1]:
                    return f"differs at {size} bytes, binary {binary}"
        return len(p.transport.writes) == 4 * len(sizes)
    finally:
        p.transport = real

def protocols():
    return [p for p in gc.get_objects() if isinstance(p, WebSocketProtocol)]

async def main(server):
    port = server.listening_addresses[0][1]
    url = f"ws://127.0.0.1:{port}"
    first = await websockets.connect(url + "/one/")
    for i in range(50):
        await first.send(str(i))
    print("in order", [await first.recv() for _ in range(50)] == [f"/one/ {i}" for i in range(50)])
    print("queues", {type(q).__name__ for q in queues})
    [p] = protocols()
    options = set(WebSocketProtocol.CONFIG_ATTRS) & set(vars(p))
    print("options held per socket", sorted(options))
    factory = server.ws_factory
    print("options read", p.autoPingInterval == factory.autoPingInterval,
          callable(p.perMessageCompressionAccept))
    print("handshake let go", p.http_headers, p.http_request_data, p.request.path)
    server.application_checker()  # daphne's own sweep of finished connections (every second)
    print("upgraded requests held", [r for r in gc.get_objects() if isinstance(r, WebRequest)])
    print("HTTP channels held", [c for c in gc.get_objects() if isinstance(c, HTTPChannel)])
    print("frames as autobahn's", same_frames(p))
    server.ws_factory.setProtocolOptions(autoPingInterval=7)
    second = await websockets.connect(url + "/two/")
    await second.send("hello")
    by_path = sorted(protocols(), key=lambda p: p.request.path)
    print(await second.recv(), [p.autoPingInterval for p in by_path])
    await first.close()
    await second.close()
    reactor.stop()

ready = lambda: twisted_loop.create_task(main(server))
server = Server(application=echo, endpoints=["tcp:port=0:interface=127.0.0.1"],
                signal_handlers=False, ready_callable=ready)
server.run()
"""


def test_lean_sockets_keep_what_a_socket_does_and_let_go_of_its_handshake(tmp_path: Path) -> None:
    assert run_script(tmp_path, LEAN_SOCKETS) == [
        "steps ['queue', 'options', 'handshake', 'one-write frames', 'upgraded request']",
        "in order True",
        "queues {'InputQueue'}",
        "options held per socket []",  # read from the class made for the server's options
        "options read True True",  # a function option stays a function
        "handshake let go None None /one/",
        "upgraded requests held []",
        "HTTP channels held []",
        "frames as autobahn's True",
        "/two/ hello [0, 7]",  # options changed later apply to sockets opened later
    ]


#: Operations on a queue: put an item, start a getter, cancel the i-th getter started,
#: or let the loop run a turn (getters start waiting, woken ones take their items). A
#: getter woken by a put and cancelled before its turn is the case to get right.
operations = st.lists(
    st.one_of(
        st.tuples(st.just("put"), st.integers(0, 99)),
        st.tuples(st.just("get"), st.just(0)),
        st.tuples(st.just("cancel"), st.integers(0, 9)),
        st.tuples(st.just("turn"), st.just(0)),
    ),
    max_size=40,
)


def outcome(queue_class: Any, steps: list[tuple[str, int]]) -> list[object]:
    """What each getter ended with (its item, or cancelled, or still waiting), in the
    order they started, and the items left in the queue."""

    async def run() -> list[object]:
        queue = queue_class()
        getters: list[asyncio.Task[Any]] = []
        for step, value in steps:
            if step == "put":
                queue.put_nowait(value)
            elif step == "get":
                getters.append(asyncio.ensure_future(queue.get()))
            elif step == "cancel" and value < len(getters):
                getters[value].cancel()
            elif step == "turn":  # only here do started getters run
                await asyncio.sleep(0)
        for _ in range(3):
            await asyncio.sleep(0)
        ended: list[object] = []
        for getter in getters:
            if not getter.done():
                ended.append("waiting")
                getter.cancel()
            else:
                ended.append("cancelled" if getter.cancelled() else getter.result())
        left = []
        while not queue.empty():
            left.append(await queue.get())
        return [*ended, "left", *left]

    return asyncio.run(run())


@settings(max_examples=300, deadline=None)
@given(operations)
@example([("get", 0), ("get", 0), ("turn", 0), ("put", 1), ("cancel", 0), ("turn", 0)])
def test_the_input_queue_hands_out_items_as_asyncios_queue_does(
    steps: list[tuple[str, int]],
) -> None:
    # First come, first served; a getter cancelled once woken passes its item on.
    assert outcome(InputQueue, steps) == outcome(asyncio.Queue, steps)
