"""What load balancers and monitoring ask a process: is it healthy, and how is it doing.

``health``: for a load balancer; 200 while this process takes turns and reaches its
database (and channel layer, if it uses one), 503 otherwise, with a JSON body that
says which. ``metrics``: Prometheus' text format (``chat.metrics``), for a scraper
with ``CHAT_METRICS_TOKEN`` as its bearer token, or for staff logged in.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from asgiref.sync import sync_to_async
from channels.layers import InMemoryChannelLayer, get_channel_layer
from django.db import DatabaseError, connection
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.utils.crypto import constant_time_compare
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from chat import lifespan
from chat.conf import conf

logger = logging.getLogger(__name__)

CHECK_TIMEOUT = 2.0  # seconds a dependency may take to answer a health check


def _database_ok() -> bool:
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
    except DatabaseError:
        logger.warning("Health check: the database is unreachable", exc_info=True)
        return False
    return True


async def _channel_layer_ok() -> bool | None:
    layer = get_channel_layer()
    if layer is None or isinstance(layer, InMemoryChannelLayer):
        return None  # one process: nothing to reach
    try:
        async with asyncio.timeout(CHECK_TIMEOUT):
            await layer.group_send("chat.health", {"type": "chat.health"})
    except Exception:  # whatever the layer's client raises when Redis is away
        logger.warning("Health check: the channel layer is unreachable", exc_info=True)
        return False
    return True


async def health(request: HttpRequest) -> HttpResponse:
    """200 if this process should get traffic, else 503; the body says why."""
    try:
        async with asyncio.timeout(CHECK_TIMEOUT):
            database = await sync_to_async(_database_ok)()
    except TimeoutError:
        database = False
    layer = await _channel_layer_ok()
    draining = lifespan.draining()
    body: dict[str, Any] = {
        "status": "draining" if draining else "ok" if database and layer is not False else "down",
        "accepting_turns": not draining,
        "database": database,
        "channel_layer": layer,
    }
    healthy = database and layer is not False and not draining
    return JsonResponse(body, status=200 if healthy else 503)


def metrics(request: HttpRequest) -> HttpResponse:
    """Prometheus' exposition of this process's counters."""
    token = conf.CHAT_METRICS_TOKEN
    given = request.headers.get("Authorization", "")
    allowed = bool(token) and constant_time_compare(given, f"Bearer {token}")
    if not allowed and not (request.user.is_authenticated and request.user.is_staff):
        return HttpResponse("Metrics need CHAT_METRICS_TOKEN as a bearer token.", status=403)
    return HttpResponse(generate_latest(), content_type=CONTENT_TYPE_LATEST)
