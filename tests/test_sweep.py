"""Answers left streaming by a dead process are marked interrupted, keeping their text."""

from __future__ import annotations

import asyncio
import time
from datetime import timedelta
from typing import Any

import pytest
from django.utils import timezone

from chat import store
from chat.models import Conversation, Message
from chat.sweep import sweep_once
from tests.conftest import Connect, rebuild
from tests.fake_upstream import FakeUpstream, hanging

pytestmark = pytest.mark.django_db(transaction=True)


async def orphan(user: Any, *, age: float, text: str = "Half of it") -> Message:
    """A streaming answer whose row nobody touched for ``age`` seconds."""
    conversation = await Conversation.objects.acreate(owner=user, title="orphan")
    question = await Message.objects.acreate(conversation=conversation, role="user", content="q")
    message = await Message.objects.acreate(
        conversation=conversation,
        parent=question,
        role="assistant",
        status="streaming",
        content=text,
    )
    then = timezone.now() - timedelta(seconds=age)
    await Message.objects.filter(pk=message.pk).aupdate(updated_at=then)
    return message


async def test_an_old_streaming_answer_is_marked_interrupted_with_its_text(
    user: Any, settings: Any
) -> None:
    settings.CHAT_ORPHAN_AFTER = 30
    message = await orphan(user, age=60)

    assert await sweep_once() == 1

    stored = await Message.objects.aget(pk=message.pk)
    assert (stored.status, stored.content, stored.error_code) == (
        "interrupted",
        "Half of it",
        "interrupted",
    )


async def test_a_recently_touched_answer_is_left_alone(user: Any, settings: Any) -> None:
    settings.CHAT_ORPHAN_AFTER = 30
    message = await orphan(user, age=5)
    assert await sweep_once() == 0
    assert (await Message.objects.aget(pk=message.pk)).status == "streaming"


async def test_watchers_are_told_the_answer_was_interrupted(
    connect: Connect, user: Any, settings: Any
) -> None:
    settings.CHAT_ORPHAN_AFTER = 30
    message = await orphan(user, age=60)
    chat = await connect(user)
    await chat.watch(str(message.conversation_id))
    history = await chat.receive()
    assert history["messages"][1]["status"] == "streaming"

    await sweep_once()

    done = await chat.receive()
    assert (done["type"], done["status"], done["message"]) == (
        "done",
        "interrupted",
        str(message.pk),
    )
    assert "Half of it" in done["html"]


async def test_a_quiet_running_answer_keeps_its_row_fresh_for_other_processes(
    connect: Connect, fake_upstream: FakeUpstream, user: Any, settings: Any, monkeypatch: Any
) -> None:
    settings.CHAT_ORPHAN_AFTER = 0.3  # quieter than this, yet alive
    settings.CHAT_CHECKPOINT_INTERVAL = 0.05
    beats = asyncio.Event()
    original = store.save_checkpoints

    async def save(rows: list[store.Checkpoint]) -> None:
        await original(rows)
        beats.set()

    monkeypatch.setattr(store, "save_checkpoints", save)
    fake_upstream.script(hanging("thinking..."))
    chat = await connect(user)
    await chat.send("go")
    frames = await chat.receive_until("delta")
    answer = frames[2]["message"]["id"]
    # Twice the orphan age passes with a quiet upstream, the row kept fresh meanwhile.
    quiet_since = time.monotonic()
    while time.monotonic() - quiet_since < 0.6:
        beats.clear()
        await asyncio.wait_for(beats.wait(), 1)

    # Another process's sweep knows nothing of this process's running answers.
    assert await store.interrupt_orphans(older_than=0.3, running=[], detail="x") == []
    assert await sweep_once() == 0

    await chat.stop(answer)
    assert (await chat.receive_until("done"))[-1]["status"] == "stopped"
    assert rebuild(chat.frames) == "thinking..."
