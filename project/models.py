"""The demo site's own data, used by the extension examples in docs/extending.md."""

from __future__ import annotations

from django.conf import settings
from django.db import models


class Document(models.Model):
    """A text of the user's own that a request builder adds to the prompt (retrieval)."""

    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="documents"
    )
    title = models.CharField(max_length=200, help_text="Found when a question names it.")
    text = models.TextField()

    class Meta:
        ordering = ("title",)

    def __str__(self) -> str:
        return self.title


class Charge(models.Model):
    """What one answer cost, recorded by a receiver of ``chat.signals.answer_finished``."""

    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="charges"
    )
    message_id = models.UUIDField(unique=True, help_text="One charge per answer.")
    status = models.CharField(max_length=16)
    tokens = models.PositiveIntegerField()
    estimated = models.BooleanField(help_text="The upstream reported no usage.")

    class Meta:
        ordering = ("-id",)

    def __str__(self) -> str:
        return f"{self.tokens} tokens ({self.status})"
