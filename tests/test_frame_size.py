"""No message the server sends is over ``CHAT_MAX_FRAME_BYTES``: large frames go in parts.

daphne refuses to send a websocket message over 1 MiB. Before parts existed, a
long code answer's ``done`` (its HTML) or the ``history`` of a conversation of
long answers killed the socket's sender and left the page empty. Every test
here checks the size of every message received and that the page, joining the
parts, still rebuilds exactly what was written.
"""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from asgiref.sync import sync_to_async

from chat import consumers
from chat.conf import conf
from chat.models import Conversation, Message
from chat.protocol import frame_texts
from chat.rendering import render_markdown
from tests.conftest import ChatClient, Connect, rebuild
from tests.fake_upstream import FakeUpstream, completion, stream

pytestmark = pytest.mark.django_db(transaction=True)

ANSWER_CHARS = 200_000
ANSWERS = 20


def code_answer(chars: int, seed: int = 0) -> str:
    """A Markdown answer of about ``chars`` characters, nearly all one Python code block."""
    lines = ["Here is the program:", "", "```python"]
    size = 0
    n = 0
    while size < chars:
        line = f'    value_{seed}_{n} = compute({n}, "text \\"{n}\\"", [{n}, {n + 1}])  # é → ✓'
        lines.append(line)
        size += len(line) + 1
        n += 1
    return "\n".join([*lines, "```", ""])


def pieces(text: str, size: int = 4000) -> list[str]:
    return [text[i : i + size] for i in range(0, len(text), size)]


@pytest.mark.parametrize(
    "frame",
    [
        pytest.param({"type": "delta", "text": "a" * 10}, id="small-whole"),
        pytest.param({"type": "delta", "text": "x" * 2_000_000}, id="ascii"),
        pytest.param({"type": "delta", "text": '"\\' * 400_000}, id="all-escaped-again"),
        pytest.param({"type": "delta", "text": "é✓𝄞" * 300_000}, id="multibyte"),
        pytest.param({"type": "delta", "text": "\n\x00\t" * 300_000}, id="control-characters"),
    ],
)
def test_a_frame_is_cut_into_parts_within_the_bound_that_join_back(frame: Any) -> None:
    limit = 64 * 1024
    texts = frame_texts(frame, limit=limit)
    assert all(len(text.encode()) <= limit for text in texts)
    if len(texts) == 1:
        assert orjson.loads(texts[0]) == frame
        return
    parts = [orjson.loads(text) for text in texts]
    assert [p["type"] for p in parts] == ["part"] * len(parts)
    assert [p["last"] for p in parts] == [False] * (len(parts) - 1) + [True]
    assert orjson.loads("".join(p["data"] for p in parts)) == frame


async def ask_long(chat: ChatClient, fake_upstream: FakeUpstream, text: str, **kw: Any) -> Any:
    fake_upstream.script(stream(*completion(pieces(text))))
    await chat.send("Write a long program", **kw)
    return await chat.receive_until("done", timeout=30)


async def test_a_200000_character_code_answer_streams_and_reloads_within_the_bound(
    connect: Connect, fake_upstream: FakeUpstream, user: Any
) -> None:
    text = code_answer(ANSWER_CHARS)
    chat = await connect(user)
    frames = await ask_long(chat, fake_upstream, text)
    done = frames[-1]
    assert (rebuild(frames), done["status"]) == (text, "complete")
    assert done["html"] == render_markdown(text)
    assert len(orjson.dumps(done)) > 1024 * 1024  # would have been refused whole
    assert chat.largest <= conf.CHAT_MAX_FRAME_BYTES

    reload = await connect(user)
    await reload.watch(done["conversation"])
    history = (await reload.receive_until("history", timeout=30))[-1]
    assert history["messages"][1]["content"] == text
    assert history["messages"][1]["html"] == done["html"]
    assert reload.largest <= conf.CHAT_MAX_FRAME_BYTES


@sync_to_async
def seed_long_conversation(user: Any, answers: int) -> Conversation:
    """A conversation of ``answers`` finished long code answers, as if chatted earlier."""
    conversation = Conversation.objects.create(owner=user, title="Long", model="fake-model")
    parent = None
    for n in range(answers):
        question = Message.objects.create(
            conversation=conversation, parent=parent, role="user", content=f"Program {n}?"
        )
        parent = Message.objects.create(
            conversation=conversation,
            parent=question,
            role="assistant",
            status="complete",
            content=code_answer(ANSWER_CHARS, seed=n),
        )
    conversation.current_leaf = parent
    conversation.save()
    return conversation


async def test_a_conversation_of_20_long_answers_reloads_and_switches_versions_within_the_bound(
    connect: Connect, fake_upstream: FakeUpstream, user: Any, settings: Any
) -> None:
    settings.CHAT_TURNS_PER_MINUTE = 100  # the seeded answers are all of this minute
    conversation = await seed_long_conversation(user, ANSWERS - 1)
    chat = await connect(user)
    await chat.watch(str(conversation.id))
    await chat.receive_until("history", timeout=60)
    last = code_answer(ANSWER_CHARS, seed=ANSWERS)
    frames = await ask_long(chat, fake_upstream, last, conversation=str(conversation.id))
    assert rebuild(frames) == last
    first_version = frames[-1]["message"]

    # Another version of the last answer, then back to the first one.
    again = code_answer(ANSWER_CHARS, seed=ANSWERS + 1)
    fake_upstream.script(stream(*completion(pieces(again))))
    await chat.send_json({"type": "regenerate", "message": first_version})
    frames = await chat.receive_until("done", timeout=30)
    assert rebuild(frames, frames[-1]["message"]) == again
    await chat.send_json({"type": "switch", "message": first_version})
    history = (await chat.receive_until("history", timeout=60))[-1]
    answers = [m for m in history["messages"] if m["role"] == "assistant"]
    assert len(answers) == ANSWERS
    assert answers[-1]["id"] == first_version
    assert answers[-1]["content"] == last
    assert answers[-1]["versions"][0] == first_version and len(answers[-1]["versions"]) == 2
    assert answers[0]["content"] == code_answer(ANSWER_CHARS, seed=0)
    assert chat.largest <= conf.CHAT_MAX_FRAME_BYTES

    reload = await connect(user)
    await reload.watch(str(conversation.id))
    history = (await reload.receive_until("history", timeout=60))[-1]
    assert [m["content"] for m in history["messages"]][-1] == last
    assert reload.largest <= conf.CHAT_MAX_FRAME_BYTES


async def test_a_socket_whose_sender_fails_is_closed_and_the_failure_logged(
    connect: Connect, fake_upstream: FakeUpstream, user: Any, monkeypatch: Any, caplog: Any
) -> None:
    """Whatever breaks a send (daphne refusing a message, a bug), the page is told by a close."""
    original = consumers.frame_sender

    def refusing_done(base_send: Any) -> Any:
        send = original(base_send)

        async def refuse_done(message: dict[str, Any]) -> None:
            if '"type":"done"' in message.get("text", ""):
                raise RuntimeError("the server refused the message")
            await send(message)

        return refuse_done

    monkeypatch.setattr(consumers, "frame_sender", refusing_done)
    fake_upstream.script(stream(*completion(["Hello"])))
    chat = await connect(user)
    await chat.send("hi")
    await chat.receive_until("delta")
    while (output := await chat.communicator.receive_output(timeout=5))[
        "type"
    ] != "websocket.close":
        pass
    assert output == {"type": "websocket.close", "code": 1011}
    assert "Sending to a chat socket failed; closing it" in caplog.text
