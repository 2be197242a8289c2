"""The relay's database work, one call per step of an answer's life.

Each function is synchronous and does its step in one transaction, so a turn
costs one thread hop to set up, one per checkpoint, and one to finish. They run
in Channels' database thread (``database_sync_to_async``), except turn setups and
the check of the others' heartbeats, which off SQLite have threads of their own;
setups and endings that arrive together share a hop and a commit
(``chat.batches``): a busy second costs a few transactions, not hundreds.
"""

from __future__ import annotations

import functools
import logging
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, NotRequired, TypedDict, Unpack, cast

from django.db import DatabaseError, IntegrityError, connection, models, transaction
from django.db.models import F
from django.utils import timezone

from chat import liveness
from chat.batches import Batch, in_db_thread, ready_kept_connection
from chat.conf import conf
from chat.cursors import kept_cursor
from chat.exceptions import ClientError, ConversationBusy, SessionEnded
from chat.models import (
    Conversation,
    DailyUsage,
    Message,
    Owner,
    Process,
    active_path,
    last_shown_leaf_under,
)
from chat.usage import Usage

logger = logging.getLogger(__name__)

TITLE_WORDS = 8


#: Where the check of the others' heartbeats runs: behind hundreds of turns queued on
#: Channels' one database thread it would come late (the heartbeat itself has a thread
#: of its own: ``chat.liveness.Heart``), and on a connection of its own kept open: one
#: opened per call, twice a second in every process, is what a primary behind hundreds
#: of processes would spend its time accepting. On SQLite, Channels' thread: a second
#: connection writing beside the first can make SQLite refuse a turn's write at once
#: ("database is locked"), and a process on SQLite has no peers waiting on it anyway.
liveness_checks = Batch("liveness", lanes=1)

# A function on one of these batches runs whole or not at all, alone or in a trip
# (``chat.batches``): it opens no ``atomic`` block of its own.

#: Turn setups (new questions, edits, answers again), made together when several wait;
#: off SQLite four trips at once: a turn's first token waits for its setup's round trips.
setups = Batch("turn setups", lanes=4)
#: Answers' final saves and titles, made together when several wait.
endings = Batch("answer endings")


@dataclass(slots=True)
class Turn:
    """A started turn: the stored messages and the history to send upstream."""

    conversation: Conversation
    created: bool
    user_message: Message | None  # None when an answer is regenerated
    assistant_message: Message
    history: list[dict[str, str]] = field(default_factory=list)
    versions: dict[uuid.UUID, list[str]] = field(default_factory=dict)
    budget: int | None = None  # tokens this answer may spend, if the user has a daily budget
    #: The active path before the answer, oldest first: the question last.
    path: list[Message] = field(default_factory=list)


@dataclass(slots=True)
class Transcript:
    """What a page shows of a conversation: its active path, and each step's versions."""

    conversation: Conversation
    path: list[Message]
    versions: dict[uuid.UUID, list[str]]


def _not_found() -> ClientError:
    # The same answer whether the id does not exist or belongs to someone else.
    return ClientError("not_found", "No such conversation.")


def title_from(content: str) -> str:
    """A provisional title: the first words of the question."""
    words = content.split()
    title = " ".join(words[:TITLE_WORDS])
    if len(words) > TITLE_WORDS:
        title += "…"
    return title[:200]


def check_limits(owner: Owner) -> int | None:
    """Refuse a turn past the user's limits (checked in the database: every process agrees).

    Returns the tokens left in the user's daily budget, or None without a budget.
    """
    running, recent = _answer_counts(owner, since=timezone.now() - timedelta(minutes=1))
    limit = conf.CHAT_MAX_RUNNING_ANSWERS
    if running >= limit:
        raise ClientError(
            "too_many_answers",
            f"You already have {limit} answers being written; wait for one to finish or stop it.",
        )
    per_minute = conf.CHAT_TURNS_PER_MINUTE
    if recent >= per_minute:
        raise ClientError(
            "slow_down",
            f"You can send {per_minute} messages a minute; try again in a moment.",
        )
    budget = conf.CHAT_DAILY_TOKEN_BUDGET
    if budget is None:
        return None
    left = budget - tokens_today(owner.key)
    if left <= 0:
        raise ClientError(
            "budget_exhausted",
            f"You have used your {budget} tokens for today; the budget renews at midnight.",
        )
    return left


def _answer_counts(owner: Owner, *, since: datetime) -> tuple[int, int]:
    """``owner``'s answers being written, and answers asked since ``since``.

    One statement, written out: the ORM compiled these two counts anew on every
    turn, a third of a turn's setup. Two counts, not one OR-ed query, each read
    through the owner's conversations: their answers being written by the
    streaming answers' own index (one probe a conversation, a scalar subquery
    that no database turns into a join), their recent ones by the conversation's
    messages by time. Counted from the streaming answers instead, as a join
    ordered by the status statistics may do, a turn's cost grows with everyone's
    answers being written (20 ms a turn at 9,450 of them, 0.1 ms read through the
    owner). The owner as ``Message.objects.owned_by``.
    """
    params: list[Any]
    if owner.user_id is not None:
        whose, params = f"{_q(_owner_column)} = %s", [owner.user_id]
    elif owner.session_key:
        whose = f"{_q(_owner_column)} IS NULL AND {_q('session_key')} = %s"
        params = [owner.session_key]
    else:
        return 0, 0
    sql = _counts_statement(whose, connection.vendor)
    created = Message._meta.get_field("created_at")
    assert isinstance(created, models.DateTimeField)
    assistant: Any = Message.Roles.ASSISTANT.value
    since_value = created.get_db_prep_value(since, connection)
    cursor = kept_cursor(connection)
    cursor.execute(sql, [assistant, *params, assistant, *params, since_value])
    running, recent = cursor.fetchone()
    return int(running), int(recent)


@functools.cache
def _counts_statement(whose: str, vendor: str) -> str:
    """The two counts of ``_answer_counts`` for owners matched by ``whose`` (made once)."""
    conversations, messages = _q(Conversation._meta.db_table), _q(Message._meta.db_table)
    streaming = Message.Statuses.STREAMING.value
    # Written into the statement, not a parameter: the partial index on streaming
    # answers serves only a query whose condition provably matches its own.
    assert streaming.isalpha()
    running_in_one = (
        f"SELECT COUNT(*) FROM {messages} "
        f"WHERE {messages}.{_q(_conversation_column)} = {conversations}.{_q('id')} "
        f"AND {messages}.{_q('status')} = '{streaming}' AND {messages}.{_q('role')} = %s"
    )
    recent = (
        f"SELECT COUNT(*) FROM {messages} WHERE {_q('role')} = %s "
        f"AND {_q(_conversation_column)} IN (SELECT {_q('id')} FROM {conversations} WHERE {whose}) "
        f"AND {_q('created_at')} >= %s"
    )
    return (
        f"SELECT (SELECT COALESCE(SUM(({running_in_one})), 0) FROM {conversations} "
        f"WHERE {whose}), ({recent})"
    )


def _q(name: str) -> str:
    return connection.ops.quote_name(name)


def insert(rows: Sequence[models.Model]) -> None:
    """Insert ``rows`` of one model, their ids made already, in one statement.

    What ``bulk_create`` stores, by Django's own field methods (``pre_save`` fills
    the ``auto_now`` times, ``get_db_prep_save`` makes each value the database's),
    without compiling the statement anew each time: the ORM's compiling was most
    of a turn's inserts (``python -m bench.ab setup``). Like ``bulk_create``, it
    sends no ``pre_save``/``post_save`` signals (``chat.signals`` tells of turns).
    """
    sql, fields = _insert_statement(type(rows[0]), len(rows), connection.vendor)
    values = [f.get_db_prep_save(f.pre_save(row, True), connection) for row in rows for f in fields]
    kept_cursor(connection).execute(sql, values)
    for row in rows:  # saved, as bulk_create leaves them
        row._state.adding = False
        row._state.db = connection.alias


def update(model: type[models.Model], pk: Any, values: dict[str, Any]) -> int:
    """Set ``values`` (field names to plain values) on one row; return how many rows changed.

    What ``filter(pk=pk).update(**values)`` stores, by the fields' own
    ``get_db_prep_save``, with the statement made once per set of fields: an
    answer's final save names the same fields every time.
    """
    sql, fields, key = _update_statement(model, tuple(values), connection.vendor)
    prepared = [f.get_db_prep_save(values[f.name], connection) for f in fields]
    cursor = kept_cursor(connection)
    cursor.execute(sql, [*prepared, key.get_db_prep_value(pk, connection)])
    return int(cursor.rowcount)


@functools.cache
def _update_statement(
    model: type[models.Model], names: tuple[str, ...], vendor: str
) -> tuple[str, list[models.Field[Any, Any]], models.Field[Any, Any]]:
    """The UPDATE of these fields of one row of ``model`` by its key (made once): the
    statement, the fields it sets, and the key's field (to prepare the key)."""
    fields = [cast("models.Field[Any, Any]", model._meta.get_field(name)) for name in names]
    assignments = ", ".join(f"{_q(cast(str, f.column))} = %s" for f in fields)
    key = model._meta.pk
    assert key is not None
    where = _q(cast(str, key.column))
    return f"UPDATE {_q(model._meta.db_table)} SET {assignments} WHERE {where} = %s", fields, key


@functools.cache
def _insert_statement(
    model: type[models.Model], count: int, vendor: str
) -> tuple[str, list[models.Field[Any, Any]]]:
    """The INSERT of ``count`` rows of ``model``, quoted for ``vendor`` (made once)."""
    fields = [f for f in model._meta.local_concrete_fields if isinstance(f, models.Field)]
    row = f"({', '.join(['%s'] * len(fields))})"
    columns = ", ".join(_q(cast(str, f.column)) for f in fields)  # concrete: a column each
    table = _q(model._meta.db_table)
    return f"INSERT INTO {table} ({columns}) VALUES {', '.join([row] * count)}", fields


_owner_column = Conversation._meta.get_field("owner").column
_conversation_column = Message._meta.get_field("conversation").column


def tokens_today(owner_key: str) -> int:
    row = DailyUsage.objects.filter(owner_key=owner_key, day=timezone.localdate()).first()
    return row.total_tokens if row is not None else 0


def record_usage(owner_key: str, usage: Usage, *, answers: int) -> None:
    """Add to the owner's total for today (in the caller's transaction).

    One statement on PostgreSQL and SQLite: an insert of the day's row that adds
    to it where it exists (``ON CONFLICT ... DO UPDATE``, also right under a race
    with another process's first answer of the day). Elsewhere an UPDATE, and for
    the day's first answer an INSERT (a race with another process's is caught
    and added to).
    """
    today = timezone.localdate()
    estimated = usage.total_tokens if usage.estimated else 0
    if connection.vendor in UPSERTS:
        day = DailyUsage._meta.get_field("day").get_db_prep_value(today, connection)
        row = [owner_key, Owner.from_key(owner_key).user_id, day, usage.prompt_tokens]
        kept_cursor(connection).execute(
            _usage_upsert(connection.vendor), [*row, usage.completion_tokens, estimated, answers]
        )
        return
    increments = {
        "prompt_tokens": F("prompt_tokens") + usage.prompt_tokens,
        "completion_tokens": F("completion_tokens") + usage.completion_tokens,
        "estimated_tokens": F("estimated_tokens") + estimated,
        "answers": F("answers") + answers,
    }
    if DailyUsage.objects.filter(owner_key=owner_key, day=today).update(**increments):
        return
    try:
        with transaction.atomic():
            DailyUsage.objects.create(
                owner_key=owner_key,
                user_id=Owner.from_key(owner_key).user_id,
                day=today,
                prompt_tokens=usage.prompt_tokens,
                completion_tokens=usage.completion_tokens,
                estimated_tokens=estimated,
                answers=answers,
            )
    except IntegrityError:
        DailyUsage.objects.filter(owner_key=owner_key, day=today).update(**increments)


#: The databases whose INSERT takes ``ON CONFLICT (...) DO UPDATE`` (SQLite since 3.24).
UPSERTS = ("postgresql", "sqlite")
_ADDED = ("prompt_tokens", "completion_tokens", "estimated_tokens", "answers")


@functools.cache
def _usage_upsert(vendor: str) -> str:
    """The upsert's statement, quoted for ``vendor``'s database (made once)."""
    table = _q(DailyUsage._meta.db_table)
    columns = ["owner_key", DailyUsage._meta.get_field("user").column, "day", *_ADDED]
    added = ", ".join(f"{_q(c)} = {table}.{_q(c)} + excluded.{_q(c)}" for c in _ADDED)
    return (
        f"INSERT INTO {table} ({', '.join(_q(c) for c in columns)}) "
        f"VALUES ({', '.join(['%s'] * len(columns))}) "
        f"ON CONFLICT ({_q('owner_key')}, {_q('day')}) DO UPDATE SET {added}"
    )


def versions_of(messages: list[Message], path: list[Message]) -> dict[uuid.UUID, list[str]]:
    """For each message of ``path``: its versions (itself and its siblings), oldest first."""
    children: dict[uuid.UUID | None, list[Message]] = {}
    for m in messages:
        children.setdefault(m.parent_id, []).append(m)
    return {
        m.id: [str(v.id) for v in sorted(children[m.parent_id], key=lambda v: v.created_at)]
        for m in path
    }


def _history(path: list[Message], system_prompt: str) -> list[dict[str, str]]:
    history = [{"role": "system", "content": system_prompt}] if system_prompt else []
    # Stopped and interrupted answers were seen by the user, so they are part of
    # the context; empty ones (failed before a token) would only confuse the model.
    history += [{"role": m.role, "content": m.content} for m in path if m.content]
    return history


def _lock_idle(owner: Owner, conversation_id: uuid.UUID) -> tuple[Conversation, list[Message]]:
    """``owner``'s conversation, locked, with its messages; refused while an answer runs in it."""
    # The row lock serializes two turns racing into one conversation.
    conversation = (
        Conversation.objects.owned_by(owner).select_for_update().filter(pk=conversation_id).first()
    )
    if conversation is None:
        raise _not_found()
    messages = list(conversation.messages.all())
    running = next((m for m in messages if m.status == Message.Statuses.STREAMING), None)
    if running is not None:
        raise ConversationBusy(running.id)
    return conversation, messages


def _owned_message(owner: Owner, message_id: uuid.UUID, role: str) -> Message:
    message = Message.objects.owned_by(owner).filter(pk=message_id, role=role).first()
    if message is None:
        raise ClientError("not_found", "No such message.")
    return message


@dataclass(frozen=True, slots=True)
class Asking:
    """How a new answer is asked for: the model, the system prompt, the tokens left today."""

    model: str
    system_prompt: str
    budget: int | None


def _turn(
    conversation: Conversation,
    messages: list[Message],
    parent: Message | None,
    asking: Asking,
    *,
    question: str | None,
    created: bool = False,
) -> Turn:
    """Store ``question`` after ``parent`` and an empty ``streaming`` answer to it.

    With no ``question``, ``parent`` is the question answered again. The answer
    becomes the end of the active path, and the history is that path before it.
    """
    asked = None
    if question is not None:
        asked = Message(
            conversation=conversation, parent=parent, role=Message.Roles.USER, content=question
        )
    answer = Message(
        conversation=conversation,
        parent=asked or parent,
        role=Message.Roles.ASSISTANT,
        status=Message.Statuses.STREAMING,
        model=asking.model,
        runner=liveness.process_id(),  # the process that stores the turn runs its answer
    )
    new = [m for m in (asked, answer) if m is not None]
    messages += new
    # The ids are made here, so rows can point at rows not inserted yet: both
    # messages go in one INSERT, and where the database checks foreign keys at
    # commit a new conversation is inserted with its leaf already (each write
    # saved is one less in Channels' one database thread, where turns queue).
    if created:
        deferred = connection.features.can_defer_constraint_checks
        conversation.current_leaf = answer if deferred else None
        insert([conversation])
    insert(new)
    if conversation.current_leaf_id != answer.id:
        conversation.current_leaf = answer
        conversation.save(update_fields=["current_leaf", "updated_at"])
    path = active_path(messages, answer.id)
    history = _history(path[:-1], asking.system_prompt)
    return Turn(
        conversation,
        created,
        asked,
        answer,
        history,
        versions_of(messages, new),
        asking.budget,
        path=path[:-1],
    )


def _check(still_allowed: Callable[[], bool] | None) -> None:
    """A turn's first step: the caller's check that the user may still chat (the session).

    Done in the turn's own database call: one thread hop a turn, not two (turns
    queue on Channels' one database thread).
    """
    if still_allowed is not None and not still_allowed():
        raise SessionEnded("Your session ended (logged out): log in again to chat.")


@setups.of
def start_turn(
    owner: Owner,
    conversation_id: uuid.UUID | None,
    content: str,
    *,
    parent_id: uuid.UUID | None = None,
    model: str,
    system_prompt: str,
    still_allowed: Callable[[], bool] | None = None,
) -> Turn:
    """Store the user's message and an empty ``streaming`` answer; return the history.

    The question follows ``parent_id`` (an answer the page shows last), or the
    end of the active path when the page does not say.
    """
    _check(still_allowed)
    asking = Asking(model, system_prompt, check_limits(owner))
    if conversation_id is None:
        conversation = Conversation(
            owner_id=owner.user_id,
            session_key="" if owner.user_id is not None else owner.session_key,
            title=title_from(content),
            model=model,
        )
        return _turn(conversation, [], None, asking, question=content, created=True)
    conversation, messages = _lock_idle(owner, conversation_id)
    if parent_id is None:
        path = active_path(messages, conversation.current_leaf_id)
        parent = path[-1] if path else None
    else:
        parent = next((m for m in messages if m.id == parent_id), None)
        if parent is None or parent.role != Message.Roles.ASSISTANT:
            raise ClientError("not_found", "No such answer to follow in this conversation.")
    return _turn(conversation, messages, parent, asking, question=content)


class TurnOptions(TypedDict):
    """How a new version's answer is asked for (the keywords ``start_turn`` takes too)."""

    model: str
    system_prompt: str
    still_allowed: NotRequired[Callable[[], bool] | None]


@setups.of
def edit_turn(
    owner: Owner, message_id: uuid.UUID, content: str, **options: Unpack[TurnOptions]
) -> Turn:
    """Ask an edited version of a question: a new branch beside the original, which is kept."""
    return _new_version(owner, message_id, Message.Roles.USER, content, **options)


@setups.of
def regenerate_turn(owner: Owner, message_id: uuid.UUID, **options: Unpack[TurnOptions]) -> Turn:
    """Answer the same question again: a new answer beside the old one, which is kept."""
    return _new_version(owner, message_id, Message.Roles.ASSISTANT, None, **options)


def _new_version(
    owner: Owner,
    message_id: uuid.UUID,
    role: str,
    question: str | None,
    *,
    model: str,
    system_prompt: str,
    still_allowed: Callable[[], bool] | None = None,
) -> Turn:
    """A new version of ``owner``'s message ``message_id``, after the same parent.

    The edited ``question`` and its answer, or with no ``question`` (the message
    is an answer), the parent question answered again.
    """
    _check(still_allowed)
    asking = Asking(model, system_prompt, check_limits(owner))
    original = _owned_message(owner, message_id, role)
    conversation, messages = _lock_idle(owner, original.conversation_id)
    parent = next((m for m in messages if m.id == original.parent_id), None)
    return _turn(conversation, messages, parent, asking, question=question)


@in_db_thread
def switch_branch(owner: Owner, message_id: uuid.UUID) -> uuid.UUID:
    """Show the branch through ``message_id``, down the replies last shown with it.

    Every message of the new path is marked shown now, so that coming back to
    any version of it later returns to this path. Returns the conversation.
    """
    with transaction.atomic():
        message = Message.objects.owned_by(owner).filter(pk=message_id).first()
        if message is None:
            raise ClientError("not_found", "No such message.")
        messages = list(Message.objects.filter(conversation_id=message.conversation_id))
        leaf = last_shown_leaf_under(messages, message)
        path = [m.pk for m in active_path(messages, leaf.id)]
        Message.objects.filter(pk__in=path).update(shown_at=timezone.now())
        Conversation.objects.filter(pk=message.conversation_id).update(current_leaf=leaf)
    return message.conversation_id


Checkpoint = tuple[uuid.UUID, str, str]  # message id, answer so far, reasoning so far


@in_db_thread
def save_checkpoints(rows: list[Checkpoint]) -> None:
    """Save the text of many streaming answers in one transaction.

    One ``executemany`` rather than an ORM update per answer: this runs every
    interval for every running answer in the process. Only rows still
    ``streaming`` are touched, so a checkpoint never overwrites a final save.
    """
    field = Message._meta.get_field
    id_field, updated_field = Message._meta.pk, field("updated_at")
    assert isinstance(id_field, models.UUIDField) and isinstance(updated_field, models.Field)
    q = connection.ops.quote_name
    sql = (
        f"UPDATE {q(Message._meta.db_table)} SET {q('content')} = %s, {q('reasoning')} = %s, "
        f"{q('updated_at')} = %s WHERE {q('id')} = %s AND {q('status')} = %s"
    )
    now = updated_field.get_db_prep_value(timezone.now(), connection)
    params = [
        (text, reasoning, now, id_field.get_db_prep_value(mid, connection), "streaming")
        for mid, text, reasoning in rows
    ]
    try:
        with transaction.atomic(), connection.cursor() as cursor:
            cursor.executemany(sql, params)
    except DatabaseError:
        # One row the database refuses must not cost every other answer its
        # checkpoint (nor this one its later ones): each row alone, then.
        logger.warning("A batch of %d checkpoints failed; saving them one by one", len(rows))
        for row in params:
            try:
                with transaction.atomic(), connection.cursor() as cursor:
                    cursor.execute(sql, row)
            except DatabaseError:
                logger.exception("Could not checkpoint message %s", row[3])


def beat_now(process_id: uuid.UUID, host: str, pid: int) -> None:
    """This process is alive: renew its heartbeat row (made on the first beat)."""
    ready_kept_connection()  # the heart's thread keeps its connection
    now = timezone.now()
    if not Process.objects.filter(pk=process_id).update(seen_at=now):
        Process.objects.create(id=process_id, host=host[:255], pid=pid, seen_at=now)


#: The beat on SQLite, in the database thread (elsewhere ``liveness.heart`` beats).
beat = in_db_thread(beat_now)


def beats_in_a_thread() -> bool:
    """Whether the heartbeat gets a thread and connection of its own (not on SQLite:
    see ``liveness_checks``)."""
    return connection.vendor != "sqlite"


def close_connection() -> None:
    """Close this thread's database connection (a thread of our own, when it ends)."""
    connection.close()


@in_db_thread
def forget_process(process_id: uuid.UUID) -> None:
    """This process stops cleanly, its answers saved: it is not a dead one."""
    Process.objects.filter(pk=process_id).delete()


def _interrupt_orphans(
    *,
    older_than: float,
    running: list[uuid.UUID],
    detail: str,
    message_id: uuid.UUID | None = None,
    silent_for: float | None = None,
) -> list[Message]:
    """Mark ``streaming`` answers untouched for ``older_than`` seconds as ``interrupted``.

    With ``message_id``, only that answer, however recently it was touched: no
    process claimed it (a ``stop``, or a turn refused as ``busy``, found it orphaned).
    With ``silent_for``, only the answers of processes whose heartbeat is older than
    that (their rows are then deleted): a process killed outright.
    """
    now = timezone.now()
    streaming = Message.objects.select_for_update().filter(status=Message.Statuses.STREAMING)
    dead: list[uuid.UUID] = []
    if message_id is not None:
        streaming = streaming.filter(pk=message_id)
    elif silent_for is not None:
        silent = Process.objects.filter(seen_at__lt=now - timedelta(seconds=silent_for))
        dead = list(silent.exclude(pk=liveness.process_id()).values_list("pk", flat=True))
        if not dead:
            return []
        streaming = streaming.filter(runner__in=dead)
    else:
        streaming = streaming.filter(updated_at__lt=now - timedelta(seconds=older_than))
    with transaction.atomic():
        orphans = list(streaming.exclude(pk__in=running))
        for orphan in orphans:
            # No usage chunk ever came: estimate it from the text saved and the context.
            conversation = orphan.conversation = Conversation.objects.get(pk=orphan.conversation_id)
            earlier = list(conversation.messages.all())
            history = _history(active_path(earlier, orphan.parent_id), "")
            usage = Usage.of((None, None), history, orphan.content)
            fields = {
                "status": Message.Statuses.INTERRUPTED,
                "error_code": "interrupted",
                "error_detail": detail,
                "updated_at": timezone.now(),
                **_usage_fields(usage),
                # Its process kept the rest of the timeline in memory, and is gone.
                "timeline": [
                    {"at": timezone.now().isoformat(), "event": "interrupted", "detail": detail}
                ],
            }
            Message.objects.filter(pk=orphan.pk).update(**fields)
            for name, value in fields.items():
                setattr(orphan, name, value)  # as the watchers' ``done`` tells it
            owner = Owner(user_id=conversation.owner_id, session_key=conversation.session_key)
            record_usage(owner.key, usage, answers=1)
        Process.objects.filter(pk__in=dead).delete()
    return orphans


interrupt_orphans = in_db_thread(_interrupt_orphans)
#: The same, for the answers of dead processes: beside the queue, like the heartbeat.
interrupt_dead_processes = liveness_checks.of(_interrupt_orphans)


@endings.of
def finish_message(
    message_id: uuid.UUID,
    *,
    owner_key: str,
    usage: Usage,
    **fields: Any,
) -> None:
    """Store an answer's final text, status, usage and timings; add its tokens to the day's."""
    update(
        Message,
        message_id,
        {"updated_at": timezone.now(), **_usage_fields(usage), **_fitted(fields)},
    )
    record_usage(owner_key, usage, answers=1)


@endings.of
def set_title(conversation_id: uuid.UUID, title: str, *, owner_key: str, usage: Usage) -> None:
    """Store a conversation's title (if any) and count the tokens it cost."""
    if title:
        update(Conversation, conversation_id, {"title": title[:200]})
    record_usage(owner_key, usage, answers=0)


@in_db_thread
def load_conversation(owner: Owner, conversation_id: uuid.UUID) -> Transcript:
    conversation = Conversation.objects.owned_by(owner).filter(pk=conversation_id).first()
    if conversation is None:
        raise _not_found()
    messages = list(conversation.messages.all())
    path = active_path(messages, conversation.current_leaf_id)
    return Transcript(conversation, path, versions_of(messages, path))


@in_db_thread
def load_message(owner: Owner, message_id: uuid.UUID) -> Message | None:
    """``owner``'s message with this id, or None (also when it is someone else's)."""
    return Message.objects.owned_by(owner).filter(pk=message_id).first()


@in_db_thread
def ended_answers(message_ids: list[uuid.UUID]) -> list[Message]:
    """Those of these answers that ended: a watcher elsewhere may have missed their ``done``."""
    return list(
        Message.objects.filter(pk__in=message_ids).exclude(status=Message.Statuses.STREAMING)
    )


@in_db_thread
def load_message_anyones(message_id: uuid.UUID) -> Message | None:
    """The message with this id whoever owns it (for the server's own checks, never shown)."""
    return Message.objects.filter(pk=message_id).first()


def _fitted(fields: dict[str, Any]) -> dict[str, Any]:
    """Strings cut to their column's length: what the upstream names (a model, a finish
    reason) may be longer than the column, and PostgreSQL refuses what SQLite takes."""
    fitted = {}
    for name, value in fields.items():
        limit = getattr(Message._meta.get_field(name), "max_length", None)
        fitted[name] = value[:limit] if isinstance(value, str) and limit else value
    return fitted


def _usage_fields(usage: Usage) -> dict[str, Any]:
    """A message's usage columns."""
    return {
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.total_tokens,
        "usage_estimated": usage.estimated,
    }


def as_duration(seconds: float | None) -> timedelta | None:
    return None if seconds is None else timedelta(seconds=seconds)
