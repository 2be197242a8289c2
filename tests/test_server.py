"""``python -m chat.server``: daphne, as the README serves it, on uvloop."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from chat.server import install_uvloop
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
