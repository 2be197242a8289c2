"""Checkpoints: one row the database refuses costs no other answer its saved text."""

from __future__ import annotations

from typing import Any

import pytest
from django.db import DatabaseError
from django.db.backends.utils import CursorWrapper

from chat import store
from chat.models import Conversation, Message

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def two_answers(user: Any) -> list[Message]:
    conversation = Conversation.objects.create(owner=user, title="Two")
    return [
        Message.objects.create(conversation=conversation, role="assistant", status="streaming")
        for _ in range(2)
    ]


async def test_a_refused_batch_is_saved_row_by_row(
    two_answers: list[Message], monkeypatch: Any
) -> None:
    def refuse(self: CursorWrapper, sql: str, params: Any) -> None:
        raise DatabaseError("the batch was refused")

    monkeypatch.setattr(CursorWrapper, "executemany", refuse)
    first, second = two_answers
    await store.save_checkpoints([(first.id, "first so far", ""), (second.id, "second", "")])
    assert [m.content async for m in Message.objects.order_by("created_at")] == [
        "first so far",
        "second",
    ]


async def test_a_row_the_database_refuses_does_not_stop_the_others(
    two_answers: list[Message], monkeypatch: Any
) -> None:
    first, second = two_answers
    execute = CursorWrapper.execute

    def refuse_the_first(self: CursorWrapper, sql: str, params: Any = None) -> Any:
        if params and "poison" in params:
            raise DatabaseError("this value cannot be stored")
        return execute(self, sql, params)

    def refuse(self: CursorWrapper, sql: str, params: Any) -> None:
        raise DatabaseError("the batch was refused")

    monkeypatch.setattr(CursorWrapper, "executemany", refuse)
    monkeypatch.setattr(CursorWrapper, "execute", refuse_the_first)
    await store.save_checkpoints([(first.id, "poison", ""), (second.id, "kept", "")])
    contents = {m.id: m.content async for m in Message.objects.all()}
    assert contents == {first.id: "", second.id: "kept"}
