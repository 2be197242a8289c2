"""A socket chats only while its session does: logout and password changes end it.

The socket authenticates when it opens; afterwards every request it makes is
checked against the session as stored now, and a logout closes the sockets of
that session in this process at once.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import timedelta
from types import SimpleNamespace
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from channels.auth import AuthMiddlewareStack
from channels.layers import get_channel_layer
from channels.routing import URLRouter
from channels.sessions import InstanceSessionWrapper
from channels.testing import WebsocketCommunicator
from django.contrib.auth import HASH_SESSION_KEY, SESSION_KEY, get_user
from django.contrib.auth.backends import ModelBackend
from django.contrib.sessions.backends.db import SessionStore
from django.contrib.sessions.models import Session
from django.db import transaction
from django.test import Client
from django.urls import path
from django.utils import timezone

from chat import auth
from chat.consumers import ChatConsumer, frame_sender
from chat.middleware import SessionAuthMiddleware
from chat.routing import websocket_urlpatterns
from project.asgi import application
from tests.conftest import ORIGIN, ChatClient, rebuild, session_cookie
from tests.fake_upstream import FakeUpstream, completion, stream

pytestmark = pytest.mark.django_db(transaction=True)

Open = Callable[[Client], Awaitable[ChatClient]]


@pytest.fixture
async def open_socket(fake_upstream: FakeUpstream) -> AsyncIterator[Open]:
    """Open a socket with a browser's session cookie (the browser keeps the ``Client``)."""
    communicators: list[WebsocketCommunicator] = []

    async def _open(browser: Client) -> ChatClient:
        cookie = f"sessionid={browser.cookies['sessionid'].value}".encode()
        headers = [(b"origin", ORIGIN), (b"host", b"localhost"), (b"cookie", cookie)]
        communicator = WebsocketCommunicator(application, "/ws/chat/", headers=headers)
        communicators.append(communicator)
        assert (await communicator.connect(timeout=5))[0]
        return ChatClient(communicator)

    yield _open
    for communicator in communicators:
        await communicator.disconnect(timeout=5)


async def logged_in(user: Any) -> Client:
    browser = Client()
    await sync_to_async(browser.force_login)(user)
    return browser


async def closed_with(chat: ChatClient) -> int:
    output = await chat.communicator.receive_output(timeout=5)
    while output["type"] != "websocket.close":
        output = await chat.communicator.receive_output(timeout=5)
    return int(output["code"])


async def test_logging_out_closes_the_sessions_open_sockets_at_once(
    open_socket: Open, user: Any
) -> None:
    browser = await logged_in(user)
    chat = await open_socket(browser)
    await sync_to_async(browser.logout)()
    assert await chat.receive() == {
        "type": "error",
        "code": "not_authenticated",
        "detail": "You logged out.",
    }
    assert await closed_with(chat) == 4401


async def test_a_send_after_logout_is_refused(
    open_socket: Open, fake_upstream: FakeUpstream, user: Any
) -> None:
    """Even where no signal reached the socket (another process; a session deleted)."""
    browser = await logged_in(user)
    chat = await open_socket(browser)
    await Session.objects.filter(session_key=browser.session.session_key).adelete()
    await chat.send("still here?")
    error = await chat.receive()
    assert (error["type"], error["code"]) == ("error", "not_authenticated")
    assert await closed_with(chat) == 4401
    assert fake_upstream.requests == []  # nothing was asked upstream


async def test_a_password_change_ends_the_other_sessions_sockets(
    open_socket: Open, fake_upstream: FakeUpstream, user: Any
) -> None:
    browser = await logged_in(user)
    chat = await open_socket(browser)
    user.set_password("a-new-password-42")
    await user.asave()
    await chat.send("still here?")
    assert (await chat.receive())["code"] == "not_authenticated"
    assert await closed_with(chat) == 4401
    assert fake_upstream.requests == []


async def test_a_send_after_the_session_expired_is_refused(
    open_socket: Open, fake_upstream: FakeUpstream, user: Any
) -> None:
    browser = await logged_in(user)
    chat = await open_socket(browser)
    past = timezone.now() - timedelta(seconds=1)
    await Session.objects.filter(session_key=browser.session.session_key).aupdate(expire_date=past)
    await chat.send("still here?")
    assert (await chat.receive())["code"] == "not_authenticated"
    assert await closed_with(chat) == 4401
    assert fake_upstream.requests == []


async def test_on_another_session_engine_a_password_change_still_ends_the_socket(
    open_socket: Open, fake_upstream: FakeUpstream, user: Any, settings: Any
) -> None:
    """Engines other than Django's database one load sessions their own way."""
    settings.SESSION_ENGINE = "django.contrib.sessions.backends.cached_db"
    browser = await logged_in(user)
    chat = await open_socket(browser)
    fake_upstream.script(stream(*completion(["Fine."])))
    await chat.send("still here?")
    assert (await chat.receive_until("done"))[-1]["status"] == "complete"
    user.set_password("a-new-password-42")
    await user.asave()
    await chat.send("and now?")
    assert (await chat.receive())["code"] == "not_authenticated"
    assert await closed_with(chat) == 4401


@pytest.mark.parametrize(
    "state", ["live", "expired", "deleted", "tampered", "unknown key", "malformed key"]
)
def test_the_session_check_reads_a_database_session_as_djangos_own_load(
    user: Any, state: str
) -> None:
    browser = Client()
    browser.force_login(user)
    key = browser.session.session_key
    rows = Session.objects.filter(session_key=key)
    if state == "expired":
        rows.update(expire_date=timezone.now() - timedelta(seconds=1))
    elif state == "deleted":
        rows.delete()
    elif state == "tampered":
        rows.update(session_data=rows.get().session_data[:-4] + "abcd")
    elif state == "unknown key":
        key = "x" * 32
    elif state == "malformed key":  # Django takes no key under 8 characters, even if stored
        live = rows.get()
        key = "short"
        Session.objects.create(
            session_key=key, session_data=live.session_data, expire_date=live.expire_date
        )
    ours, djangos = auth._stored_session(key), SessionStore(key)
    assert dict(ours.items()) == dict(djangos.items())  # items() loads Django's own
    assert ours.session_key == djangos.session_key
    assert bool(dict(ours.items())) is (state == "live")


async def test_another_session_of_the_same_user_keeps_chatting(
    open_socket: Open, fake_upstream: FakeUpstream, user: Any
) -> None:
    phone, laptop = await logged_in(user), await logged_in(user)
    on_phone = await open_socket(phone)
    on_laptop = await open_socket(laptop)
    await sync_to_async(phone.logout)()
    assert await closed_with(on_phone) == 4401
    fake_upstream.script(stream(*completion(["Still here."])))
    await on_laptop.send("hello")
    assert (await on_laptop.receive_until("done"))[-1]["status"] == "complete"


async def real_send(message: dict[str, Any]) -> None:
    """Stands for the server's ASGI ``send``."""


def test_frames_go_past_channels_session_wrapper_to_the_servers_send() -> None:
    # The wrapper acts on an HTTP response only: for a frame it would only cost time.
    wrapper = InstanceSessionWrapper({"type": "websocket", "cookies": {}}, real_send)
    assert frame_sender(wrapper.send) is real_send


async def test_a_projects_own_middleware_around_send_still_sees_every_frame(
    fake_upstream: FakeUpstream, user: Any
) -> None:
    seen: list[str] = []

    def counting(inner: Any) -> Any:
        async def app(scope: Any, receive: Any, send: Any) -> None:
            async def counted(message: dict[str, Any]) -> None:
                if message["type"] == "websocket.send":
                    seen.append(message["text"])
                await send(message)

            await inner(scope, receive, counted)

        return app

    # The project's middleware sits inside the session's: it is the consumer's send.
    stack = AuthMiddlewareStack(counting(URLRouter(websocket_urlpatterns)))
    fake_upstream.script(stream(*completion(["Seen ", "by all"])))
    headers = [
        (b"origin", ORIGIN),
        (b"host", b"localhost"),
        (b"cookie", await session_cookie(user)),
    ]
    communicator = WebsocketCommunicator(stack, "/ws/chat/", headers=headers)
    assert (await communicator.connect(timeout=5))[0]
    chat = ChatClient(communicator)
    try:
        await chat.send("question")
        frames = await chat.receive_until("done", timeout=10)
    finally:
        await communicator.disconnect(timeout=5)
    assert rebuild(frames) == "Seen by all"
    through_it = [json.loads(text) for text in seen]
    assert [frame for frame in through_it if frame["type"] != "ping"] == frames


async def test_a_subclass_with_a_channel_of_its_own_gets_channels_loop(user: Any) -> None:
    """A project's consumer that listens on a channel (messages of its own, sent through
    the channel layer) is served by Channels' loop, which reads the channel layer too."""
    names: list[str] = []

    class Listening(ChatConsumer):
        channel_layer_alias = "default"

        async def connect(self) -> None:
            names.append(self.channel_name)
            await super().connect()

        async def project_note(self, event: dict[str, Any]) -> None:
            await self.send(text_data=json.dumps({"type": "note", "text": event["text"]}))

    stack = AuthMiddlewareStack(URLRouter([path("ws/chat/", Listening.as_asgi())]))
    headers = [(b"origin", ORIGIN), (b"host", b"localhost")]
    headers.append((b"cookie", await session_cookie(user)))
    communicator = WebsocketCommunicator(stack, "/ws/chat/", headers=headers)
    assert (await communicator.connect(timeout=5))[0]
    try:
        layer = get_channel_layer()
        assert layer is not None
        await layer.send(names[0], {"type": "project.note", "text": "hello"})
        assert json.loads(await communicator.receive_from(timeout=5)) == {
            "type": "note",
            "text": "hello",
        }
    finally:
        await communicator.disconnect(timeout=5)


class GetsItsOwnUsers(ModelBackend):
    """A project's backend that reads users its own way: checked by Django's own code."""

    def get_user(self, user_id: Any) -> Any:
        return super().get_user(user_id)


MODEL = "django.contrib.auth.backends.ModelBackend"
ALL_USERS = "django.contrib.auth.backends.AllowAllUsersModelBackend"
OWN_READER = f"{__name__}.GetsItsOwnUsers"

#: How a session may stand when a turn checks it, and the backends the project lists.
SESSION_STATES = [
    "live",
    "inactive user",
    "deleted user",
    "password changed",
    "no auth hash",
    "an older secret key",
    "backend no longer listed",
    "no user id",
    "inactive user, AllowAllUsersModelBackend",
    "live, a backend that reads users its own way",
    "password changed, a backend that reads users its own way",
]


@pytest.mark.parametrize("state", SESSION_STATES)
def test_the_session_check_finds_whom_a_session_logs_in_as_djangos_get_user(
    user: Any, settings: Any, state: str
) -> None:
    """Who is logged in, and what becomes of the session (kept, flushed, given a new key),
    are Django's own for every way a session may stand."""
    backend = ALL_USERS if "AllowAll" in state else OWN_READER if "own way" in state else MODEL
    settings.AUTHENTICATION_BACKENDS = [MODEL, ALL_USERS, OWN_READER]
    if state == "an older secret key":
        settings.SECRET_KEY = "an-older-secret-key-" + "x" * 40
    browser = Client()
    browser.force_login(user, backend=backend)
    key = browser.session.session_key
    session = SessionStore(key)
    if state.startswith("inactive user"):
        type(user).objects.filter(pk=user.pk).update(is_active=False)
    elif state == "deleted user":
        user.delete()
    elif state.startswith("password changed"):
        user.set_password("another password")
        user.save()
    elif state == "no auth hash":
        del session[HASH_SESSION_KEY]
        session.save()
    elif state == "an older secret key":
        settings.SECRET_KEY_FALLBACKS = [settings.SECRET_KEY]
        settings.SECRET_KEY = "the-newer-secret-key-" + "y" * 40
    elif state == "backend no longer listed":
        settings.AUTHENTICATION_BACKENDS = [ALL_USERS]
    elif state == "no user id":
        del session[SESSION_KEY]
        session.save()

    def outcome(who: Callable[[SessionStore], Any]) -> tuple[Any, ...]:
        with transaction.atomic():
            fresh = SessionStore(key)
            found = who(fresh)
            stored = set(Session.objects.values_list("session_key", flat=True))
            transaction.set_rollback(True)
        # A new key (Django cycles it under an older secret) is random: compared by kind.
        return (
            found.pk,
            found.is_authenticated,
            fresh.session_key == key,
            key in stored,
            len(stored),
        )

    djangos = outcome(lambda fresh: get_user(SimpleNamespace(session=fresh)))  # type: ignore[arg-type]
    ours = outcome(auth.logged_in_user)

    assert ours == djangos
    assert djangos[1] is (state in LOGGED_IN)


LOGGED_IN = {
    "live",
    "an older secret key",
    "inactive user, AllowAllUsersModelBackend",
    "live, a backend that reads users its own way",
}


@pytest.mark.parametrize("backend", [MODEL, OWN_READER])
def test_only_a_backend_that_reads_users_as_model_backend_does_gets_the_one_statement(
    backend: str,
) -> None:
    assert (auth._user_reader(backend) is not None) is (backend == MODEL)


#: How a socket's cookie may stand when it opens.
COOKIES = ["logged in", "no cookie", "an unknown session", "logged out", "password changed"]


@pytest.mark.parametrize("cookie", COOKIES)
async def test_the_one_step_middleware_gives_the_scope_channels_auth_stack_gives(
    user: Any, cookie: str
) -> None:
    headers = [(b"origin", ORIGIN), (b"host", b"localhost")]
    if cookie != "no cookie":
        headers.append((b"cookie", await session_cookie(user)))
    if cookie == "an unknown session":
        headers[-1] = (b"cookie", b"sessionid=" + b"x" * 32)
    elif cookie == "logged out":
        await sync_to_async(Session.objects.all().delete)()
    elif cookie == "password changed":
        user.set_password("another password")
        await sync_to_async(user.save)()

    async def opened(stack: Any) -> tuple[Any, ...]:
        seen: list[tuple[Any, ...]] = []

        async def inner(scope: Any, receive: Any, send: Any) -> None:
            session, found = scope["session"], scope["user"]
            seen.append(
                (scope["cookies"], session.session_key, found.pk, found.is_authenticated, send)
            )

        scope = {"type": "websocket", "path": "/ws/chat/", "headers": headers}
        await stack(inner)(scope, None, real_send)
        return seen[0]

    ours = await opened(SessionAuthMiddleware)
    channels = await opened(AuthMiddlewareStack)
    assert ours[:4] == channels[:4]
    assert ours[3] is (cookie == "logged in")
    assert ours[4] is real_send  # frames go to the server's send untouched
