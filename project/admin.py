from django.contrib import admin

from project.models import Charge, Document


@admin.register(Document)
class DocumentAdmin(admin.ModelAdmin):  # type: ignore[type-arg]
    list_display = ("title", "owner")


@admin.register(Charge)
class ChargeAdmin(admin.ModelAdmin):  # type: ignore[type-arg]
    list_display = ("message_id", "user", "status", "tokens", "estimated")
