"""The upstream client reads through the asyncio backend, over plain TCP and over TLS."""

from __future__ import annotations

import asyncio
import ssl
from pathlib import Path
from typing import Any

import pytest
import trustme

from chat import network, upstream
from tests.conftest import Connect, rebuild
from tests.fake_upstream import FakeUpstream, completion, hanging, stream

pytestmark = pytest.mark.django_db(transaction=True)


async def test_the_shared_client_uses_the_asyncio_backend(fake_upstream: FakeUpstream) -> None:
    client = upstream.get_client()
    try:
        pool = client._transport._pool  # type: ignore[attr-defined]
        assert isinstance(pool._network_backend, network.AsyncioBackend)
    finally:
        await upstream.aclose_client()


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
