"""The project's own code, named in settings: who may do what, and each turn's request.

``CHAT_PERMISSIONS`` names a class (subclass ``chat.permissions.ChatPermissions``);
``CHAT_REQUEST_BUILDER`` a callable (``chat.requests.build`` shows the shape).
Both are imported once per setting value, so ``override_settings`` works in tests,
and checked at startup (``chat.E017``, ``chat.E018``).
"""

from __future__ import annotations

import functools
from typing import Any

from django.utils.module_loading import import_string

from chat.conf import conf


@functools.lru_cache(maxsize=8)
def imported(path: str) -> Any:
    """The object at a dotted path (cached: settings name few)."""
    return import_string(path)


def permissions() -> Any:
    """An instance of the ``CHAT_PERMISSIONS`` class."""
    return _instance(conf.CHAT_PERMISSIONS)


@functools.lru_cache(maxsize=8)
def _instance(path: str) -> Any:
    return imported(path)()


def request_builder() -> Any:
    """The ``CHAT_REQUEST_BUILDER`` callable, or None for the app's own request."""
    path = conf.CHAT_REQUEST_BUILDER
    return imported(path) if path else None
