"""A turn end to end: a socket sends, the fake upstream streams, frames arrive, rows are saved."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from chat import store
from chat.models import Conversation, Message
from tests.conftest import API_KEY, Connect, rebuild
from tests.fake_upstream import (
    HANG,
    FakeUpstream,
    Gate,
    chunk,
    completion,
    gated,
    paused,
    stream,
)

pytestmark = pytest.mark.django_db(transaction=True)


async def test_a_turn_streams_the_answer_and_saves_it(
    connect: Connect, fake_upstream: FakeUpstream, user: Any
) -> None:
    fake_upstream.script(stream(*completion(["Hel", "lo, ", "wörld", " 🌍!"])))
    chat = await connect(user)

    await chat.send("Say hello")
    frames = await chat.receive_until("done")

    kinds = [f["type"] for f in frames]
    assert kinds[:3] == ["conversation", "message", "message"]
    assert kinds[-1] == "done"
    conversation, question, answer = frames[0], frames[1]["message"], frames[2]["message"]
    assert question["role"] == "user" and question["content"] == "Say hello"
    assert answer["role"] == "assistant" and answer["status"] == "streaming"
    assert rebuild(frames) == "Hello, wörld 🌍!"
    done = frames[-1]
    assert done["status"] == "complete"
    assert done["finish_reason"] == "stop"
    assert done["usage"] == {
        "prompt_tokens": 5,
        "completion_tokens": 7,
        "total_tokens": 12,
        "estimated": False,
    }
    assert done["error"] is None
    stored = await Message.objects.aget(pk=answer["id"])
    assert stored.content == "Hello, wörld 🌍!"
    assert stored.status == "complete"
    assert stored.total_tokens == 12
    assert stored.time_to_first_token is not None and stored.duration is not None
    assert stored.upstream_request_id == "req-fake-1"
    assert await Conversation.objects.filter(
        pk=conversation["conversation"]["id"], owner=user
    ).aexists()


async def test_the_request_follows_the_openai_conventions(
    connect: Connect, fake_upstream: FakeUpstream, user: Any, settings: Any
) -> None:
    settings.CHAT_SYSTEM_PROMPT = "Be brief."
    settings.CHAT_COMPLETION_OPTIONS = {"temperature": 0.2}
    fake_upstream.script(stream(*completion(["One"])), stream(*completion(["Two"])))
    chat = await connect(user)
    await chat.send("first")
    frames = await chat.receive_until("done")
    conversation = frames[0]["conversation"]["id"]

    await chat.send("second", conversation=conversation)
    await chat.receive_until("done")

    request = fake_upstream.requests[1]
    assert request.method == "POST" and request.path == "/v1/chat/completions"
    assert request.headers["authorization"] == f"Bearer {API_KEY}"
    body = request.json
    assert body["model"] == "fake-model"
    assert body["stream"] is True
    assert body["stream_options"] == {"include_usage": True}
    assert body["temperature"] == 0.2
    assert body["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "first"},
        {"role": "assistant", "content": "One"},
        {"role": "user", "content": "second"},
    ]


async def test_the_first_delta_is_forwarded_before_the_upstream_finishes(
    connect: Connect, fake_upstream: FakeUpstream, user: Any
) -> None:
    release = asyncio.Event()
    fake_upstream.script(paused(["first"], release, ["second"]))
    chat = await connect(user)
    await chat.send("go")

    frames = await chat.receive_until("delta")
    assert frames[-1]["text"] == "first" and frames[-1]["index"] == 0

    release.set()
    frames = await chat.receive_until("done")
    assert rebuild(chat.frames) == "firstsecond"


async def test_the_answer_is_checkpointed_while_streaming_at_most_once_per_interval(
    connect: Connect, fake_upstream: FakeUpstream, user: Any, settings: Any, monkeypatch: Any
) -> None:
    settings.CHAT_CHECKPOINT_INTERVAL = 0.2
    saved: list[str] = []
    checkpointed = asyncio.Event()
    original = store.save_checkpoints

    async def recording_checkpoints(rows: list[store.Checkpoint]) -> None:
        await original(rows)
        saved.extend(text for _, text, _ in rows)
        checkpointed.set()

    monkeypatch.setattr(store, "save_checkpoints", recording_checkpoints)
    # 30 tokens in three bursts, each let out once the last is saved; then the upstream
    # goes quiet without finishing. Paced by the test, not by the clock.
    gates = [asyncio.Event(), asyncio.Event()]
    tokens = [f"{i} " for i in range(30)]
    fake_upstream.script(
        stream(
            chunk("", role="assistant"),
            *(chunk(t) for t in tokens[:10]),
            Gate(gates[0]),
            *(chunk(t) for t in tokens[10:20]),
            Gate(gates[1]),
            *(chunk(t) for t in tokens[20:]),
            HANG,
        )
    )
    chat = await connect(user)
    await chat.send("go")
    await chat.receive_until("message")
    message_id = (await chat.receive_until("message"))[-1]["message"]["id"]

    for burst, gate in enumerate([*gates, None], start=1):
        so_far = "".join(tokens[: 10 * burst])
        await chat.receive_text(so_far)
        while not saved or saved[-1] != so_far:  # the burst is saved whole at a next tick
            checkpointed.clear()
            await asyncio.wait_for(checkpointed.wait(), timeout=5)
        stored = await Message.objects.aget(pk=message_id)
        assert (stored.status, stored.content) == ("streaming", so_far)
        if gate is not None:
            gate.set()
    # About one write per interval, not one per token: a burst arrives within a tick or
    # two, so at most a few writes each, where one per token would be 30.
    assert len(saved) <= 9
    await chat.stop(message_id)
    await chat.receive_until("done")
    assert len(saved) == len(set(saved))  # an unchanged answer is not written again
    stored = await Message.objects.aget(pk=message_id)
    assert stored.content == "".join(tokens)


def sender_tasks() -> list[asyncio.Task[Any]]:
    return [t for t in asyncio.all_tasks() if t.get_name() == "chat-socket-sender" and not t.done()]


async def test_an_idle_socket_holds_no_task_of_its_own(
    connect: Connect, fake_upstream: FakeUpstream, user: Any
) -> None:
    # Thousands of open pages are idle: each costs memory, not a task waiting for frames.
    fake_upstream.script(stream(*completion(["Hello", " there"])))
    chat = await connect(user)
    assert sender_tasks() == []

    await chat.send("hi")
    await chat.receive_until("done")
    await chat.assert_silent()  # the last frames are out, and the page echoed every ping

    assert sender_tasks() == []
    assert rebuild(chat.frames) == "Hello there"


async def test_one_sender_serves_an_answer_from_its_first_frame_to_its_done(
    connect: Connect, fake_upstream: FakeUpstream, user: Any
) -> None:
    # Its next token is a moment away: the socket's sender waits for it instead of
    # ending and being started again for each token; once the answer is done, it ends.
    first, second = asyncio.Event(), asyncio.Event()
    fake_upstream.script(gated("Hello", first, " there", second, ","))
    chat = await connect(user)
    await chat.send("hi")
    await chat.receive_text("Hello")
    await chat.assert_silent()
    (sender,) = sender_tasks()

    first.set()
    await chat.receive_text("Hello there")
    await chat.assert_silent()
    assert sender_tasks() == [sender]

    second.set()
    await chat.receive_until("done")
    await chat.assert_silent()
    assert sender_tasks() == []
    assert rebuild(chat.frames) == "Hello there,"
