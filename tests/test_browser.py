"""The page in a real browser (Debian's Chromium, driven by Playwright) against daphne.

The site runs on its built-in demo model, which streams a Markdown answer that
quotes the question back: real HTTP and SSE end to end, and a way to get any
text (an XSS payload, say) into an answer.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.servers import ROOT, Site, daphne, manage, site_environment, unused_port

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARTIFACTS = ROOT / "test-artifacts"

pytestmark = pytest.mark.skipif(
    not Path(CHROMIUM).exists(), reason="needs Debian's chromium (.ci/run installs it)"
)
expect: Any = pytest.importorskip("playwright.sync_api").expect


@pytest.fixture(scope="session")
def browser_type_launch_args(browser_type_launch_args: dict[str, Any]) -> dict[str, Any]:
    return {
        **browser_type_launch_args,
        "executable_path": CHROMIUM,
        "args": [
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
        ],
    }


def start_site(tmp_path: Path, **extra: str) -> Iterator[Site]:
    env = site_environment(tmp_path, CHAT_DEMO_TOKENS_PER_SECOND="60", **extra)
    manage(env, "migrate", "--noinput")
    manage(
        env,
        "shell",
        "-c",
        "from django.contrib.auth.models import User; "
        "User.objects.create_user('dora', password='pw-dora-123')",
    )
    with daphne(env) as site:
        yield site


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    yield from start_site(tmp_path_factory.mktemp("site"))


@pytest.fixture
def chat(page: Any, site: Site) -> Any:
    """A logged-in chat page."""
    page.goto(site.url + "/chat/")
    page.fill("#id_username", "dora")
    page.fill("#id_password", "pw-dora-123")
    page.click("button[type=submit]")
    expect(page.locator("body[data-connected=true]")).to_be_attached()
    return page


def ask(page: Any, text: str) -> None:
    page.fill("#prompt", text)
    page.press("#prompt", "Enter")


def last_answer(page: Any) -> Any:
    return page.locator(".chat-assistant").last


@pytest.fixture(autouse=True)
def screenshot_on_failure(page: Any, request: pytest.FixtureRequest) -> Iterator[None]:
    """Keep a picture of the page of a failed test (CI keeps test-artifacts/)."""
    yield
    report = getattr(request.node, "rep_call", None)
    if report is not None and report.failed:
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=ARTIFACTS / f"{request.node.name}.png")


def test_an_answer_streams_in_and_ends_as_highlighted_markdown(chat: Any) -> None:
    ask(chat, "Hello, demo!")
    answer = last_answer(chat)
    expect(answer).to_have_class(re.compile("chat-streaming"))
    first = len(answer.inner_text())
    chat.wait_for_function(
        f"document.querySelector('.chat-assistant:last-child').innerText.length > {first + 20}"
    )
    expect(answer).to_have_class(re.compile("chat-complete"), timeout=15_000)
    expect(answer.locator("strong").first).to_have_text("This is the built-in demo model.")
    expect(answer.locator("pre code span.hl-k").first).to_be_visible()
    expect(answer.locator("blockquote")).to_contain_text("Hello, demo!")
    expect(chat.locator(".chat-user").last).to_have_text("Hello, demo!")
    ARTIFACTS.mkdir(exist_ok=True)
    chat.screenshot(path=ARTIFACTS / "answer.png")  # docs/screenshot.png is one of these


def test_shift_enter_makes_a_new_line_and_enter_sends(chat: Any) -> None:
    chat.fill("#prompt", "line one")
    chat.press("#prompt", "Shift+Enter")
    chat.type("#prompt", "line two")
    assert chat.input_value("#prompt") == "line one\nline two"
    expect(chat.locator(".chat-user")).to_have_count(0)
    chat.press("#prompt", "Enter")
    expect(chat.locator(".chat-user").last).to_have_text("line one\nline two")
    expect(chat.locator("#prompt")).to_have_value("")
    expect(last_answer(chat)).to_have_class(re.compile("chat-complete"), timeout=15_000)


def test_stop_keeps_the_partial_answer_marked_stopped(chat: Any) -> None:
    ask(chat, "Tell me everything")
    answer = last_answer(chat)
    chat.wait_for_function(
        "document.querySelector('.chat-assistant:last-child').innerText.length > 40"
    )
    chat.click("#stop")
    expect(answer).to_have_class(re.compile("chat-stopped"))
    expect(answer.locator(".chat-status")).to_have_text("Stopped")
    kept = answer.locator(".chat-body").inner_text()
    assert len(kept) > 40
    expect(chat.locator("#send")).to_be_visible()
    chat.reload()
    expect(last_answer(chat)).to_have_class(re.compile("chat-stopped"))
    assert last_answer(chat).locator(".chat-body").inner_text().startswith(kept[:40])


def test_history_survives_a_reload_and_conversations_can_be_switched(chat: Any) -> None:
    ask(chat, "First conversation")
    expect(last_answer(chat)).to_have_class(re.compile("chat-complete"), timeout=15_000)
    first_url = chat.url
    chat.click("#new-chat")
    expect(chat.locator(".chat-message")).to_have_count(0)
    ask(chat, "Second conversation")
    expect(last_answer(chat)).to_have_class(re.compile("chat-complete"), timeout=15_000)
    assert chat.url != first_url

    chat.reload()
    expect(chat.locator(".chat-user")).to_have_text(["Second conversation"])
    chat.locator("#conversations a", has_text="First conversation").click()
    expect(chat.locator(".chat-user")).to_have_text(["First conversation"])
    assert chat.url == first_url


def test_markup_in_an_answer_never_runs(chat: Any) -> None:
    payload = (
        '<img src=x onerror="window.pwned=1"> <script>window.pwned=1</script> '
        "[click](javascript:window.pwned=1)"
    )
    ask(chat, payload)
    answer = last_answer(chat)
    expect(answer).to_have_class(re.compile("chat-complete"), timeout=15_000)
    expect(answer.locator("blockquote")).to_contain_text("<script>")
    assert answer.locator("img, script").count() == 0
    assert chat.evaluate("window.pwned") is None
    expect(chat.locator(".chat-user").last).to_have_text(payload)


def test_scrolling_up_stops_the_autoscroll(page: Any, site: Site) -> None:
    page.set_viewport_size({"width": 900, "height": 420})
    chat = page
    chat.goto(site.url + "/chat/")
    chat.fill("#id_username", "dora")
    chat.fill("#id_password", "pw-dora-123")
    chat.click("button[type=submit]")
    expect(chat.locator("body[data-connected=true]")).to_be_attached()
    ask(chat, "Make it long")
    expect(last_answer(chat)).to_have_class(re.compile("chat-complete"), timeout=15_000)
    at_bottom = "(() => { const m = document.getElementById('messages');"
    at_bottom += " return m.scrollHeight - m.scrollTop - m.clientHeight < 40; })()"
    assert chat.evaluate(at_bottom)
    ask(chat, "And again")
    chat.wait_for_selector(".chat-streaming")
    chat.hover("#messages")
    chat.mouse.wheel(0, -5000)  # the person scrolls up to reread
    chat.wait_for_function("document.getElementById('messages').scrollTop === 0")
    expect(last_answer(chat)).to_have_class(re.compile("chat-complete"), timeout=15_000)
    assert chat.evaluate("document.getElementById('messages').scrollTop") == 0
    assert not chat.evaluate(at_bottom)


def test_controls_are_labelled_and_answers_announced_politely(chat: Any) -> None:
    expect(chat.get_by_role("textbox", name="Message")).to_be_visible()
    expect(chat.get_by_role("button", name="Send message")).to_be_visible()
    expect(chat.get_by_role("button", name="+ New chat")).to_be_visible()
    expect(chat.locator("#messages")).to_have_attribute("aria-live", "polite")
    chat.keyboard.press("Tab")
    focused = chat.evaluate("document.activeElement.id || document.activeElement.tagName")
    assert focused in ("new-chat", "A", "prompt")


def test_an_upstream_failure_is_shown_clearly(page: Any, tmp_path: Path) -> None:
    nowhere = f"http://127.0.0.1:{unused_port()}/v1"
    for site in start_site(tmp_path, OPENAI_BASE_URL=nowhere, CHAT_MAX_RETRIES="0"):
        page.goto(site.url + "/chat/")
        page.fill("#id_username", "dora")
        page.fill("#id_password", "pw-dora-123")
        page.click("button[type=submit]")
        expect(page.locator("body[data-connected=true]")).to_be_attached()
        ask(page, "Anyone there?")
        answer = last_answer(page)
        expect(answer).to_have_class(re.compile("chat-failed"))
        expect(answer.locator(".chat-status")).to_contain_text("Could not connect")
