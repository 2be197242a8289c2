"""The API key never reaches a page, a stored row or a log line, whatever the upstream echoes.

An upstream (or a proxy before it) may echo the key in any text it sends: an
HTTP error body, an in-stream error, a header, a chunk's metadata. Every such
text is redacted by one function (``chat.text.redact``) before anything is
cut from it, so no piece of 8 characters of the key survives, wherever a cut falls.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from django.forms.models import model_to_dict
from hypothesis import given
from hypothesis import strategies as st

from chat.models import Conversation, Message
from chat.text import PIECE, redact
from tests.conftest import API_KEY, ChatClient, Connect
from tests.fake_upstream import (
    FakeUpstream,
    Reply,
    chunk,
    completion,
    event,
    json_error,
    stream,
)

pytestmark = pytest.mark.django_db(transaction=True)

PIECES = {API_KEY[i : i + PIECE] for i in range(len(API_KEY) - PIECE + 1)}


def leaks(text: str) -> list[str]:
    return sorted(piece for piece in PIECES if piece in text)


@given(
    before=st.text(max_size=40),
    after=st.text(max_size=40),
    start=st.integers(0, len(API_KEY) - PIECE),
    stop=st.integers(PIECE, len(API_KEY)),
)
def test_no_piece_of_a_secret_survives_redaction(
    before: str, after: str, start: int, stop: int
) -> None:
    echoed = before + API_KEY[start : max(stop, start + PIECE)] + after + API_KEY
    assert leaks(redact(echoed, [API_KEY])) == []


@given(st.text(max_size=200))
def test_text_without_a_secret_is_left_alone(text: str) -> None:
    if not leaks(text):
        assert redact(text, [API_KEY]) == text


@pytest.fixture
def logs(caplog: Any) -> Iterator[Any]:
    """Every record of every logger, the chat app's (which does not propagate) included."""
    caplog.set_level("DEBUG")
    chat_logger = logging.getLogger("chat")
    chat_logger.addHandler(caplog.handler)
    yield caplog
    chat_logger.removeHandler(caplog.handler)


@sync_to_async
def everything_stored() -> str:
    rows = [model_to_dict(m) for m in Message.objects.all()]
    rows += [model_to_dict(c) for c in Conversation.objects.all()]
    return json.dumps(rows, default=str)


async def run_turns(chat: ChatClient, count: int) -> None:
    conversation = None
    for _ in range(count):
        await chat.send("Tell me a secret", conversation)
        frames = await chat.receive_until("done")
        conversation = frames[-1]["conversation"]


def cut_everywhere(make: Any, limit: int) -> list[Reply]:
    """One reply per position at which cutting the text at ``limit`` splits the key."""
    return [make("x" * (limit - cut) + API_KEY + " and more") for cut in range(1, len(API_KEY))]


ERROR_PATHS = [
    pytest.param(
        lambda said: Reply(401, {"content-type": "text/plain"}, [said.encode()]),
        300,
        id="http-error-body-as-text",
    ),
    pytest.param(lambda said: json_error(401, said), 500, id="http-error-body-as-json"),
    pytest.param(lambda said: json_error(400, said), 500, id="http-4xx-body-as-json"),
    pytest.param(
        lambda said: stream(
            chunk("Partial", role="assistant"), event({"error": {"message": said}}, name="error")
        ),
        500,
        id="in-stream-error-event",
    ),
    pytest.param(
        lambda said: stream(
            chunk("Partial", role="assistant"), event({"error": {"message": said}})
        ),
        500,
        id="in-stream-error-chunk",
    ),
    pytest.param(
        lambda said: stream(
            *completion(["ok"]),
            headers={"content-type": "text/event-stream", "x-request-id": said[-250:]},
        ),
        200,
        id="request-id-header",
    ),
    pytest.param(
        lambda said: stream(
            chunk("ok", role="assistant"),
            event({"choices": [{"delta": {}, "finish_reason": "stop"}], "model": said}),
        ),
        200,
        id="chunk-model-name",
    ),
    pytest.param(
        lambda said: stream(
            chunk("ok", role="assistant"),
            chunk(refusal=said),
            chunk(tool_calls=[{"index": 0, "id": said[:40], "function": {"arguments": said}}]),
            chunk(finish_reason="stop"),
        ),
        200,
        id="refusal-and-tool-calls",
    ),
]


@pytest.mark.parametrize(("reply", "limit"), ERROR_PATHS)
async def test_the_key_cut_anywhere_reaches_no_frame_row_or_log(
    connect: Connect,
    fake_upstream: FakeUpstream,
    user: Any,
    settings: Any,
    logs: Any,
    reply: Any,
    limit: int,
) -> None:
    settings.CHAT_TURNS_PER_MINUTE = 1000
    settings.CHAT_MAX_RETRIES = 0
    replies = cut_everywhere(reply, limit)
    fake_upstream.script(*replies)
    chat = await connect(user)
    await run_turns(chat, len(replies))
    assert leaks(json.dumps(chat.frames)) == []
    assert leaks(await everything_stored()) == []
    assert leaks(logs.text) == []


async def test_a_key_in_a_title_is_redacted(
    connect: Connect, fake_upstream: FakeUpstream, user: Any, settings: Any
) -> None:
    from tests.fake_upstream import json_completion

    settings.CHAT_AUTO_TITLE = True
    fake_upstream.script(stream(*completion(["ok"])), json_completion(f"Title {API_KEY}"))
    chat = await connect(user)
    await chat.send("hi")
    await chat.receive_until("title")
    assert leaks(json.dumps(chat.frames)) == []
    assert leaks(await everything_stored()) == []


async def test_an_unexpected_failure_tells_the_user_nothing_of_its_cause(
    connect: Connect, fake_upstream: FakeUpstream, user: Any, logs: Any, monkeypatch: Any
) -> None:
    def explode(self: Any, payload: object) -> tuple[str, str]:
        raise RuntimeError(f"bug while handling a chunk sent with {API_KEY}")

    monkeypatch.setattr("chat.upstream.Answer.apply", explode)
    fake_upstream.script(stream(*completion(["ok"])))
    chat = await connect(user)
    await chat.send("hi")
    done = (await chat.receive_until("done"))[-1]
    assert done["error"]["code"] == "server_error"
    assert "RuntimeError" not in done["error"]["detail"]
    assert "RuntimeError: bug while handling a chunk" in logs.text  # the cause is logged
    assert leaks(logs.text) == [] and leaks(await everything_stored()) == []
