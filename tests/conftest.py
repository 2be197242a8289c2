"""Fixtures: the fake upstream, users, and logged-in websocket clients on the real ASGI stack."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import timedelta
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from channels.testing import WebsocketCommunicator
from django.test import Client
from django.utils import timezone
from hypothesis import HealthCheck, settings

from chat import upstream
from chat.generation import registry
from chat.models import Message
from project.asgi import application
from tests.fake_upstream import FakeUpstream

API_KEY = "sk-test-secret-key-0123456789abcdef"


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    """Keep each phase's report on the test, for fixtures that act on failures."""
    report = yield
    setattr(item, f"rep_{report.when}", report)
    return report


ORIGIN = b"http://localhost"


def database_examples(count: int) -> Any:
    """Hypothesis settings for a property test on the database: ``count`` examples, no
    deadline (a query's time varies), and the function's fixtures (a user) shared by all."""
    return settings(
        max_examples=count,
        deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture],
    )


class ChatClient:
    """A browser's socket, with helpers that speak the chat protocol."""

    def __init__(self, communicator: WebsocketCommunicator) -> None:
        self.communicator = communicator
        self.frames: list[dict[str, Any]] = []
        #: The longest websocket message received, in UTF-8 bytes.
        self.largest = 0
        self.parts: list[str] = []

    async def send(self, content: str, conversation: str | None = None) -> None:
        await self.send_json({"type": "send", "conversation": conversation, "content": content})

    async def stop(self, message: str) -> None:
        await self.send_json({"type": "stop", "message": message})

    async def watch(self, conversation: str) -> None:
        await self.send_json({"type": "watch", "conversation": conversation})

    async def send_json(self, frame: Any) -> None:
        await self.communicator.send_to(text_data=json.dumps(frame))

    async def receive(self, timeout: float = 5.0) -> dict[str, Any]:
        """The next frame; like the page, it echoes each ``ping`` (not returned)."""
        while True:
            frame = await self.receive_raw(timeout)
            if frame["type"] != "ping":
                return frame
            await self.send_json({"type": "pong", "nonce": frame["nonce"]})

    async def receive_raw(self, timeout: float = 5.0) -> dict[str, Any]:
        """The next frame, joined from its ``part`` frames if it came in parts.

        Other frames (a ``ping``) may come between the parts of a large one.
        """
        while True:
            text = await self.communicator.receive_from(timeout=timeout)
            self.largest = max(self.largest, len(text.encode()))
            frame: dict[str, Any] = json.loads(text)
            if frame["type"] != "part":
                break
            self.parts.append(frame["data"])
            if frame["last"]:
                frame = json.loads("".join(self.parts))
                self.parts.clear()
                break
        self.frames.append(frame)
        return frame

    async def receive_until(self, kind: str, timeout: float = 5.0) -> list[dict[str, Any]]:
        """Frames up to and including the first of type ``kind``."""
        frames = []
        async with asyncio.timeout(timeout):
            while True:
                frame = await self.receive(timeout=timeout)
                frames.append(frame)
                if frame["type"] == kind:
                    return frames

    async def start_answer(self, content: str, conversation: str | None = None) -> str:
        """Send a message; return the id of its answer once the answer's first text arrived."""
        await self.send(content, conversation)
        frames = await self.receive_until("delta")
        return next(
            f["message"]["id"]
            for f in frames
            if f["type"] == "message" and f["message"]["role"] == "assistant"
        )

    async def receive_text(self, text: str, timeout: float = 5.0) -> None:
        """Read frames until the deltas received so far rebuild ``text``."""
        async with asyncio.timeout(timeout):
            while rebuild(self.frames) != text:
                await self.receive(timeout=timeout)

    async def assert_silent(self) -> None:
        assert await self.communicator.receive_nothing(timeout=0.1)


def rebuild(frames: list[dict[str, Any]], message: str | None = None) -> str:
    """The answer text as a client rebuilds it from delta frames, checking every index."""
    text = ""
    for frame in frames:
        if frame["type"] == "delta" and (message is None or frame["message"] == message):
            assert frame["index"] == len(text), "a gap or a duplicate in the deltas"
            text += frame["text"]
    return text


@pytest.fixture(autouse=True)
def fast_password_hashing(settings: Any) -> None:
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture
async def fake_upstream(settings: Any) -> AsyncIterator[FakeUpstream]:
    server = FakeUpstream()
    await server.start()
    settings.OPENAI_BASE_URL = server.url
    settings.OPENAI_API_KEY = API_KEY
    settings.CHAT_MODEL = "fake-model"
    settings.CHAT_READ_TIMEOUT = 5.0
    settings.CHAT_RETRY_BACKOFF = 0.01
    settings.CHAT_AUTO_TITLE = False  # a test that wants the title request turns it on
    yield server
    await server.close()


@pytest.fixture
def user(django_user_model: Any) -> Any:
    return django_user_model.objects.create_user("alice", password="pw-alice")


@pytest.fixture
def other_user(django_user_model: Any) -> Any:
    return django_user_model.objects.create_user("mallory", password="pw-mallory")


async def session_cookie(user: Any) -> bytes:
    client = Client()
    await sync_to_async(client.force_login)(user)
    return f"sessionid={client.cookies['sessionid'].value}".encode()


Connect = Callable[..., Awaitable[ChatClient]]


@pytest.fixture
async def connect(fake_upstream: FakeUpstream) -> AsyncIterator[Connect]:
    """Open sockets as a user; at the end, close them and check that nothing leaked."""
    communicators: list[WebsocketCommunicator] = []

    async def _connect(
        user: Any = None, *, origin: bytes = ORIGIN, expect_accept: bool = True
    ) -> ChatClient:
        headers = [(b"origin", origin), (b"host", b"localhost")]
        if user is not None:
            headers.append((b"cookie", await session_cookie(user)))
        communicator = WebsocketCommunicator(application, "/ws/chat/", headers=headers)
        communicators.append(communicator)
        connected, _ = await communicator.connect(timeout=5)
        assert connected is expect_accept
        return ChatClient(communicator)

    yield _connect
    for communicator in communicators:
        await communicator.disconnect(timeout=5)
    async with asyncio.timeout(5):
        while registry.tasks:
            await asyncio.wait(registry.tasks)
    await fake_upstream.wait_idle()  # before closing the pool, which would hide a leak
    await upstream.aclose_client()
    # Every answer the test ran has ended and been saved: none is left streaming.
    # (Rows a test made orphans on purpose are old; an answer left behind is fresh.)
    fresh = timezone.now() - timedelta(seconds=2)
    assert not await Message.objects.filter(status="streaming", updated_at__gt=fresh).aexists()
