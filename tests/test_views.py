"""The chat page: logged-in users only, their own conversations only, no secrets in it."""

from __future__ import annotations

from typing import Any

import pytest
from django.test import Client
from django.urls import reverse

from chat.models import Conversation
from tests.conftest import API_KEY

pytestmark = pytest.mark.django_db


@pytest.fixture
def logged_in(user: Any) -> Client:
    client = Client()
    client.force_login(user)
    return client


def test_anonymous_visitors_are_sent_to_the_login_page(client: Client) -> None:
    response = client.get(reverse("chat:index"))
    assert response.status_code == 302
    assert response["Location"].startswith(reverse("login"))


def test_the_page_lists_only_the_users_conversations(
    logged_in: Client, user: Any, other_user: Any
) -> None:
    Conversation.objects.create(owner=user, title="Mine")
    Conversation.objects.create(owner=other_user, title="Theirs")
    page = logged_in.get(reverse("chat:index")).content.decode()
    assert "Mine" in page and "Theirs" not in page


def test_a_deep_link_to_someone_elses_conversation_is_not_found(
    logged_in: Client, user: Any, other_user: Any
) -> None:
    mine = Conversation.objects.create(owner=user)
    theirs = Conversation.objects.create(owner=other_user)
    assert logged_in.get(reverse("chat:conversation", args=[mine.pk])).status_code == 200
    assert logged_in.get(reverse("chat:conversation", args=[theirs.pk])).status_code == 404


def test_the_api_key_never_reaches_the_page(logged_in: Client, settings: Any) -> None:
    settings.OPENAI_API_KEY = API_KEY
    page = logged_in.get(reverse("chat:index")).content.decode()
    assert API_KEY not in page
    assert "demo model" not in page


def test_the_demo_model_is_labelled(logged_in: Client, settings: Any) -> None:
    settings.OPENAI_API_KEY = ""
    settings.OPENAI_BASE_URL = ""
    assert "demo model" in logged_in.get(reverse("chat:index")).content.decode()


def test_anonymous_chat_opt_in_gives_the_visitor_a_session(client: Client, settings: Any) -> None:
    settings.CHAT_ALLOW_ANONYMOUS = True
    response = client.get(reverse("chat:index"))
    assert response.status_code == 200
    assert client.cookies["sessionid"].value
