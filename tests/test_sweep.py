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


async def test_a_watcher_whose_answer_ended_elsewhere_without_its_done_gets_it_from_the_store(
    user: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The answer's process sent ``done``, but Redis lost it after the retries.
    from chat import sweep
    from chat.fanout import Hub
    from tests.test_fanout import SlowLayer, Watcher

    monkeypatch.setattr(sweep, "RECOVER_AFTER", 0)
    watching = Hub(SlowLayer())
    await watching.remote()
    message = await orphan(user, age=0, text="Hello **world**")
    page = Watcher()
    await watching.subscribe(message.conversation_id, page)
    watching.expect(message.conversation_id, message.id)
    try:
        assert await sweep.recover_missed_ends(watching) == 0  # still running: nothing to do
        await Message.objects.filter(pk=message.pk).aupdate(
            status="complete", finish_reason="stop", prompt_tokens=3, completion_tokens=2,
            total_tokens=5,
        )  # fmt: skip

        assert await sweep.recover_missed_ends(watching) == 1
        assert await sweep.recover_missed_ends(watching) == 0  # once
    finally:
        await watching.close()

    (done,) = page.frames
    assert (done["type"], done["message"], done["status"]) == ("done", str(message.id), "complete")
    assert (done["length"], done["finish_reason"], done["error"]) == (15, "stop", None)
    assert done["usage"]["total_tokens"] == 5
    assert "<strong>world</strong>" in done["html"]
