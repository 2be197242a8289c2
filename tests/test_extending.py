"""A project's own code in each turn: docs/extending.md's examples, run as they are written.

Each example block of the document becomes a module here, and is used the way
a project would: named in a setting, or connected as a signal receiver.
"""

from __future__ import annotations

import asyncio
import re
import sys
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from django.contrib.auth.models import Group, Permission
from django.test import Client
from django.urls import reverse

from chat import signals
from chat.checks import check_settings
from chat.generation import registry
from chat.models import Message
from project.models import Charge, Document
from tests.conftest import ChatClient, Connect
from tests.fake_upstream import FakeUpstream, completion, hanging, json_error, stream
from tests.test_sessions import closed_with, logged_in
from tests.test_sweep import orphan

pytestmark = pytest.mark.django_db(transaction=True)

DOC = Path(__file__).resolve().parent.parent / "docs" / "extending.md"
EXAMPLE = re.compile(r"<!-- example: (?P<name>[^>]+?) -->\s*```python\n(?P<code>.*?)\n```", re.S)


def example(name: str) -> types.ModuleType:
    """The document's example ``name`` as an imported module ``docs_example_<name>``."""
    blocks = {m["name"]: m["code"] for m in EXAMPLE.finditer(DOC.read_text())}
    module_name = "docs_example_" + re.sub(r"\W", "_", name)
    module = types.ModuleType(module_name)
    sys.modules[module_name] = module
    exec(compile(blocks[name], f"{DOC}:{name}", "exec"), module.__dict__)
    return module


@pytest.fixture
def retrieval(settings: Any) -> None:
    example("retrieval")
    settings.CHAT_REQUEST_BUILDER = "docs_example_retrieval.with_documents"


@pytest.fixture
def billing() -> Iterator[types.ModuleType]:
    module = example("billing")
    yield module
    signals.answer_finished.disconnect(module.charge)


class Recorder:
    """A receiver that keeps what each signal was sent with."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, dict[str, Any]]] = []
        self.receivers = {
            name: self.receiver(name)
            for name in ("turn_started", "answer_finished", "answer_failed")
        }

    def receiver(self, name: str) -> Any:
        def receive(sender: Any, signal: Any, **kwargs: Any) -> None:
            self.sent.append((name, kwargs))

        return receive

    def names(self) -> list[str]:
        return [name for name, _ in self.sent]

    def of(self, name: str) -> dict[str, Any]:
        (arguments,) = [kwargs for n, kwargs in self.sent if n == name]
        return arguments


@pytest.fixture
def recorder() -> Iterator[Recorder]:
    recorder = Recorder()
    for name, receive in recorder.receivers.items():
        getattr(signals, name).connect(receive)
    yield recorder
    for name, receive in recorder.receivers.items():
        getattr(signals, name).disconnect(receive)


async def ask(chat: ChatClient, question: str) -> dict[str, Any]:
    """Send a question; return its ``done`` once its process is through with it (the
    signals go out after ``done``)."""
    await chat.send(question)
    done = (await chat.receive_until("done"))[-1]
    await answers_ended()
    return done


async def answers_ended() -> None:
    async with asyncio.timeout(5):
        while registry.tasks:
            await asyncio.wait(registry.tasks)


# The request builder ---------------------------------------------------------------


async def test_the_retrieval_example_adds_the_document_a_question_names_to_the_prompt(
    connect: Connect, fake_upstream: FakeUpstream, user: Any, retrieval: None
) -> None:
    await Document.objects.acreate(owner=user, title="Refund policy", text="Within 30 days.")
    fake_upstream.script(stream(*completion(["Yes."])), stream(*completion(["Hi."])))
    chat = await connect(user)

    assert (await ask(chat, "What is our refund policy?"))["status"] == "complete"
    assert (await ask(chat, "Hello there"))["status"] == "complete"

    named, unnamed = (r.json["messages"] for r in fake_upstream.requests)
    assert named[0]["role"] == "system" and "Within 30 days." in named[0]["content"]
    assert named[1:] == [{"role": "user", "content": "What is our refund policy?"}]
    assert all("Within 30 days." not in m["content"] for m in unnamed)


async def test_the_per_user_model_example_picks_each_users_model_and_prompt(
    connect: Connect, fake_upstream: FakeUpstream, user: Any, other_user: Any, settings: Any
) -> None:
    example("per-user model")
    settings.CHAT_REQUEST_BUILDER = "docs_example_per_user_model.per_customer"
    premium = await Group.objects.acreate(name="premium")
    await sync_to_async(user.groups.add)(premium)
    fake_upstream.script(stream(*completion(["a"])), stream(*completion(["b"])))

    await ask(await connect(user), "hi")
    await ask(await connect(other_user), "hi")

    first, second = (r.json for r in fake_upstream.requests)
    assert (first["model"], second["model"]) == ("big-model", "small-model")
    assert first["temperature"] == 0.2
    assert first["messages"][0]["content"] == f"The user's name is {user.get_username()}."


def raises(turn: Any) -> Any:
    raise RuntimeError("the vector store is down")


def returns_a_dict(turn: Any) -> Any:
    return {"messages": []}


@pytest.mark.parametrize("builder", ["raises", "returns_a_dict"])
async def test_a_failing_builder_fails_the_answer_cleanly_and_the_socket_goes_on(
    connect: Connect, fake_upstream: FakeUpstream, user: Any, settings: Any, builder: str
) -> None:
    settings.CHAT_REQUEST_BUILDER = f"tests.test_extending.{builder}"
    chat = await connect(user)

    done = await ask(chat, "hi")

    assert (done["status"], done["error"]["code"]) == ("failed", "request_not_built")
    assert "vector store" not in done["error"]["detail"]  # the cause goes to the log only
    stored = await Message.objects.aget(pk=done["message"])
    assert (stored.status, stored.error_code) == ("failed", "request_not_built")
    assert fake_upstream.requests == []  # nothing was sent, nothing spent
    settings.CHAT_REQUEST_BUILDER = ""
    fake_upstream.script(stream(*completion(["fine"])))
    await chat.send("again", done["conversation"])
    assert (await chat.receive_until("done"))[-1]["status"] == "complete"


# Signals -----------------------------------------------------------------------------


async def test_the_billing_example_charges_each_answer_once_with_its_usage(
    connect: Connect, fake_upstream: FakeUpstream, user: Any, billing: types.ModuleType
) -> None:
    fake_upstream.script(stream(*completion(["Hello"], usage=(5, 7))), hanging("Half"))
    chat = await connect(user)
    await ask(chat, "hi")
    stopped = await chat.start_answer("go on")
    await chat.stop(stopped)
    await chat.receive_until("done")
    await answers_ended()

    charges = [c async for c in Charge.objects.order_by("id")]
    assert [(c.status, c.tokens, c.estimated) for c in charges[:1]] == [("complete", 12, False)]
    assert [(str(c.message_id), c.status, c.estimated) for c in charges[1:]] == [
        (stopped, "stopped", True)
    ]


async def test_each_signal_is_sent_once_with_what_it_reports(
    connect: Connect, fake_upstream: FakeUpstream, user: Any, recorder: Recorder
) -> None:
    fake_upstream.script(json_error(400, "context too long"))
    chat = await connect(user)

    done = await ask(chat, "hi")

    assert recorder.names() == ["turn_started", "answer_finished", "answer_failed"]
    started, finished = recorder.of("turn_started"), recorder.of("answer_finished")
    assert str(started["message_id"]) == done["message"] and started["user_id"] == user.pk
    assert started["question_id"] is not None and started["model"] == "fake-model"
    assert (finished["status"], finished["error"]["code"]) == ("failed", "upstream_rejected")
    assert finished["duration"] >= 0 and finished["time_to_first_token"] is None
    assert finished == recorder.of("answer_failed")


async def test_a_receiver_that_raises_changes_nothing_for_the_answer(
    connect: Connect, fake_upstream: FakeUpstream, user: Any, caplog: Any
) -> None:
    def broken(sender: Any, **kwargs: Any) -> None:
        raise RuntimeError("billing is down")

    signals.answer_finished.connect(broken)
    try:
        fake_upstream.script(stream(*completion(["Hello"])))
        done = await ask(await connect(user), "hi")
    finally:
        signals.answer_finished.disconnect(broken)
    assert done["status"] == "complete"
    assert "billing is down" in caplog.text


async def test_an_answer_whose_process_died_is_reported_finished_once_by_the_sweep(
    user: Any, recorder: Recorder, settings: Any
) -> None:
    from chat.sweep import sweep_once

    settings.CHAT_ORPHAN_AFTER = 30
    message = await orphan(user, age=60)

    assert await sweep_once() == 1
    assert await sweep_once() == 0

    finished = recorder.of("answer_finished")
    assert (finished["message_id"], finished["status"]) == (message.id, "interrupted")
    assert finished["user_id"] == user.pk and finished["usage"]["estimated"] is True


# Permissions ---------------------------------------------------------------------------


@pytest.fixture
def beta_testers(settings: Any) -> None:
    example("permissions")
    settings.CHAT_PERMISSIONS = "docs_example_permissions.BetaTesters"


async def test_the_permissions_example_lets_only_beta_testers_chat(
    connect: Connect, fake_upstream: FakeUpstream, user: Any, other_user: Any, beta_testers: None
) -> None:
    beta = await Group.objects.acreate(name="beta")
    await sync_to_async(user.groups.add)(beta)
    fake_upstream.script(stream(*completion(["Hello"])))

    outsider = await connect(other_user)
    refused = await outsider.receive()
    assert (refused["type"], refused["code"]) == ("error", "forbidden")
    assert await closed_with(outsider) == 4403
    page = await sync_to_async((await logged_in(other_user)).get)(reverse("chat:index"))
    assert page.status_code == 403
    assert (await ask(await connect(user), "hi"))["status"] == "complete"


async def test_a_right_taken_away_ends_the_socket_at_its_next_message(
    connect: Connect, fake_upstream: FakeUpstream, user: Any, beta_testers: None
) -> None:
    beta = await Group.objects.acreate(name="beta")
    await sync_to_async(user.groups.add)(beta)
    chat = await connect(user)
    await sync_to_async(user.groups.remove)(beta)

    await chat.send("hi")

    refused = await chat.receive()
    assert (refused["type"], refused["code"]) == ("error", "forbidden")
    assert await closed_with(chat) == 4403
    assert not await Message.objects.aexists()  # the turn was refused before it was stored


async def test_the_permissions_example_shows_the_running_answers_to_every_staff_member(
    django_user_model: Any, settings: Any
) -> None:
    clerk = await django_user_model.objects.acreate(username="clerk", is_staff=True)
    browser = await logged_in(clerk)
    live = reverse("admin:chat_streaminganswer_changelist")
    assert (
        await sync_to_async(browser.get)(live)
    ).status_code == 403  # the default: needs the permission

    example("permissions")
    settings.CHAT_PERMISSIONS = "docs_example_permissions.BetaTesters"

    assert (await sync_to_async(browser.get)(live)).status_code == 200


async def test_the_default_rules_follow_djangos_permissions(django_user_model: Any) -> None:
    clerk = await django_user_model.objects.acreate(username="clerk", is_staff=True)
    view = await Permission.objects.aget(codename="view_streaminganswer")
    await sync_to_async(clerk.user_permissions.add)(view)
    browser: Client = await logged_in(clerk)
    live = reverse("admin:chat_streaminganswer_changelist")
    assert (await sync_to_async(browser.get)(live)).status_code == 200


@pytest.mark.parametrize(
    ("name", "value", "check_id"),
    [
        pytest.param("CHAT_PERMISSIONS", "nowhere.Rules", "chat.E017", id="permissions-missing"),
        pytest.param("CHAT_PERMISSIONS", "chat.models.Owner", "chat.E017", id="permissions-kind"),
        pytest.param("CHAT_REQUEST_BUILDER", "nowhere.build", "chat.E018", id="builder-missing"),
        pytest.param(
            "CHAT_REQUEST_BUILDER", "chat.conf.DEFAULT_BASE_URL", "chat.E018", id="builder-kind"
        ),
    ],
)
def test_a_hook_that_cannot_be_used_is_reported_at_startup(
    settings: Any, name: str, value: str, check_id: str
) -> None:
    setattr(settings, name, value)
    assert [m.id for m in check_settings(None) if m.is_serious()] == [check_id]


def test_every_example_of_the_document_is_run_here() -> None:
    names = [m["name"] for m in EXAMPLE.finditer(DOC.read_text())]
    assert sorted(names) == ["billing", "per-user model", "permissions", "retrieval"]
