"""System checks: the defaults pass, each misconfiguration is reported with its id."""

from __future__ import annotations

from typing import Any

import pytest
from django.core.checks import run_checks

from chat.checks import check_dependencies, check_settings


def ids(messages: list[Any]) -> list[str]:
    return [m.id for m in messages]


def test_the_defaults_pass(settings: Any) -> None:
    settings.DEBUG = True  # the demo model answers: fine while developing (see chat.W002)
    assert check_settings(None) == []
    assert check_dependencies(None) == []
    assert [m for m in run_checks() if m.id.startswith("chat.")] == []


@pytest.mark.parametrize(
    ("name", "value", "check_id"),
    [
        pytest.param("CHAT_MAX_MESSAGE_CHARS", 0, "chat.E001", id="max-chars-zero"),
        pytest.param("CHAT_MAX_MESSAGE_CHARS", "100", "chat.E001", id="max-chars-string"),
        pytest.param("CHAT_READ_TIMEOUT", -1, "chat.E002", id="negative-timeout"),
        pytest.param("CHAT_CHECKPOINT_INTERVAL", True, "chat.E002", id="bool-interval"),
        pytest.param("CHAT_MAX_RETRIES", -1, "chat.E003", id="negative-retries"),
        pytest.param("CHAT_ON_DISCONNECT", "explode", "chat.E004", id="on-disconnect"),
        pytest.param("OPENAI_BASE_URL", "localhost:11434/v1", "chat.E005", id="base-url-scheme"),
        pytest.param("CHAT_COMPLETION_OPTIONS", ["temperature"], "chat.E006", id="options"),
        pytest.param("CHAT_UPSTREAM_HEADERS", "x", "chat.E007", id="headers"),
        pytest.param("CHAT_MAX_EVENT_BYTES", 0, "chat.E008", id="event-bytes"),
        pytest.param("CHAT_MAX_RUNNING_ANSWERS", 0, "chat.E012", id="running-answers"),
        pytest.param("CHAT_TURNS_PER_MINUTE", "many", "chat.E012", id="turns-per-minute"),
        pytest.param("CHAT_ORPHAN_AFTER", 0, "chat.E002", id="orphan-after"),
        pytest.param("CHAT_SEND_WINDOW", 0, "chat.E012", id="send-window"),
        pytest.param("CHAT_SLOW_CLIENT_TIMEOUT", "soon", "chat.E002", id="slow-client-timeout"),
        pytest.param("CHAT_TITLE_TIMEOUT", 0, "chat.E002", id="title-timeout"),
        pytest.param("CHAT_DAILY_TOKEN_BUDGET", 0, "chat.E013", id="budget-zero"),
        pytest.param("CHAT_DAILY_TOKEN_BUDGET", 1.5, "chat.E013", id="budget-float"),
        pytest.param("CHAT_UPSTREAM_PROXY", "proxy:3128", "chat.E014", id="proxy-scheme"),
        pytest.param("CHAT_MAX_FRAME_BYTES", 2 * 1024 * 1024, "chat.E015", id="frame-over-1mib"),
        pytest.param("CHAT_MAX_FRAME_BYTES", 100, "chat.E015", id="frame-too-small"),
        pytest.param("CHAT_MAX_FRAME_BYTES", "big", "chat.E015", id="frame-string"),
        pytest.param("CHAT_FIRST_BYTE_TIMEOUT", 0, "chat.E002", id="first-byte-timeout"),
        pytest.param("CHAT_HISTORIES_PER_MINUTE", 0, "chat.E012", id="histories-per-minute"),
        pytest.param("CHAT_PROCESS_TIMEOUT", -1, "chat.E002", id="process-timeout"),
        pytest.param("CHAT_DRAIN_TIMEOUT", -1, "chat.E016", id="drain-timeout"),
    ],
)
def test_a_bad_setting_is_reported(settings: Any, name: str, value: Any, check_id: str) -> None:
    setattr(settings, name, value)
    assert check_id in ids(check_settings(None))


def test_a_production_site_answered_by_the_demo_model_is_warned_about(settings: Any) -> None:
    settings.DEBUG = False
    assert "chat.W002" in ids(check_settings(None))
    settings.OPENAI_BASE_URL = "http://localhost:11434/v1"  # a real model (Ollama)
    assert "chat.W002" not in ids(check_settings(None))


def test_anonymous_chat_with_a_real_key_is_warned_about(settings: Any) -> None:
    settings.CHAT_ALLOW_ANONYMOUS = True
    settings.OPENAI_API_KEY = "sk-real"
    assert ids(check_settings(None)) == ["chat.W001"]


def test_channels_must_be_installed(settings: Any) -> None:
    settings.INSTALLED_APPS = [app for app in settings.INSTALLED_APPS if app != "channels"]
    messages = check_dependencies(None)
    assert ids(messages) == ["chat.E010"]
    assert messages[0].msg == "'channels' must be in INSTALLED_APPS in order to use chat."


def test_an_asgi_application_is_required(settings: Any) -> None:
    del settings.ASGI_APPLICATION
    assert ids(check_dependencies(None)) == ["chat.E011"]


def test_a_missing_ca_bundle_is_reported(settings: Any) -> None:
    settings.OPENAI_API_KEY = "sk-real"
    settings.CHAT_UPSTREAM_CA_BUNDLE = "/nonexistent/ca.pem"
    assert ids(check_settings(None)) == ["chat.E009"]
