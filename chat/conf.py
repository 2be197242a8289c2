"""Every setting of the chat app, with its default, in one place.

Values are read lazily on each access so that ``override_settings`` works in
tests. ``OPENAI_API_KEY`` and ``OPENAI_BASE_URL`` follow the OpenAI SDK: a
Django setting of that name wins, else the environment variable is used.
No other module reads ``django.conf.settings`` for the app's own options.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any, Generic, Literal, TypeVar

from django.conf import settings

OnDisconnect = Literal["stop", "continue"]

DEFAULT_BASE_URL = "https://api.openai.com/v1"

T = TypeVar("T")


class Setting(Generic[T]):
    """One setting of the app, read from ``django.conf.settings`` at each access (so that
    ``override_settings`` works), else its default; ``convert`` gives it the type used."""

    def __init__(self, default: T, convert: Callable[[Any], T] | None = None) -> None:
        self.default = default
        self.convert = convert
        self.name = ""

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def __get__(self, instance: object, owner: type | None = None) -> T:
        value: T = getattr(settings, self.name, self.default)
        return value if self.convert is None else self.convert(value)

    def __set__(self, instance: object, value: object) -> None:
        raise AttributeError(f"{self.name} is read from Django's settings: override those")


class Settings:
    """Typed, lazily read view of the ``CHAT_*`` and ``OPENAI_*`` settings."""

    @property
    def OPENAI_API_KEY(self) -> str:
        return str(
            getattr(settings, "OPENAI_API_KEY", None) or os.environ.get("OPENAI_API_KEY", "")
        )

    @property
    def OPENAI_BASE_URL(self) -> str:
        """The upstream root, e.g. ``http://localhost:11434/v1`` for Ollama; empty if unset."""
        value = getattr(settings, "OPENAI_BASE_URL", None) or os.environ.get("OPENAI_BASE_URL", "")
        return str(value).rstrip("/")

    @property
    def demo_mode(self) -> bool:
        """True when neither a key nor a base URL is configured: the built-in demo model answers."""
        return not self.OPENAI_API_KEY and not self.OPENAI_BASE_URL

    @property
    def CHAT_MODEL(self) -> str:
        default = "demo" if self.demo_mode else "gpt-4o-mini"
        return str(getattr(settings, "CHAT_MODEL", default))

    CHAT_SYSTEM_PROMPT = Setting("", str)
    #: A dotted path to a callable that shapes each turn's upstream request (``chat.requests``).
    CHAT_REQUEST_BUILDER = Setting("", str)
    #: A dotted path to the class of who-may-do-what rules (``chat.permissions``).
    CHAT_PERMISSIONS = Setting("chat.permissions.ChatPermissions", str)
    #: Extra fields merged into every request body (``temperature``, ``max_tokens``...).
    CHAT_COMPLETION_OPTIONS: Setting[dict[str, Any]] = Setting({}, dict)
    #: Extra request headers, e.g. OpenRouter's ``HTTP-Referer`` or Azure's ``api-key``.
    CHAT_UPSTREAM_HEADERS: Setting[dict[str, str]] = Setting({}, dict)
    #: A CA bundle file for an upstream whose certificate a private CA signed.
    CHAT_UPSTREAM_CA_BUNDLE = Setting("", str)
    #: An HTTP proxy for the upstream (``http://proxy:3128``); empty: connect directly.
    CHAT_UPSTREAM_PROXY = Setting("", str)
    #: After the first exchange, ask the model for a short title (a small extra request).
    CHAT_AUTO_TITLE = Setting(True, bool)
    #: The model asked for titles; empty means ``CHAT_MODEL`` (a cheaper one may do).
    CHAT_TITLE_MODEL = Setting("", str)
    #: Seconds the title request may take in all; then the first words stay the title.
    CHAT_TITLE_TIMEOUT = Setting(10.0)
    #: Off by default: an open endpoint spends someone's API credits.
    CHAT_ALLOW_ANONYMOUS = Setting(False, bool)
    CHAT_MAX_MESSAGE_CHARS = Setting(32_000)
    #: Answers one user may have being written at once (in all conversations).
    CHAT_MAX_RUNNING_ANSWERS = Setting(3)
    #: Messages one user may send in any 60 seconds.
    CHAT_TURNS_PER_MINUTE = Setting(20)
    #: Tokens (prompt and answer) one user may spend a day; None for no budget.
    CHAT_DAILY_TOKEN_BUDGET: Setting[int | None] = Setting(None)
    #: Frames one socket may send a second (bursts of twice that).
    CHAT_FRAMES_PER_SECOND = Setting(20.0)
    #: Characters a socket may be sent before the page proves it read them (see ``ping``).
    CHAT_SEND_WINDOW = Setting(1024 * 1024)
    #: Largest websocket message the server sends, in UTF-8 bytes; larger frames go in parts.
    #: daphne refuses to send a message over 1 MiB, and some proxies accept less.
    CHAT_MAX_FRAME_BYTES = Setting(256 * 1024)
    #: Conversation histories (``watch``, ``switch``) one user may load a minute, per process.
    #: A history is the most expensive thing a page can ask for; bursts of a quarter of this
    #: are allowed (several tabs reconnecting at once).
    CHAT_HISTORIES_PER_MINUTE = Setting(60)
    #: Seconds a socket may hold a full send window before it is closed (code 4408).
    CHAT_SLOW_CLIENT_TIMEOUT = Setting(30.0)
    #: Seconds between saves of a streaming answer's text.
    CHAT_CHECKPOINT_INTERVAL = Setting(1.0)
    #: What happens to a running answer when the last socket watching it closes.
    #: ``"continue"`` (the default) finishes it, so a reload or a closed lid loses nothing;
    #: ``"stop"`` closes the upstream when the last socket of the answer's own process goes
    #: (sockets on other processes are not counted).
    CHAT_ON_DISCONNECT: Setting[OnDisconnect] = Setting("continue")
    #: Seconds after which a ``streaming`` answer nobody touched is marked ``interrupted``.
    CHAT_ORPHAN_AFTER = Setting(30.0)
    #: Seconds a stopping process keeps writing its running answers (its pages reconnect
    #: elsewhere meanwhile); what still runs then is saved as interrupted.
    CHAT_DRAIN_TIMEOUT = Setting(120.0)
    #: Seconds without a heartbeat after which a process counts as dead, its answers
    #: ``interrupted``. It beats every eighth of this, and the others look as often: a
    #: killed process is noticed within 4.5 s by default.
    CHAT_PROCESS_TIMEOUT = Setting(4.0)
    CHAT_CONNECT_TIMEOUT = Setting(10.0)
    #: Seconds the upstream may take to start answering a turn, all retries included.
    CHAT_FIRST_BYTE_TIMEOUT = Setting(30.0)
    #: Seconds without a byte from the upstream before the answer is failed as stalled.
    CHAT_READ_TIMEOUT = Setting(60.0)
    #: Retries before the first token, for connect errors, 429 and 5xx only.
    CHAT_MAX_RETRIES = Setting(2)
    #: First retry delay in seconds; doubles on each further retry.
    CHAT_RETRY_BACKOFF = Setting(0.5)
    #: Longest ``Retry-After`` honoured by waiting; a longer one fails the answer at once.
    CHAT_MAX_RETRY_AFTER = Setting(10.0)
    #: Largest single server-sent event accepted from the upstream (bounds memory).
    CHAT_MAX_EVENT_BYTES = Setting(4 * 1024 * 1024)
    #: A bearer token that lets a scraper read ``metrics/``; staff may read it logged in.
    CHAT_METRICS_TOKEN = Setting("", str)
    CHAT_DEMO_TOKENS_PER_SECOND = Setting(40.0)


conf = Settings()
