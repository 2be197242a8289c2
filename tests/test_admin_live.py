"""The admin shows how each answer ran and which are being written now; staff may stop one."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from django.contrib.auth.models import Permission
from django.test import Client
from django.urls import reverse

from chat.models import Message
from tests.conftest import Connect, rebuild
from tests.fake_upstream import FakeUpstream, completion, hanging, json_error, paused, stream

pytestmark = pytest.mark.django_db(transaction=True)

LIVE = reverse("admin:chat_streaminganswer_changelist")


def events(message: Message) -> list[str]:
    return [event["event"] for event in message.timeline]


async def test_each_answer_keeps_a_timeline_of_how_it_ran(
    connect: Connect, fake_upstream: FakeUpstream, user: Any, admin_client: Client
) -> None:
    fake_upstream.script(json_error(503, "busy"), stream(*completion(["Hello"])))
    chat = await connect(user)
    await chat.send("hi")
    done = (await chat.receive_until("done"))[-1]

    message = await Message.objects.aget(pk=done["message"])
    assert events(message) == [
        "started",
        "request_sent",
        "retry",
        "request_sent",
        "response",
        "first_token",
        "finished",
        "usage",
    ]
    response = next(e for e in message.timeline if e["event"] == "response")
    assert response["request_id"] == "req-fake-1"
    assert message.timeline[-1]["estimated"] is False
    page = await sync_to_async(admin_client.get)(
        reverse("admin:chat_message_change", args=[message.pk])
    )
    html = page.content.decode()
    for shown in ("first_token", "request_id=req-fake-1", "after=upstream_unavailable"):
        assert shown in html


async def test_a_stop_shows_who_asked_and_when_the_upstream_closed(
    connect: Connect, fake_upstream: FakeUpstream, user: Any
) -> None:
    fake_upstream.script(hanging("Once"))
    chat = await connect(user)
    answer = await chat.start_answer("Tell me a long story")

    await chat.stop(answer)
    await chat.receive_until("done")

    message = await Message.objects.aget(pk=answer)
    stop = next(e for e in message.timeline if e["event"] == "stop_requested")
    assert stop["by"] == "user"
    assert events(message)[-4:] == ["stop_requested", "upstream_closed", "finished", "usage"]


async def test_staff_see_answers_being_written_and_can_stop_one(
    connect: Connect, fake_upstream: FakeUpstream, user: Any, admin_client: Client
) -> None:
    fake_upstream.script(hanging("Once upon a time"))
    chat = await connect(user)
    answer = await chat.start_answer("Tell me a long story")

    listing = await sync_to_async(admin_client.get)(LIVE)
    assert "alice" in listing.content.decode()  # whose answer it is
    assert listing.context["cl"].result_count == 1
    await sync_to_async(admin_client.post)(
        LIVE, {"action": "stop_answers", "_selected_action": [answer]}
    )

    frames = await chat.receive_until("done")
    done = frames[-1]
    assert (done["status"], done["error"]["code"]) == ("stopped", "stopped_by_staff")
    assert rebuild(chat.frames) == "Once upon a time"
    message = await Message.objects.aget(pk=answer)
    assert next(e for e in message.timeline if e["event"] == "stop_requested")["by"] == (
        "staff:admin"
    )
    await fake_upstream.wait_idle()  # the upstream connection was closed
    assert (await sync_to_async(admin_client.get)(LIVE)).context["cl"].result_count == 0


async def test_only_staff_with_the_permission_may_stop_answers(
    connect: Connect, fake_upstream: FakeUpstream, user: Any, django_user_model: Any
) -> None:
    fake_upstream.script(hanging("Once"))
    chat = await connect(user)
    answer = await chat.start_answer("Tell me a long story")
    viewer = await django_user_model.objects.acreate(username="viewer", is_staff=True)
    view = await Permission.objects.aget(codename="view_streaminganswer")
    await sync_to_async(viewer.user_permissions.add)(view)
    client = Client()
    await sync_to_async(client.force_login)(viewer)
    outsider = Client()
    await sync_to_async(outsider.force_login)(user)

    assert (await sync_to_async(outsider.get)(LIVE)).status_code == 302  # not staff: log in
    listing = await sync_to_async(client.get)(LIVE)
    assert listing.status_code == 200
    assert "stop_answers" not in listing.content.decode()
    await sync_to_async(client.post)(LIVE, {"action": "stop_answers", "_selected_action": [answer]})
    assert (await Message.objects.aget(pk=answer)).status == "streaming"

    await chat.stop(answer)
    await chat.receive_until("done")


async def test_the_timeline_shows_a_page_leaving_and_another_coming_back(
    connect: Connect, fake_upstream: FakeUpstream, user: Any
) -> None:
    release = asyncio.Event()
    fake_upstream.script(paused(["Half "], release, ["and the rest."]))
    first = await connect(user)
    answer = await first.start_answer("Tell me a long story")
    conversation = first.frames[0]["conversation"]["id"]
    await first.communicator.disconnect()

    second = await connect(user)
    await second.watch(conversation)
    await second.receive_until("history")
    release.set()
    await second.receive_until("done")

    message = await Message.objects.aget(pk=answer)
    seen = events(message)
    assert seen.index("first_token") < seen.index("client_disconnected")
    assert seen.index("client_disconnected") < seen.index("client_watching")
    assert seen.index("client_watching") < seen.index("finished")
