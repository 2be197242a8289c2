"""Regenerate, edit and branch: a conversation is a tree, and the page shows one path of it.

Every message knows its parent; siblings are versions (an edited question, a
regenerated answer). The conversation stores the end of the path shown, and
only that path is sent upstream.
"""

from __future__ import annotations

from typing import Any

import pytest
from django.db import connection
from django.db.migrations.executor import MigrationExecutor

from chat import store
from chat.models import Conversation, Message, Owner
from tests.conftest import ChatClient, Connect, rebuild
from tests.fake_upstream import FakeUpstream, completion, hanging, stream

pytestmark = pytest.mark.django_db(transaction=True)


def reply(text: str) -> Any:
    return stream(*completion([text]))


async def turn(chat: ChatClient, content: str, conversation: str | None = None) -> dict[str, Any]:
    """Send and wait for the answer; return the frames of the turn by kind."""
    await chat.send(content, conversation)
    return frames_by_kind(await chat.receive_until("done"))


def frames_by_kind(frames: list[dict[str, Any]]) -> dict[str, Any]:
    messages = [f["message"] for f in frames if f["type"] == "message"]
    return {
        "question": next((m for m in messages if m["role"] == "user"), None),
        "answer": next(m for m in messages if m["role"] == "assistant"),
        "text": rebuild(frames),
        "done": frames[-1],
    }


async def two_turns(chat: ChatClient, fake_upstream: FakeUpstream) -> tuple[str, dict, dict]:
    fake_upstream.script(reply("Paris."), reply("About 2 million."))
    first = await turn(chat, "Capital of France?")
    conversation = first["question"]["conversation"]
    second = await turn(chat, "How many people live there?", conversation)
    return conversation, first, second


async def test_regenerate_streams_a_new_answer_beside_the_old_one(
    connect: Connect, fake_upstream: FakeUpstream, user: Any
) -> None:
    chat = await connect(user)
    conversation, _first, second = await two_turns(chat, fake_upstream)
    fake_upstream.script(reply("Roughly 2.1 million."))

    await chat.send_json({"type": "regenerate", "message": second["answer"]["id"]})
    again = frames_by_kind(await chat.receive_until("done"))

    assert again["question"] is None  # the question is not asked twice
    assert again["text"] == "Roughly 2.1 million."
    assert again["answer"]["parent"] == second["question"]["id"]
    assert again["answer"]["versions"] == [second["answer"]["id"], again["answer"]["id"]]
    old = await Message.objects.aget(pk=second["answer"]["id"])
    assert old.content == "About 2 million."  # both kept
    # Upstream saw the same context as the first time, not the old answer.
    assert fake_upstream.requests[2].json["messages"] == fake_upstream.requests[1].json["messages"]
    await chat.watch(conversation)
    history = (await chat.receive_until("history"))[-1]
    assert [m["content"] for m in history["messages"]] == [
        "Capital of France?",
        "Paris.",
        "How many people live there?",
        "Roughly 2.1 million.",
    ]


async def test_editing_a_question_branches_and_keeps_the_earlier_branch(
    connect: Connect, fake_upstream: FakeUpstream, user: Any
) -> None:
    chat = await connect(user)
    conversation, first, second = await two_turns(chat, fake_upstream)
    fake_upstream.script(reply("Lyon has about half a million."))

    await chat.send_json(
        {"type": "edit", "message": second["question"]["id"], "content": "And in Lyon?"}
    )
    edited = frames_by_kind(await chat.receive_until("done"))

    assert edited["question"]["content"] == "And in Lyon?"
    assert edited["question"]["parent"] == first["answer"]["id"]
    assert edited["question"]["versions"] == [second["question"]["id"], edited["question"]["id"]]
    assert [m["content"] for m in fake_upstream.requests[2].json["messages"]] == [
        "Capital of France?",
        "Paris.",
        "And in Lyon?",
    ]
    assert await Message.objects.filter(conversation_id=conversation).acount() == 6


async def test_switching_to_an_earlier_version_shows_its_branch_and_continues_it(
    connect: Connect, fake_upstream: FakeUpstream, user: Any
) -> None:
    chat = await connect(user)
    conversation, _first, second = await two_turns(chat, fake_upstream)
    fake_upstream.script(reply("Half a million."))
    await chat.send_json(
        {"type": "edit", "message": second["question"]["id"], "content": "And in Lyon?"}
    )
    await chat.receive_until("done")

    await chat.send_json({"type": "switch", "message": second["question"]["id"]})
    history = (await chat.receive_until("history"))[-1]

    assert [m["content"] for m in history["messages"]] == [
        "Capital of France?",
        "Paris.",
        "How many people live there?",
        "About 2 million.",
    ]
    assert history["messages"][2]["versions"][0] == second["question"]["id"]
    assert len(history["messages"][2]["versions"]) == 2
    # The next question follows the branch shown, and only it goes upstream.
    fake_upstream.script(reply("Yes."))
    await turn(chat, "Is that the city proper?", conversation)
    assert [m["content"] for m in fake_upstream.requests[3].json["messages"]] == [
        "Capital of France?",
        "Paris.",
        "How many people live there?",
        "About 2 million.",
        "Is that the city proper?",
    ]


async def test_a_question_follows_the_answer_its_page_shows_not_another_tabs_branch(
    connect: Connect, fake_upstream: FakeUpstream, user: Any
) -> None:
    chat = await connect(user)
    conversation, _first, second = await two_turns(chat, fake_upstream)
    fake_upstream.script(reply("Half a million."), reply("Yes."))
    # Another tab edits the second question, which moves the active path...
    await chat.send_json(
        {"type": "edit", "message": second["question"]["id"], "content": "And in Lyon?"}
    )
    await chat.receive_until("done")

    # ...while this page still shows the first branch, and asks after its last answer.
    await chat.send_json(
        {
            "type": "send",
            "conversation": conversation,
            "content": "Is that the city proper?",
            "parent": second["answer"]["id"],
        }
    )
    asked = frames_by_kind(await chat.receive_until("done"))

    assert asked["question"]["parent"] == second["answer"]["id"]
    assert fake_upstream.requests[3].json["messages"][-2]["content"] == "About 2 million."


async def test_an_answer_cannot_be_regenerated_while_one_is_being_written(
    connect: Connect, fake_upstream: FakeUpstream, user: Any
) -> None:
    chat = await connect(user)
    fake_upstream.script(reply("Paris."), hanging("Still writing"))
    first = await turn(chat, "Capital of France?")
    await chat.send("More?", first["question"]["conversation"])
    running = frames_by_kind(await chat.receive_until("delta"))

    await chat.send_json({"type": "regenerate", "message": first["answer"]["id"]})

    error = await chat.receive()
    assert (error["type"], error["code"]) == ("error", "busy")
    await chat.stop(running["answer"]["id"])
    await chat.receive_until("done")


@pytest.mark.parametrize(
    "frame",
    [
        pytest.param({"type": "regenerate"}, id="regenerate"),
        pytest.param({"type": "edit", "content": "mine now"}, id="edit"),
        pytest.param({"type": "switch"}, id="switch"),
    ],
)
async def test_no_one_can_branch_someone_elses_conversation(
    connect: Connect, fake_upstream: FakeUpstream, user: Any, other_user: Any, frame: Any
) -> None:
    alice = await connect(user)
    fake_upstream.script(reply("Paris."))
    first = await turn(alice, "Capital of France?")
    mallory = await connect(other_user)

    for target in (first["question"]["id"], first["answer"]["id"]):
        await mallory.send_json({**frame, "message": target})
        error = await mallory.receive()
        assert (error["type"], error["code"]) == ("error", "not_found")

    assert await Message.objects.acount() == 2
    conversation = await Conversation.objects.aget(pk=first["question"]["conversation"])
    assert str(conversation.current_leaf_id) == first["answer"]["id"]


def test_the_migration_keeps_existing_conversations_as_one_path(user: Any) -> None:
    executor = MigrationExecutor(connection)
    executor.migrate([("chat", "0001_initial")])
    old = executor.loader.project_state([("chat", "0001_initial")]).apps
    conversation = old.get_model("chat", "Conversation").objects.create(owner_id=user.pk)
    OldMessage = old.get_model("chat", "Message")
    ids = [
        OldMessage.objects.create(conversation=conversation, role=role, content=text).pk
        for role, text in [("user", "q1"), ("assistant", "a1"), ("user", "q2"), ("assistant", "a2")]
    ]

    executor = MigrationExecutor(connection)
    executor.loader.build_graph()
    executor.migrate(executor.loader.graph.leaf_nodes("chat"))

    messages = {m.pk: m for m in Message.objects.filter(pk__in=ids)}
    assert [messages[i].parent_id for i in ids] == [None, *ids[:-1]]
    assert Conversation.objects.get(pk=conversation.pk).current_leaf_id == ids[-1]


async def test_coming_back_to_a_version_returns_to_the_replies_last_shown_with_it(
    connect: Connect, fake_upstream: FakeUpstream, user: Any
) -> None:
    chat = await connect(user)
    conversation, _first, second = await two_turns(chat, fake_upstream)
    fake_upstream.script(reply("Roughly 2.1 million."), reply("Half a million."))
    await chat.send_json({"type": "regenerate", "message": second["answer"]["id"]})
    await chat.receive_until("done")
    # The person goes back to the first answer, then edits the question above it...
    await chat.send_json({"type": "switch", "message": second["answer"]["id"]})
    await chat.receive_until("history")
    await chat.send_json(
        {"type": "edit", "message": second["question"]["id"], "content": "And in Lyon?"}
    )
    await chat.receive_until("done")

    # ...and back to the original question: it comes with the answer they last saw there.
    await chat.send_json({"type": "switch", "message": second["question"]["id"]})
    history = (await chat.receive_until("history"))[-1]

    assert [m["content"] for m in history["messages"]][2:] == [
        "How many people live there?",
        "About 2 million.",
    ]
    assert history["messages"][3]["versions"][0] == second["answer"]["id"]
    stored = await Conversation.objects.aget(pk=conversation)
    assert str(stored.current_leaf_id) == second["answer"]["id"]


@pytest.mark.parametrize("defers_foreign_keys", [True, False], ids=["deferred", "immediate"])
async def test_a_new_conversation_ends_its_path_at_the_first_answer_on_any_database(
    user: Any, monkeypatch: pytest.MonkeyPatch, defers_foreign_keys: bool
) -> None:
    # SQLite and PostgreSQL check foreign keys at commit, so a new conversation is
    # inserted pointing at its answer; MySQL checks each row at once, so it is not.
    monkeypatch.setattr(connection.features, "can_defer_constraint_checks", defers_foreign_keys)
    owner = Owner(user_id=user.pk)
    first = await store.start_turn(owner, None, "Capital of France?", model="m", system_prompt="")
    conversation = await Conversation.objects.aget(pk=first.conversation.id)
    assert conversation.current_leaf_id == first.assistant_message.id
    question = await Message.objects.aget(pk=first.user_message.id)
    assert (question.parent_id, question.content) == (None, "Capital of France?")

    await Message.objects.filter(pk=first.assistant_message.id).aupdate(
        content="Paris.", status=Message.Statuses.COMPLETE
    )
    second = await store.start_turn(
        owner, conversation.id, "And Spain?", model="m", system_prompt=""
    )
    assert [m["content"] for m in second.history] == ["Capital of France?", "Paris.", "And Spain?"]
    assert (
        await Message.objects.aget(pk=second.user_message.id)
    ).parent_id == first.assistant_message.id
