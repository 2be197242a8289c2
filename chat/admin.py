"""Transcripts in the Django admin: read-only, searchable, exportable."""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from typing import Any

from asgiref.sync import async_to_sync
from django.contrib import admin
from django.db.models import Count, F, Max, OuterRef, QuerySet, Subquery, Sum
from django.http import HttpRequest, HttpResponse
from django.urls import reverse
from django.utils import timezone
from django.utils.html import format_html, format_html_join

from chat.generation import stop_anywhere
from chat.models import Conversation, DailyUsage, Message, StreamingAnswer, active_path
from chat.permissions import can_see_running_answers, can_stop_answers
from chat.protocol import conversation_payload, message_payload
from chat.store import versions_of


class ReadOnlyAdmin(admin.ModelAdmin):  # type: ignore[type-arg]
    """Transcripts are a record: staff read them, nobody edits them here.

    Without add and change permission the admin shows every field read-only.
    """

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


def _export_dict(conversation: Conversation) -> dict[str, Any]:
    """A conversation as JSON: each message as the page sees it (less its HTML), and its timings."""
    messages = list(conversation.messages.all())
    return {
        **conversation_payload(conversation),
        "owner": conversation.owner.get_username() if conversation.owner else None,
        "messages": [
            {
                **{k: v for k, v in message_payload(m).items() if k not in ("html", "rendered")},
                "versions": versions,
                "time_to_first_token": (
                    m.time_to_first_token.total_seconds() if m.time_to_first_token else None
                ),
                "duration": m.duration.total_seconds() if m.duration else None,
            }
            for m, versions in zip(messages, versions_of(messages, messages).values(), strict=True)
        ],
    }


def _export_markdown(conversation: Conversation) -> str:
    lines = [f"# {conversation.title or 'Untitled conversation'}", ""]
    owner = conversation.owner.get_username() if conversation.owner else "anonymous"
    lines += [f"*{owner} · {conversation.model} · {conversation.created_at:%Y-%m-%d %H:%M}*", ""]
    for m in conversation.messages.all():
        heading = f"## {m.get_role_display()}"
        if m.role == Message.Roles.ASSISTANT and m.status != Message.Statuses.COMPLETE:
            heading += f" ({m.get_status_display().lower()})"
        lines += [heading, "", m.content, ""]
    return "\n".join(lines)


def _outcome(message: Message) -> str:
    if message.role != Message.Roles.ASSISTANT:
        return ""
    parts = [message.get_status_display()]
    if message.finish_reason:
        parts.append(f"({message.finish_reason})")
    if message.error_code:
        parts.append(f"— {message.error_code}: {message.error_detail}")
    return " ".join(parts)


def _tokens(message: Message) -> str:
    if message.total_tokens is None:
        return ""
    figures = f"{message.prompt_tokens} / {message.completion_tokens} / {message.total_tokens}"
    return f"~{figures} (estimated)" if message.usage_estimated else figures


def _tree(messages: list[Message]) -> list[tuple[Message, int, list[Message]]]:
    """Messages depth first (each after its parent, versions oldest first), with the
    depth of each branch point (0 on the first path) and each message's siblings."""
    children: dict[Any, list[Message]] = {}
    for m in sorted(messages, key=lambda m: m.created_at):
        children.setdefault(m.parent_id, []).append(m)
    ordered: list[tuple[Message, int, list[Message]]] = []
    stack = [(m, 0) for m in reversed(children.get(None, []))]
    while stack:
        message, depth = stack.pop()
        siblings = children[message.parent_id]
        ordered.append((message, depth, siblings))
        below = children.get(message.id, [])
        # The first reply continues the branch; later versions start a deeper one.
        stack += [(child, depth + (i > 0)) for i, child in reversed(list(enumerate(below)))]
    return ordered


def _version(message: Message, siblings: list[Message], shown: bool) -> str:
    if len(siblings) < 2:
        return "shown" if shown else "not shown"
    number = f"{siblings.index(message) + 1}/{len(siblings)}"
    return f"{number}, shown" if shown else f"{number}, not shown"


def _seconds(value: timedelta | None) -> str:
    return "" if value is None else f"{value.total_seconds():.3f} s"


def _download(content: str, filename: str, content_type: str) -> HttpResponse:
    response = HttpResponse(content, content_type=content_type)
    response["Content-Disposition"] = f'attachment; filename="{filename}"'
    return response


@admin.register(Conversation)
class ConversationAdmin(ReadOnlyAdmin):
    list_display = (
        "__str__",
        "owner",
        "model",
        "message_count",
        "tokens",
        "last_activity",
    )
    list_filter = ("messages__status", "model", "created_at")
    search_fields = ("title", "messages__content", "owner__username")
    date_hierarchy = "updated_at"
    fields = (
        ("title", "owner"),
        ("model", "session_key"),
        ("created_at", "updated_at"),
        "transcript",
    )
    readonly_fields = ("created_at", "updated_at", "transcript")
    actions = ("export_json", "export_markdown")
    list_select_related = ("owner",)

    def get_queryset(self, request: HttpRequest) -> QuerySet[Conversation]:
        queryset: QuerySet[Conversation] = super().get_queryset(request)
        return queryset.annotate(
            message_count=Count("messages"),
            tokens=Sum("messages__total_tokens"),
            last_activity=Max("messages__updated_at"),
        )

    @admin.display(description="messages", ordering="message_count")
    def message_count(self, obj: Any) -> int:
        return int(obj.message_count)

    @admin.display(description="tokens", ordering="tokens")
    def tokens(self, obj: Any) -> int:
        return int(obj.tokens or 0)

    @admin.display(description="last activity", ordering="last_activity")
    def last_activity(self, obj: Any) -> Any:
        return obj.last_activity or obj.updated_at

    @admin.display(description="transcript")
    def transcript(self, obj: Conversation) -> str:
        """Every message as a tree: each version under its parent, marked ``2/3``, and
        whether the page shows it. Content is escaped, never rendered."""
        messages = list(obj.messages.all())
        shown = {m.id for m in active_path(messages, obj.current_leaf_id)}
        rows = format_html_join(
            "",
            '<tr class="{}"><td>{}</td><td style="padding-left: {}em">{}<a href="{}">{}</a></td>'
            "<td>{}</td><td>{}</td>"
            '<td style="white-space: pre-wrap; min-width: 30em; max-width: 60em">{}</td>'
            "<td>{}</td><td>{}</td><td>{}</td></tr>",
            (
                (
                    "chat-shown" if m.id in shown else "chat-other-version",
                    m.created_at.strftime("%Y-%m-%d %H:%M:%S"),
                    depth,
                    "↳ " if depth else "",
                    reverse("admin:chat_message_change", args=[m.pk]),
                    m.get_role_display(),
                    _version(m, siblings, m.id in shown),
                    _outcome(m),
                    m.content,
                    _tokens(m),
                    _seconds(m.time_to_first_token),
                    _seconds(m.duration),
                )
                for m, depth, siblings in _tree(messages)
            ),
        )
        return format_html(
            '<table class="chat-transcript"><thead><tr><th>at</th><th>role</th><th>version</th>'
            "<th>status</th><th>content</th><th>tokens (prompt / completion / total)</th>"
            "<th>first token</th><th>duration</th></tr></thead><tbody>{}</tbody></table>",
            rows,
        )

    @admin.action(description="Export selected conversations as JSON")
    def export_json(self, request: HttpRequest, queryset: QuerySet[Conversation]) -> HttpResponse:
        data = [_export_dict(c) for c in queryset.prefetch_related("messages")]
        stamp = timezone.now().strftime("%Y%m%d-%H%M%S")
        return _download(
            json.dumps(data, indent=2, ensure_ascii=False),
            f"conversations-{stamp}.json",
            "application/json",
        )

    @admin.action(description="Export selected conversations as Markdown")
    def export_markdown(
        self, request: HttpRequest, queryset: QuerySet[Conversation]
    ) -> HttpResponse:
        text = "\n\n---\n\n".join(
            _export_markdown(c) for c in queryset.prefetch_related("messages")
        )
        stamp = timezone.now().strftime("%Y%m%d-%H%M%S")
        return _download(text, f"conversations-{stamp}.md", "text/markdown; charset=utf-8")


@admin.register(Message)
class MessageAdmin(ReadOnlyAdmin):
    list_display = (
        "__str__",
        "conversation",
        "role",
        "status",
        "model",
        "total_tokens",
        "usage_estimated",
        "time_to_first_token",
        "duration",
        "created_at",
    )
    list_filter = ("status", "role", "model", "created_at")
    search_fields = ("content", "conversation__title")
    exclude = ("timeline", "content", "reasoning")
    readonly_fields = ("text", "thinking", "created_at", "updated_at", "how_it_ran")
    list_select_related = ("conversation",)
    date_hierarchy = "created_at"

    @admin.display(description="content")
    def text(self, obj: Message) -> str:
        """As written: the admin's own display of a text field folds indentation and spaces."""
        return _preformatted(obj.content)

    @admin.display(description="reasoning")
    def thinking(self, obj: Message) -> str:
        return _preformatted(obj.reasoning)

    @admin.display(description="how it ran")
    def how_it_ran(self, obj: Message) -> str:
        return _timeline(obj)


def _preformatted(text: str) -> str:
    if not text:
        return "—"
    return format_html(
        '<pre style="white-space: pre-wrap; overflow-wrap: anywhere; margin: 0">{}</pre>', text
    )


def _timeline(message: Message) -> str:
    """The answer's events with the time since it started; every value is escaped."""
    events = [e for e in message.timeline if isinstance(e, dict)]
    if not events:
        return "—"
    start = datetime.fromisoformat(str(events[0].get("at")))

    def row(event: dict[str, Any]) -> tuple[str, str, str]:
        at = datetime.fromisoformat(str(event.get("at")))
        details = ", ".join(
            f"{key}={value}"
            for key, value in event.items()
            if key not in ("at", "event") and value not in (None, "")
        )
        return f"+{(at - start).total_seconds() * 1000:.0f} ms", str(event.get("event")), details

    rows = format_html_join(
        "", "<tr><td>{}</td><td>{}</td><td>{}</td></tr>", (row(e) for e in events)
    )
    return format_html(
        '<table class="chat-timeline"><thead><tr><th>when</th><th>event</th><th>details</th>'
        "</tr></thead><tbody>{}</tbody></table>",
        rows,
    )


@admin.register(StreamingAnswer)
class StreamingAnswerAdmin(ReadOnlyAdmin):
    """The answers being written now, in every process; staff with the permission stop them."""

    list_display = ("created_at", "owner", "conversation", "model", "characters", "saved_at")
    list_display_links = None
    actions = ("stop_answers",)
    list_select_related = ("conversation__owner",)

    def get_queryset(self, request: HttpRequest) -> QuerySet[Message]:
        queryset: QuerySet[Message] = super().get_queryset(request)
        return queryset.filter(status=Message.Statuses.STREAMING, role=Message.Roles.ASSISTANT)

    @admin.display(description="owner")
    def owner(self, obj: Message) -> str:
        owner = obj.conversation.owner
        return owner.get_username() if owner is not None else "anonymous session"

    @admin.display(description="characters saved")
    def characters(self, obj: Message) -> int:
        return len(obj.content)

    @admin.display(description="last checkpoint")
    def saved_at(self, obj: Message) -> Any:
        return obj.updated_at

    def has_view_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return can_see_running_answers(request.user)

    def has_stop_permission(self, request: HttpRequest) -> bool:
        return can_stop_answers(request.user)

    @admin.action(description="Stop the selected answers now", permissions=["stop"])
    def stop_answers(self, request: HttpRequest, queryset: QuerySet[Message]) -> None:
        by = request.user.get_username()
        answers = list(queryset)
        stopped = sum(
            async_to_sync(stop_anywhere)(m.id, m.conversation_id, "staff", by=by) for m in answers
        )
        self.message_user(request, f"Stopped {stopped} of {len(answers)} answers.")


@admin.register(DailyUsage)
class DailyUsageAdmin(ReadOnlyAdmin):
    """Each user's tokens a day, reported by the upstream or estimated where it said nothing."""

    list_display = (
        "day",
        "who",
        "answers",
        "prompt_tokens",
        "completion_tokens",
        "total",
        "estimated_tokens",
        "running",
    )
    list_filter = ("day",)
    search_fields = ("user__username", "owner_key")
    date_hierarchy = "day"
    list_select_related = ("user",)

    def get_queryset(self, request: HttpRequest) -> QuerySet[DailyUsage]:
        queryset: QuerySet[DailyUsage] = super().get_queryset(request)
        so_far = (
            DailyUsage.objects.filter(owner_key=OuterRef("owner_key"), day__lte=OuterRef("day"))
            .values("owner_key")
            .annotate(tokens=Sum(F("prompt_tokens") + F("completion_tokens")))
            .values("tokens")
        )
        return queryset.annotate(running_total=Subquery(so_far))

    @admin.display(description="user", ordering="owner_key")
    def who(self, obj: DailyUsage) -> str:
        """The user, or the anonymous session's key (``CHAT_ALLOW_ANONYMOUS``)."""
        return obj.user.get_username() if obj.user is not None else obj.owner_key

    @admin.display(description="total")
    def total(self, obj: DailyUsage) -> int:
        return obj.total_tokens

    @admin.display(description="all days so far", ordering="running_total")
    def running(self, obj: Any) -> int:
        return int(obj.running_total or 0)
