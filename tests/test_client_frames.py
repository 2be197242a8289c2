"""Bad frames from a browser: a clear error, nothing stored wrongly, the socket keeps serving."""

from __future__ import annotations

import json
from typing import Any

import pytest

from chat.models import Conversation, Message
from tests.conftest import ChatClient, Connect, rebuild
from tests.fake_upstream import FakeUpstream, completion, hanging, stream

pytestmark = pytest.mark.django_db(transaction=True)


async def assert_still_serving(chat: ChatClient, fake_upstream: FakeUpstream) -> None:
    fake_upstream.script(stream(*completion(["still here"])))
    await chat.send("ping")
    frames = await chat.receive_until("done")
    assert rebuild(frames) == "still here"


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        pytest.param("not json", "invalid_json", id="invalid-json"),
        pytest.param("[1, 2]", "invalid_frame", id="not-an-object"),
        pytest.param('{"type": "dance"}', "unknown_type", id="unknown-type"),
        pytest.param('{"type": "__init__"}', "unknown_type", id="method-name-as-type"),
        pytest.param('{"content": "hi"}', "unknown_type", id="missing-type"),
        pytest.param('{"type": "send", "content": 42}', "invalid_frame", id="content-not-string"),
        pytest.param('{"type": "send", "content": "   "}', "empty_content", id="blank-content"),
        pytest.param(
            '{"type": "send", "conversation": "x", "content": "hi"}',
            "invalid_frame",
            id="conversation-not-uuid",
        ),
        pytest.param('{"type": "stop"}', "invalid_frame", id="stop-without-message"),
        pytest.param('{"type": "watch", "conversation": 7}', "invalid_frame", id="watch-number"),
        pytest.param('{"type": "pong", "nonce": null}', "invalid_frame", id="pong-without-nonce"),
        pytest.param("[" * 100_000 + "]" * 100_000, "too_large", id="deep-and-huge-json"),
        pytest.param('{"a":' * 5_000 + "1" + "}" * 5_000, "invalid_json", id="deep-json"),
        pytest.param(
            '{"type": "send", "content": "   ", "extra": {"x": [1, 2]}}',
            "empty_content",
            id="unknown-fields-do-not-matter",
        ),
    ],
)
async def test_a_malformed_frame_gets_a_clear_error(
    connect: Connect, fake_upstream: FakeUpstream, user: Any, frame: str, code: str
) -> None:
    chat = await connect(user)
    await chat.communicator.send_to(text_data=frame)
    error = await chat.receive()
    assert error["type"] == "error" and error["code"] == code and error["detail"]
    assert not await Message.objects.aexists()
    await assert_still_serving(chat, fake_upstream)


async def test_a_binary_frame_gets_a_clear_error(
    connect: Connect, fake_upstream: FakeUpstream, user: Any
) -> None:
    chat = await connect(user)
    await chat.communicator.send_to(bytes_data=b'{"type": "send"}')
    assert (await chat.receive())["code"] == "invalid_frame"
    await assert_still_serving(chat, fake_upstream)


async def test_an_oversized_message_is_refused_with_the_limit(
    connect: Connect, fake_upstream: FakeUpstream, user: Any, settings: Any
) -> None:
    settings.CHAT_MAX_MESSAGE_CHARS = 100
    chat = await connect(user)
    await chat.send("x" * 101)
    error = await chat.receive()
    assert error["code"] == "content_too_long" and "limit is 100" in error["detail"]
    await chat.communicator.send_to(text_data=json.dumps({"type": "send", "content": "y" * 10_000}))
    assert (await chat.receive())["code"] == "too_large"
    assert not await Message.objects.aexists()
    await assert_still_serving(chat, fake_upstream)


async def test_someone_elses_conversation_is_not_found(
    connect: Connect, fake_upstream: FakeUpstream, user: Any, other_user: Any
) -> None:
    fake_upstream.script(stream(*completion(["private"])))
    owner = await connect(user)
    await owner.send("my secret")
    conversation = (await owner.receive_until("done"))[0]["conversation"]["id"]
    intruder = await connect(other_user)

    await intruder.send("let me in", conversation=conversation)
    assert (await intruder.receive())["code"] == "not_found"
    await intruder.watch(conversation)
    assert (await intruder.receive())["code"] == "not_found"

    assert await Message.objects.filter(conversation_id=conversation).acount() == 2
    await intruder.assert_silent()
    await assert_still_serving(intruder, fake_upstream)


async def test_an_unknown_conversation_is_not_found(
    connect: Connect, fake_upstream: FakeUpstream, user: Any
) -> None:
    chat = await connect(user)
    await chat.send("hi", conversation="00000000-0000-0000-0000-000000000000")
    assert (await chat.receive())["code"] == "not_found"
    assert not await Conversation.objects.aexists()


async def test_a_second_send_while_an_answer_runs_is_refused(
    connect: Connect, fake_upstream: FakeUpstream, user: Any
) -> None:
    fake_upstream.script(hanging("working"))
    chat = await connect(user)
    await chat.send("first")
    frames = await chat.receive_until("delta")
    conversation = frames[0]["conversation"]["id"]
    answer = frames[2]["message"]["id"]

    await chat.send("second", conversation=conversation)

    error = await chat.receive()
    assert error["code"] == "busy"
    assert await Message.objects.filter(conversation_id=conversation).acount() == 2
    await chat.stop(answer)
    await chat.receive_until("done")
