"""Who may chat, and who may see and stop the answers being written (the admin's list).

One class holds every rule. A project changes a rule by subclassing it and naming
the subclass in ``CHAT_PERMISSIONS``::

    class Permissions(ChatPermissions):
        def can_chat(self, user):
            return super().can_chat(user) and user.groups.filter(name="beta").exists()

Each method gets the request's user (``AnonymousUser`` when not logged in) and
runs where the database may be used (a view, or Channels' database thread):
the page and the socket ask ``can_chat`` when they open, and every turn asks
it again, with the session check, so a revoked right stops the next message.
"""

from __future__ import annotations

from typing import Any

from chat.conf import conf
from chat.hooks import permissions


class ChatPermissions:
    """The app's own rules: logged-in users chat (anyone, with ``CHAT_ALLOW_ANONYMOUS``);
    the admin's list of running answers and its Stop follow Django permissions."""

    def can_chat(self, user: Any) -> bool:
        """May this user open the chat page and send messages?"""
        return bool(user.is_authenticated or conf.CHAT_ALLOW_ANONYMOUS)

    def can_see_running_answers(self, user: Any) -> bool:
        """May this user open the admin's list of answers being written now?"""
        return bool(user.is_active and user.is_staff and user.has_perm("chat.view_streaminganswer"))

    def can_stop_answers(self, user: Any) -> bool:
        """May this user stop other people's answers from that list?"""
        return bool(user.is_active and user.is_staff and user.has_perm("chat.stop_answer"))


def can_chat(user: Any) -> bool:
    return bool(permissions().can_chat(user))


def can_see_running_answers(user: Any) -> bool:
    return bool(permissions().can_see_running_answers(user))


def can_stop_answers(user: Any) -> bool:
    return bool(permissions().can_stop_answers(user))
