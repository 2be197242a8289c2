"""Nothing of one user's conversation ever reaches another user's socket, even in a race.

A socket that asks to watch a conversation is subscribed before the history
is read (so no frame is lost in between), but the owner is checked by that
same read: every frame of the conversation that arrives meanwhile, of any
kind, waits, and is dropped if the check fails.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest

from chat import store
from chat.fanout import hub
from chat.models import Owner
from chat.store import Transcript
from tests.conftest import ChatClient, Connect
from tests.fake_upstream import FakeUpstream, paused

pytestmark = pytest.mark.django_db(transaction=True)


async def first_turn(chat: ChatClient) -> tuple[str, str]:
    await chat.send("my secret question")
    frames = await chat.receive_until("message")
    frames += await chat.receive_until("message")
    return frames[0]["conversation"]["id"], frames[-1]["message"]["id"]


def frames_of(conversation: str, answer: str) -> list[dict[str, Any]]:
    """One frame of every kind a conversation's watchers are sent."""
    return [
        {"type": "title", "conversation": conversation, "title": "Alice's secret"},
        {
            "type": "message",
            "message": {"id": str(uuid.uuid4()), "conversation": conversation, "status": "done"},
        },
        {"type": "delta", "message": answer, "index": 0, "text": "Alice's "},
        {"type": "reasoning", "message": answer, "index": 0, "text": "thinking"},
        {"type": "html", "message": answer, "index": 0, "end": 8, "html": "<p>Alice's</p>"},
        {"type": "done", "message": answer, "conversation": conversation, "length": 8},
    ]


async def test_frames_sent_while_the_owner_is_checked_never_reach_another_user(
    connect: Connect, fake_upstream: FakeUpstream, user: Any, other_user: Any, monkeypatch: Any
) -> None:
    release = asyncio.Event()
    fake_upstream.script(paused(["Alice's "], release, ["answer."]))
    alice = await connect(user)
    conversation, answer = await first_turn(alice)
    await alice.receive_until("delta")
    load = store.load_conversation

    async def racing_load(owner: Owner, conversation_id: uuid.UUID) -> Transcript:
        # The race the red team won: the conversation's frames arrive during the check.
        for frame in frames_of(conversation, answer):
            await hub.publish(conversation_id, frame, remote=False)
        return await load(owner, conversation_id)

    monkeypatch.setattr(store, "load_conversation", racing_load)
    mallory = await connect(other_user)
    await mallory.watch(conversation)
    assert (await mallory.receive())["code"] == "not_found"
    release.set()  # and Alice's answer goes on to its end
    await alice.receive_until("done")
    await mallory.assert_silent()
    assert [f["type"] for f in mallory.frames] == ["error"]


async def test_a_socket_is_sent_no_frame_of_a_conversation_it_moved_away_from(
    connect: Connect, fake_upstream: FakeUpstream, user: Any
) -> None:
    release = asyncio.Event()
    fake_upstream.script(paused(["First "], release, ["answer."]))
    chat = await connect(user)
    first, answer = await first_turn(chat)
    await chat.receive_until("delta")
    await chat.watch(str(uuid.uuid4()))  # another conversation (not found): shows nothing now
    assert (await chat.receive())["code"] == "not_found"
    for frame in frames_of(first, answer):
        await hub.publish(uuid.UUID(first), frame, remote=False)
    release.set()
    await chat.assert_silent()
