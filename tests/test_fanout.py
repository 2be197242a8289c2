"""Frames for other processes: an answer never waits for the channel layer (Redis).

Publishing queues the frame; sender tasks send each conversation's frames in
order, one send at a time per conversation, and merge the deltas that piled
up while a send was slow. Watchers in this process get every frame at once.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest

from chat import fanout
from chat.fanout import Frame, Hub, group_name


class SlowLayer:
    """A channel layer whose frames to the given groups wait until the test opens them."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, dict[str, Any]]] = []
        self.gates: dict[str, asyncio.Event] = {}
        self.arrived = asyncio.Event()  # set on every message sent
        self.held = asyncio.Event()  # set when a frame waits at a closed gate
        self.failures = 0  # this many sends of frames of ``failing`` type fail, then work
        self.failing = "delta"

    async def new_channel(self, prefix: str) -> str:
        return prefix + "test"

    async def receive(self, channel: str) -> dict[str, Any]:
        await asyncio.Event().wait()  # nothing ever comes from other processes here
        raise AssertionError("unreachable")

    async def group_add(self, group: str, channel: str) -> None:
        pass

    async def group_send(self, group: str, message: dict[str, Any]) -> None:
        if group in self.gates and message["type"] == "chat.frame":
            self.held.set()
            await self.gates[group].wait()
        if self.failures and message.get("frame", {}).get("type") == self.failing:
            self.failures -= 1
            raise ConnectionError("Redis is restarting")
        self.sent.append((group, message))
        self.arrived.set()

    def frames_to(self, conversation: uuid.UUID) -> list[Frame]:
        group = group_name(conversation)
        return [m["frame"] for g, m in self.sent if g == group and m["type"] == "chat.frame"]


class Watcher:
    def __init__(self) -> None:
        self.frames: list[Frame] = []

    def deliver(self, frame: Frame) -> None:
        self.frames.append(frame)


def delta(index: int, text: str, message: str = "m1") -> Frame:
    return {"type": "delta", "message": message, "index": index, "text": text}


async def all_sent(hub: Hub) -> None:
    """Wait (at most a second) until every queued frame was sent to the channel layer."""
    remote = await hub.remote()
    assert remote is not None
    async with asyncio.timeout(1):
        await remote.flushed()


@pytest.fixture
async def layer(monkeypatch: pytest.MonkeyPatch) -> SlowLayer:
    slow = SlowLayer()
    monkeypatch.setattr(fanout, "get_channel_layer", lambda: slow)
    return slow


@pytest.fixture
async def hub(layer: SlowLayer) -> AsyncIterator[Hub]:
    hub = Hub()
    yield hub
    for gate in layer.gates.values():
        gate.set()
    await hub.close()


async def test_a_stuck_channel_layer_never_holds_up_the_answer_or_its_local_watchers(
    hub: Hub, layer: SlowLayer
) -> None:
    conversation = uuid.uuid4()
    layer.gates[group_name(conversation)] = asyncio.Event()
    here = Watcher()
    await hub.subscribe(conversation, here)

    async with asyncio.timeout(1):  # Redis is stuck: publishing must not be
        for index, text in [(0, "Hel"), (3, "lo"), (5, ", "), (7, "world")]:
            await hub.publish(conversation, delta(index, text))

    assert [f["text"] for f in here.frames] == ["Hel", "lo", ", ", "world"]
    assert layer.frames_to(conversation) == []


async def test_what_piles_up_during_a_slow_send_goes_out_merged_and_in_order(
    hub: Hub, layer: SlowLayer
) -> None:
    conversation = uuid.uuid4()
    gate = layer.gates[group_name(conversation)] = asyncio.Event()
    await hub.publish(conversation, delta(0, "Hel"))
    await asyncio.wait_for(layer.held.wait(), 1)  # the first frame's send waits at the gate
    for index, text in [(3, "lo"), (5, ", "), (7, "world")]:
        await hub.publish(conversation, delta(index, text))
    done = {"type": "done", "message": "m1", "conversation": str(conversation), "length": 12}
    await hub.publish(conversation, done)

    gate.set()
    await all_sent(hub)

    assert layer.frames_to(conversation) == [delta(0, "Hel"), delta(3, "lo, world"), done]


async def test_one_slow_conversation_does_not_hold_up_another(hub: Hub, layer: SlowLayer) -> None:
    slow, fast = uuid.uuid4(), uuid.uuid4()
    gate = layer.gates[group_name(slow)] = asyncio.Event()
    await hub.publish(slow, delta(0, "waiting", "s"))
    await hub.publish(fast, delta(0, "through", "f"))

    async with asyncio.timeout(1):
        while not layer.frames_to(fast):
            layer.arrived.clear()
            await layer.arrived.wait()
    assert layer.frames_to(slow) == []
    gate.set()
    await all_sent(hub)
    assert layer.frames_to(slow) == [delta(0, "waiting", "s")]


async def test_closing_sends_what_is_still_queued(hub: Hub, layer: SlowLayer) -> None:
    conversation = uuid.uuid4()
    for index, text in [(0, "interrupted "), (12, "here")]:
        await hub.publish(conversation, delta(index, text))

    await hub.close()

    assert layer.frames_to(conversation) == [delta(0, "interrupted here")]


async def test_a_new_answer_is_announced_to_other_processes_before_it_starts(
    hub: Hub, layer: SlowLayer
) -> None:
    # So that a process watching the conversation asks for the deltas in time.
    conversation = uuid.uuid4()
    gate = layer.gates[group_name(conversation)] = asyncio.Event()
    message = {"type": "message", "message": {"id": "m1", "status": "streaming"}}
    announcing = asyncio.create_task(hub.publish(conversation, message))
    async with asyncio.timeout(1):
        await layer.held.wait()
    assert not announcing.done()

    gate.set()
    async with asyncio.timeout(1):
        await announcing
    assert layer.frames_to(conversation) == [message]


async def test_a_send_that_fails_is_retried_so_nothing_is_lost_or_doubled(
    hub: Hub, layer: SlowLayer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(fanout, "RETRY_DELAYS", (0, 0, 0))
    conversation = uuid.uuid4()
    gate = layer.gates[group_name(conversation)] = asyncio.Event()
    await hub.publish(conversation, delta(0, "Hel"))
    async with asyncio.timeout(1):
        await layer.held.wait()
    await hub.publish(conversation, delta(3, "lo"))
    done = {"type": "done", "message": "m1", "conversation": str(conversation), "length": 5}
    await hub.publish(conversation, done)
    # "lo" goes out, then the first try and two retries of ``done`` fail, the third works.
    layer.failing, layer.failures = "done", 3

    gate.set()
    await all_sent(hub)

    assert layer.frames_to(conversation) == [delta(0, "Hel"), delta(3, "lo"), done]


async def test_after_the_retries_the_batch_is_dropped_and_later_frames_still_go(
    hub: Hub, layer: SlowLayer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(fanout, "RETRY_DELAYS", (0,))
    conversation = uuid.uuid4()
    layer.failures = 2
    await hub.publish(conversation, delta(0, "lost"))
    await all_sent(hub)
    await hub.publish(conversation, delta(4, " found"))
    await all_sent(hub)

    assert layer.frames_to(conversation) == [delta(4, " found")]
