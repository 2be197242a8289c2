"""Every setting of the chat app, with its default, in one place.

Values are read lazily on each access so that ``override_settings`` works in
tests. ``OPENAI_API_KEY`` and ``OPENAI_BASE_URL`` follow the OpenAI SDK: a
Django setting of that name wins, else the environment variable is used.
No other module reads ``django.conf.settings`` for the app's own options.
"""

from __future__ import annotations

import os
from typing import Any, Literal

from django.conf import settings

OnDisconnect = Literal["stop", "continue"]

DEFAULT_BASE_URL = "https://api.openai.com/v1"


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

    @property
    def CHAT_SYSTEM_PROMPT(self) -> str:
        return str(getattr(settings, "CHAT_SYSTEM_PROMPT", ""))

    @property
    def CHAT_COMPLETION_OPTIONS(self) -> dict[str, Any]:
        """Extra fields merged into every request body (``temperature``, ``max_tokens``...)."""
        return dict(getattr(settings, "CHAT_COMPLETION_OPTIONS", {}))

    @property
    def CHAT_UPSTREAM_HEADERS(self) -> dict[str, str]:
        """Extra request headers, e.g. OpenRouter's ``HTTP-Referer`` or Azure's ``api-key``."""
        return dict(getattr(settings, "CHAT_UPSTREAM_HEADERS", {}))

    @property
    def CHAT_UPSTREAM_CA_BUNDLE(self) -> str:
        """A CA bundle file for an upstream whose certificate a private CA signed."""
        return str(getattr(settings, "CHAT_UPSTREAM_CA_BUNDLE", ""))

    @property
    def CHAT_UPSTREAM_PROXY(self) -> str:
        """An HTTP proxy for the upstream (``http://proxy:3128``); empty: connect directly."""
        return str(getattr(settings, "CHAT_UPSTREAM_PROXY", ""))

    @property
    def CHAT_AUTO_TITLE(self) -> bool:
        """After the first exchange, ask the model for a short title (a small extra request)."""
        return bool(getattr(settings, "CHAT_AUTO_TITLE", True))

    @property
    def CHAT_TITLE_MODEL(self) -> str:
        """The model asked for titles; empty means ``CHAT_MODEL`` (a cheaper one may do)."""
        return str(getattr(settings, "CHAT_TITLE_MODEL", ""))

    @property
    def CHAT_TITLE_TIMEOUT(self) -> float:
        """Seconds the title request may take in all; then the first words stay the title."""
        return getattr(settings, "CHAT_TITLE_TIMEOUT", 10.0)

    @property
    def CHAT_ALLOW_ANONYMOUS(self) -> bool:
        """Off by default: an open endpoint spends someone's API credits."""
        return bool(getattr(settings, "CHAT_ALLOW_ANONYMOUS", False))

    @property
    def CHAT_MAX_MESSAGE_CHARS(self) -> int:
        return getattr(settings, "CHAT_MAX_MESSAGE_CHARS", 32_000)

    @property
    def CHAT_MAX_RUNNING_ANSWERS(self) -> int:
        """Answers one user may have being written at once (in all conversations)."""
        return getattr(settings, "CHAT_MAX_RUNNING_ANSWERS", 3)

    @property
    def CHAT_TURNS_PER_MINUTE(self) -> int:
        """Messages one user may send in any 60 seconds."""
        return getattr(settings, "CHAT_TURNS_PER_MINUTE", 20)

    @property
    def CHAT_DAILY_TOKEN_BUDGET(self) -> int | None:
        """Tokens (prompt and answer) one user may spend a day; None for no budget."""
        return getattr(settings, "CHAT_DAILY_TOKEN_BUDGET", None)

    @property
    def CHAT_FRAMES_PER_SECOND(self) -> float:
        """Frames one socket may send a second (bursts of twice that)."""
        return getattr(settings, "CHAT_FRAMES_PER_SECOND", 20.0)

    @property
    def CHAT_SEND_WINDOW(self) -> int:
        """Characters a socket may be sent before the page proves it read them (see ``ping``)."""
        return getattr(settings, "CHAT_SEND_WINDOW", 1024 * 1024)

    @property
    def CHAT_MAX_FRAME_BYTES(self) -> int:
        """Largest websocket message the server sends, in UTF-8 bytes; larger frames go in parts.

        daphne refuses to send a message over 1 MiB, and some proxies accept less.
        """
        return getattr(settings, "CHAT_MAX_FRAME_BYTES", 256 * 1024)

    @property
    def CHAT_HISTORIES_PER_MINUTE(self) -> int:
        """Conversation histories (``watch``, ``switch``) one user may load a minute, per process.

        A history is the most expensive thing a page can ask for; bursts of a
        quarter of this are allowed (several tabs reconnecting at once).
        """
        return getattr(settings, "CHAT_HISTORIES_PER_MINUTE", 60)

    @property
    def CHAT_SLOW_CLIENT_TIMEOUT(self) -> float:
        """Seconds a socket may hold a full send window before it is closed (code 4408)."""
        return getattr(settings, "CHAT_SLOW_CLIENT_TIMEOUT", 30.0)

    @property
    def CHAT_CHECKPOINT_INTERVAL(self) -> float:
        """Seconds between saves of a streaming answer's text."""
        return getattr(settings, "CHAT_CHECKPOINT_INTERVAL", 1.0)

    @property
    def CHAT_ON_DISCONNECT(self) -> OnDisconnect:
        """What happens to a running answer when the last socket watching it closes.

        ``"continue"`` (the default) finishes it, so a reload or a closed lid
        loses nothing; ``"stop"`` closes the upstream when the last socket of the
        answer's own process goes (sockets on other processes are not counted).
        """
        return getattr(settings, "CHAT_ON_DISCONNECT", "continue")

    @property
    def CHAT_ORPHAN_AFTER(self) -> float:
        """Seconds after which a ``streaming`` answer nobody touched is marked ``interrupted``."""
        return getattr(settings, "CHAT_ORPHAN_AFTER", 30.0)

    @property
    def CHAT_DRAIN_TIMEOUT(self) -> float:
        """Seconds a stopping process keeps writing its running answers (its pages
        reconnect elsewhere meanwhile); what still runs then is saved as interrupted."""
        return getattr(settings, "CHAT_DRAIN_TIMEOUT", 120.0)

    @property
    def CHAT_PROCESS_TIMEOUT(self) -> float:
        """Seconds without a heartbeat after which a process counts as dead, its answers
        ``interrupted``. It beats every eighth of this, and the others look as often: a
        killed process is noticed within 4.5 s by default."""
        return getattr(settings, "CHAT_PROCESS_TIMEOUT", 4.0)

    @property
    def CHAT_CONNECT_TIMEOUT(self) -> float:
        return getattr(settings, "CHAT_CONNECT_TIMEOUT", 10.0)

    @property
    def CHAT_FIRST_BYTE_TIMEOUT(self) -> float:
        """Seconds the upstream may take to start answering a turn, all retries included."""
        return getattr(settings, "CHAT_FIRST_BYTE_TIMEOUT", 30.0)

    @property
    def CHAT_READ_TIMEOUT(self) -> float:
        """Seconds without a byte from the upstream before the answer is failed as stalled."""
        return getattr(settings, "CHAT_READ_TIMEOUT", 60.0)

    @property
    def CHAT_MAX_RETRIES(self) -> int:
        """Retries before the first token, for connect errors, 429 and 5xx only."""
        return getattr(settings, "CHAT_MAX_RETRIES", 2)

    @property
    def CHAT_RETRY_BACKOFF(self) -> float:
        """First retry delay in seconds; doubles on each further retry."""
        return getattr(settings, "CHAT_RETRY_BACKOFF", 0.5)

    @property
    def CHAT_MAX_RETRY_AFTER(self) -> float:
        """Longest ``Retry-After`` honoured by waiting; a longer one fails the answer at once."""
        return getattr(settings, "CHAT_MAX_RETRY_AFTER", 10.0)

    @property
    def CHAT_MAX_EVENT_BYTES(self) -> int:
        """Largest single server-sent event accepted from the upstream (bounds memory)."""
        return getattr(settings, "CHAT_MAX_EVENT_BYTES", 4 * 1024 * 1024)

    @property
    def CHAT_METRICS_TOKEN(self) -> str:
        """A bearer token that lets a scraper read ``metrics/``; staff may read it logged in."""
        return str(getattr(settings, "CHAT_METRICS_TOKEN", ""))

    @property
    def CHAT_DEMO_TOKENS_PER_SECOND(self) -> float:
        return getattr(settings, "CHAT_DEMO_TOKENS_PER_SECOND", 40.0)


conf = Settings()
