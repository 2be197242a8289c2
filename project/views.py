from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.views import LoginView

DEMO_USER = "demo"


class DemoLoginView(LoginView):
    """The login page; on a DEBUG site with the demo user, it says how to log in."""

    def get_context_data(self, **kwargs: Any) -> dict[str, Any]:
        context = super().get_context_data(**kwargs)
        if settings.DEBUG and get_user_model().objects.filter(username=DEMO_USER).exists():
            context["demo_user"] = DEMO_USER
        return context
