"""A connection's cursor for the relay's own statements, kept while the connection lives.

Django makes a new cursor for every ``connection.cursor()``: a driver cursor with
its adapters, Django's wrapper, the connection checks. The relay makes ten or so
statements an answer (its turn's session check and rows, the final save, the
title, the usage), each written out once (``chat.store``), and making their cursor
was 37 µs of the 91 µs of CPU a statement cost on PostgreSQL (``SELECT %s``,
kept against new). ``kept_cursor`` makes one per connection and hands it back
while the connection is the same. Statements still go through Django's wrapper:
its error translation, and the project's ``execute_wrappers`` and any
instrumentation patched onto it (tracing, query counts) see every one; while
queries are captured (``CaptureQueriesContext``, ``assertNumQueries``, ``DEBUG``)
it is a logging cursor, as Django would make it.

A kept cursor holds the result of its last statement only: read it (``fetchone``,
``rowcount``) before the next statement on the connection, as every caller here does.
"""

from __future__ import annotations

from django.db.backends.base.base import BaseDatabaseWrapper
from django.db.backends.utils import CursorDebugWrapper, CursorWrapper

_KEPT = "_chat_kept_cursor"


def kept_cursor(using: BaseDatabaseWrapper) -> CursorWrapper:
    """``using.cursor()``, made once per connection (``using`` is the thread's own)."""
    kept: CursorWrapper | None = getattr(using, _KEPT, None)  # (``using`` may be a proxy)
    if (
        kept is None
        # Closed (``cursor()`` connects again), or connected again since it was made.
        or kept.cursor.connection is not using.connection
        or isinstance(kept, CursorDebugWrapper) is not using.queries_logged
    ):
        kept = using.cursor()
        setattr(using, _KEPT, kept)
    return kept
