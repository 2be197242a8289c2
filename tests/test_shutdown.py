"""Shutting down: running answers are saved as interrupted, the upstream is closed."""

from __future__ import annotations

import asyncio
import json
import signal
import sqlite3
from pathlib import Path
from typing import Any

import pytest
import websockets

from chat.lifespan import LifespanApp, shutdown
from chat.models import Message
from tests.conftest import Connect
from tests.fake_upstream import FakeUpstream, hanging, paused
from tests.servers import PASSWORD, USER, daphne, log_in, prepare_site

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.integration]


@pytest.fixture(autouse=True)
def running_again(monkeypatch: Any) -> None:
    """A test that shuts the process down leaves it running for the next test."""
    monkeypatch.setattr("chat.lifespan._shutting_down", False)


async def test_shutdown_without_draining_saves_running_answers_as_interrupted(
    connect: Connect, fake_upstream: FakeUpstream, user: Any, settings: Any
) -> None:
    settings.CHAT_DRAIN_TIMEOUT = 0
    fake_upstream.script(hanging("Half an", " answer"))
    chat = await connect(user)
    answer_id = await chat.start_answer("go")
    await chat.receive_text("Half an answer")

    await shutdown()

    done = (await chat.receive_until("done"))[-1]
    assert done["status"] == "interrupted"
    assert fake_upstream.requests[0].client_closed.is_set()
    stored = await Message.objects.aget(pk=answer_id)
    assert (stored.status, stored.content) == ("interrupted", "Half an answer")


async def test_a_draining_process_tells_its_pages_to_reconnect_and_finishes_its_answers(
    connect: Connect, fake_upstream: FakeUpstream, user: Any, settings: Any
) -> None:
    settings.CHAT_DRAIN_TIMEOUT = 30
    release = asyncio.Event()
    fake_upstream.script(paused(["Before the deploy. "], release, ["After it."]))
    chat = await connect(user)
    answer_id = await chat.start_answer("go")
    draining = asyncio.create_task(shutdown())
    closed = await chat.communicator.receive_output(timeout=5)
    while closed["type"] != "websocket.close":
        closed = await chat.communicator.receive_output(timeout=5)
    assert closed["code"] == 1012  # Service Restart: reconnect, to another process
    late = await connect(user, expect_accept=True)  # a socket that comes now is sent on too
    assert (await late.communicator.receive_output(timeout=5))["code"] == 1012
    assert not draining.done()  # the answer still runs
    release.set()
    await asyncio.wait_for(draining, 10)
    stored = await Message.objects.aget(pk=answer_id)
    assert (stored.status, stored.content) == ("complete", "Before the deploy. After it.")


async def test_what_still_runs_at_the_drain_deadline_is_saved_as_interrupted(
    connect: Connect, fake_upstream: FakeUpstream, user: Any, settings: Any
) -> None:
    settings.CHAT_DRAIN_TIMEOUT = 0.3
    fake_upstream.script(hanging("Never finished"))
    chat = await connect(user)
    answer_id = await chat.start_answer("go")
    await chat.receive_text("Never finished")
    await asyncio.wait_for(shutdown(), 5)
    stored = await Message.objects.aget(pk=answer_id)
    assert (stored.status, stored.content) == ("interrupted", "Never finished")


async def test_the_lifespan_app_runs_shutdown(monkeypatch: Any) -> None:
    calls: list[str] = []

    async def recording_shutdown() -> None:
        calls.append("shutdown")

    monkeypatch.setattr("chat.lifespan.shutdown", recording_shutdown)
    incoming = asyncio.Queue[dict[str, str]]()
    for kind in ("lifespan.startup", "lifespan.shutdown"):
        incoming.put_nowait({"type": kind})
    sent: list[dict[str, str]] = []

    async def send(message: dict[str, str]) -> None:
        sent.append(message)

    await LifespanApp()({"type": "lifespan"}, incoming.get, send)
    assert calls == ["shutdown"]
    assert [m["type"] for m in sent] == ["lifespan.startup.complete", "lifespan.shutdown.complete"]


@pytest.mark.parametrize("launcher", ["chat.server", "daphne"], ids=["uvloop", "asyncio"])
async def test_stopping_daphne_mid_answer_keeps_the_partial_answer(
    tmp_path: Path, launcher: str
) -> None:
    env = prepare_site(tmp_path, CHAT_DEMO_TOKENS_PER_SECOND="20")
    received = ""
    with daphne(env, launcher=launcher) as site:
        cookie = await log_in(site, USER, PASSWORD)
        async with websockets.connect(
            site.ws_url + "/ws/chat/", additional_headers={"Cookie": cookie, "Origin": site.url}
        ) as socket:
            await socket.send(json.dumps({"type": "send", "conversation": None, "content": "hi"}))
            while len(received) < 40:
                frame = json.loads(await socket.recv())
                if frame["type"] == "delta":
                    received += frame["text"]
            site.process.send_signal(signal.SIGTERM)
            await asyncio.to_thread(site.process.wait, 10)
    with sqlite3.connect(tmp_path / "site.sqlite3") as db:
        status, content = db.execute(
            "SELECT status, content FROM chat_message WHERE role = 'assistant'"
        ).fetchone()
    assert status == "interrupted"
    assert content.startswith(received)
