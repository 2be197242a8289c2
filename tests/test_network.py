"""The upstream client reads through the asyncio backend, over plain TCP and over TLS."""

from __future__ import annotations

import asyncio
import ssl
from pathlib import Path
from typing import Any

import httpx
import pytest
import trustme

from chat import network, upstream
from tests.conftest import Connect, rebuild
from tests.fake_upstream import FakeUpstream, completion, hanging, stream

pytestmark = pytest.mark.django_db(transaction=True)


async def test_the_shared_client_reads_through_the_chat_transport() -> None:
    client = upstream.get_client()
    try:
        assert isinstance(client._transport, network.Transport)  # type: ignore[attr-defined]
    finally:
        await upstream.aclose_client()


class RawServer:
    """A server that answers each request with the next scripted bytes, as they are.

    ``None`` after a reply closes the connection once it is sent. It counts connections and the
    requests on each, which shows whether the client kept one open.
    """

    def __init__(self, *replies: bytes | None) -> None:
        self.replies = list(replies)
        self.connections: list[int] = []  # requests seen on each connection
        self.closed = asyncio.Event()  # a client closed a connection

    async def __aenter__(self) -> str:
        self.server = await asyncio.start_server(self.handle, "127.0.0.1", 0)
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def __aexit__(self, *exc: object) -> None:
        self.server.close()

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections.append(0)
        try:
            while await reader.readuntil(b"\r\n\r\n"):
                self.connections[-1] += 1
                reply = self.replies.pop(0)
                if reply is None:
                    break
                writer.write(reply)
                await writer.drain()
                if self.replies and self.replies[0] is None:
                    break  # close right after this reply
        except (asyncio.IncompleteReadError, ConnectionError):
            self.closed.set()
        finally:
            writer.close()


def ok(body: bytes, *headers: bytes) -> bytes:
    head = b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n" % len(body)
    return head + b"".join(h + b"\r\n" for h in headers) + b"\r\n" + body


async def fetch(client: httpx.AsyncClient, url: str) -> bytes:
    return (await client.get(url)).content


async def test_a_connection_is_reused_until_the_server_says_close() -> None:
    server = RawServer(ok(b"one"), ok(b"two"), ok(b"three", b"connection: close"), ok(b"four"))
    async with server as url, httpx.AsyncClient(transport=network.Transport()) as client:
        got = [await fetch(client, url) for _ in range(4)]
    assert got == [b"one", b"two", b"three", b"four"]
    # One connection for three requests; "connection: close" made the fourth open another.
    assert server.connections == [3, 1]


async def test_an_informational_response_comes_before_the_real_one() -> None:
    server = RawServer(b"HTTP/1.1 100 Continue\r\n\r\n" + ok(b"after"))
    async with server as url, httpx.AsyncClient(transport=network.Transport()) as client:
        response = await client.get(url)
    assert (response.status_code, response.content) == (200, b"after")


async def test_a_body_without_a_length_ends_when_the_server_closes() -> None:
    server = RawServer(b"HTTP/1.1 200 OK\r\nconnection: close\r\n\r\nuntil the end", None)
    async with server as url, httpx.AsyncClient(transport=network.Transport()) as client:
        assert await fetch(client, url) == b"until the end"


async def test_a_body_cut_short_fails_after_the_bytes_that_came() -> None:
    server = RawServer(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nonly this", None)
    received = b""
    async with (
        server as url,
        httpx.AsyncClient(transport=network.Transport()) as client,
        client.stream("GET", url) as response,
    ):
        with pytest.raises(httpx.RemoteProtocolError):
            async for piece in response.aiter_raw():
                received += piece
    assert received == b"only this"


async def test_a_response_left_unread_closes_its_connection() -> None:
    # Closing a streamed response before its end is how a stop reaches the upstream.
    server = RawServer(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nfirst\r\n")
    async with server as url, httpx.AsyncClient(transport=network.Transport()) as client:
        async with client.stream("GET", url) as response:
            async for _ in response.aiter_raw():
                break
        await asyncio.wait_for(server.closed.wait(), timeout=2)


async def test_garbage_instead_of_a_status_line_is_a_protocol_error() -> None:
    async with (
        RawServer(b"SSH-2.0-OpenSSH\r\n\r\n") as url,
        httpx.AsyncClient(transport=network.Transport()) as client,
    ):
        with pytest.raises(httpx.RemoteProtocolError):
            await client.get(url)


@pytest.fixture
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
async def tls_upstream(
    ca: trustme.CA, tmp_path: Path, settings: Any, fake_upstream: FakeUpstream
) -> FakeUpstream:
    """The fake upstream again, behind TLS with a certificate from a private CA."""
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost").configure_cert(server_context)
    await fake_upstream.close()
    await fake_upstream.start(tls=server_context)
    bundle = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(bundle))
    settings.OPENAI_BASE_URL = fake_upstream.url
    settings.CHAT_UPSTREAM_CA_BUNDLE = str(bundle)
    return fake_upstream


async def test_an_answer_streams_over_tls(
    connect: Connect, tls_upstream: FakeUpstream, user: Any
) -> None:
    tls_upstream.script(stream(*completion(["Sec", "ure"])))
    chat = await connect(user)
    await chat.send("hi")
    frames = await chat.receive_until("done")
    assert frames[-1]["status"] == "complete"
    assert rebuild(frames) == "Secure"
    assert tls_upstream.url.startswith("https://")


async def test_stop_closes_a_tls_upstream_too(
    connect: Connect, tls_upstream: FakeUpstream, user: Any
) -> None:
    tls_upstream.script(hanging("forever"))
    chat = await connect(user)
    await chat.send("hi")
    frames = await chat.receive_until("delta")
    await chat.stop(frames[2]["message"]["id"])
    await asyncio.wait_for(tls_upstream.requests[0].client_closed.wait(), timeout=2)
    assert (await chat.receive_until("done"))[-1]["status"] == "stopped"


async def test_an_untrusted_certificate_is_refused(
    connect: Connect, tls_upstream: FakeUpstream, user: Any, settings: Any
) -> None:
    settings.CHAT_UPSTREAM_CA_BUNDLE = ""  # the system's CAs do not know our private CA
    settings.CHAT_MAX_RETRIES = 0
    chat = await connect(user)
    await chat.send("hi")
    done = (await chat.receive_until("done"))[-1]
    assert done["error"]["code"] == "upstream_unreachable"


def test_the_backend_works_on_uvloop_too(settings: Any) -> None:
    """uvicorn runs on uvloop, whose transports are not asyncio's classes."""
    uvloop = pytest.importorskip("uvloop")

    async def scenario() -> tuple[str, str | None]:
        server = FakeUpstream()
        await server.start()
        server.script(stream(*completion(["on ", "uvloop"])))
        config = upstream.UpstreamConfig(base_url=server.url, api_key="", model="m")
        answer = upstream.Answer()
        try:
            parts = [text async for text, _ in upstream.stream_answer(config, [], answer)]
        finally:
            await upstream.aclose_client()
            await server.close()
        return "".join(parts), answer.finish_reason

    assert uvloop.run(scenario()) == ("on uvloop", "stop")


async def test_a_header_with_a_line_break_is_refused_before_anything_is_sent() -> None:
    server = RawServer(ok(b"never"))
    async with server as url, httpx.AsyncClient(transport=network.Transport()) as client:
        with pytest.raises(httpx.LocalProtocolError):
            await client.get(url, headers={"x-api-key": "sk-1\r\nx-injected: yes"})
    assert server.connections == []


async def test_the_upstream_can_be_reached_through_a_proxy(
    connect: Connect, fake_upstream: FakeUpstream, user: Any, settings: Any
) -> None:
    # The fake upstream plays the proxy. The model server's own name cannot resolve,
    # so the answer can only come through the proxy.
    settings.CHAT_UPSTREAM_PROXY = fake_upstream.url.removesuffix("/v1")
    settings.OPENAI_BASE_URL = "http://model-server.invalid/v1"
    fake_upstream.script(stream(*completion(["Via ", "proxy"])))
    chat = await connect(user)
    await chat.send("hi")
    frames = await chat.receive_until("done")
    assert frames[-1]["status"] == "complete"
    assert rebuild(frames) == "Via proxy"
    assert fake_upstream.requests[0].path == "http://model-server.invalid/v1/chat/completions"


class TrickleServer(RawServer):
    """Sends a chunked body one piece at a time, each after its pause."""

    def __init__(self, pauses: list[float]) -> None:
        super().__init__()
        self.pauses = pauses
        self.sent_at: list[float] = []

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
        try:
            for i, pause in enumerate(self.pauses):
                await asyncio.sleep(pause)
                writer.write(b"1\r\n%d\r\n" % (i % 10))
                await writer.drain()
                self.sent_at.append(asyncio.get_running_loop().time())
            writer.write(b"0\r\n\r\n")
            await writer.drain()
            await reader.read()  # until the client is done with the connection
        except ConnectionError:
            pass
        finally:
            writer.close()


async def read_trickle(pauses: list[float], read_timeout: float) -> tuple[bytes, Any, float]:
    """What arrived, what ended the read (None: the end of the body), and when it ended
    after the last piece that came."""
    received, error = b"", None
    server = TrickleServer(pauses)
    timeout = httpx.Timeout(5.0, read=read_timeout)
    async with (
        server as url,
        httpx.AsyncClient(transport=network.Transport(), timeout=timeout) as client,
        client.stream("GET", url) as response,
    ):
        try:
            async for piece in response.aiter_raw():
                received += piece
        except httpx.ReadTimeout as exc:
            error = exc
    ended = asyncio.get_running_loop().time()
    return received, error, ended - server.sent_at[-1]


async def test_the_read_timeout_is_per_wait_however_long_the_stream() -> None:
    # Ten pieces 0.1 s apart: a second in all, over three times the read timeout.
    received, error, _ = await read_trickle([0.1] * 10, read_timeout=0.3)
    assert error is None and received == b"0123456789"


async def test_a_stream_that_stalls_times_out_a_read_timeout_after_its_last_bytes() -> None:
    received, error, after_last = await read_trickle([0.1, 0.1, 0.1, 0.1, 2.0], read_timeout=0.3)
    assert isinstance(error, httpx.ReadTimeout)
    assert received == b"0123"  # what came before the stall is kept
    assert 0.3 <= after_last + 0.01 < 1.0
