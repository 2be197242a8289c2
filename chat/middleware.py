"""A websocket's cookies, session and user in one step: ``SessionAuthMiddleware``.

It puts in the scope what Channels' ``AuthMiddlewareStack`` puts there for a
websocket (``cookies``, ``session``, ``user``), for the same sessions, users and
backends. The stack is three middlewares, and each keeps its own copy of the
scope, its own frame and its own wrappers for as long as the socket is open. One
step holds one copy and hands ``send`` on untouched (Channels' session wrapper
saves a session only for an HTTP response, never on a websocket). The user is
read as Django's ``get_user`` reads it (``chat.auth.logged_in_user``), once,
when the socket opens.

Channels' stack stays right for HTTP, and for a websocket too where a project
prefers it: the chat app reads only the scope's ``session`` and ``user``.
"""

from __future__ import annotations

from importlib import import_module

from django.conf import settings
from django.http.cookie import parse_cookie

from chat.auth import logged_in_user
from chat.batches import in_db_thread
from chat.origins import ASGIApp, Receive, Scope, Send

_logged_in_user = in_db_thread(logged_in_user)


class SessionAuthMiddleware:
    """``AuthMiddlewareStack`` for websockets, in one step (see the module)."""

    def __init__(self, inner: ASGIApp) -> None:
        self.inner = inner

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "websocket":
            raise ValueError("SessionAuthMiddleware only handles websocket connections")
        scope = dict(scope)  # what is added stays out of the server's scope
        if "session" not in scope:
            cookies = scope.get("cookies")
            if cookies is None:
                cookies = scope["cookies"] = cookies_of(scope)
            engine = import_module(settings.SESSION_ENGINE).SessionStore
            scope["session"] = engine(cookies.get(settings.SESSION_COOKIE_NAME))
        if "user" not in scope:
            scope["user"] = await _logged_in_user(scope["session"])
        await self.inner(scope, receive, send)


def cookies_of(scope: Scope) -> dict[str, str]:
    """The request's cookies, read from its first ``Cookie`` header as Channels does."""
    for name, value in scope.get("headers", ()):
        if name == b"cookie":
            return parse_cookie(value.decode("latin1"))
    return {}
