from __future__ import annotations

from django.http import HttpRequest, JsonResponse
from django.urls import path

from bench.apps import WRITES
from project.urls import urlpatterns as project_urlpatterns


def stats(request: HttpRequest) -> JsonResponse:
    """Database writes so far (the benchmark subtracts two readings)."""
    return JsonResponse({"db_writes": WRITES["count"]})


urlpatterns = [path("bench/stats/", stats), *project_urlpatterns]
