"""Conversations and their messages: what was asked, what was answered, and how it ran."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar

from django.conf import settings
from django.db import models
from django.db.models import Q
from django.utils import timezone

if TYPE_CHECKING:
    from django.contrib.auth.base_user import AbstractBaseUser

    # django-stubs types a foreign key from a direct ``ForeignKey(...)`` call only:
    # the fields ``_optional_key`` makes are annotated with these.
    OptionalUser = models.ForeignKey[AbstractBaseUser | None, AbstractBaseUser | None]
    OptionalMessage = models.ForeignKey["Message | None", "Message | None"]

_T = TypeVar("_T", bound=models.Model)


@dataclass(frozen=True, slots=True)
class Owner:
    """Who is chatting: a signed-in user, or (when allowed) an anonymous browser session."""

    user_id: int | None
    session_key: str = ""

    @property
    def key(self) -> str:
        return f"user:{self.user_id}" if self.user_id is not None else f"session:{self.session_key}"

    @classmethod
    def from_key(cls, key: str) -> Owner:
        kind, _, value = key.partition(":")
        return cls(user_id=int(value)) if kind == "user" else cls(user_id=None, session_key=value)


def _optional_key(
    to: str,
    related_name: str,
    *,
    on_delete: Callable[..., None] = models.CASCADE,
    help_text: str = "",
) -> models.ForeignKey[_T | None, _T | None]:
    """A foreign key that may be empty: null in the database, not required in forms."""
    return models.ForeignKey(
        to,
        on_delete=on_delete,
        null=True,
        blank=True,
        related_name=related_name,
        help_text=help_text,
    )


class ConversationQuerySet(models.QuerySet["Conversation"]):
    def owned_by(self, owner: Owner) -> ConversationQuerySet:
        """Only ``owner``'s conversations: every lookup by id from a browser goes through here."""
        if owner.user_id is not None:
            return self.filter(owner_id=owner.user_id)
        if owner.session_key:
            return self.filter(owner=None, session_key=owner.session_key)
        return self.none()


class MessageQuerySet(models.QuerySet["Message"]):
    def owned_by(self, owner: Owner) -> MessageQuerySet:
        """Only messages of ``owner``'s conversations (see ``ConversationQuerySet.owned_by``)."""
        return self.filter(conversation__in=Conversation.objects.owned_by(owner))


class Conversation(models.Model):
    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    owner: OptionalUser = _optional_key(
        settings.AUTH_USER_MODEL,
        "chat_conversations",
        help_text="The user who owns this conversation; empty for an anonymous session.",
    )
    session_key = models.CharField(
        max_length=40,
        blank=True,
        default="",
        help_text="The anonymous session that owns this conversation, when there is no owner.",
    )
    title = models.CharField(max_length=200, blank=True, default="")
    model = models.CharField(
        max_length=200, blank=True, default="", help_text="The model answers are requested from."
    )
    current_leaf: OptionalMessage = _optional_key(
        "Message",
        "+",
        on_delete=models.SET_NULL,
        help_text="The last message of the branch shown and continued: the active path ends here.",
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(
        auto_now=True, db_index=True, help_text="Last activity: when its last turn started."
    )

    objects = ConversationQuerySet.as_manager()

    class Meta:
        ordering = ("-updated_at",)
        indexes = (
            models.Index(fields=("owner", "-updated_at"), name="chat_conv_owner_recent"),
            models.Index(
                fields=("session_key", "-updated_at"),
                name="chat_conv_session_recent",
                condition=Q(owner=None),
            ),
        )

    def __str__(self) -> str:
        return self.title or f"Conversation {self.id}"


class Message(models.Model):
    class Roles(models.TextChoices):
        SYSTEM = "system", "System"
        USER = "user", "User"
        ASSISTANT = "assistant", "Assistant"

    class Statuses(models.TextChoices):
        STREAMING = "streaming", "Streaming"
        COMPLETE = "complete", "Complete"
        STOPPED = "stopped", "Stopped"
        FAILED = "failed", "Failed"
        INTERRUPTED = "interrupted", "Interrupted"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    conversation = models.ForeignKey(
        Conversation, on_delete=models.CASCADE, related_name="messages"
    )
    parent: OptionalMessage = _optional_key(
        "self",
        "children",
        help_text="The message this one follows; siblings (same parent) are versions: edits, "
        "regenerated answers.",
    )
    role = models.CharField(max_length=16, choices=Roles.choices)
    content = models.TextField(blank=True, default="")
    reasoning = models.TextField(
        blank=True, default="", help_text="Reasoning the model streamed apart from its answer."
    )
    refusal = models.TextField(blank=True, default="", help_text="The model's refusal, if any.")
    tool_calls = models.JSONField(
        blank=True, default=list, help_text="Tool calls the model asked for (recorded, not run)."
    )
    status = models.CharField(
        max_length=16, choices=Statuses.choices, default=Statuses.COMPLETE, db_index=True
    )
    finish_reason = models.CharField(
        max_length=32, blank=True, default="", help_text="Why the upstream ended the answer."
    )
    error_code = models.CharField(max_length=64, blank=True, default="")
    error_detail = models.TextField(blank=True, default="")
    model = models.CharField(max_length=200, blank=True, default="")
    prompt_tokens = models.PositiveIntegerField(null=True, blank=True)
    completion_tokens = models.PositiveIntegerField(null=True, blank=True)
    total_tokens = models.PositiveIntegerField(null=True, blank=True)
    usage_estimated = models.BooleanField(
        default=False,
        help_text="The upstream reported no usage (the answer was cut short): the tokens are "
        "estimated from the text.",
    )
    upstream_request_id = models.CharField(
        max_length=200, blank=True, default="", help_text="The upstream's x-request-id header."
    )
    runner = models.UUIDField(
        null=True,
        blank=True,
        db_index=True,
        help_text="The process (chat.Process) writing this answer, while it streams.",
    )
    time_to_first_token = models.DurationField(
        null=True, blank=True, help_text="From the request sent upstream to the first token."
    )
    duration = models.DurationField(
        null=True, blank=True, help_text="From the request sent upstream to the answer's end."
    )
    shown_at = models.DateTimeField(
        default=timezone.now,
        help_text="When this message was last on the path shown: switching back to a version "
        "returns to the replies seen with it.",
    )
    timeline = models.JSONField(
        blank=True,
        default=list,
        help_text="How the answer ran: started, request sent, retries, first token, stop, end.",
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    objects = MessageQuerySet.as_manager()

    class Meta:
        ordering = ("created_at",)
        indexes = (
            models.Index(fields=("conversation", "created_at"), name="chat_msg_conv_order"),
            # The answers being written, by conversation: a turn's limits count the
            # owner's (``store._answer_counts``) in one probe per conversation.
            models.Index(
                fields=("conversation",),
                name="chat_msg_streaming",
                condition=Q(status="streaming"),
            ),
        )

    def __str__(self) -> str:
        text = self.content if len(self.content) <= 60 else f"{self.content[:59]}…"
        return f"{self.get_role_display()}: {text}"


class Process(models.Model):
    """A server process that writes answers; its heartbeat tells the others it is alive.

    Each answer being written names its process (``Message.runner``): when a
    process stops beating (killed, its machine lost), the others interrupt its
    answers within ``CHAT_PROCESS_TIMEOUT`` seconds instead of waiting for the
    answers' rows to age.
    """

    id = models.UUIDField(primary_key=True, editable=False)
    host = models.CharField(max_length=255, help_text="The machine's host name.")
    pid = models.PositiveIntegerField(help_text="The process id on that machine.")
    started_at = models.DateTimeField(auto_now_add=True)
    seen_at = models.DateTimeField(db_index=True, help_text="Its last heartbeat.")

    class Meta:
        ordering = ("started_at",)

    def __str__(self) -> str:
        return f"{self.host}:{self.pid}"


class StreamingAnswer(Message):
    """The answers being written right now, for the admin's live list (a proxy of Message)."""

    class Meta:
        proxy = True
        verbose_name = "answer being written"
        verbose_name_plural = "answers being written"
        permissions = (("stop_answer", "Can stop an answer being written"),)


class DailyUsage(models.Model):
    """Tokens one user (or anonymous session) spent in a day: answers and titles."""

    owner_key = models.CharField(max_length=60, help_text="user:<id> or session:<key>.")
    user: OptionalUser = _optional_key(settings.AUTH_USER_MODEL, "chat_usage")
    day = models.DateField(db_index=True)
    prompt_tokens = models.PositiveBigIntegerField(default=0)
    completion_tokens = models.PositiveBigIntegerField(default=0)
    estimated_tokens = models.PositiveBigIntegerField(
        default=0, help_text="Of the total, tokens estimated because the upstream reported none."
    )
    answers = models.PositiveIntegerField(default=0)

    class Meta:
        verbose_name_plural = "daily usage"
        ordering = ("-day",)
        constraints = (
            models.UniqueConstraint(fields=("owner_key", "day"), name="chat_usage_once_a_day"),
        )

    def __str__(self) -> str:
        return f"{self.owner_key} on {self.day}"

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


def active_path(messages: list[Message], leaf_id: uuid.UUID | None) -> list[Message]:
    """The branch from the root to ``leaf_id`` (to the newest message when there is none)."""
    if not messages:
        return []
    by_id = {m.id: m for m in messages}
    node = by_id.get(leaf_id) if leaf_id is not None else None
    if node is None:
        node = max(messages, key=lambda m: m.created_at)
    path = []
    while node is not None:
        path.append(node)
        node = by_id.get(node.parent_id) if node.parent_id is not None else None
    path.reverse()
    return path


def last_shown_leaf_under(messages: list[Message], start: Message) -> Message:
    """Where switching to ``start`` lands: down the replies shown last, to a leaf."""
    children: dict[uuid.UUID, list[Message]] = {}
    for m in messages:
        if m.parent_id is not None:
            children.setdefault(m.parent_id, []).append(m)
    node = start
    while node.id in children:
        node = max(children[node.id], key=lambda m: (m.shown_at, m.created_at))
    return node
