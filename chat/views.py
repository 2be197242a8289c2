"""The chat page. Everything after the first paint travels over the websocket."""

from __future__ import annotations

import uuid

from django.contrib.auth.views import redirect_to_login
from django.core.exceptions import PermissionDenied
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import render

from chat import auth
from chat.conf import conf
from chat.models import Conversation
from chat.permissions import can_chat


def index(request: HttpRequest, conversation_id: uuid.UUID | None = None) -> HttpResponse:
    """The chat page, optionally opened on one of the visitor's conversations."""
    if conf.CHAT_ALLOW_ANONYMOUS and request.session.session_key is None:
        request.session.save()  # the socket finds the anonymous owner by this key
    owner = auth.owner(request.user, request.session)
    if owner is None:
        return redirect_to_login(request.get_full_path())
    if not can_chat(request.user):
        raise PermissionDenied("You are not allowed to chat here.")
    conversations = Conversation.objects.owned_by(owner)
    if conversation_id is not None and not conversations.filter(pk=conversation_id).exists():
        raise Http404("No such conversation.")
    return render(
        request,
        "chat/index.html",
        {
            "conversations": conversations[:100],
            "chat_config": {
                "conversation": str(conversation_id) if conversation_id else None,
                "maxChars": conf.CHAT_MAX_MESSAGE_CHARS,
                "demo": conf.demo_mode,
            },
        },
    )
