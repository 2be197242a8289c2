"""Database calls that arrive together share a trip to the database thread and one commit,
and each keeps its own outcome: one refused call costs the others nothing."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import threading
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from django.db import IntegrityError
from django.db.backends.base.base import BaseDatabaseWrapper
from hypothesis import given
from hypothesis import strategies as st

from chat import batches, store
from chat.batches import Batch
from chat.exceptions import ClientError, SessionEnded
from chat.models import Conversation, DailyUsage, Message, Owner
from chat.usage import Usage
from tests.conftest import database_examples

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def commits(monkeypatch: Any) -> Iterator[list[int]]:
    """Every commit any connection makes, counted."""
    made: list[int] = []
    commit = BaseDatabaseWrapper.commit

    def counted(self: BaseDatabaseWrapper) -> None:
        made.append(1)
        commit(self)

    monkeypatch.setattr(BaseDatabaseWrapper, "commit", counted)
    yield made


@pytest.fixture
def as_off_sqlite(monkeypatch: Any) -> None:
    """Lanes, which run only off SQLite, here on SQLite's shared in-memory test database.

    There a lane thread's own connection finds the tables locked by the test's, so the
    calls of these tests, which touch no database, run without a transaction.
    """
    monkeypatch.setattr(Batch, "_own_threads", lambda self: True)
    monkeypatch.setattr("chat.batches.transaction.atomic", contextlib.nullcontext)


def people(django_user_model: Any, n: int) -> list[Owner]:
    return [
        Owner(user_id=django_user_model.objects.create_user(f"user{i}", password="pw").pk)
        for i in range(n)
    ]


async def ask(owner: Owner, question: str, **options: Any) -> store.Turn:
    return await store.start_turn(
        owner, None, question, model="fake-model", system_prompt="", **options
    )


async def test_turns_that_start_together_are_stored_in_one_commit(
    django_user_model: Any, commits: list[int]
) -> None:
    owners = await asyncio.to_thread(people, django_user_model, 20)
    commits.clear()

    turns = await asyncio.gather(*(ask(owner, f"Question {i}") for i, owner in enumerate(owners)))

    assert store.setups.sizes[-1] == 20 and len(commits) == 1
    for i, turn in enumerate(turns):
        asked = await Message.objects.aget(pk=turn.user_message.id)  # type: ignore[union-attr]
        answer = await Message.objects.aget(pk=turn.assistant_message.id)
        assert (asked.content, answer.status) == (f"Question {i}", "streaming")
        assert turn.history == [{"role": "user", "content": f"Question {i}"}]


async def test_a_refused_turn_costs_the_turns_beside_it_nothing(
    django_user_model: Any, other_user: Any
) -> None:
    owners = await asyncio.to_thread(people, django_user_model, 3)
    theirs = await Conversation.objects.acreate(owner=other_user, title="Not yours")

    outcomes = await asyncio.gather(
        ask(owners[0], "Fine"),
        store.start_turn(
            owners[1], theirs.id, "Someone else's", model="fake-model", system_prompt=""
        ),
        ask(owners[2], "Logged out", still_allowed=lambda: False),
        ask(owners[2], "Fine too"),
        return_exceptions=True,
    )

    assert store.setups.sizes[-1] == 4
    fine, not_found, logged_out, fine_too = outcomes
    assert isinstance(not_found, ClientError) and not_found.code == "not_found"
    assert isinstance(logged_out, SessionEnded)
    assert isinstance(fine, store.Turn) and isinstance(fine_too, store.Turn)
    questions = [m.content async for m in Message.objects.filter(role="user").order_by("content")]
    assert questions == ["Fine", "Fine too"]
    assert await theirs.messages.acount() == 0


async def test_answers_that_end_together_are_saved_in_one_commit_with_their_usage(
    user: Any, commits: list[int]
) -> None:
    conversation = await Conversation.objects.acreate(owner=user, title="Many")
    answers = [
        await Message.objects.acreate(
            conversation=conversation, role="assistant", status="streaming"
        )
        for _ in range(10)
    ]
    owner = Owner(user_id=user.pk)
    commits.clear()

    await asyncio.gather(
        *(
            store.finish_message(
                answer.id,
                owner_key=owner.key,
                usage=Usage(prompt_tokens=10, completion_tokens=i, estimated=False),
                content=f"Answer {i}",
                status="complete",
            )
            for i, answer in enumerate(answers)
        )
    )

    assert store.endings.sizes[-1] == 10 and len(commits) == 1
    saved = {m.id: m async for m in Message.objects.filter(conversation=conversation)}
    for i, answer in enumerate(answers):
        assert (saved[answer.id].content, saved[answer.id].status) == (f"Answer {i}", "complete")
        assert saved[answer.id].completion_tokens == i
    day = await DailyUsage.objects.aget(owner_key=owner.key)
    assert (day.answers, day.prompt_tokens, day.completion_tokens) == (10, 100, 45)


async def test_a_batch_whose_commit_fails_is_made_again_call_by_call(user: Any) -> None:
    """A failure only the commit reveals (a deferred constraint, a deadlock, a dropped
    connection) rolls back every call: each is made again alone, and only it fails."""
    batch = Batch("test")
    add = batch.of(lambda title: Conversation.objects.create(owner=user, title=title))
    orphan = batch.of(
        lambda: Message.objects.create(conversation_id=uuid.uuid4(), role="user", content="?")
    )

    outcomes = await asyncio.gather(add("first"), orphan(), add("second"), return_exceptions=True)

    assert batch.sizes == [3]
    assert isinstance(outcomes[1], IntegrityError)
    titles = [c.title async for c in Conversation.objects.order_by("title")]
    assert titles == ["first", "second"]
    assert await Message.objects.acount() == 0


async def test_a_call_whose_caller_went_away_before_it_was_made_is_not_made(user: Any) -> None:
    batch = Batch("test")
    entered, release = threading.Event(), threading.Event()

    def hold() -> None:
        entered.set()
        release.wait(10)

    held = asyncio.create_task(batch.of(hold)())
    await asyncio.to_thread(entered.wait, 10)  # the database thread is busy with it
    gone = asyncio.create_task(
        batch.of(lambda: Conversation.objects.create(owner=user, title="Nobody waits"))()
    )
    kept = asyncio.create_task(
        batch.of(lambda: Conversation.objects.create(owner=user, title="Wanted"))()
    )
    await asyncio.sleep(0)  # both queued behind the call in the thread
    gone.cancel()
    release.set()

    await held
    await kept
    assert [c.title async for c in Conversation.objects.all()] == ["Wanted"]
    assert batch.sizes == [1, 1]


async def test_a_long_queue_goes_in_trips_of_a_bounded_size(user: Any) -> None:
    """Each caller waits for its whole trip: five hundred turns in one would all start
    when the last is stored, so the first ones go first."""
    batch = Batch("test", most=2)
    add = batch.of(lambda title: Conversation.objects.create(owner=user, title=title))

    created = await asyncio.gather(*(add(f"{i}") for i in range(5)))

    assert batch.sizes == [2, 2, 1]
    assert [c.title for c in created] == ["0", "1", "2", "3", "4"]


@pytest.mark.usefixtures("as_off_sqlite")
async def test_with_lanes_the_calls_waiting_together_run_side_by_side() -> None:
    """Off SQLite a setup's trip mostly waits for the database: two lanes make two trips
    at once (each call here waits for the other to start)."""
    both_started = threading.Barrier(2, timeout=10)

    def meet() -> str:
        both_started.wait()
        return threading.current_thread().name

    batch = Batch("test", lanes=2)
    names = await asyncio.gather(batch.of(meet)(), batch.of(meet)())

    assert batch.sizes == [1, 1] and names[0] != names[1]


@pytest.mark.usefixtures("as_off_sqlite")
async def test_closing_a_batch_with_lanes_completes_however_few_of_its_threads_ran() -> None:
    """At shutdown each lane's thread closes its own connection, also when fewer calls
    came than there are lanes (threads are started as calls need them)."""
    batch = Batch("test", lanes=4)
    assert await batch.of(lambda: threading.current_thread().name)() == "chat-test_0"

    await asyncio.wait_for(batch.close(), 10)  # one thread of four had started

    # A call after closing (a test's next event loop) gets threads anew.
    assert await batch.of(lambda: 42)() == 42
    await batch.close()


@pytest.mark.usefixtures("as_off_sqlite")
async def test_closing_while_a_lane_is_still_busy_says_so_and_completes(
    monkeypatch: Any, caplog: Any
) -> None:
    monkeypatch.setattr("chat.batches.CLOSE_WAIT", 0.2)
    batch = Batch("test", lanes=2)
    entered, release = threading.Event(), threading.Event()

    def hold() -> None:
        entered.set()
        release.wait(10)

    held = asyncio.create_task(batch.of(hold)())
    await asyncio.to_thread(entered.wait, 10)

    await asyncio.wait_for(batch.close(), 10)  # a turn's setup still in its trip

    assert "A test thread was busy at shutdown" in caplog.text
    release.set()
    await held


async def test_a_call_runs_whole_or_not_at_all_alone_or_in_a_trip(user: Any) -> None:
    """Alone or in a trip, a call that fails after writing leaves nothing, and the calls
    beside it stand."""
    batch = Batch("test")
    add = batch.of(lambda title: Conversation.objects.create(owner=user, title=title))

    def write_then_fail(title: str) -> None:
        Conversation.objects.create(owner=user, title=title)
        raise RuntimeError("failed after writing")

    failing = batch.of(write_then_fail)

    with pytest.raises(RuntimeError):
        await failing("alone")
    outcomes = await asyncio.gather(
        add("first"), failing("in a trip"), add("second"), return_exceptions=True
    )

    assert batch.sizes[-1] == 3 and isinstance(outcomes[1], RuntimeError)
    titles = [c.title async for c in Conversation.objects.order_by("title")]
    assert titles == ["first", "second"]


#: What a call of a trip does: writes and returns, writes then raises, raises before
#: writing, or breaks a constraint (a database error).
KINDS = ["stores", "fails_after_writing", "refuses", "breaks_a_constraint"]


@database_examples(40)
@given(kinds=st.lists(st.sampled_from(KINDS), min_size=1, max_size=12))
def test_a_trip_stores_what_its_calls_would_store_one_by_one(user: Any, kinds: list[str]) -> None:
    """Whatever its calls do, a trip leaves each caller its own outcome and the database
    as the calls made one by one would; a call that raised is not made again, and one
    that succeeded is made at most twice (again after a failure later in its trip)."""
    Conversation.objects.filter(title__startswith="call ").delete()
    taken = Conversation.objects.create(owner=user, title="taken")
    runs = [0] * len(kinds)

    def call(i: int, kind: str) -> int:
        runs[i] += 1
        if kind == "refuses":
            raise ClientError("refused", f"call {i} refused")
        Conversation.objects.create(
            owner=user,
            title=f"call {i}",
            id=taken.id if kind == "breaks_a_constraint" else uuid.uuid4(),
        )
        if kind == "fails_after_writing":
            raise RuntimeError(f"call {i} failed after writing")
        return i

    outcomes = batches._run([functools.partial(call, i, kind) for i, kind in enumerate(kinds)])

    for i, (kind, outcome) in enumerate(zip(kinds, outcomes, strict=True)):
        if kind == "stores":
            assert (outcome.value, outcome.error) == (i, None)
            assert 1 <= runs[i] <= 2
        else:
            expected = {
                "refuses": ClientError,
                "fails_after_writing": RuntimeError,
                "breaks_a_constraint": IntegrityError,
            }[kind]
            assert isinstance(outcome.error, expected) and runs[i] == 1
    stored = Conversation.objects.filter(title__startswith="call ")
    titles = set(stored.values_list("title", flat=True))
    assert titles == {f"call {i}" for i, kind in enumerate(kinds) if kind == "stores"}
    taken.delete()


async def test_a_trip_whose_calls_all_succeed_takes_no_savepoint(
    django_user_model: Any, commits: list[int], monkeypatch: Any
) -> None:
    """A savepoint per call was two round trips each: a trip is one transaction."""
    owners = await asyncio.to_thread(people, django_user_model, 10)
    savepoints: list[int] = []
    savepoint = BaseDatabaseWrapper.savepoint

    def counted(self: BaseDatabaseWrapper) -> Any:
        savepoints.append(1)
        return savepoint(self)

    monkeypatch.setattr(BaseDatabaseWrapper, "savepoint", counted)
    commits.clear()

    await asyncio.gather(*(ask(owner, f"Question {i}") for i, owner in enumerate(owners)))

    assert store.setups.sizes[-1] == 10
    assert (len(commits), len(savepoints)) == (1, 0)
