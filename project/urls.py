from django.contrib import admin
from django.urls import include, path
from django.views.generic import RedirectView

from project.views import DemoLoginView

urlpatterns = [
    path("", RedirectView.as_view(pattern_name="chat:index", permanent=False)),
    path("chat/", include("chat.urls")),
    path("accounts/login/", DemoLoginView.as_view(), name="login"),
    path("accounts/", include("django.contrib.auth.urls")),
    path("admin/", admin.site.urls),
]
