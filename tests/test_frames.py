"""Every frame the server sends has the shape ``chat.protocol`` declares for its type.

The page and any client library rely on these shapes; each frame of a full
session (a new conversation, reasoning, rendered blocks, a title, the end, a
history, pings, parts, errors, and an answer the sweep ended) is checked
against its ``TypedDict``: every key present, no other, every value its type.
"""

from __future__ import annotations

import types
import typing
from datetime import timedelta
from typing import Any, Literal, get_args, get_origin, get_type_hints

import pytest
from django.utils import timezone

from chat import protocol
from chat.fanout import hub
from chat.models import Conversation, Message
from chat.sweep import sweep_once
from tests.conftest import Connect
from tests.fake_upstream import FakeUpstream, chunk, completion, json_completion, stream

pytestmark = pytest.mark.django_db(transaction=True)

BY_TYPE = {
    get_type_hints(frame)["type"].__args__[0]: frame for frame in get_args(protocol.ServerFrame)
}


def conforms(value: Any, expected: Any, where: str = "frame") -> list[str]:
    """What in ``value`` does not match the type ``expected`` (empty: it matches)."""
    origin = get_origin(expected)
    if expected is Any:
        return []
    if expected is type(None):
        return [] if value is None else [f"{where}: {value!r} is not None"]
    if origin is Literal:
        return [] if value in get_args(expected) else [f"{where}: {value!r} not in {expected}"]
    if origin in (typing.Union, types.UnionType):
        options = [conforms(value, option, where) for option in get_args(expected)]
        return [] if any(not o for o in options) else [f"{where}: {value!r} is not {expected}"]
    if origin is list:
        if not isinstance(value, list):
            return [f"{where}: {value!r} is not a list"]
        return [
            p
            for i, item in enumerate(value)
            for p in conforms(item, get_args(expected)[0], f"{where}[{i}]")
        ]
    if typing.is_typeddict(expected):
        if not isinstance(value, dict):
            return [f"{where}: {value!r} is not an object"]
        hints = get_type_hints(expected)
        problems = [f"{where}: missing {key!r}" for key in hints if key not in value]
        problems += [f"{where}: unexpected {key!r}" for key in value if key not in hints]
        for key, hint in hints.items():
            if key in value:
                problems += conforms(value[key], hint, f"{where}.{key}")
        return problems
    if expected is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
        return [] if ok else [f"{where}: {value!r} is not an int"]
    return [] if isinstance(value, expected) else [f"{where}: {value!r} is not {expected}"]


def check(frame: dict[str, Any]) -> list[str]:
    declared = BY_TYPE.get(frame["type"])
    if declared is None:
        return [f"no declared type for {frame['type']!r}"]
    return conforms(frame, declared, frame["type"])


async def test_every_frame_of_a_session_has_its_declared_shape(
    connect: Connect, fake_upstream: FakeUpstream, user: Any, settings: Any
) -> None:
    settings.CHAT_AUTO_TITLE = True
    settings.CHAT_SEND_WINDOW = 64  # pings, often
    settings.CHAT_MAX_FRAME_BYTES = 4096  # and parts
    answer = [
        "# Title\n\n",
        "Some *text*.\n\n",
        "```python\nx = 1\n```\n\n",
        "x" * 5000,
        "\n\nEnd.",
    ]
    fake_upstream.script(
        stream(
            chunk("", role="assistant"),
            chunk(reasoning_content="Thinking..."),
            *completion(answer)[1:],
        ),
        json_completion("A title"),
    )
    chat = await connect(user)
    await chat.send("hello")
    frames = await chat.receive_until("title")
    conversation = frames[0]["conversation"]["id"]
    settings.CHAT_SEND_WINDOW = 1 << 20  # a page that opens it later, in parts but unhurried
    reader = await connect(user)
    await reader.watch(conversation)
    frames += await reader.receive_until("history")
    await reader.send_json({"type": "stop", "message": frames[-1]["messages"][-1]["id"]})
    frames.append(await reader.receive())  # an error: that answer is not running
    frames = chat.frames + reader.frames
    kinds = {f["type"] for f in frames}
    assert {"conversation", "message", "delta", "reasoning", "html", "done", "title"} <= kinds
    assert {"history", "error", "ping"} <= kinds
    assert max(chat.largest, reader.largest) <= 4096
    problems = [p for frame in frames for p in check(frame)]
    assert problems == []


async def test_the_sweeps_done_has_the_declared_shape(user: Any) -> None:
    conversation = await Conversation.objects.acreate(owner=user, title="Orphan")
    orphan = await Message.objects.acreate(
        conversation=conversation, role="assistant", status="streaming", content="Half"
    )
    await Message.objects.filter(pk=orphan.pk).aupdate(
        updated_at=timezone.now() - timedelta(hours=1)
    )

    class Watcher:
        frames: list[Any] = []

        def deliver(self, frame: Any) -> None:
            self.frames.append(frame)

    watcher = Watcher()
    await hub.subscribe(conversation.id, watcher)
    try:
        assert await sweep_once() == 1
    finally:
        await hub.unsubscribe(conversation.id, watcher)
    (done,) = watcher.frames
    assert check(done) == []
    assert done["usage"]["estimated"] is True and done["usage"]["completion_tokens"] == 1
