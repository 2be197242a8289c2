"""Per-user limits: running answers and messages per minute, answered with a clear error."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from datetime import timedelta
from typing import Any

import pytest
from django.db import transaction
from django.utils import timezone
from hypothesis import given
from hypothesis import strategies as st

from chat.models import Conversation, Message, Owner
from chat.store import _answer_counts
from tests.conftest import Connect, database_examples
from tests.fake_upstream import FakeUpstream, completion, hanging, stream
from tests.servers import ROOT

pytestmark = pytest.mark.django_db(transaction=True)


async def test_a_user_cannot_run_more_answers_at_once_than_the_limit(
    connect: Connect, fake_upstream: FakeUpstream, user: Any, settings: Any
) -> None:
    settings.CHAT_MAX_RUNNING_ANSWERS = 2
    answer = hanging("...")
    fake_upstream.script(answer, answer)
    chat = await connect(user)
    answers = []
    for _ in range(2):
        answers.append(await chat.start_answer("a long question"))

    await chat.send("one more")

    error = await chat.receive()
    assert (error["type"], error["code"]) == ("error", "too_many_answers")
    assert await Message.objects.acount() == 4
    for answer in answers:
        await chat.stop(answer)
    await chat.receive_until("done")


async def test_a_user_cannot_send_more_messages_a_minute_than_the_limit(
    connect: Connect, fake_upstream: FakeUpstream, user: Any, settings: Any
) -> None:
    settings.CHAT_TURNS_PER_MINUTE = 2
    fake_upstream.script(stream(*completion(["one"])), stream(*completion(["two"])))
    chat = await connect(user)
    for _ in range(2):
        await chat.send("hi")
        await chat.receive_until("done")

    await chat.send("and again")

    error = await chat.receive()
    assert error["code"] == "slow_down" and "2 messages a minute" in error["detail"]
    assert await Message.objects.filter(role="user").acount() == 2


async def test_limits_are_per_user(
    connect: Connect, fake_upstream: FakeUpstream, user: Any, other_user: Any, settings: Any
) -> None:
    settings.CHAT_TURNS_PER_MINUTE = 1
    fake_upstream.script(stream(*completion(["mine"])), stream(*completion(["theirs"])))
    for who in (user, other_user):
        chat = await connect(who)
        await chat.send("hi")
        assert (await chat.receive_until("done"))[-1]["status"] == "complete"


async def test_a_socket_that_floods_is_slowed_down_then_closed(
    connect: Connect, fake_upstream: FakeUpstream, user: Any, settings: Any
) -> None:
    settings.CHAT_FRAMES_PER_SECOND = 5  # bursts of 10
    chat = await connect(user)
    unknown = {"type": "watch", "conversation": "00000000-0000-0000-0000-000000000000"}
    for _ in range(40):
        await chat.send_json(unknown)
    codes = [(await chat.receive())["code"] for _ in range(11)]
    assert codes[:10] == ["not_found"] * 10  # the burst is served
    assert codes[10:] == ["slow_down"]  # then the socket is told to slow down, once
    assert await chat.communicator.receive_output(timeout=2) == {
        "type": "websocket.close",
        "code": 4429,
    }  # and a socket that does not listen is closed


async def test_a_flood_is_closed_even_when_some_frames_get_through(
    connect: Connect, fake_upstream: FakeUpstream, user: Any, settings: Any
) -> None:
    """The red team's case: ~440 frames a second, each refill let one through, never closed."""
    settings.CHAT_FRAMES_PER_SECOND = 20
    chat = await connect(user)
    pong = {"type": "pong", "nonce": "not-a-ping-of-ours"}
    started = time.monotonic()
    outputs: list[dict[str, Any]] = []
    closed = {"type": "websocket.close", "code": 4429}
    while time.monotonic() - started < 5 and closed not in outputs:
        for _ in range(22):  # ~440 a second in 50 ms steps: a token refills in between
            await chat.send_json(pong)
        await asyncio.sleep(0.05)  # the flood's pace, not a wait for an event
        while not await chat.communicator.receive_nothing(timeout=0):
            outputs.append(await chat.communicator.receive_output(timeout=1))
    assert closed in outputs
    assert time.monotonic() - started < 3
    refusals = [o for o in outputs if o["type"] == "websocket.send" and "slow_down" in o["text"]]
    assert len(refusals) < 10  # told to slow down once a burst, not once a frame


PRODUCTION = {
    "PATH": "/usr/bin:/bin",
    "DJANGO_DEBUG": "0",
    "DJANGO_SECRET_KEY": "x" * 20 + "production-secret-key-that-is-long-and-random-7f3a9c2e",
    "DJANGO_ALLOWED_HOSTS": "chat.example.com",
}


def deploy_check(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
    )


@pytest.mark.integration
def test_the_production_settings_pass_the_deploy_checks() -> None:
    result = deploy_check({**PRODUCTION, "OPENAI_API_KEY": "sk-production"})
    assert result.returncode == 0, result.stdout + result.stderr
    assert "no issues" in result.stdout


@pytest.mark.integration
def test_a_production_site_without_a_model_fails_the_deploy_checks() -> None:
    result = deploy_check(PRODUCTION)
    assert result.returncode != 0
    assert "chat.W002" in result.stderr and "demo model" in result.stderr


OWNERS = [("user", 0), ("user", 1), ("session", "s-one"), ("session", "s-two")]
messages = st.lists(
    st.tuples(
        st.integers(0, len(OWNERS) - 1),  # whose conversation
        st.sampled_from(["assistant", "user"]),
        st.sampled_from(["streaming", "complete", "stopped", "interrupted"]),
        st.integers(0, 180),  # seconds ago
    ),
    max_size=25,
)


@pytest.mark.django_db(transaction=False)
@database_examples(40)
@given(rows=messages)
def test_the_limit_counts_are_exactly_the_owners_answers_running_and_recent(
    rows: list[tuple[int, str, str, int]], user: Any, other_user: Any
) -> None:
    """The counts a turn's limits read (one hand-written statement) agree with the ORM's
    own definition of whose messages they are, for users and anonymous sessions alike."""
    people = [user, other_user]
    owners = [
        Owner(user_id=people[key].pk) if kind == "user" else Owner(user_id=None, session_key=key)
        for kind, key in OWNERS
    ]
    now = timezone.now()
    with transaction.atomic():
        conversations = [
            Conversation.objects.create(
                owner=people[key] if kind == "user" else None,
                session_key=key if kind == "session" else "",
            )
            for kind, key in OWNERS
        ]
        for whose, role, status, ago in rows:
            message = Message.objects.create(
                conversation=conversations[whose], role=role, status=status
            )
            Message.objects.filter(pk=message.pk).update(created_at=now - timedelta(seconds=ago))
        since = now - timedelta(minutes=1)
        for owner in [*owners, Owner(user_id=None, session_key="nobody's")]:
            mine = Message.objects.owned_by(owner).filter(role="assistant")
            expected = (
                mine.filter(status="streaming").count(),
                mine.filter(created_at__gte=since).count(),
            )
            assert _answer_counts(owner, since=since) == expected
        transaction.set_rollback(True)


@pytest.mark.django_db(transaction=False)
@pytest.mark.parametrize("kind", ["user", "session"])
def test_the_limit_counts_read_only_the_owners_conversations(
    kind: str, user: Any, other_user: Any
) -> None:
    """Everyone else's answers being written cost a turn nothing: the counts reach the
    messages through the owner's conversations by index, whatever the database believes
    of how many answers stream (a plan ordered by that belief scanned them all)."""
    from django.db import connection

    from chat import store

    for _ in range(30):  # others' answers being written
        theirs = Conversation.objects.create(owner=other_user)
        Message.objects.create(conversation=theirs, role="assistant", status="streaming")
    owner = Owner(user_id=user.pk) if kind == "user" else Owner(user_id=None, session_key="k")
    whose = (
        f"{connection.ops.quote_name(store._owner_column)} = %s"
        if kind == "user"
        else f"{connection.ops.quote_name(store._owner_column)} IS NULL "
        f"AND {connection.ops.quote_name('session_key')} = %s"
    )
    sql = store._counts_statement(whose, connection.vendor)
    key = user.pk if kind == "user" else "k"
    params = ["assistant", key, "assistant", key, timezone.now()]
    with connection.cursor() as cursor:
        if connection.vendor == "sqlite":
            cursor.execute(f"EXPLAIN QUERY PLAN {sql}", params)
            steps = [row[3] for row in cursor.fetchall()]
        else:  # PostgreSQL, when the suite runs on it
            cursor.execute(f"EXPLAIN {sql}", params)
            steps = [row[0].strip() for row in cursor.fetchall()]
    # Each read of the messages by an index on their conversation (the streaming ones',
    # the conversation's messages by time, or the foreign key's own).
    reads = [step for step in steps if "chat_message" in step]
    by_conversation = ("chat_msg_streaming", "chat_msg_conv_order", "conversation_id")
    assert reads and all(any(name in step for name in by_conversation) for step in reads), steps
    assert _answer_counts(owner, since=timezone.now() - timedelta(minutes=1)) == (0, 0)
