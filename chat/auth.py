"""Who a socket chats as, and whether its session still says so.

A socket authenticates once, when it opens (Channels' ``AuthMiddlewareStack``).
A logout or a password change later must end it too: every request the page
makes is checked against the session as stored now, and a logout closes this
process's sockets of that session at once (``user_logged_out``).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from importlib import import_module
from types import SimpleNamespace
from typing import Any, cast

from django.conf import settings
from django.contrib.auth import get_user
from django.contrib.auth.models import AnonymousUser
from django.contrib.auth.signals import user_logged_out
from django.http import HttpRequest

from chat.batches import in_db_thread
from chat.conf import conf
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
    fresh = import_module(settings.SESSION_ENGINE).SessionStore(key)
    if owner.user_id is None:  # anonymous chat: the session is the identity
        return AnonymousUser() if fresh.exists(key) else None
    # Django's own check (the session's user, its backend, the auth hash and its
    # fallbacks) reads only ``request.session``.
    user = get_user(cast(HttpRequest, SimpleNamespace(session=fresh)))
    return user if user.is_authenticated and user.pk == owner.user_id else None


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
