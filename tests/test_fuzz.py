"""Hostile frames: whatever a client sends, the socket answers clearly and keeps serving."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from chat.exceptions import ClientError
from chat.models import Message
from chat.protocol import Send, Stop, Watch, parse_client_frame
from tests.conftest import Connect, rebuild
from tests.fake_upstream import FakeUpstream, completion, stream

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=30),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=20,
)
frames = st.one_of(
    st.text(max_size=200),
    json_values.map(json.dumps),
    st.fixed_dictionaries(
        {"type": st.sampled_from(["send", "stop", "watch", "delta", "", "__class__"])},
        optional={"conversation": json_values, "message": json_values, "content": json_values},
    ).map(json.dumps),
)


@given(raw=frames)
@settings(max_examples=500, deadline=None)
def test_any_frame_parses_to_a_valid_frame_or_a_clear_error(raw: str) -> None:
    try:
        frame = parse_client_frame(raw, max_chars=1000)
    except ClientError as error:
        assert error.code and error.detail
    else:
        assert isinstance(frame, Send | Stop | Watch)
        if isinstance(frame, Send):
            assert frame.content.strip() and len(frame.content) <= 1000


def not_a_valid_send(raw: str) -> bool:
    try:
        return not isinstance(parse_client_frame(raw, max_chars=32_000), Send)
    except ClientError:
        return True


@pytest.mark.django_db(transaction=True)
@settings(max_examples=1, deadline=None, suppress_health_check=list(HealthCheck))
@given(batch=st.lists(frames.filter(bool).filter(not_a_valid_send), min_size=300, max_size=300))
async def test_a_flood_of_garbage_gets_errors_and_the_next_send_still_works(
    batch: list[str], connect: Connect, fake_upstream: FakeUpstream, user: Any, settings: Any
) -> None:
    settings.CHAT_FRAMES_PER_SECOND = 1000  # this is about parsing; the rate limit has its own test
    chat = await connect(user)
    for raw in batch:
        await chat.communicator.send_to(text_data=raw)
    for _ in batch:  # one clear error for each, in order, none lost
        answer = await chat.receive()
        assert answer["type"] == "error" and answer["code"] and answer["detail"]
    assert not await Message.objects.aexists()
    fake_upstream.script(stream(*completion(["still fine"])))
    await chat.send("a real question")
    assert rebuild(await chat.receive_until("done")) == "still fine"
