from __future__ import annotations

from django.apps import AppConfig


class ChatConfig(AppConfig):
    name = "chat"
    verbose_name = "Chat"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from chat import auth, checks, metrics  # noqa: F401  (checks registers system checks)
        from chat.fanout import hub
        from chat.generation import registry

        auth.connect_signals()
        # Other processes' questions about the answers this one runs.
        hub.control_handler = registry.handle_control
        metrics.ANSWERS_RUNNING.set_function(lambda: len(registry.running_ids()))
