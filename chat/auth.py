"""Who a socket chats as, and whether its session still says so.

A socket authenticates once, when it opens (``chat.middleware.SessionAuthMiddleware`` or
Channels' ``AuthMiddlewareStack``).
A logout or a password change later must end it too: every request the page
makes is checked against the session as stored now, and a logout closes this
process's sockets of that session at once (``user_logged_out``).
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Callable
from importlib import import_module
from types import SimpleNamespace
from typing import Any, cast

from django.conf import settings
from django.contrib.auth import (
    BACKEND_SESSION_KEY,
    HASH_SESSION_KEY,
    SESSION_KEY,
    get_user,
    get_user_model,
    load_backend,
)
from django.contrib.auth.backends import ModelBackend
from django.contrib.auth.models import AnonymousUser
from django.contrib.auth.signals import user_logged_out
from django.contrib.sessions.backends.base import SessionBase
from django.contrib.sessions.backends.db import SessionStore as DatabaseSession
from django.db import connections, models, router
from django.db.models.manager import BaseManager
from django.http import HttpRequest
from django.utils import timezone
from django.utils.crypto import constant_time_compare

from chat.batches import in_db_thread
from chat.conf import conf
from chat.cursors import kept_cursor
from chat.exceptions import NotAllowed
from chat.models import Owner
from chat.permissions import can_chat

logger = logging.getLogger(__name__)


def owner(user: Any, session: Any) -> Owner | None:
    """Who chats with this user and session (a page or a socket), or None if nobody may.

    A logged-in user; else, with ``CHAT_ALLOW_ANONYMOUS``, the session itself.
    """
    if user is not None and user.is_authenticated:
        return Owner(user_id=user.pk)
    key = session.session_key if session is not None else None
    if conf.CHAT_ALLOW_ANONYMOUS and key:
        return Owner(user_id=None, session_key=key)
    return None


def owner_of(scope: dict[str, Any]) -> Owner | None:
    """Who this socket chats as, or None if it may not chat."""
    return owner(scope.get("user"), scope.get("session"))


def session_is_current(scope: dict[str, Any], owner: Owner) -> bool:
    """Whether the socket's session, read afresh, still logs in ``owner``, who may still
    chat (database calls: run it in the database thread, with the turn's own work where
    there is one).

    False once the session was logged out (flushed), expired, or its user's
    password changed (Django's session auth hash no longer matches); raises
    ``NotAllowed`` once the project's rule (``CHAT_PERMISSIONS``) says no.
    """
    user = _session_user(scope, owner)
    if user is None:
        return False
    if not can_chat(user):
        raise NotAllowed
    return True


def _session_user(scope: dict[str, Any], owner: Owner) -> Any | None:
    """The user the socket's session logs in now, if it is still ``owner``."""
    session = scope.get("session")
    key = session.session_key if session is not None else None
    if not key:
        return None
    fresh = _stored_session(key)
    if owner.user_id is None:  # anonymous chat: the session is the identity
        return AnonymousUser() if fresh.exists(key) else None
    user = logged_in_user(fresh)
    return user if user.is_authenticated and user.pk == owner.user_id else None


def logged_in_user(session: SessionBase) -> Any:
    """Whom ``session`` logs in now, as ``django.contrib.auth.get_user`` says for a
    request with this session (its user, its backend, the auth hash and its fallbacks).

    Where the session's backend reads users as ``ModelBackend`` does (it or a subclass
    that keeps its ``get_user``, on a user model with a plain default manager), the
    user's row is read by one statement made once: the ORM compiled its query anew on
    every turn, 0.3 ms of a turn's 3 (``python -m bench.ab user``). The rest is
    Django's ``get_user``, line for line: tests hold the two equal.
    """
    path = session.get(BACKEND_SESSION_KEY)
    reader = _user_reader(path) if path in settings.AUTHENTICATION_BACKENDS else None
    if reader is None:  # Django's own, through the backend's own ``get_user``
        return get_user(cast(HttpRequest, SimpleNamespace(session=session)))
    try:
        user_id = get_user_model()._meta.pk.to_python(session[SESSION_KEY])
    except KeyError:
        return AnonymousUser()
    backend = cast(ModelBackend, load_backend(cast(str, path)))
    user = reader(user_id)
    if user is not None and not backend.user_can_authenticate(user):
        user = None
    if hasattr(user, "get_session_auth_hash"):
        session_hash = session.get(HASH_SESSION_KEY)
        if not session_hash:
            session_hash_verified = False
        else:
            session_auth_hash = user.get_session_auth_hash()
            session_hash_verified = constant_time_compare(session_hash, session_auth_hash)
        if not session_hash_verified:
            if session_hash and any(
                constant_time_compare(session_hash, fallback_auth_hash)
                for fallback_auth_hash in user.get_session_auth_fallback_hash()
            ):
                session.cycle_key()
                session[HASH_SESSION_KEY] = session_auth_hash
            else:
                session.flush()
                user = None
    return user or AnonymousUser()


UserReader = Callable[[Any], Any]


@functools.cache
def _user_reader(path: str) -> UserReader | None:
    """A reader of users by primary key that gives what ``ModelBackend.get_user`` reads
    before its ``user_can_authenticate``, if the backend at ``path`` reads them so."""
    backend = load_backend(path)
    model = get_user_model()
    manager = model._default_manager
    if not (
        isinstance(backend, ModelBackend)
        and type(backend).get_user is ModelBackend.get_user
        and type(manager).get_queryset is BaseManager.get_queryset
        and getattr(manager, "_queryset_class", None) is models.QuerySet
        and not model._meta.parents  # one table holds the whole row
        and model._meta.pk is not None
        and model._meta.pk.column is not None  # not a composite key
    ):
        return None
    return functools.partial(_read_user, model)


def _read_user(model: type[models.Model], pk: Any) -> models.Model | None:
    """The user ``pk`` as the ORM's ``model._default_manager.get(pk=pk)`` gives it; None
    if there is none."""
    alias = router.db_for_read(model)
    connection = connections[alias]
    sql, fields, converters = _user_select(model, alias)
    key = model._meta.pk
    assert key is not None
    cursor = kept_cursor(connection)
    cursor.execute(sql, [key.get_db_prep_value(pk, connection)])
    row = cursor.fetchone()
    if row is None:
        return None
    values = list(row)
    for position, (functions, column) in converters:
        value = values[position]
        for convert in functions:
            value = convert(value, column, connection)
        values[position] = value
    return model.from_db(alias, [f.attname for f in fields], values)


@functools.cache
def _user_select(
    model: type[models.Model], alias: str
) -> tuple[str, list[models.Field[Any, Any]], list[tuple[int, tuple[list[Any], Any]]]]:
    """The statement reading a user's row by key (made once per database), its fields,
    and each column's converters as the ORM applies them (a date on SQLite, say)."""
    connection = connections[alias]
    q = connection.ops.quote_name
    fields = list(model._meta.concrete_fields)
    table = model._meta.db_table
    key = model._meta.pk
    assert key is not None
    sql = (
        f"SELECT {', '.join(q(cast(str, f.column)) for f in fields)} FROM {q(table)} "
        f"WHERE {q(cast(str, key.column))} = %s"
    )
    converters = []
    for position, field in enumerate(fields):
        column = field.get_col(table)
        functions = connection.ops.get_db_converters(column) + column.get_db_converters(connection)
        if functions:
            converters.append((position, (functions, column)))
    return sql, fields, converters


def _stored_session(key: str) -> SessionBase:
    """The session ``key`` as stored now, in the project's session engine.

    With Django's database engine, its row is read by one hand-written statement
    and decoded by the engine's own ``decode``: the ORM's query, compiled anew on
    every turn, was a fifth of a turn's setup (``python -m bench.ab session``).
    Any other engine (cached, signed cookies, a project's own) loads as it does.
    """
    engine = import_module(settings.SESSION_ENGINE).SessionStore
    fresh: Any = engine(key)
    if not (issubclass(engine, DatabaseSession) and _loads_as_django_does(engine)):
        return cast(SessionBase, fresh)
    row = None
    if fresh.session_key is not None:  # a key the engine takes (Django validates its shape)
        sql, expires, alias = _session_select(fresh.model)
        using = connections[alias]
        cursor = kept_cursor(using)
        cursor.execute(sql, [fresh.session_key, expires.get_db_prep_value(timezone.now(), using)])
        row = cursor.fetchone()
    # What ``load`` leaves: the decoded data, or nothing and no key (gone or expired).
    fresh._session_cache = fresh.decode(row[0]) if row is not None else {}
    if row is None:
        fresh._session_key = None
    return cast(SessionBase, fresh)


def _loads_as_django_does(engine: type[Any]) -> bool:
    """Whether this database engine loads a session as Django's own does (not overridden)."""
    return all(
        getattr(engine, name) is getattr(DatabaseSession, name)
        for name in ("load", "_get_session_from_db")
    )


@functools.cache
def _session_select(model: Any) -> tuple[str, models.Field[Any, Any], str]:
    """The live session row's data by key (made once): the statement, the expiry field
    (to prepare the time compared), and the database it is read from."""
    alias = router.db_for_read(model)
    q = connections[alias].ops.quote_name
    key, data, expires = (
        model._meta.get_field(n) for n in ("session_key", "session_data", "expire_date")
    )
    sql = (
        f"SELECT {q(data.column)} FROM {q(model._meta.db_table)} "
        f"WHERE {q(key.column)} = %s AND {q(expires.column)} > %s"
    )
    return sql, expires, alias


may_chat = in_db_thread(can_chat)


still_logged_in = in_db_thread(session_is_current)


Ender = Callable[[], None]

# The sockets of each session in this process, and the loop they run on.
_sockets: dict[str, set[Ender]] = {}
_loop: asyncio.AbstractEventLoop | None = None


def track(session_key: str, end: Ender) -> None:
    """Call ``end`` (on the event loop) when this session logs out."""
    global _loop
    _loop = asyncio.get_running_loop()
    _sockets.setdefault(session_key, set()).add(end)


def untrack(session_key: str, end: Ender) -> None:
    enders = _sockets.get(session_key)
    if enders is not None:
        enders.discard(end)
        if not enders:
            del _sockets[session_key]


def end_session(session_key: str) -> int:
    """End this process's sockets of a session; return how many. Safe from any thread."""
    enders = list(_sockets.get(session_key, ()))
    loop = _loop
    if not enders or loop is None or loop.is_closed():
        return 0
    for end in enders:
        loop.call_soon_threadsafe(end)
    return len(enders)


def on_logged_out(sender: Any, request: Any, user: Any, **kwargs: Any) -> None:
    """``user_logged_out``: the page's session is about to be flushed; close its sockets."""
    key = getattr(getattr(request, "session", None), "session_key", None)
    if key and (ended := end_session(key)):
        logger.info("Closing %d socket(s) of a session that logged out", ended)


def connect_signals() -> None:
    user_logged_out.connect(on_logged_out, dispatch_uid="chat.auth.on_logged_out")
