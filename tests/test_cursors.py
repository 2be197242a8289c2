"""``chat.cursors.kept_cursor``: one cursor per connection for the relay's statements,
which every statement still goes through Django's wrapper to reach."""

from __future__ import annotations

from typing import Any

import pytest
from django.db import IntegrityError, connection, transaction
from django.test.utils import CaptureQueriesContext

from chat import store
from chat.cursors import kept_cursor
from chat.models import Owner

pytestmark = pytest.mark.django_db


@pytest.mark.django_db(transaction=True)
def test_the_same_cursor_serves_a_connection_until_it_is_replaced() -> None:
    first = kept_cursor(connection)
    assert kept_cursor(connection) is first
    first.execute("SELECT %s", [1])
    assert first.fetchone() == (1,)

    # What Django does once the database dropped a connection: it connects again.
    dropped = connection.connection
    connection.connect()
    dropped.close()
    again = kept_cursor(connection)
    assert again is not first
    again.execute("SELECT %s", [2])
    assert again.fetchone() == (2,)


def test_captured_queries_include_a_turns_statements(django_user_model: Any) -> None:
    user = django_user_model.objects.create(username="counted")
    kept_cursor(connection)  # made before the capture: not a logging cursor
    with CaptureQueriesContext(connection) as captured:
        store.start_turn.__wrapped__(  # type: ignore[attr-defined]
            Owner(user_id=user.pk), None, "Counted?", model="m", system_prompt=""
        )
    written = [q["sql"] for q in captured.captured_queries if q["sql"].startswith("INSERT")]
    assert len(written) == 2  # the conversation, then both messages in one statement
    assert "SELECT (SELECT COALESCE" in captured.captured_queries[0]["sql"]  # the limits


def test_the_projects_execute_wrappers_see_every_statement() -> None:
    seen: list[str] = []

    def wrapper(execute: Any, sql: str, params: Any, many: bool, context: Any) -> Any:
        seen.append(sql)
        return execute(sql, params, many, context)

    with connection.execute_wrapper(wrapper):
        kept_cursor(connection).execute("SELECT %s", [3])
    assert seen == ["SELECT %s"]


def test_a_statement_the_database_refuses_leaves_the_cursor_usable() -> None:
    cursor = kept_cursor(connection)
    cursor.execute("CREATE TABLE kept_test (id integer PRIMARY KEY)")
    cursor.execute("INSERT INTO kept_test (id) VALUES (%s)", [1])
    with pytest.raises(IntegrityError), transaction.atomic():  # Django's error, translated
        kept_cursor(connection).execute("INSERT INTO kept_test (id) VALUES (%s)", [1])
    cursor = kept_cursor(connection)
    cursor.execute("SELECT COUNT(*) FROM kept_test")
    assert cursor.fetchone() == (1,)
