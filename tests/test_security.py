"""Who may open the socket: same-origin pages only, logged-in users unless opted out."""

from __future__ import annotations

from typing import Any

import pytest
from asgiref.sync import sync_to_async
from channels.testing import WebsocketCommunicator
from django.contrib.sessions.backends.db import SessionStore

from project.asgi import application
from tests.conftest import ORIGIN, Connect, rebuild
from tests.fake_upstream import FakeUpstream, completion, stream

pytestmark = pytest.mark.django_db(transaction=True)


async def test_a_cross_site_origin_is_refused(connect: Connect, user: Any) -> None:
    await connect(user, origin=b"https://evil.example", expect_accept=False)


async def test_an_anonymous_socket_is_told_to_log_in_and_closed(connect: Connect) -> None:
    chat = await connect(None)
    assert await chat.receive() == {
        "type": "error",
        "code": "not_authenticated",
        "detail": "Log in to chat.",
    }
    assert await chat.communicator.receive_output(timeout=1) == {
        "type": "websocket.close",
        "code": 4401,
    }


async def test_an_anonymous_session_cannot_chat_unless_anonymous_chat_is_on(
    connect: Connect,
) -> None:
    session = SessionStore()
    await sync_to_async(session.save)()
    communicator = WebsocketCommunicator(
        application,
        "/ws/chat/",
        headers=[
            (b"origin", ORIGIN),
            (b"host", b"localhost"),
            (b"cookie", f"sessionid={session.session_key}".encode()),
        ],
    )
    assert (await communicator.connect())[0]
    try:
        frame = await communicator.receive_json_from(timeout=5)
        assert (frame["type"], frame["code"]) == ("error", "not_authenticated")
        assert await communicator.receive_output(timeout=1) == {
            "type": "websocket.close",
            "code": 4401,
        }
    finally:
        await communicator.disconnect()


async def test_anonymous_chat_is_an_explicit_opt_in(
    fake_upstream: FakeUpstream, settings: Any, connect: Connect
) -> None:
    settings.CHAT_ALLOW_ANONYMOUS = True
    session = SessionStore()
    await sync_to_async(session.save)()
    fake_upstream.script(stream(*completion(["hello guest"])))
    communicator = WebsocketCommunicator(
        application,
        "/ws/chat/",
        headers=[
            (b"origin", ORIGIN),
            (b"host", b"localhost"),
            (b"cookie", f"sessionid={session.session_key}".encode()),
        ],
    )
    connected, _ = await communicator.connect()
    assert connected
    try:
        await communicator.send_json_to({"type": "send", "conversation": None, "content": "hi"})
        frames = []
        while not frames or frames[-1]["type"] != "done":
            frames.append(await communicator.receive_json_from(timeout=5))
        assert rebuild(frames) == "hello guest"
    finally:
        await communicator.disconnect()
