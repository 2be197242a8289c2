"""What a socket forwards: every character of an answer once, in order, in as few frames as fit."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from chat.consumers import ChatConsumer
from chat.models import Message, Owner
from chat.protocol import coalesce

MESSAGE = str(uuid.uuid4())
CONVERSATION = uuid.uuid4()


def delta(index: int, text: str, message: str = MESSAGE) -> dict[str, Any]:
    return {"type": "delta", "message": message, "index": index, "text": text}


@pytest.fixture
def socket() -> ChatConsumer:
    """A consumer that has shown the first 5 characters of MESSAGE, recording what it sends."""
    consumer = ChatConsumer()
    consumer.owner = Owner(user_id=1)
    consumer.watching = CONVERSATION
    consumer.positions = {MESSAGE: 5, MESSAGE + ":r": 0}
    consumer.finished = set()
    consumer.sent = []  # type: ignore[attr-defined]

    async def record(frame: Any) -> None:
        consumer.sent.append(frame)  # type: ignore[attr-defined]

    consumer.send_frame = record  # type: ignore[method-assign]
    return consumer


async def test_text_the_socket_already_has_is_dropped(socket: ChatConsumer) -> None:
    await socket.forward(delta(0, "Hello"))
    assert socket.sent == []  # type: ignore[attr-defined]


async def test_an_overlapping_delta_is_trimmed_to_the_new_part(socket: ChatConsumer) -> None:
    await socket.forward(delta(3, "lo, world"))
    assert socket.sent == [delta(5, ", world")]  # type: ignore[attr-defined]
    assert socket.positions[MESSAGE] == 12


async def test_the_next_delta_is_sent_as_it_is(socket: ChatConsumer) -> None:
    await socket.forward(delta(5, "!"))
    assert socket.sent == [delta(5, "!")]  # type: ignore[attr-defined]


async def test_deltas_of_a_message_not_shown_are_dropped(socket: ChatConsumer) -> None:
    await socket.forward(delta(0, "elsewhere", message=str(uuid.uuid4())))
    assert socket.sent == []  # type: ignore[attr-defined]


async def test_a_gap_is_filled_from_the_store_before_the_delta(
    socket: ChatConsumer, monkeypatch: Any
) -> None:
    async def load_message(owner: Owner, message_id: uuid.UUID) -> Any:
        return Message(
            id=message_id,
            conversation_id=CONVERSATION,
            role="assistant",
            status="complete",
            content="Hello, wor",
        )

    monkeypatch.setattr("chat.store.load_message", load_message)
    await socket.forward(delta(10, "ld"))
    assert socket.sent == [delta(5, ", wor"), delta(10, "ld")]  # type: ignore[attr-defined]


async def test_done_for_an_answer_already_finished_is_dropped(socket: ChatConsumer) -> None:
    socket.finished.add(MESSAGE)
    await socket.forward(
        {"type": "done", "message": MESSAGE, "conversation": str(CONVERSATION), "length": 5}
    )
    assert socket.sent == []  # type: ignore[attr-defined]


def test_contiguous_deltas_are_merged() -> None:
    assert coalesce([delta(0, "a"), delta(1, "bc"), delta(3, "d")]) == [delta(0, "abcd")]


def test_deltas_that_do_not_follow_on_are_not_merged() -> None:
    other = str(uuid.uuid4())
    frames = [delta(0, "a"), delta(5, "b"), delta(6, "c", message=other)]
    assert coalesce(frames) == frames


def test_merging_stops_at_other_frames() -> None:
    done = {"type": "done", "message": MESSAGE}
    assert coalesce([delta(0, "a"), done, delta(1, "b")]) == [delta(0, "a"), done, delta(1, "b")]
