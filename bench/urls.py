from __future__ import annotations

import tracemalloc

from django.http import HttpRequest, JsonResponse
from django.urls import path

from bench.apps import WRITES
from project.urls import urlpatterns as project_urlpatterns

#: Where an allocation's file lives, in order: the first match names its owner.
OWNERS = (
    ("chat", "/chat/"),
    ("channels", "/channels/"),
    ("daphne", "/daphne/"),
    ("autobahn", "/autobahn/"),
    ("twisted", "/twisted/"),
    ("uvicorn", "/uvicorn/"),
    ("websockets", "/websockets/"),
    ("asgiref", "/asgiref/"),
    ("django", "/django/"),
    ("asyncio", "/asyncio/"),
)
_snapshot: list[tracemalloc.Snapshot] = []


def memory(request: HttpRequest) -> JsonResponse:
    """``?snapshot=1`` remembers the heap; ``?sockets=N`` reports what grew since, per socket
    (``python -m bench.memory``; the relay runs with ``PYTHONTRACEMALLOC=1``)."""
    if request.GET.get("snapshot"):
        _snapshot[:] = [tracemalloc.take_snapshot()]
        return JsonResponse({"ok": True})
    sockets = int(request.GET["sockets"])
    diff = tracemalloc.take_snapshot().compare_to(_snapshot[0], "lineno")
    owners: dict[str, float] = {}
    for stat in diff:
        filename = stat.traceback[0].filename
        owner = next((name for name, part in OWNERS if part in filename), "other")
        owners[owner] = owners.get(owner, 0) + stat.size_diff / sockets
    sites = [
        (f"{s.traceback[0].filename.split('site-packages/')[-1]}:{s.traceback[0].lineno}",
         s.size_diff / sockets)
        for s in sorted(diff, key=lambda s: -s.size_diff)[:60]
    ]  # fmt: skip
    return JsonResponse(
        {
            "owners": sorted(owners.items(), key=lambda item: -item[1]),
            "total": sum(owners.values()),
            "sites": sites,
        }
    )


def stats(request: HttpRequest) -> JsonResponse:
    """Database writes so far (the benchmark subtracts two readings)."""
    return JsonResponse({"db_writes": WRITES["count"]})


urlpatterns = [
    path("bench/stats/", stats),
    path("bench/memory/", memory),
    *project_urlpatterns,
]
