"""Stop and disconnect: the upstream connection is closed at once and the partial answer kept."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from chat import store
from chat.fanout import hub
from chat.generation import Generation, registry
from chat.models import Message, Owner
from chat.upstream import UpstreamConfig
from tests.conftest import Connect
from tests.fake_upstream import FakeUpstream, completion, hanging, paused, stream

pytestmark = pytest.mark.django_db(transaction=True)

HANGING_ANSWER = hanging("Once upon", " a time")


async def start_hanging_answer(chat: Any) -> str:
    """Send a message; return the assistant message id once two deltas arrived."""
    answer_id = await chat.start_answer("Tell me a story")
    await chat.receive_text("Once upon a time")
    return answer_id


async def test_stop_closes_the_upstream_connection(
    connect: Connect, fake_upstream: FakeUpstream, user: Any
) -> None:
    fake_upstream.script(HANGING_ANSWER)
    chat = await connect(user)
    answer_id = await start_hanging_answer(chat)

    await chat.stop(answer_id)

    request = fake_upstream.requests[0]
    await asyncio.wait_for(request.client_closed.wait(), timeout=2)
    done = (await chat.receive_until("done"))[-1]
    assert done["status"] == "stopped" and done["error"] is None
    stored = await Message.objects.aget(pk=answer_id)
    assert (stored.status, stored.content) == ("stopped", "Once upon a time")


async def test_a_stopped_answer_is_part_of_the_next_turns_history(
    connect: Connect, fake_upstream: FakeUpstream, user: Any
) -> None:
    fake_upstream.script(HANGING_ANSWER, stream(*completion(["The end."])))
    chat = await connect(user)
    answer_id = await start_hanging_answer(chat)
    conversation = chat.frames[0]["conversation"]["id"]
    await chat.stop(answer_id)
    await chat.receive_until("done")

    await chat.send("Go on", conversation=conversation)
    await chat.receive_until("done")

    assert fake_upstream.requests[1].json["messages"][-2:] == [
        {"role": "assistant", "content": "Once upon a time"},
        {"role": "user", "content": "Go on"},
    ]


async def test_with_stop_on_disconnect_closing_the_page_closes_the_upstream(
    connect: Connect, fake_upstream: FakeUpstream, user: Any, settings: Any
) -> None:
    settings.CHAT_ON_DISCONNECT = "stop"
    fake_upstream.script(HANGING_ANSWER)
    chat = await connect(user)
    answer_id = await start_hanging_answer(chat)

    await chat.communicator.disconnect()

    await asyncio.wait_for(fake_upstream.requests[0].client_closed.wait(), timeout=2)
    stored = await wait_until_final(answer_id)
    assert (stored.status, stored.content) == ("stopped", "Once upon a time")
    assert stored.error_code == "client_disconnected"


async def test_by_default_an_answer_outlives_its_socket(
    connect: Connect, fake_upstream: FakeUpstream, user: Any
) -> None:
    release = asyncio.Event()
    fake_upstream.script(paused(["Once upon", " a time"], release, [", the end."]))
    chat = await connect(user)
    answer_id = await start_hanging_answer(chat)
    await chat.communicator.disconnect()
    release.set()

    stored = await wait_until_final(answer_id)
    assert (stored.status, stored.content) == ("complete", "Once upon a time, the end.")


async def test_another_users_answer_cannot_be_stopped(
    connect: Connect, fake_upstream: FakeUpstream, user: Any, other_user: Any
) -> None:
    fake_upstream.script(HANGING_ANSWER)
    chat = await connect(user)
    answer_id = await start_hanging_answer(chat)
    intruder = await connect(other_user)

    await intruder.stop(answer_id)

    assert await intruder.receive() == {
        "type": "error",
        "code": "not_found",
        "detail": "No such message.",
    }
    assert not fake_upstream.requests[0].client_closed.is_set()
    await chat.stop(answer_id)
    assert (await chat.receive_until("done"))[-1]["status"] == "stopped"


async def test_stopping_a_finished_answer_says_so(
    connect: Connect, fake_upstream: FakeUpstream, user: Any
) -> None:
    fake_upstream.script(stream(*completion(["Done"])))
    chat = await connect(user)
    await chat.send("hi")
    done = (await chat.receive_until("done"))[-1]

    await chat.stop(done["message"])

    assert (await chat.receive())["code"] == "not_running"


async def wait_until_final(message_id: str) -> Message:
    """The generation runs on after the socket is gone: wait for its task to end."""
    async with asyncio.timeout(5):
        while registry.tasks:
            await asyncio.wait(registry.tasks)
    return await Message.objects.aget(pk=message_id)


class Watcher:
    """A bare watcher of a conversation: keeps the frames it is given."""

    def __init__(self) -> None:
        self.frames: list[Any] = []

    def deliver(self, frame: Any) -> None:
        self.frames.append(frame)


async def test_an_answer_stopped_before_it_starts_is_saved_and_announced_as_stopped(
    fake_upstream: FakeUpstream, user: Any
) -> None:
    owner = Owner(user_id=user.pk)
    turn = await store.start_turn(owner, None, "never mind", model="fake-model", system_prompt="")
    generation = Generation(
        message_id=turn.assistant_message.id,
        conversation_id=turn.conversation.id,
        owner_key=owner.key,
        history=turn.history,
        config=UpstreamConfig.from_settings(),
    )
    watcher = Watcher()
    await hub.subscribe(turn.conversation.id, watcher)

    generation.stop()
    await generation.run()

    await hub.unsubscribe(turn.conversation.id, watcher)
    assert [(f["type"], f["status"]) for f in watcher.frames] == [("done", "stopped")]
    stored = await Message.objects.aget(pk=turn.assistant_message.id)
    assert (stored.status, stored.content) == ("stopped", "")
    assert fake_upstream.requests == []  # the upstream was never asked
