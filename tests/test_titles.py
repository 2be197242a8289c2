"""Auto titles: a short title from the model after the first exchange, never at a cost."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from chat.generation import registry
from chat.models import Conversation, DailyUsage
from chat.titles import clean_title
from tests.conftest import ChatClient, Connect
from tests.fake_upstream import (
    FakeUpstream,
    Reply,
    completion,
    html_error,
    json_completion,
    stream,
)

pytestmark = pytest.mark.django_db(transaction=True)

QUESTION = "How do I keep basil alive on a windowsill in winter?"


@pytest.fixture(autouse=True)
def titles_on(settings: Any, fake_upstream: FakeUpstream) -> None:  # after its defaults
    settings.CHAT_AUTO_TITLE = True
    settings.CHAT_TITLE_TIMEOUT = 0.5


async def first_exchange(chat: ChatClient) -> tuple[str, list[dict[str, Any]]]:
    await chat.send(QUESTION)
    frames = await chat.receive_until("done")
    return frames[0]["conversation"]["id"], frames


async def settled() -> None:
    """Wait for the title task, which runs after the answer ended."""
    for task in list(registry.tasks):
        await task


async def test_the_first_exchange_gets_a_title_from_the_model(
    connect: Connect, fake_upstream: FakeUpstream, user: Any
) -> None:
    fake_upstream.script(
        stream(*completion(["Give it light and warmth."], usage=(20, 6))),
        json_completion('"Basil care in winter."', usage=(40, 5)),
    )
    chat = await connect(user)
    conversation, frames = await first_exchange(chat)
    assert frames[0]["conversation"]["title"] == "How do I keep basil alive on a…"

    title = await chat.receive()

    assert title == {"type": "title", "conversation": conversation, "title": "Basil care in winter"}
    assert (await Conversation.objects.aget(pk=conversation)).title == "Basil care in winter"
    request = fake_upstream.requests[1].json
    assert "stream" not in request and request["max_tokens"] == 24
    assert QUESTION in request["messages"][1]["content"]
    assert "Give it light and warmth." in request["messages"][1]["content"]
    day = await DailyUsage.objects.aget(user=user)
    assert (day.answers, day.prompt_tokens, day.completion_tokens) == (1, 60, 11)


async def test_later_exchanges_ask_for_no_title(
    connect: Connect, fake_upstream: FakeUpstream, user: Any
) -> None:
    fake_upstream.script(
        stream(*completion(["One."])), json_completion("Basil"), stream(*completion(["Two."]))
    )
    chat = await connect(user)
    conversation, _ = await first_exchange(chat)
    await chat.receive_until("title")

    await chat.send("And in summer?", conversation)
    await chat.receive_until("done")
    await settled()

    assert len(fake_upstream.requests) == 3


@pytest.mark.parametrize(
    "reply",
    [
        pytest.param(html_error(502), id="502"),
        # A good title, but past CHAT_TITLE_TIMEOUT: only the timeout keeps it out.
        pytest.param(dataclasses.replace(json_completion("Basil"), delay=2.0), id="too-slow"),
        pytest.param(
            Reply(200, {"content-type": "application/json"}, [b'{"choices": []}']),
            id="wrong-shape",
        ),
        pytest.param(stream(*completion(["not json"])), id="an-event-stream"),
    ],
)
async def test_a_failed_title_request_leaves_the_answer_and_the_first_words(
    connect: Connect, fake_upstream: FakeUpstream, user: Any, reply: Reply
) -> None:
    fake_upstream.script(stream(*completion(["Give it light."])), reply)
    chat = await connect(user)

    conversation, frames = await first_exchange(chat)
    await settled()

    assert frames[-1]["status"] == "complete"
    assert (await Conversation.objects.aget(pk=conversation)).title.startswith("How do I keep")
    await chat.assert_silent()  # no title frame


async def test_titles_can_be_turned_off(
    connect: Connect, fake_upstream: FakeUpstream, user: Any, settings: Any
) -> None:
    settings.CHAT_AUTO_TITLE = False
    fake_upstream.script(stream(*completion(["Give it light."])))
    chat = await connect(user)
    await first_exchange(chat)
    await settled()
    assert len(fake_upstream.requests) == 1


@pytest.mark.parametrize(
    ("raw", "title"),
    [
        ('"Basil care in winter."', "Basil care in winter"),
        ("Title: **Basil in Winter**\nExtra line", "Basil in Winter"),
        ("   \n  # Growing basil indoors!  ", "Growing basil indoors"),
        ("x" * 200, "x" * 79 + "…"),
    ],
)
def test_the_models_reply_is_cleaned_into_a_title(raw: str, title: str) -> None:
    assert clean_title(raw) == title
