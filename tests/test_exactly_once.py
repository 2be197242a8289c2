"""What a socket forwards: every character of an answer once, in order, in as few frames as fit."""

from __future__ import annotations

import uuid
from typing import Any

import orjson
import pytest

from chat.delivery import Delivery
from chat.protocol import coalesce

MESSAGE = str(uuid.uuid4())
CONVERSATION = uuid.uuid4()


def delta(index: int, text: str, message: str = MESSAGE) -> dict[str, Any]:
    return {"type": "delta", "message": message, "index": index, "text": text}


class Socket:
    """What a page is sent, and the text each answer has in its process."""

    def __init__(self) -> None:
        self.sent: list[Any] = []
        self.texts: dict[uuid.UUID, str] = {}

    async def send(self, text: str) -> None:
        self.sent.append(orjson.loads(text))

    async def text_of(self, message_id: uuid.UUID) -> str:
        return self.texts.get(message_id, "")


@pytest.fixture
def page() -> Socket:
    return Socket()


@pytest.fixture
def socket(page: Socket) -> Delivery:
    """A delivery that has shown the first 5 characters of MESSAGE, sending to ``page``."""
    delivery = Delivery(
        page.send, text_of=page.text_of, window=1 << 20, slow_timeout=1.0, frame_limit=1 << 18
    )
    delivery.shown = CONVERSATION
    delivery.positions = {MESSAGE: 5, MESSAGE + ":r": 0}
    return delivery


async def test_text_the_socket_already_has_is_dropped(socket: Delivery, page: Socket) -> None:
    await socket.forward(delta(0, "Hello"))
    assert page.sent == []


async def test_an_overlapping_delta_is_trimmed_to_the_new_part(
    socket: Delivery, page: Socket
) -> None:
    await socket.forward(delta(3, "lo, world"))
    assert page.sent == [delta(5, ", world")]
    assert socket.positions[MESSAGE] == 12


async def test_the_next_delta_is_sent_as_it_is(socket: Delivery, page: Socket) -> None:
    await socket.forward(delta(5, "!"))
    assert page.sent == [delta(5, "!")]


async def test_deltas_of_a_message_not_shown_are_dropped(socket: Delivery, page: Socket) -> None:
    await socket.forward(delta(0, "elsewhere", message=str(uuid.uuid4())))
    assert page.sent == []


async def test_a_gap_is_filled_from_the_answers_text_before_the_delta(
    socket: Delivery, page: Socket
) -> None:
    page.texts[uuid.UUID(MESSAGE)] = "Hello, wor"
    await socket.forward(delta(10, "ld"))
    assert page.sent == [delta(5, ", wor"), delta(10, "ld")]


async def test_done_for_an_answer_already_finished_is_dropped(
    socket: Delivery, page: Socket
) -> None:
    socket.finished.add(MESSAGE)
    await socket.forward(
        {"type": "done", "message": MESSAGE, "conversation": str(CONVERSATION), "length": 5}
    )
    assert page.sent == []


def test_contiguous_deltas_are_merged() -> None:
    assert coalesce([delta(0, "a"), delta(1, "bc"), delta(3, "d")]) == [delta(0, "abcd")]


def test_deltas_that_do_not_follow_on_are_not_merged() -> None:
    other = str(uuid.uuid4())
    frames = [delta(0, "a"), delta(5, "b"), delta(6, "c", message=other)]
    assert coalesce(frames) == frames


def test_merging_stops_at_other_frames() -> None:
    done = {"type": "done", "message": MESSAGE}
    assert coalesce([delta(0, "a"), done, delta(1, "b")]) == [delta(0, "a"), done, delta(1, "b")]
