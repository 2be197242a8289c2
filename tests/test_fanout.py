"""Frames for other processes: only to those that watch, never back, and never waited for.

An answer's frames go to the channels of the processes that said they have
watchers of its conversation, and to no other; what piles up for one process
during a slow send goes out as one message, in order. Publishing only queues:
watchers in this process get every frame at once, whatever the channel layer
does. A new turn's messages, titles and the ends of answers whose process died
go to the conversation's whole group.
"""

from __future__ import annotations

import asyncio
import os
import socket
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from channels.exceptions import ChannelFull

from chat import fanout
from chat.fanout import Frame, Hub, Remote, group_name

OTHER = "chat.process.other!1"  # another process's channel
THIRD = "chat.process.third!1"


class SlowLayer:
    """A channel layer whose sends to the given destinations wait until the test opens them."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, dict[str, Any]]] = []
        self.gates: dict[str, asyncio.Event] = {}
        self.arrived = asyncio.Event()  # set on every message sent
        self.held = asyncio.Event()  # set when a message waits at a closed gate
        self.failures = 0  # this many sends of batches holding a ``failing`` frame fail
        self.failing = "delta"
        self.full: set[str] = set()  # channels that refuse messages (ChannelFull)

    async def new_channel(self, prefix: str) -> str:
        return prefix + "test!1"

    async def receive(self, channel: str) -> dict[str, Any]:
        await asyncio.Event().wait()  # nothing ever comes from other processes here
        raise AssertionError("unreachable")

    async def group_add(self, group: str, channel: str) -> None:
        pass

    async def group_discard(self, group: str, channel: str) -> None:
        pass

    async def group_send(self, group: str, message: dict[str, Any]) -> None:
        await self.send(group, message)

    async def send(self, name: str, message: dict[str, Any]) -> None:
        if name in self.gates and message["type"] == "chat.frames":
            self.held.set()
            await self.gates[name].wait()
        if name in self.full:
            raise ChannelFull
        kinds = {f["type"] for _, frames in message.get("frames", []) for f in frames}
        if self.failures and self.failing in kinds:
            self.failures -= 1
            raise ConnectionError("Redis is restarting")
        self.sent.append((name, message))
        self.arrived.set()

    def messages_to(self, name: str) -> list[dict[str, Any]]:
        return [m for n, m in self.sent if n == name and m["type"] == "chat.frames"]

    def frames_to(self, name: str, conversation: uuid.UUID) -> list[Frame]:
        return [
            frame
            for message in self.messages_to(name)
            for sent_conversation, frames in message["frames"]
            if sent_conversation == str(conversation)
            for frame in frames
        ]


class Watcher:
    def __init__(self) -> None:
        self.frames: list[Frame] = []

    def deliver(self, frame: Frame) -> None:
        self.frames.append(frame)


def delta(index: int, text: str, message: str = "m1") -> Frame:
    return {"type": "delta", "message": message, "index": index, "text": text}


async def link(hub: Hub) -> Remote:
    remote = await hub.remote()
    assert remote is not None
    return remote


async def all_sent(hub: Hub) -> None:
    """Wait (at most a second) until every queued frame was sent to the channel layer."""
    async with asyncio.timeout(1):
        await (await link(hub)).flushed()


async def watched_from(hub: Hub, conversation: uuid.UUID, channel: str = OTHER) -> None:
    """Another process says it has watchers of the conversation (as Redis would bring it)."""
    interest = {"type": "chat.interest", "origin": channel, "conversation": str(conversation)}
    await (await link(hub)).dispatch({**interest, "channel": channel})


@pytest.fixture
async def layer() -> SlowLayer:
    return SlowLayer()


@pytest.fixture
async def hub(layer: SlowLayer) -> AsyncIterator[Hub]:
    hub = Hub(layer)
    yield hub
    for gate in layer.gates.values():
        gate.set()
    await hub.close()


async def test_an_answer_nobody_else_watches_sends_nothing_to_other_processes(
    hub: Hub, layer: SlowLayer
) -> None:
    conversation = uuid.uuid4()
    await hub.hold(conversation)
    await hub.publish(conversation, delta(0, "Hello"))
    await all_sent(hub)

    assert [m for _, m in layer.sent if m["type"] == "chat.frames"] == []


async def test_frames_go_only_to_the_processes_that_watch_and_stop_when_they_leave(
    hub: Hub, layer: SlowLayer
) -> None:
    conversation, elsewhere = uuid.uuid4(), uuid.uuid4()
    await hub.hold(conversation)
    await watched_from(hub, conversation, OTHER)
    await watched_from(hub, elsewhere, THIRD)  # watches another conversation only

    await hub.publish(conversation, delta(0, "Hel"))
    await all_sent(hub)
    uninterest = {"type": "chat.uninterest", "origin": OTHER, "conversation": str(conversation)}
    await (await link(hub)).dispatch({**uninterest, "channel": OTHER})
    await hub.publish(conversation, delta(3, "lo"))
    await all_sent(hub)

    assert layer.frames_to(OTHER, conversation) == [delta(0, "Hel")]
    assert layer.messages_to(THIRD) == []
    assert layer.messages_to(group_name(conversation)) == []  # never back to this process


async def test_a_stuck_channel_layer_never_holds_up_the_answer_or_its_local_watchers(
    hub: Hub, layer: SlowLayer
) -> None:
    conversation = uuid.uuid4()
    layer.gates[OTHER] = asyncio.Event()
    here = Watcher()
    await hub.subscribe(conversation, here)
    await watched_from(hub, conversation)

    async with asyncio.timeout(1):  # Redis is stuck: publishing must not be
        for index, text in [(0, "Hel"), (3, "lo"), (5, ", "), (7, "world")]:
            await hub.publish(conversation, delta(index, text))

    assert [f["text"] for f in here.frames] == ["Hel", "lo", ", ", "world"]
    assert layer.messages_to(OTHER) == []


async def test_what_piles_up_during_a_slow_send_goes_out_as_one_message_in_order(
    hub: Hub, layer: SlowLayer
) -> None:
    first, second = uuid.uuid4(), uuid.uuid4()
    for conversation in (first, second):
        await watched_from(hub, conversation)
    gate = layer.gates[OTHER] = asyncio.Event()
    await hub.publish(first, delta(0, "Hel"))
    await asyncio.wait_for(layer.held.wait(), 1)  # the first frame's send waits at the gate
    for index, text in [(3, "lo"), (5, ", "), (7, "world")]:
        await hub.publish(first, delta(index, text))
        await hub.publish(second, delta(index - 3, text, "m2"))
    done = {"type": "done", "message": "m1", "conversation": str(first), "length": 12}
    await hub.publish(first, done)

    gate.set()
    await all_sent(hub)

    assert len(layer.messages_to(OTHER)) == 2
    assert layer.frames_to(OTHER, first) == [delta(0, "Hel"), delta(3, "lo, world"), done]
    assert layer.frames_to(OTHER, second) == [delta(0, "lo, world", "m2")]


async def test_one_slow_process_does_not_hold_up_another(hub: Hub, layer: SlowLayer) -> None:
    conversation = uuid.uuid4()
    await watched_from(hub, conversation, OTHER)
    await watched_from(hub, conversation, THIRD)
    gate = layer.gates[OTHER] = asyncio.Event()
    await hub.publish(conversation, delta(0, "through"))

    async with asyncio.timeout(1):
        while not layer.messages_to(THIRD):
            layer.arrived.clear()
            await layer.arrived.wait()
    assert layer.messages_to(OTHER) == []
    gate.set()
    await all_sent(hub)
    assert layer.frames_to(OTHER, conversation) == [delta(0, "through")]


async def test_closing_sends_what_is_still_queued(hub: Hub, layer: SlowLayer) -> None:
    conversation = uuid.uuid4()
    await watched_from(hub, conversation)
    for index, text in [(0, "interrupted "), (12, "here")]:
        await hub.publish(conversation, delta(index, text))

    await hub.close()

    assert layer.frames_to(OTHER, conversation) == [delta(0, "interrupted here")]


async def test_a_new_answer_is_announced_to_the_whole_group_before_it_starts(
    hub: Hub, layer: SlowLayer
) -> None:
    # So that a process watching the conversation says so before the first delta.
    conversation = uuid.uuid4()
    group = group_name(conversation)
    gate = layer.gates[group] = asyncio.Event()
    message = {"type": "message", "message": {"id": "m1", "status": "streaming"}}
    announcing = asyncio.create_task(hub.announce(conversation, message))
    async with asyncio.timeout(1):
        await layer.held.wait()
    assert not announcing.done()

    gate.set()
    async with asyncio.timeout(1):
        await announcing
    assert layer.frames_to(group, conversation) == [message]


async def test_a_send_that_fails_is_retried_so_nothing_is_lost_or_doubled(
    hub: Hub, layer: SlowLayer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(fanout, "RETRY_DELAYS", (0, 0, 0))
    conversation = uuid.uuid4()
    await watched_from(hub, conversation)
    gate = layer.gates[OTHER] = asyncio.Event()
    await hub.publish(conversation, delta(0, "Hel"))
    async with asyncio.timeout(1):
        await layer.held.wait()
    await hub.publish(conversation, delta(3, "lo"))
    done = {"type": "done", "message": "m1", "conversation": str(conversation), "length": 5}
    await hub.publish(conversation, done)
    # The first try and two retries of the second batch fail, the third works.
    layer.failing, layer.failures = "done", 3

    gate.set()
    await all_sent(hub)

    assert layer.frames_to(OTHER, conversation) == [delta(0, "Hel"), delta(3, "lo"), done]


async def test_after_the_retries_the_batch_is_dropped_and_later_frames_still_go(
    hub: Hub, layer: SlowLayer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(fanout, "RETRY_DELAYS", (0,))
    conversation = uuid.uuid4()
    await watched_from(hub, conversation)
    layer.failures = 2
    await hub.publish(conversation, delta(0, "lost"))
    await all_sent(hub)
    await hub.publish(conversation, delta(4, " found"))
    await all_sent(hub)

    assert layer.frames_to(OTHER, conversation) == [delta(4, " found")]


async def test_a_process_whose_channel_is_full_is_sent_nothing_until_it_watches_again(
    hub: Hub, layer: SlowLayer
) -> None:
    # A dead process's channel fills up (and its messages expire): stop paying for it.
    conversation = uuid.uuid4()
    await watched_from(hub, conversation)
    layer.full.add(OTHER)
    await hub.publish(conversation, delta(0, "to a dead process"))
    await all_sent(hub)
    layer.full.clear()
    await hub.publish(conversation, delta(17, " still"))
    await all_sent(hub)
    await watched_from(hub, conversation)
    await hub.publish(conversation, delta(23, " back"))
    await all_sent(hub)

    assert layer.frames_to(OTHER, conversation) == [delta(23, " back")]


# Two processes on a real Redis ------------------------------------------------------

REDIS = os.environ.get("CHAT_TEST_REDIS", "redis://127.0.0.1:6379/0")


def redis_reachable() -> bool:
    with socket.socket() as probe:
        probe.settimeout(1)
        return probe.connect_ex(("127.0.0.1", 6379)) == 0


class CountingLayer:
    """A real channels_redis layer that counts the frames each process receives."""

    def __init__(self, prefix: str) -> None:
        from channels_redis.core import RedisChannelLayer

        self.layer = RedisChannelLayer(hosts=[REDIS], prefix=prefix)
        self.received: list[dict[str, Any]] = []
        self.frames = asyncio.Event()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.layer, name)

    async def receive(self, channel: str) -> dict[str, Any]:
        message: dict[str, Any] = await self.layer.receive(channel)
        self.received.append(message)
        self.frames.set()
        return message


@pytest.fixture
async def pair() -> AsyncIterator[tuple[Hub, CountingLayer, Hub, CountingLayer]]:
    if not redis_reachable():
        pytest.skip("needs Redis on 127.0.0.1:6379")
    prefix = f"chat-test-{uuid.uuid4().hex[:8]}"
    layers = CountingLayer(prefix), CountingLayer(prefix)
    hubs = Hub(layers[0]), Hub(layers[1])
    for hub in hubs:
        await hub.remote()
    yield hubs[0], layers[0], hubs[1], layers[1]
    for hub in hubs:
        await hub.close()
    await layers[0].layer.flush()


async def received_frames(layer: CountingLayer, count: int) -> list[Frame]:
    """The frames ``layer``'s process received, once there are ``count`` (at most 5 s)."""

    def frames() -> list[Frame]:
        batches = [m["frames"] for m in layer.received if m["type"] == "chat.frames"]
        return [frame for batch in batches for _, frames in batch for frame in frames]

    async with asyncio.timeout(5):
        while len(frames()) < count:
            layer.frames.clear()
            await layer.frames.wait()
    return frames()


@pytest.mark.integration
async def test_on_redis_a_watcher_elsewhere_gets_the_frames_and_the_sender_never_gets_its_own(
    pair: tuple[Hub, CountingLayer, Hub, CountingLayer],
) -> None:
    runner, runner_layer, watching, watching_layer = pair
    conversation = uuid.uuid4()
    here, there = Watcher(), Watcher()
    await runner.subscribe(conversation, here)  # the page that asked
    await runner.hold(conversation)
    await watching.subscribe(conversation, there)  # another tab, on the other process
    async with asyncio.timeout(5):
        while not (await link(runner)).interested.get(conversation):
            runner_layer.frames.clear()
            await runner_layer.frames.wait()

    for index, text in [(0, "Hel"), (3, "lo")]:
        await runner.publish(conversation, delta(index, text))
    await received_frames(watching_layer, 1)
    async with asyncio.timeout(5):
        while "".join(f["text"] for f in there.frames) != "Hello":
            watching_layer.frames.clear()
            await watching_layer.frames.wait()

    assert "".join(f["text"] for f in here.frames) == "Hello"
    assert [m for m in runner_layer.received if m["type"] == "chat.frames"] == []
