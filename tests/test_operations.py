"""What an operator reads: a health check for load balancers and Prometheus metrics."""

from __future__ import annotations

import socket
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
from django.db import DatabaseError
from django.db.backends.utils import CursorWrapper
from django.test import AsyncClient, Client
from prometheus_client import REGISTRY

from tests.conftest import Connect
from tests.fake_upstream import FakeUpstream, completion, json_error, stream
from tests.servers import daphne, prepare_site, unused_port

pytestmark = pytest.mark.django_db(transaction=True)


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def test_a_healthy_process_says_so() -> None:
    response = await AsyncClient().get("/chat/health/")
    assert response.status_code == 200
    assert response.json() == {
        "status": "ok",
        "accepting_turns": True,
        "database": True,
        "channel_layer": None,  # one process: no channel layer to reach
    }


async def test_a_process_without_its_database_is_taken_out_of_rotation(monkeypatch: Any) -> None:
    def unreachable(self: CursorWrapper, sql: str, params: Any = None) -> None:
        raise DatabaseError("connection refused")

    monkeypatch.setattr(CursorWrapper, "execute", unreachable)
    response = await AsyncClient().get("/chat/health/")
    assert response.status_code == 503
    assert response.json()["status"] == "down" and response.json()["database"] is False


async def test_a_process_shutting_down_says_it_is_draining(monkeypatch: Any) -> None:
    monkeypatch.setattr("chat.lifespan._shutting_down", True)
    response = await AsyncClient().get("/chat/health/")
    assert response.status_code == 503
    assert response.json()["status"] == "draining"
    assert response.json()["accepting_turns"] is False


def test_metrics_need_the_token_or_a_staff_login(settings: Any, admin_client: Client) -> None:
    settings.CHAT_METRICS_TOKEN = "scrape-me-0123456789"
    assert Client().get("/chat/metrics/").status_code == 403
    wrong = Client().get("/chat/metrics/", HTTP_AUTHORIZATION="Bearer guess")
    assert wrong.status_code == 403
    scraper = Client().get("/chat/metrics/", HTTP_AUTHORIZATION="Bearer scrape-me-0123456789")
    assert scraper.status_code == 200
    assert scraper["Content-Type"].startswith("text/plain; version=")
    assert b"chat_sockets_open" in scraper.content
    assert admin_client.get("/chat/metrics/").status_code == 200


async def test_answers_characters_tokens_and_errors_are_counted(
    connect: Connect, fake_upstream: FakeUpstream, user: Any, settings: Any
) -> None:
    settings.CHAT_MAX_RETRIES = 0
    before = {
        "complete": sample("chat_answers_total", status="complete"),
        "failed": sample("chat_answers_total", status="failed"),
        "auth": sample("chat_upstream_errors_total", code="upstream_auth"),
        "characters": sample("chat_answer_characters_total"),
        "completion": sample("chat_tokens_total", kind="completion"),
        "first": sample("chat_time_to_first_token_seconds_count"),
    }
    fake_upstream.script(
        stream(*completion(["Hello", ", world"], usage=(5, 7))), json_error(401, "bad key")
    )
    chat = await connect(user)
    assert sample("chat_sockets_open") >= 1
    await chat.send("hi")
    conversation = (await chat.receive_until("done"))[-1]["conversation"]
    await chat.send("again", conversation)
    await chat.receive_until("done")
    assert sample("chat_answers_total", status="complete") == before["complete"] + 1
    assert sample("chat_answers_total", status="failed") == before["failed"] + 1
    assert sample("chat_upstream_errors_total", code="upstream_auth") == before["auth"] + 1
    assert sample("chat_answer_characters_total") == before["characters"] + len("Hello, world")
    assert sample("chat_tokens_total", kind="completion") == before["completion"] + 7
    assert sample("chat_time_to_first_token_seconds_count") == before["first"] + 1


@pytest.mark.integration
@pytest.mark.parametrize(
    ("redis", "status", "reachable"),
    [
        pytest.param("redis://127.0.0.1:6379/0", 200, True, id="redis-up"),
        pytest.param("redis://127.0.0.1:{free}/0", 503, False, id="redis-down"),
    ],
)
def test_a_process_checks_its_channel_layer(
    tmp_path: Path, redis: str, status: int, reachable: bool
) -> None:
    if not reachable_port(6379):
        pytest.skip("needs Redis on 127.0.0.1:6379")
    url = redis.format(free=unused_port())
    env = prepare_site(tmp_path, REDIS_URL=url, REDIS_PREFIX=f"chat-health-{uuid.uuid4().hex[:8]}")
    with daphne(env) as site:
        response = httpx.get(site.url + "/chat/health/", timeout=10)
    assert response.status_code == status
    assert response.json()["channel_layer"] is reachable


def reachable_port(port: int) -> bool:
    with socket.socket() as probe:
        probe.settimeout(1)
        return probe.connect_ex(("127.0.0.1", port)) == 0
