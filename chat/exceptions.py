"""One class per failure, each with the stable ``code`` sent to the browser and stored.

Upstream errors carry a ``detail`` written for the person chatting; it never
contains the API key (``chat.text.redact`` removes it from anything the upstream echoes).
"""

from __future__ import annotations

import uuid
from typing import Any, Self

from chat.text import redact, storable


class ChatError(Exception):
    """Base class of every error the chat app raises on purpose."""

    code = "error"

    def __init_subclass__(cls, *, code: str = "", **kwargs: Any) -> None:
        """``class X(ChatError, code="...")``: the stable code of X, sent to the page and stored."""
        super().__init_subclass__(**kwargs)
        if code:
            cls.code = code

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail

    def redacted(self, secrets: tuple[str, ...]) -> Self:
        """This error with every piece of ``secrets`` taken out of its detail (``chat.text``)."""
        self.detail = storable(redact(self.detail, secrets))
        self.args = (self.detail,)
        return self


class ClientError(ChatError):
    """Raised when a browser frame is malformed or not allowed; answered with an ``error`` frame."""

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(detail)
        self.code = code


class ConversationBusy(ClientError):
    """Raised when a turn is asked in a conversation whose answer ``message_id`` still streams."""

    def __init__(self, message_id: uuid.UUID) -> None:
        super().__init__(
            "busy",
            "An answer is still being written in this conversation: "
            "stop it or wait for it to finish.",
        )
        self.message_id = message_id


class SessionEnded(ChatError, code="not_authenticated"):
    """Raised when the socket's session logged out, or its user's password changed."""


class NotAllowed(ChatError, code="forbidden"):
    """Raised when the project's rule (``CHAT_PERMISSIONS``) does not let this user chat."""

    def __init__(self) -> None:
        super().__init__("You are not allowed to chat here.")


class ServerError(ChatError, code="server_error"):
    """Raised for a bug on our side while an answer ran: the user gets this, the log the cause."""


class RequestNotBuilt(ChatError, code="request_not_built"):
    """Raised when ``CHAT_REQUEST_BUILDER`` failed: the user gets this, the log the cause."""

    def __init__(self) -> None:
        super().__init__("This answer's request could not be prepared (the server's log says why).")


class UpstreamError(ChatError, code="upstream_error"):
    """Raised when the model server fails; the answer is stored as ``failed``."""

    #: Safe to try again before any token arrived (nothing was generated or billed twice).
    retryable = False

    def __init_subclass__(cls, *, retryable: bool | None = None, **kwargs: Any) -> None:
        """``class X(UpstreamError, retryable=True)``: X may be retried (``retryable``)."""
        super().__init_subclass__(**kwargs)
        if retryable is not None:
            cls.retryable = retryable

    def __init__(self, detail: str, *, status_code: int | None = None) -> None:
        super().__init__(detail)
        self.status_code = status_code


class UpstreamAuthError(UpstreamError, code="upstream_auth"):
    """Raised when the upstream answers 401 or 403: the API key was rejected."""


class UpstreamNotFound(UpstreamError, code="model_not_found"):
    """Raised when the upstream answers 404, usually an unknown model name."""


class UpstreamRateLimited(UpstreamError, code="rate_limited", retryable=True):
    """Raised when the upstream answers 429; ``retry_after`` is in seconds when it said."""

    def __init__(
        self, detail: str, *, status_code: int | None = 429, retry_after: float | None = None
    ) -> None:
        super().__init__(detail, status_code=status_code)
        self.retry_after = retry_after


class UpstreamUnavailable(UpstreamError, code="upstream_unavailable", retryable=True):
    """Raised when the upstream answers with a 5xx status."""


class UpstreamRejected(UpstreamError, code="upstream_rejected"):
    """Raised when the upstream answers another 4xx status (bad request, context too long...)."""


class UpstreamUnreachable(UpstreamError, code="upstream_unreachable", retryable=True):
    """Raised when no connection could be made (refused, DNS failure, TLS failure)."""


class UpstreamTimeout(UpstreamError, code="upstream_timeout"):
    """Raised when the upstream sends no byte for longer than ``CHAT_READ_TIMEOUT``."""


class UpstreamDisconnected(UpstreamError, code="upstream_disconnected"):
    """Raised when the upstream connection breaks before the answer is finished."""


class UpstreamStreamError(UpstreamError, code="upstream_error"):
    """Raised when the stream itself carries an ``error`` object."""


class UpstreamProtocolError(UpstreamError, code="upstream_garbage"):
    """Raised when the upstream sends something that is not an OpenAI chunk stream."""
