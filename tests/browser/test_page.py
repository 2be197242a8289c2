"""The page in a real browser (Debian's Chromium, driven by Playwright) against daphne.

The site runs on its built-in demo model, which streams a Markdown answer that
quotes the question back: real HTTP and SSE end to end, and a way to get any
text (an XSS payload, say) into an answer.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from tests.browser.conftest import ARTIFACTS, ask, expect, finished, last_answer, log_in, start_site
from tests.servers import Site, daphne, prepare_site, unused_port


async def test_an_answer_streams_in_and_ends_as_highlighted_markdown(chat: Any) -> None:
    await ask(chat, "Hello, demo!")
    answer = last_answer(chat)
    await expect(answer).to_have_class(re.compile("chat-streaming"))
    first = len(await answer.inner_text())
    await chat.wait_for_function(
        f"document.querySelector('.chat-assistant:last-child')?.innerText.length > {first + 20}"
    )
    await finished(chat)
    await expect(answer.locator("strong").first).to_have_text("This is the built-in demo model.")
    await expect(answer.locator("pre code span.hl-k").first).to_be_visible()
    await expect(answer.locator("blockquote")).to_contain_text("Hello, demo!")
    await expect(chat.locator(".chat-user .chat-body").last).to_have_text("Hello, demo!")
    ARTIFACTS.mkdir(exist_ok=True)
    await chat.screenshot(path=ARTIFACTS / "answer.png")


async def test_a_code_block_being_written_already_looks_like_code(chat: Any) -> None:
    # Until its block is complete the code is plain text in the tail: it is shown on
    # the code background, in monospace, and then replaced by the highlighted block.
    await ask(chat, "Show me code")
    answer = last_answer(chat)
    await chat.wait_for_function(
        "document.querySelector('.chat-assistant:last-child .chat-tail-code')"
        "?.textContent.includes('async def relay')"
    )
    font = await answer.locator(".chat-tail-code").evaluate("e => getComputedStyle(e).fontFamily")
    assert "monospace" in font
    await finished(chat)
    await expect(answer.locator(".chat-tail-code")).to_have_count(0)
    await expect(answer.locator("pre code span.hl-k").first).to_be_visible()
    await expect(chat.locator(".chat-user .chat-tail-code")).to_have_count(0)


async def test_shift_enter_makes_a_new_line_and_enter_sends(chat: Any) -> None:
    await chat.fill("#prompt", "line one")
    await chat.press("#prompt", "Shift+Enter")
    await chat.type("#prompt", "line two")
    assert await chat.input_value("#prompt") == "line one\nline two"
    await expect(chat.locator(".chat-user .chat-body")).to_have_count(0)
    await chat.press("#prompt", "Enter")
    await expect(chat.locator(".chat-user .chat-body").last).to_have_text("line one\nline two")
    await expect(chat.locator("#prompt")).to_have_value("")
    await finished(chat)


async def test_stop_keeps_the_partial_answer_marked_stopped(chat: Any) -> None:
    await ask(chat, "Tell me everything")
    answer = last_answer(chat)
    await chat.wait_for_function(
        "document.querySelector('.chat-assistant:last-child')?.innerText.length > 40"
    )
    await chat.click("#stop")
    await finished(chat, "stopped")
    await expect(answer.locator(".chat-status")).to_have_text("Stopped")
    kept = await answer.locator(".chat-body").inner_text()
    assert len(kept) > 40
    await expect(chat.locator("#send")).to_be_visible()
    await chat.reload()
    await finished(chat, "stopped")
    # Waited for, not read once: a message is rendered once it is on screen
    # (content-visibility), a frame after the history is shown.
    await expect(last_answer(chat).locator(".chat-body")).to_contain_text(kept[:40])


async def test_history_survives_a_reload_and_conversations_can_be_switched(chat: Any) -> None:
    await ask(chat, "First conversation")
    await finished(chat)
    first_url = chat.url
    await chat.click("#new-chat")
    await expect(chat.locator(".chat-message")).to_have_count(0)
    await ask(chat, "Second conversation")
    await finished(chat)
    assert chat.url != first_url

    await chat.reload()
    await expect(chat.locator(".chat-user .chat-body")).to_have_text(["Second conversation"])
    await chat.locator("#conversations a", has_text="First conversation").click()
    await expect(chat.locator(".chat-user .chat-body")).to_have_text(["First conversation"])
    assert chat.url == first_url


async def test_markup_in_an_answer_never_runs(chat: Any) -> None:
    payload = (
        # The first arrives whole in one delta (the demo streams word by word).
        '<img/src="x"/onerror="window.pwned=1"> '
        '<img src=x onerror="window.pwned=1"> <script>window.pwned=1</script> '
        "[click](javascript:window.pwned=1)"
    )
    await ask(chat, payload)
    await finished(chat)
    answer = last_answer(chat)
    await expect(answer.locator("blockquote")).to_contain_text("<script>")
    assert await answer.locator("img, script").count() == 0
    assert await chat.evaluate("window.pwned") is None
    await expect(chat.locator(".chat-user .chat-body").last).to_have_text(payload)


async def test_scrolling_up_stops_the_autoscroll(page: Any, site: Site) -> None:
    await page.set_viewport_size({"width": 900, "height": 420})
    chat = await log_in(page, site)
    await ask(chat, "Make it long")
    await finished(chat)
    at_bottom = "(() => { const m = document.getElementById('messages');"
    at_bottom += " return m.scrollHeight - m.scrollTop - m.clientHeight < 40; })()"
    assert await chat.evaluate(at_bottom)
    await ask(chat, "And again")
    await chat.wait_for_selector(".chat-streaming")
    await chat.hover("#messages")
    await chat.mouse.wheel(0, -5000)  # the person scrolls up to reread
    await chat.wait_for_function("document.getElementById('messages').scrollTop === 0")
    await finished(chat)
    assert await chat.evaluate("document.getElementById('messages').scrollTop") == 0
    assert not await chat.evaluate(at_bottom)


async def test_controls_are_labelled_and_answers_announced_politely(chat: Any) -> None:
    await expect(chat.get_by_role("textbox", name="Message")).to_be_visible()
    await expect(chat.get_by_role("button", name="Send message")).to_be_visible()
    await expect(chat.get_by_role("button", name="+ New chat")).to_be_visible()
    await expect(chat.locator("#messages")).to_have_attribute("aria-live", "polite")
    await chat.keyboard.press("Tab")
    focused = await chat.evaluate("document.activeElement.id || document.activeElement.tagName")
    assert focused in ("new-chat", "A", "prompt")


async def test_an_upstream_failure_is_shown_clearly(page: Any, tmp_path: Path) -> None:
    nowhere = f"http://127.0.0.1:{unused_port()}/v1"
    for site in start_site(tmp_path, OPENAI_BASE_URL=nowhere, CHAT_MAX_RETRIES="0"):
        chat = await log_in(page, site)
        await ask(chat, "Anyone there?")
        await finished(chat, "failed")
        await expect(last_answer(chat).locator(".chat-status")).to_contain_text("Could not connect")


async def test_the_page_reconnects_after_the_server_drops_the_socket(
    page: Any, tmp_path: Path
) -> None:
    env, port = prepare_site(tmp_path, CHAT_DEMO_TOKENS_PER_SECOND="60"), unused_port()
    with daphne(env, port=port) as site:
        chat = await log_in(page, site)
        await ask(chat, "Before the restart")
        await finished(chat)
    # The server is gone: the page says so and keeps trying, with backoff.
    await expect(chat.locator("#connection")).to_contain_text("Reconnecting")
    with daphne(env, port=port):
        await expect(chat.locator("body[data-connected=true]")).to_be_attached(timeout=15_000)
        await expect(chat.locator(".chat-user .chat-body")).to_have_text(["Before the restart"])
        await ask(chat, "After the restart")
        await finished(chat)
        await expect(chat.locator(".chat-user .chat-body")).to_have_text(
            ["Before the restart", "After the restart"]
        )


async def test_an_answer_cut_by_a_server_restart_shows_as_interrupted(
    page: Any, tmp_path: Path
) -> None:
    env, port = prepare_site(tmp_path, CHAT_DEMO_TOKENS_PER_SECOND="20"), unused_port()
    with daphne(env, port=port) as site:
        chat = await log_in(page, site)
        await ask(chat, "A slow answer")
        await chat.wait_for_function(
            "document.querySelector('.chat-assistant .chat-body')?.innerText.length > 30"
        )
        shown = await last_answer(chat).locator(".chat-body").inner_text()
    # daphne was stopped (SIGTERM) mid-answer: it saved the text as interrupted.
    with daphne(env, port=port):
        await finished(chat, "interrupted")
        await expect(last_answer(chat).locator(".chat-status")).to_contain_text("Interrupted")
        # Nothing the person saw was lost (it was raw Markdown then, rendered now).
        seen = re.sub(r"[*`]", "", shown).rstrip()
        body = last_answer(chat).locator(".chat-body")
        await expect(body).to_contain_text(seen[:20])  # rendered once on screen
        assert (await body.inner_text()).startswith(seen)
