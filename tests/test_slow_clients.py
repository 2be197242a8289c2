"""A socket that stops reading costs bounded memory, and a page that reads loses nothing.

daphne queues whatever the application sends in an uncapped write buffer, so
the consumer keeps its own account: a page must echo a ``ping`` to prove it
read what came before, and a socket that lets ``CHAT_SEND_WINDOW`` characters
go unproven is sent nothing more and, after ``CHAT_SLOW_CLIENT_TIMEOUT``
seconds, closed with code 4408.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
from channels.db import database_sync_to_async

from chat.models import Conversation, Message
from tests.conftest import Connect, rebuild
from tests.fake_upstream import FakeUpstream, completion, stream

pytestmark = pytest.mark.django_db(transaction=True)

WINDOW = 20_000


@pytest.fixture(autouse=True)
def small_window(settings: Any) -> None:
    settings.CHAT_SEND_WINDOW = WINDOW
    settings.CHAT_SLOW_CLIENT_TIMEOUT = 0.5


async def long_conversation(user: Any) -> Conversation:
    conversation = await Conversation.objects.acreate(owner=user, title="long")
    answer = None
    for n in range(10):
        question = await Message.objects.acreate(
            conversation=conversation, parent=answer, role="user", content=f"q{n}"
        )
        answer = await Message.objects.acreate(
            conversation=conversation,
            parent=question,
            role="assistant",
            content=f"answer {n} " + "word " * 1000,
        )
    conversation.current_leaf = answer
    await conversation.asave()
    return conversation


async def test_a_socket_that_never_reads_is_sent_one_window_and_then_closed(
    connect: Connect, user: Any
) -> None:
    conversation = await long_conversation(user)
    chat = await connect(user)

    # Each ``watch`` would cost a whole history (over the window) in buffers.
    for _ in range(10):
        await chat.watch(str(conversation.id))

    sent: list[dict[str, Any]] = []
    while (output := await chat.communicator.receive_output(timeout=5))["type"] == "websocket.send":
        sent.append(json.loads(output["text"]))
    assert (output["type"], output["code"]) == ("websocket.close", 4408)
    # One history; every later ``watch`` was refused, without loading the conversation.
    assert [frame["type"] for frame in sent] == ["history", "ping"] + ["error"] * 9
    assert {frame["code"] for frame in sent[2:]} == {"slow_down"}


async def test_a_page_that_echoes_pings_is_sent_everything(connect: Connect, user: Any) -> None:
    conversation = await long_conversation(user)
    chat = await connect(user)

    histories = []
    for _ in range(10):
        await chat.watch(str(conversation.id))
        histories.append((await chat.receive_until("history"))[-1])
        # Like the page, it reads on: the history filled the window, so a ping follows.
        ping = await chat.receive_raw()
        assert ping["type"] == "ping"
        await chat.send_json({"type": "pong", "nonce": ping["nonce"]})

    assert [len(history["messages"]) for history in histories] == [20] * 10


async def test_an_answer_longer_than_the_window_arrives_whole_to_a_page_that_reads(
    connect: Connect, fake_upstream: FakeUpstream, user: Any
) -> None:
    tokens = [f"token{n} " for n in range(10_000)]
    fake_upstream.script(stream(*completion(tokens)))
    chat = await connect(user)

    await chat.send("a long answer, please")
    frames = await chat.receive_until("done", timeout=20)

    assert rebuild(frames) == "".join(tokens)
    assert frames[-1]["status"] == "complete"


async def test_an_echo_of_a_ping_never_sent_is_refused(connect: Connect, user: Any) -> None:
    chat = await connect(user)

    await chat.send_json({"type": "pong", "nonce": "guessed"})

    error = await chat.receive()
    assert (error["type"], error["code"]) == ("error", "invalid_frame")


@asynccontextmanager
async def database_thread_busy() -> AsyncIterator[None]:
    """Channels' database thread held by a call that waits, as by 500 turns' saves."""
    entered, release = threading.Event(), threading.Event()

    def hold() -> None:
        entered.set()
        release.wait(30)

    holding = asyncio.ensure_future(database_sync_to_async(hold)())
    try:
        assert await asyncio.to_thread(entered.wait, 5)
        yield
    finally:
        release.set()
        await holding


async def test_a_page_reading_on_is_sent_everything_while_the_database_thread_is_busy(
    connect: Connect, fake_upstream: FakeUpstream, user: Any
) -> None:
    # Three windows of text: the page's echoes of the pings must be read to send it all.
    pieces = ["x" * 1_000] * (3 * WINDOW // 1_000)
    fake_upstream.script(stream(*completion(pieces)))
    chat = await connect(user)
    await chat.send("long")
    frames = await chat.receive_until("delta")  # the turn's own database work is done
    async with database_thread_busy():
        while len(rebuild(frames)) < 3 * WINDOW:
            frames.append(await chat.receive(timeout=5))  # echoes each ping, as the page does
    assert rebuild(frames) == "".join(pieces)
