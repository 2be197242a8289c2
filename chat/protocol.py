"""The websocket protocol: client frames and their validation, server frame shapes.

See ``docs/protocol.md``. Every client frame is untrusted: ``parse_client_frame``
either returns a typed frame or raises ``ClientError`` with a stable code.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, TypedDict, cast

import orjson

from chat.exceptions import ClientError
from chat.text import storable

if TYPE_CHECKING:
    from chat.models import Conversation, Message

# Client -> server -----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Send:
    """Start a turn: ``conversation`` None creates a conversation.

    ``parent`` is the answer the page shows last, which the question follows
    (None: the end of the conversation's active path).
    """

    conversation: uuid.UUID | None
    content: str
    parent: uuid.UUID | None = None


@dataclass(frozen=True, slots=True)
class Edit:
    """Ask an edited version of a user message: a new branch beside it."""

    message: uuid.UUID
    content: str


@dataclass(frozen=True, slots=True)
class MessageAction:
    """A frame that names one message and nothing else: ``Regenerate``, ``Switch``, ``Stop``."""

    message: uuid.UUID


@dataclass(frozen=True, slots=True)
class Regenerate(MessageAction):
    """Answer the question of this assistant message again, beside it."""


@dataclass(frozen=True, slots=True)
class Switch(MessageAction):
    """Show the branch through this message (a sibling version the page offers)."""


@dataclass(frozen=True, slots=True)
class Stop(MessageAction):
    """Stop the generation of an assistant message."""


@dataclass(frozen=True, slots=True)
class Watch:
    """Show a conversation: its history, then live frames of its running answer."""

    conversation: uuid.UUID


@dataclass(frozen=True, slots=True)
class Pong:
    """The page's echo of a ``ping``: proof that it read everything sent before it."""

    nonce: str


ClientFrame = Send | Edit | Regenerate | Switch | Stop | Watch | Pong

FRAME_TYPES = "'send', 'edit', 'regenerate', 'switch', 'stop', 'watch' or 'pong'"


def parse_client_frame(raw: str, *, max_chars: int) -> ClientFrame:
    """Validate one text frame from the browser."""
    # A frame may hold the content JSON-escaped (up to 6 bytes a character) plus
    # a little envelope; anything longer is refused before it is parsed.
    if len(raw) > max_chars * 6 + 1024:
        raise ClientError("too_large", f"Frames are limited to {max_chars} characters of content.")
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise ClientError("invalid_json", "The frame is not valid JSON.") from None
    if not isinstance(data, dict):
        raise ClientError("invalid_frame", "A frame must be a JSON object with a 'type'.")
    kind = data.get("type")
    if kind == "send":
        return Send(
            conversation=_uuid(data, "conversation", optional=True),
            content=_content(data, max_chars),
            parent=_uuid(data, "parent", optional=True),
        )
    if kind == "edit":
        return Edit(message=_uuid(data, "message"), content=_content(data, max_chars))
    if kind == "regenerate":
        return Regenerate(message=_uuid(data, "message"))
    if kind == "switch":
        return Switch(message=_uuid(data, "message"))
    if kind == "stop":
        return Stop(message=_uuid(data, "message"))
    if kind == "watch":
        return Watch(conversation=_uuid(data, "conversation"))
    if kind == "pong":
        nonce = data.get("nonce")
        if not isinstance(nonce, str):
            raise ClientError("invalid_frame", "'nonce' must be a string.")
        return Pong(nonce=nonce)
    raise ClientError("unknown_type", f"The frame 'type' must be one of {FRAME_TYPES}.")


def _content(data: dict[str, Any], max_chars: int) -> str:
    content = data.get("content")
    if not isinstance(content, str):
        raise ClientError("invalid_frame", "'content' must be a string.")
    if not content.strip():
        raise ClientError("empty_content", "The message is empty.")
    if len(content) > max_chars:
        raise ClientError(
            "content_too_long",
            f"The message is {len(content)} characters long; the limit is {max_chars}.",
        )
    return storable(content)  # shown back to the page as stored


def _uuid(data: dict[str, Any], key: str, *, optional: bool = False) -> Any:
    value = data.get(key)
    if value is None and optional:
        return None
    if not isinstance(value, str):
        raise ClientError("invalid_frame", f"'{key}' must be an id string.")
    try:
        return uuid.UUID(value)
    except ValueError:
        raise ClientError("invalid_frame", f"'{key}' is not a valid id.") from None


# Server -> client -----------------------------------------------------------

FinalStatus = Literal["complete", "stopped", "failed", "interrupted"]
#: ``Message.Statuses`` and ``Message.Roles``, as the page sees them.
Status = Literal["streaming", "complete", "stopped", "failed", "interrupted"]
Role = Literal["user", "assistant", "system"]
#: Who or what stopped an answer: the user, their page closing, their budget, or staff.
StopReason = Literal["user", "disconnected", "budget", "staff"]


class ErrorInfo(TypedDict):
    code: str
    detail: str


class UsageInfo(TypedDict):
    prompt_tokens: int | None
    completion_tokens: int | None
    total_tokens: int | None
    estimated: bool  # the upstream reported nothing: the figures are estimates


class DeltaFrame(TypedDict):
    type: Literal["delta"]
    message: str
    index: int
    text: str


class ReasoningFrame(TypedDict):
    type: Literal["reasoning"]
    message: str
    index: int
    text: str


class HtmlFrame(TypedDict):
    """Sanitized HTML of the answer's text from ``index`` to ``end``: complete blocks."""

    type: Literal["html"]
    message: str
    index: int
    end: int
    html: str


class DoneFrame(TypedDict):
    type: Literal["done"]
    message: str
    conversation: str
    status: FinalStatus
    length: int
    finish_reason: str | None
    usage: UsageInfo
    error: ErrorInfo | None
    html: str
    refusal: str


class ErrorFrame(TypedDict):
    type: Literal["error"]
    code: str
    detail: str


class ConversationInfo(TypedDict):
    id: str
    title: str
    model: str
    created_at: str
    updated_at: str


class MessageInfo(TypedDict):
    """A stored message as the page sees it (see ``message_payload``)."""

    id: str
    conversation: str
    parent: str | None
    versions: list[str]
    role: Role
    content: str
    reasoning: str
    refusal: str
    status: Status
    finish_reason: str | None
    error: ErrorInfo | None
    usage: UsageInfo
    model: str
    created_at: str
    html: str
    rendered: int


class ConversationFrame(TypedDict):
    """A ``send`` created this conversation (sent to that socket only)."""

    type: Literal["conversation"]
    conversation: ConversationInfo


class HistoryFrame(TypedDict):
    type: Literal["history"]
    conversation: ConversationInfo
    messages: list[MessageInfo]


class MessageFrame(TypedDict):
    type: Literal["message"]
    message: MessageInfo


class TitleFrame(TypedDict):
    type: Literal["title"]
    conversation: str
    title: str


class PingFrame(TypedDict):
    type: Literal["ping"]
    nonce: str


#: The error a stopped answer ends with, by who or what stopped it (a user's own stop: none).
STOPPED: dict[StopReason, ErrorInfo | None] = {
    "user": None,
    "disconnected": {
        "code": "client_disconnected",
        "detail": "Stopped because the last page showing this answer was closed.",
    },
    "budget": {
        "code": "budget_exhausted",
        "detail": "Your daily token budget ran out: the answer was cut off here.",
    },
    "staff": {"code": "stopped_by_staff", "detail": "Stopped by the site's staff."},
}
#: The error of an answer whose process stopped (a deploy, a crash) while it was written.
INTERRUPTED: ErrorInfo = {
    "code": "interrupted",
    "detail": "The server stopped while this answer was being written; "
    "the text saved before that is kept.",
}


class PartFrame(TypedDict):
    """A slice of a frame too large to send whole (see ``frame_texts``)."""

    type: Literal["part"]
    last: bool
    data: str


def error_frame(code: str, detail: str) -> ErrorFrame:
    return {"type": "error", "code": code, "detail": detail}


def text_frame(
    kind: Literal["delta", "reasoning"], message: str, index: int, text: str
) -> DeltaFrame | ReasoningFrame:
    """A piece of an answer's text (``delta``) or of its reasoning, at ``index`` (code points)."""
    # The two frames differ in their type only; a literal cannot be both to mypy.
    frame = {"type": kind, "message": message, "index": index, "text": text}
    return cast("DeltaFrame | ReasoningFrame", frame)


def done_frame(
    message_id: uuid.UUID,
    conversation_id: uuid.UUID,
    *,
    length: int,
    status: FinalStatus,
    usage: UsageInfo,
    error: ErrorInfo | None,
    html: str,
    finish_reason: str | None = None,
    refusal: str = "",
) -> DoneFrame:
    """How an answer ended: the one constructor, for a generation and for the sweep alike."""
    return {
        "type": "done",
        "message": str(message_id),
        "conversation": str(conversation_id),
        "status": status,
        "length": length,
        "finish_reason": finish_reason,
        "usage": usage,
        "error": error,
        "html": html,
        "refusal": refusal,
    }


def dumps(frame: Any) -> str:
    return orjson.dumps(frame).decode()


#: Bytes a part frame adds around its slice: ``{"type":"part","last":false,"data":""}``.
PART_ENVELOPE = 64


def frame_texts(frame: Any, *, limit: int) -> list[str]:
    """The websocket messages that carry ``frame``: itself, or ``part`` frames if too large.

    No message is longer than ``limit`` UTF-8 bytes (servers and proxies cap
    message sizes; daphne refuses over 1 MiB). A large frame's JSON text is cut
    at character boundaries into slices that the page joins, in order, up to the
    part with ``last: true``, and then parses as one frame. Re-encoding a slice
    as a JSON string at most doubles it (only ``"`` and ``\\`` are escaped
    again; orjson writes no raw control characters), so each slice takes at
    most half the room.
    """
    raw = orjson.dumps(frame)
    if len(raw) <= limit:
        return [raw.decode()]
    room = (limit - PART_ENVELOPE) // 2
    texts = []
    start = 0
    while start < len(raw):
        end = min(start + room, len(raw))
        while end < len(raw) and raw[end] & 0xC0 == 0x80:
            end -= 1  # not inside a UTF-8 sequence
        part: PartFrame = {"type": "part", "last": end == len(raw), "data": raw[start:end].decode()}
        texts.append(orjson.dumps(part).decode())
        start = end
    return texts


#: Every frame the server sends (a large one may travel as ``PartFrame``s).
ServerFrame = (
    ConversationFrame
    | HistoryFrame
    | MessageFrame
    | DeltaFrame
    | HtmlFrame
    | ReasoningFrame
    | TitleFrame
    | DoneFrame
    | ErrorFrame
    | PingFrame
)


def conversation_payload(conversation: Conversation) -> ConversationInfo:
    return {
        "id": str(conversation.id),
        "title": conversation.title,
        "model": conversation.model,
        "created_at": conversation.created_at.isoformat(),
        "updated_at": conversation.updated_at.isoformat(),
    }


def stored_usage(message: Message) -> UsageInfo:
    """A message's usage as it is stored (reported, estimated, or none yet)."""
    return {
        "prompt_tokens": message.prompt_tokens,
        "completion_tokens": message.completion_tokens,
        "total_tokens": message.total_tokens,
        "estimated": message.usage_estimated,
    }


def stored_error(message: Message) -> ErrorInfo | None:
    """A message's stored error, if it has one."""
    if not message.error_code:
        return None
    return {"code": message.error_code, "detail": message.error_detail}


def message_payload(
    message: Message, *, html: str = "", rendered: int = 0, versions: list[str] | None = None
) -> MessageInfo:
    """A stored message as the browser sees it.

    ``html`` is its sanitized HTML, which covers its text up to ``rendered``;
    ``versions`` the ids of it and its siblings (edits, regenerated answers),
    oldest first.
    """
    error = stored_error(message)
    return {
        "id": str(message.id),
        "conversation": str(message.conversation_id),
        "parent": str(message.parent_id) if message.parent_id is not None else None,
        "versions": versions if versions is not None else [str(message.id)],
        "role": cast(Role, message.role),  # the model's choices
        "content": message.content,
        "reasoning": message.reasoning,
        "refusal": message.refusal,
        "status": cast(Status, message.status),
        "finish_reason": message.finish_reason or None,
        "error": error,
        "usage": stored_usage(message),
        "model": message.model,
        "created_at": message.created_at.isoformat(),
        "html": html,
        "rendered": rendered,
    }


_BY_POSITION = frozenset(("delta", "reasoning", "html"))


def conversation_of(frame: Mapping[str, Any]) -> str | None:
    """The id of the conversation a server frame belongs to.

    None for the frames of an answer's text (``delta``, ``reasoning``,
    ``html``): those name only their message, and a socket takes them only for
    answers it was shown, by position. Every other frame names its conversation.
    """
    kind = frame["type"]
    if kind in _BY_POSITION:
        return None
    if kind == "message":
        return str(frame["message"]["conversation"])
    conversation = frame.get("conversation")
    if isinstance(conversation, Mapping):
        return str(conversation["id"])  # history, conversation
    return None if conversation is None else str(conversation)


def coalesce(frames: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """Merge runs of contiguous deltas (or reasoning) of one message into one frame each.

    A socket that fell behind sends what piled up as few frames as it can; the
    ``index`` contract holds, since only frames that follow on exactly are merged.
    """
    merged: list[Mapping[str, Any]] = []
    for frame in frames:
        kind = frame["type"]
        if merged and kind in ("delta", "reasoning"):
            last = merged[-1]
            if (
                last["type"] == kind
                and last["message"] == frame["message"]
                and last["index"] + len(last["text"]) == frame["index"]
            ):
                merged[-1] = {**last, "text": last["text"] + frame["text"]}
                continue
        merged.append(frame)
    return merged
