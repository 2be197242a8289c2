from collections.abc import Callable
from typing import Any

from django.contrib import admin
from django.contrib.auth.decorators import login_required
from django.urls import include, path
from django.views.generic import RedirectView, TemplateView

from project.views import DemoLoginView


def example(template_name: str) -> Callable[..., Any]:
    """A page of docs/client.md's examples: for logged-in users, like the chat page."""
    return login_required(TemplateView.as_view(template_name=template_name))


urlpatterns = [
    path("", RedirectView.as_view(pattern_name="chat:index", permanent=False)),
    path("chat/", include("chat.urls")),
    path("examples/embed/", example("examples/embed.html"), name="example-embed"),
    path("examples/react/", example("examples/react.html"), name="example-react"),
    path("accounts/login/", DemoLoginView.as_view(), name="login"),
    path("accounts/", include("django.contrib.auth.urls")),
    path("admin/", admin.site.urls),
]
