"""Watching a conversation: history, then live frames, exactly once, on every tab."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from chat import store
from chat.generation import Generation
from tests.conftest import ChatClient, Connect, rebuild
from tests.fake_upstream import FakeUpstream, completion, hanging, paused, stream

pytestmark = pytest.mark.django_db(transaction=True)


async def first_turn(chat: ChatClient) -> tuple[str, str]:
    """Send a message; return (conversation id, assistant message id)."""
    await chat.send("question")
    frames = await chat.receive_until("message")
    frames += await chat.receive_until("message")
    return frames[0]["conversation"]["id"], frames[-1]["message"]["id"]


async def test_watch_sends_the_history_with_sanitized_html(
    connect: Connect, fake_upstream: FakeUpstream, user: Any
) -> None:
    fake_upstream.script(stream(*completion(["**bold** <img src=x onerror=alert(1)>"])))
    chat = await connect(user)
    conversation, _ = await first_turn(chat)
    await chat.receive_until("done")
    reader = await connect(user)

    await reader.watch(conversation)

    history = await reader.receive()
    assert history["type"] == "history" and history["conversation"]["id"] == conversation
    question, answer = history["messages"]
    assert (question["role"], question["content"]) == ("user", "question")
    assert answer["status"] == "complete"
    assert "<strong>bold</strong>" in answer["html"]
    assert "<img" not in answer["html"] and "&lt;img" in answer["html"]  # shown, inert


async def test_a_tab_opened_mid_answer_gets_every_character_exactly_once(
    connect: Connect, fake_upstream: FakeUpstream, user: Any
) -> None:
    release = asyncio.Event()
    fake_upstream.script(paused(["Alpha ", "beta "], release, ["gamma ", "delta"]))
    first = await connect(user)
    conversation, _ = await first_turn(first)
    while rebuild(first.frames) != "Alpha beta ":
        await first.receive()
    second = await connect(user)

    await second.watch(conversation)
    history = await second.receive()
    release.set()
    frames = await second.receive_until("done")

    shown = history["messages"][1]["content"]
    assert shown == "Alpha beta "
    for frame in frames:
        if frame["type"] == "delta":
            assert frame["index"] == len(shown)
            shown += frame["text"]
    assert shown == "Alpha beta gamma delta"
    await first.receive_until("done")
    assert rebuild(first.frames) == "Alpha beta gamma delta"


async def test_a_stop_from_another_tab_stops_the_answer(
    connect: Connect, fake_upstream: FakeUpstream, user: Any
) -> None:
    fake_upstream.script(hanging("endless"))
    first = await connect(user)
    conversation, answer = await first_turn(first)
    second = await connect(user)
    await second.watch(conversation)
    await second.receive()

    await second.stop(answer)

    assert (await first.receive_until("done"))[-1]["status"] == "stopped"
    assert (await second.receive_until("done"))[-1]["status"] == "stopped"
    await asyncio.wait_for(fake_upstream.requests[0].client_closed.wait(), timeout=2)


async def test_a_turn_started_in_one_tab_appears_in_the_other(
    connect: Connect, fake_upstream: FakeUpstream, user: Any
) -> None:
    fake_upstream.script(stream(*completion(["one"])), stream(*completion(["two"])))
    first = await connect(user)
    conversation, _ = await first_turn(first)
    await first.receive_until("done")
    second = await connect(user)
    await second.watch(conversation)
    await second.receive()

    await first.send("again", conversation=conversation)

    frames = await second.receive_until("done")
    assert [f["message"]["content"] for f in frames if f["type"] == "message"] == ["again", ""]
    assert rebuild(frames) == "two"


async def test_closing_one_of_two_tabs_does_not_stop_the_answer(
    connect: Connect, fake_upstream: FakeUpstream, user: Any, settings: Any
) -> None:
    settings.CHAT_ON_DISCONNECT = "stop"  # even then, another tab still watches
    release = asyncio.Event()
    fake_upstream.script(paused(["still "], release, ["going"]))
    first = await connect(user)
    conversation, _ = await first_turn(first)
    second = await connect(user)
    await second.watch(conversation)
    await second.receive()

    await first.communicator.disconnect()
    release.set()

    frames = await second.receive_until("done")
    assert frames[-1]["status"] == "complete"
    assert not fake_upstream.requests[0].client_closed.is_set()


async def test_switching_conversations_stops_the_old_frames(
    connect: Connect, fake_upstream: FakeUpstream, user: Any
) -> None:
    release = asyncio.Event()
    fake_upstream.script(
        stream(*completion(["first"])),
        paused(["A"], release, ["B"]),
    )
    chat = await connect(user)
    old, _ = await first_turn(chat)
    await chat.receive_until("done")
    other = await connect(user)
    await other.send("second conversation")
    await other.receive_until("delta")

    await chat.watch(old)
    await chat.receive()  # the history
    release.set()
    await other.receive_until("done")

    await chat.assert_silent()


async def test_watchers_joining_at_any_moment_rebuild_the_answer_exactly(
    connect: Connect, fake_upstream: FakeUpstream, user: Any
) -> None:
    words = [f"w{i} " for i in range(300)]
    fake_upstream.script(stream(*completion(words, pace=0.002)))
    first = await connect(user)
    conversation, _ = await first_turn(first)
    watchers = []
    for joined_after in (1, 20, 60, 120, 200):
        while sum(f["type"] == "delta" for f in first.frames) < joined_after:
            await first.receive()
        watcher = await connect(user)
        await watcher.watch(conversation)
        watchers.append(watcher)

    for watcher in watchers:
        history = await watcher.receive()
        shown = history["messages"][1]["content"]
        for frame in await watcher.receive_until("done"):
            if frame["type"] == "delta":
                assert frame["index"] == len(shown), "a gap or a duplicate"
                shown += frame["text"]
        assert shown == "".join(words)


async def test_a_delta_published_while_the_history_is_read_is_not_shown_twice(
    connect: Connect, fake_upstream: FakeUpstream, user: Any, monkeypatch: Any
) -> None:
    release, published = asyncio.Event(), asyncio.Event()
    original_publish, original_load = Generation.publish, store.load_conversation

    async def publish(self: Generation, frame: Any) -> None:
        await original_publish(self, frame)
        if frame["type"] == "delta":
            published.set()

    async def load_while_a_delta_arrives(owner: Any, conversation_id: Any) -> Any:
        result = await original_load(owner, conversation_id)
        published.clear()
        release.set()  # the upstream sends "beta " now: after we joined, before the snapshot
        await published.wait()
        return result

    monkeypatch.setattr(Generation, "publish", publish)
    fake_upstream.script(paused(["Alpha "], release, ["beta "]))
    first = await connect(user)
    conversation, _ = await first_turn(first)
    await first.receive_until("delta")
    monkeypatch.setattr(store, "load_conversation", load_while_a_delta_arrives)
    second = await connect(user)

    await second.watch(conversation)

    history = await second.receive()
    assert history["messages"][1]["content"] == "Alpha beta "
    frames = await second.receive_until("done")
    assert [f for f in frames if f["type"] == "delta"] == []
