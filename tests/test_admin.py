"""Transcripts in the admin: listed, searchable, filterable, exportable, staff only."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

import pytest
from django.test import Client
from django.urls import reverse

from chat.models import Conversation, Message

pytestmark = pytest.mark.django_db


@pytest.fixture
def transcript(user: Any) -> Conversation:
    conversation = Conversation.objects.create(owner=user, title="Pasta plans", model="fake-model")
    Message.objects.create(conversation=conversation, role="user", content="How long for pasta?")
    Message.objects.create(
        conversation=conversation,
        role="assistant",
        content="About nine minutes.",
        status="complete",
        finish_reason="stop",
        model="fake-model",
        prompt_tokens=10,
        completion_tokens=5,
        total_tokens=15,
        time_to_first_token=timedelta(milliseconds=120),
        duration=timedelta(seconds=1.5),
    )
    Message.objects.create(conversation=conversation, role="user", content="And rice?")
    Message.objects.create(
        conversation=conversation, role="assistant", content="Rice takes", status="stopped"
    )
    return conversation


@pytest.fixture
def staff(admin_client: Client) -> Client:
    return admin_client


def test_conversations_are_listed_with_owner_counts_and_tokens(
    staff: Client, transcript: Conversation
) -> None:
    page = staff.get(reverse("admin:chat_conversation_changelist")).content.decode()
    assert "Pasta plans" in page and "alice" in page
    assert '<td class="field-message_count">4</td>' in page
    assert '<td class="field-tokens">15</td>' in page


def test_the_transcript_is_shown_in_order_read_only(
    staff: Client, transcript: Conversation
) -> None:
    response = staff.get(reverse("admin:chat_conversation_change", args=[transcript.pk]))
    page = response.content.decode()
    positions = [
        page.index(text)
        for text in ("How long for pasta?", "About nine minutes.", "And rice?", "Rice takes")
    ]
    assert positions == sorted(positions)
    assert "Stopped" in page and "1.500 s" in page and "10 / 5 / 15" in page
    assert "<textarea" not in page  # nothing editable


@pytest.mark.parametrize(
    ("query", "found"),
    [
        ("q=nine+minutes", True),
        ("q=lasagna", False),
        ("messages__status__exact=stopped", True),
        ("messages__status__exact=failed", False),
        ("model=fake-model", True),
    ],
)
def test_search_and_filters(
    staff: Client, transcript: Conversation, query: str, found: bool
) -> None:
    page = staff.get(reverse("admin:chat_conversation_changelist") + "?" + query)
    assert ("Pasta plans" in page.content.decode()) is found


def test_export_as_json(staff: Client, transcript: Conversation) -> None:
    response = staff.post(
        reverse("admin:chat_conversation_changelist"),
        {"action": "export_json", "_selected_action": [str(transcript.pk)]},
    )
    assert response["Content-Type"] == "application/json"
    assert "attachment" in response["Content-Disposition"]
    [exported] = json.loads(response.content)
    assert exported["title"] == "Pasta plans" and exported["owner"] == "alice"
    assert [m["content"] for m in exported["messages"]] == [
        "How long for pasta?",
        "About nine minutes.",
        "And rice?",
        "Rice takes",
    ]
    assert exported["messages"][1]["usage"]["total_tokens"] == 15
    assert exported["messages"][3]["status"] == "stopped"


def test_export_as_markdown(staff: Client, transcript: Conversation) -> None:
    response = staff.post(
        reverse("admin:chat_conversation_changelist"),
        {"action": "export_markdown", "_selected_action": [str(transcript.pk)]},
    )
    text = response.content.decode()
    assert response["Content-Type"].startswith("text/markdown")
    assert text.startswith("# Pasta plans")
    assert "## User\n\nHow long for pasta?" in text
    assert "## Assistant (stopped)\n\nRice takes" in text


def test_messages_are_searchable_and_filterable(staff: Client, transcript: Conversation) -> None:
    url = reverse("admin:chat_message_changelist")
    assert "Rice takes" in staff.get(url + "?status__exact=stopped").content.decode()
    assert "Rice takes" not in staff.get(url + "?status__exact=complete").content.decode()
    assert "About nine" in staff.get(url + "?q=nine").content.decode()


def test_non_staff_users_cannot_read_transcripts(user: Any, transcript: Conversation) -> None:
    client = Client()
    client.force_login(user)
    for url in (
        reverse("admin:chat_conversation_changelist"),
        reverse("admin:chat_conversation_change", args=[transcript.pk]),
        reverse("admin:chat_message_changelist"),
    ):
        response = client.get(url)
        assert response.status_code == 302 and "/admin/login/" in response["Location"]


def test_staff_without_the_view_permission_cannot_read_or_export(
    django_user_model: Any, transcript: Conversation
) -> None:
    clerk = django_user_model.objects.create_user("clerk", password="pw", is_staff=True)
    client = Client()
    client.force_login(clerk)
    for url in (
        reverse("admin:chat_conversation_changelist"),
        reverse("admin:chat_conversation_change", args=[transcript.pk]),
        reverse("admin:chat_message_changelist"),
    ):
        assert client.get(url).status_code == 403
    export = client.post(
        reverse("admin:chat_conversation_changelist"),
        {"action": "export_json", "_selected_action": [transcript.pk]},
    )
    assert export.status_code == 403


def test_message_text_is_escaped_in_the_transcript(staff: Client, user: Any) -> None:
    conversation = Conversation.objects.create(owner=user, title="xss")
    Message.objects.create(
        conversation=conversation, role="assistant", content="<script>x</script>"
    )
    page = staff.get(reverse("admin:chat_conversation_change", args=[conversation.pk]))
    assert "&lt;script&gt;x&lt;/script&gt;" in page.content.decode()
    assert "<script>x</script>" not in page.content.decode()


def test_a_messages_content_keeps_its_indentation(staff: Client, user: Any) -> None:
    conversation = Conversation.objects.create(owner=user, title="Code")
    code = "```python\ndef f():\n    if x:\n        return  1\n```"
    message = Message.objects.create(
        conversation=conversation, role="assistant", content=code, status="complete"
    )
    page = staff.get(reverse("admin:chat_message_change", args=[message.pk])).content.decode()
    assert "def f():\n    if x:\n        return  1" in page
    assert '<pre style="white-space: pre-wrap' in page


def test_the_transcript_shows_versions_under_their_parent_and_which_is_shown(
    staff: Client, user: Any
) -> None:
    conversation = Conversation.objects.create(owner=user, title="Versions")
    question = Message.objects.create(conversation=conversation, role="user", content="Q?")
    first = Message.objects.create(
        conversation=conversation, parent=question, role="assistant", content="First answer"
    )
    Message.objects.create(
        conversation=conversation, parent=first, role="user", content="Follow-up"
    )
    second = Message.objects.create(
        conversation=conversation, parent=question, role="assistant", content="Second answer"
    )
    conversation.current_leaf = second
    conversation.save()
    page = staff.get(
        reverse("admin:chat_conversation_change", args=[conversation.pk])
    ).content.decode()
    # Depth first: the first answer's follow-up comes before the second version.
    order = [page.index(text) for text in ("Q?", "First answer", "Follow-up", "Second answer")]
    assert order == sorted(order)
    table = page[page.index('<table class="chat-transcript">') :]
    rows = table[: table.index("</table>")].split("<tr")[2:]  # after the header row
    assert [("1/2, shown" in r, "2/2, shown" in r, "not shown" in r) for r in rows] == [
        (False, False, False),  # the question: one version, shown
        (False, False, True),  # first answer: 1/2, not shown
        (False, False, True),  # its follow-up: not shown
        (False, True, False),  # second answer: 2/2, shown
    ]
    assert '<tr class="chat-other-version">' in page and "↳ " in page
