"""System checks for the chat app's settings: misconfiguration fails at startup."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit

from django.apps import AppConfig, apps
from django.conf import settings
from django.core.checks import CheckMessage, Error, Tags, Warning, register

from chat.conf import conf
from chat.hooks import imported

MIN_FRAME_BYTES = 4096  # room for a part frame's envelope and some text
MAX_FRAME_BYTES = 1024 * 1024  # daphne's (autobahn's) limit on an outgoing message

#: Settings in seconds: each should be a positive number (chat.E002).
DURATIONS = (
    "CHAT_CHECKPOINT_INTERVAL",
    "CHAT_CONNECT_TIMEOUT",
    "CHAT_READ_TIMEOUT",
    "CHAT_RETRY_BACKOFF",
    "CHAT_MAX_RETRY_AFTER",
    "CHAT_DEMO_TOKENS_PER_SECOND",
    "CHAT_ORPHAN_AFTER",
    "CHAT_FRAMES_PER_SECOND",
    "CHAT_SLOW_CLIENT_TIMEOUT",
    "CHAT_TITLE_TIMEOUT",
    "CHAT_FIRST_BYTE_TIMEOUT",
    "CHAT_PROCESS_TIMEOUT",
)
#: Settings that count or rate something: each should be a positive integer (chat.E012).
COUNTS = (
    "CHAT_MAX_RUNNING_ANSWERS",
    "CHAT_TURNS_PER_MINUTE",
    "CHAT_SEND_WINDOW",
    "CHAT_HISTORIES_PER_MINUTE",
)


def _positive_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and value > 0


def _positive_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


@register(Tags.compatibility)
def check_dependencies(
    app_configs: Sequence[AppConfig] | None, **kwargs: Any
) -> list[CheckMessage]:
    errors: list[CheckMessage] = []
    for app in ("channels", "django.contrib.auth", "django.contrib.sessions"):
        if not apps.is_installed(app):
            errors.append(
                Error(f"'{app}' must be in INSTALLED_APPS in order to use chat.", id="chat.E010")
            )
    if not getattr(settings, "ASGI_APPLICATION", None):
        errors.append(
            Error(
                "ASGI_APPLICATION must be set: chat streams over Channels websockets.",
                hint="Point it at your project's asgi.application, e.g. 'mysite.asgi.application'.",
                id="chat.E011",
            )
        )
    return errors


@register()
def check_settings(app_configs: Sequence[AppConfig] | None, **kwargs: Any) -> list[CheckMessage]:
    errors: list[CheckMessage] = []
    if not _positive_int(conf.CHAT_MAX_MESSAGE_CHARS):
        errors.append(Error("CHAT_MAX_MESSAGE_CHARS should be a positive integer.", id="chat.E001"))
    for names, valid, wanted, check_id in (
        (DURATIONS, _positive_number, "a positive number of seconds", "chat.E002"),
        (COUNTS, _positive_int, "a positive integer", "chat.E012"),
    ):
        errors += [
            Error(f"{name} should be {wanted}.", id=check_id)
            for name in names
            if not valid(getattr(conf, name))
        ]
    budget = conf.CHAT_DAILY_TOKEN_BUDGET
    if budget is not None and not _positive_int(budget):
        errors.append(
            Error("CHAT_DAILY_TOKEN_BUDGET should be a positive integer or None.", id="chat.E013")
        )
    retries = conf.CHAT_MAX_RETRIES
    if not isinstance(retries, int) or isinstance(retries, bool) or retries < 0:
        errors.append(Error("CHAT_MAX_RETRIES should be an integer of 0 or more.", id="chat.E003"))
    if conf.CHAT_ON_DISCONNECT not in ("stop", "continue"):
        errors.append(Error("CHAT_ON_DISCONNECT should be 'stop' or 'continue'.", id="chat.E004"))
    for name, example, check_id in (
        ("OPENAI_BASE_URL", "https://api.openai.com/v1", "chat.E005"),
        ("CHAT_UPSTREAM_PROXY", "http://proxy.internal:3128", "chat.E014"),
    ):
        url = getattr(conf, name)
        parts = urlsplit(url)
        if url and (parts.scheme not in ("http", "https") or not parts.netloc):
            errors.append(
                Error(
                    f"{name} should be an http(s) URL such as {example!r}; got {url!r}.",
                    id=check_id,
                )
            )
    if not isinstance(getattr(settings, "CHAT_COMPLETION_OPTIONS", {}), dict):
        errors.append(Error("CHAT_COMPLETION_OPTIONS should be a dict.", id="chat.E006"))
    if not isinstance(getattr(settings, "CHAT_UPSTREAM_HEADERS", {}), dict):
        errors.append(Error("CHAT_UPSTREAM_HEADERS should be a dict.", id="chat.E007"))
    ca_bundle = conf.CHAT_UPSTREAM_CA_BUNDLE
    if ca_bundle and not os.path.isfile(ca_bundle):
        errors.append(
            Error(
                f"CHAT_UPSTREAM_CA_BUNDLE should be a file; {ca_bundle!r} is not.", id="chat.E009"
            )
        )
    frame_bytes = conf.CHAT_MAX_FRAME_BYTES
    if not _positive_int(frame_bytes) or not MIN_FRAME_BYTES <= frame_bytes <= MAX_FRAME_BYTES:
        errors.append(
            Error(
                f"CHAT_MAX_FRAME_BYTES should be an integer from {MIN_FRAME_BYTES} to "
                f"{MAX_FRAME_BYTES} (daphne refuses to send messages over 1 MiB).",
                id="chat.E015",
            )
        )
    drain = conf.CHAT_DRAIN_TIMEOUT
    if not isinstance(drain, int | float) or isinstance(drain, bool) or drain < 0:
        errors.append(Error("CHAT_DRAIN_TIMEOUT should be 0 or more seconds.", id="chat.E016"))
    if not _positive_int(conf.CHAT_MAX_EVENT_BYTES):
        errors.append(Error("CHAT_MAX_EVENT_BYTES should be a positive integer.", id="chat.E008"))
    errors += _check_hooks()
    if conf.demo_mode and not settings.DEBUG:
        errors.append(
            Warning(
                "Neither OPENAI_API_KEY nor OPENAI_BASE_URL is set, and DEBUG is off: every "
                "message is answered by the built-in demo model, not a real one.",
                hint="Set OPENAI_API_KEY (OpenAI) or OPENAI_BASE_URL (any OpenAI-compatible "
                "server) in the settings or the environment.",
                id="chat.W002",
            )
        )
    if conf.CHAT_ALLOW_ANONYMOUS and conf.OPENAI_API_KEY:
        errors.append(
            Warning(
                "CHAT_ALLOW_ANONYMOUS is on with an OPENAI_API_KEY set: anyone who can reach the "
                "site can spend your API credits.",
                id="chat.W001",
            )
        )
    return errors


def _check_hooks() -> list[CheckMessage]:
    """The project's code named in settings imports, and is of the right kind."""
    from chat.permissions import ChatPermissions

    errors: list[CheckMessage] = []
    for name, check_id in (
        ("CHAT_PERMISSIONS", "chat.E017"),
        ("CHAT_REQUEST_BUILDER", "chat.E018"),
    ):
        path = getattr(conf, name)
        if not path:
            continue
        try:
            hook = imported(path)
        except ImportError as error:
            errors.append(
                Error(f"{name} names {path!r}, which cannot be imported: {error}", id=check_id)
            )
            continue
        if name == "CHAT_PERMISSIONS":
            wrong = not (isinstance(hook, type) and issubclass(hook, ChatPermissions))
            expected = "a subclass of chat.permissions.ChatPermissions"
        else:
            wrong, expected = not callable(hook), "a callable"
        if wrong:
            errors.append(Error(f"{name} should name {expected}; {path!r} is not.", id=check_id))
    return errors
