"""A turn's rows, inserted and updated by the store's own statements, are what Django's ORM
would store."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from django.db import transaction
from hypothesis import given
from hypothesis import strategies as st

from chat import store
from chat.models import Conversation, Message
from tests.conftest import database_examples

pytestmark = pytest.mark.django_db(transaction=True)

# What a person or an upstream may put in a turn's rows (no NUL: SQLite and
# PostgreSQL differ there, and the store cleans it before; tests/test_scale_out.py).
texts = st.text(st.characters(exclude_characters="\x00", exclude_categories=("Cs",)), max_size=300)
RUNNER = uuid.UUID("7d2c1a34-5e6f-4a8b-9c0d-1e2f3a4b5c6d")
SHOWN = datetime(2026, 12, 2, 12, 0, 0, 123456, tzinfo=UTC)


def stored(model: type[Any], pk: uuid.UUID) -> dict[str, Any]:
    """A row as the database gives it back, less its id and the times it was made."""
    row = model.objects.filter(pk=pk).values().get()
    return {k: v for k, v in row.items() if k not in {"id", "created_at", "updated_at"}}


def turn_rows(user: Any, title: str, question: str, model: str) -> list[Any]:
    conversation = Conversation(owner=user, title=title[:200], model=model[:200])
    asked = Message(
        conversation=conversation, role=Message.Roles.USER, content=question, shown_at=SHOWN
    )
    answer = Message(
        conversation=conversation,
        parent=asked,
        role=Message.Roles.ASSISTANT,
        status=Message.Statuses.STREAMING,
        model=model[:200],
        runner=RUNNER,
        timeline=[{"event": "started", "detail": question}],
        shown_at=SHOWN,
    )
    conversation.current_leaf = answer
    return [conversation, asked, answer]


@database_examples(25)
@given(title=texts, question=texts, model=texts)
def test_the_store_inserts_a_turn_as_bulk_create_would(
    user: Any, title: str, question: str, model: str
) -> None:
    ours, django = turn_rows(user, title, question, model), turn_rows(user, title, question, model)
    with transaction.atomic():  # the conversation points at its answer: checked at commit
        store.insert(ours[:1])
        store.insert(ours[1:])
        Conversation.objects.bulk_create(django[:1])
        Message.objects.bulk_create(django[1:])
    for mine, theirs in zip(ours, django, strict=True):
        expected = stored(type(theirs), theirs.pk)
        for name in ("conversation_id", "parent_id", "current_leaf_id"):
            if name in expected:  # the same shape, each pointing within its own turn
                index = [r.pk for r in django].index(expected[name]) if expected[name] else None
                expected[name] = ours[index].pk if index is not None else None
        assert stored(type(mine), mine.pk) == expected


def test_inserted_rows_have_their_times_and_are_saved_afterwards_not_inserted_again(
    user: Any,
) -> None:
    conversation, asked, answer = turn_rows(user, "A title", "Hello?", "gpt-test")
    with transaction.atomic():
        store.insert([conversation])
        store.insert([asked, answer])
    fresh = Message.objects.get(pk=answer.pk)
    assert fresh.created_at is not None and fresh.updated_at is not None
    assert fresh.created_at == answer.created_at  # pre_save set them on the objects too

    answer.content = "Hi."
    answer.save()  # an UPDATE: the object knows it is stored
    assert Message.objects.filter(conversation=conversation).count() == 2
    assert Message.objects.get(pk=answer.pk).content == "Hi."


durations = st.none() | st.timedeltas(min_value=timedelta(0), max_value=timedelta(hours=2))


@database_examples(25)
@given(
    content=texts,
    detail=texts,
    tokens=st.none() | st.integers(min_value=0, max_value=2**31 - 1),
    first=durations,
    duration=durations,
    status=st.sampled_from(Message.Statuses.values),
)
def test_the_store_updates_an_answer_as_the_orm_would(
    user: Any,
    content: str,
    detail: str,
    tokens: int | None,
    first: timedelta | None,
    duration: timedelta | None,
    status: str,
) -> None:
    answers = []
    for _ in range(2):
        rows = turn_rows(user, "A title", "Hello?", "gpt-test")
        with transaction.atomic():
            store.insert(rows[:1])
            store.insert(rows[1:])
        answers.append(rows[2])
    values = {
        "content": content,
        "status": status,
        "error_detail": detail,
        "completion_tokens": tokens,
        "time_to_first_token": first,
        "duration": duration,
        "timeline": [{"event": "finished", "detail": detail}],
        "tool_calls": [{"id": "call_1", "arguments": content}],
        "updated_at": SHOWN,
    }
    ours, django = answers
    assert store.update(Message, ours.pk, values) == 1
    Message.objects.filter(pk=django.pk).update(**values)
    mine, theirs = stored(Message, ours.pk), stored(Message, django.pk)
    assert mine.pop("conversation_id") != theirs.pop("conversation_id")  # two turns
    assert mine.pop("parent_id") != theirs.pop("parent_id")
    assert mine == theirs
    assert Message.objects.get(pk=ours.pk).updated_at == SHOWN


def test_an_update_of_a_row_that_is_not_there_changes_nothing(user: Any) -> None:
    assert store.update(Message, uuid.uuid4(), {"content": "Hi."}) == 0


moments = st.datetimes(
    min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1), timezones=st.just(UTC)
)


@database_examples(25)
@given(
    name=texts.filter(lambda t: 0 < len(t) <= 150),
    email=st.emails(),
    active=st.booleans(),
    last_login=st.none() | moments,
    joined=moments,
)
def test_the_session_check_reads_a_user_as_the_orm_would(
    django_user_model: Any,
    name: str,
    email: str,
    active: bool,
    last_login: datetime | None,
    joined: datetime,
) -> None:
    """What ``ModelBackend.get_user`` reads (``_default_manager.get(pk=...)``), field for
    field, from the session check's one statement (``chat.auth``)."""
    from chat import auth

    django_user_model.objects.filter(username=name).delete()
    made = django_user_model.objects.create(
        username=name,
        email=email,
        first_name=name[:150],
        is_active=active,
        last_login=last_login,
        date_joined=joined,
        password="!",
    )
    theirs = django_user_model._default_manager.get(pk=made.pk)
    ours = auth._read_user(django_user_model, made.pk)

    fields = [f.attname for f in django_user_model._meta.concrete_fields]
    assert ours is not None and type(ours) is type(theirs)
    assert {f: getattr(ours, f) for f in fields} == {f: getattr(theirs, f) for f in fields}
    assert (ours._state.db, ours._state.adding) == (theirs._state.db, theirs._state.adding)
    assert auth._read_user(django_user_model, made.pk + 1_000_000) is None
