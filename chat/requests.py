"""What goes upstream for one answer, and the project's hook to shape it.

By default a turn sends the active path before the answer (with
``CHAT_SYSTEM_PROMPT`` first), ``CHAT_MODEL``, ``CHAT_COMPLETION_OPTIONS`` and
``CHAT_UPSTREAM_HEADERS``. ``CHAT_REQUEST_BUILDER`` names a callable that takes
a ``TurnContext`` and returns the ``UpstreamRequest`` to send instead: a system
prompt per user, context retrieved from the project's own models, a model per
customer::

    def build(turn: TurnContext) -> UpstreamRequest:
        document = Document.objects.filter(owner=turn.user).latest("updated_at")
        context = {"role": "system", "content": f"Answer from this text:\\n{document.text}"}
        return replace(turn.request, messages=[context, *turn.request.messages])

A plain function runs in Channels' database thread (the ORM works there); an
``async def`` runs on the event loop. It runs once per answer, before the
request; if it raises (or returns something else), the answer is stored as
``failed`` with the code ``request_not_built`` and the cause goes to the log.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any

from django.contrib.auth import get_user_model
from django.contrib.auth.models import AnonymousUser

from chat.batches import in_db_thread
from chat.hooks import request_builder
from chat.models import Conversation, Message, Owner


@dataclass(frozen=True, slots=True)
class UpstreamRequest:
    """The request body's ``messages``, ``model`` and extra fields, and extra headers."""

    messages: list[dict[str, Any]]
    model: str
    options: dict[str, Any] = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class TurnContext:
    """What a request builder knows of the turn."""

    #: Who asked (``AnonymousUser`` for an anonymous session).
    user: Any
    conversation: Conversation
    #: The active path, oldest first, up to the question being answered (its last message).
    path: list[Message]
    #: What the app sends when no builder is set.
    request: UpstreamRequest


async def build(
    owner: Owner, conversation: Conversation, path: list[Message], default: UpstreamRequest
) -> UpstreamRequest:
    """The request for this turn: the default, or what ``CHAT_REQUEST_BUILDER`` returns."""
    builder = request_builder()
    if builder is None:
        return default
    if inspect.iscoroutinefunction(builder):
        context = TurnContext(await _user(owner), conversation, path, default)
        result = await builder(context)
    else:

        def run() -> Any:
            return builder(TurnContext(_load_user(owner), conversation, path, default))

        result = await in_db_thread(run)()
    if not isinstance(result, UpstreamRequest):
        raise TypeError(
            f"CHAT_REQUEST_BUILDER should return a chat.requests.UpstreamRequest; "
            f"it returned {type(result).__name__}."
        )
    return result


def _load_user(owner: Owner) -> Any:
    if owner.user_id is None:
        return AnonymousUser()
    return get_user_model()._default_manager.get(pk=owner.user_id)


_user = in_db_thread(_load_user)
