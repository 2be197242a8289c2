from __future__ import annotations

from django.urls import path

from chat import demo, operations, views

app_name = "chat"

urlpatterns = [
    path("", views.index, name="index"),
    path("c/<uuid:conversation_id>/", views.index, name="conversation"),
    path("demo/v1/chat/completions", demo.completions, name="demo-completions"),
    path("demo/v1/models", demo.models, name="demo-models"),
    path("health/", operations.health, name="health"),
    path("metrics/", operations.metrics, name="metrics"),
]
