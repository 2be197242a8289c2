"""Versions, copying and running answers, in the page: what a person clicks."""

from __future__ import annotations

from typing import Any

from tests.browser.conftest import ARTIFACTS, ask, expect, finished, last_answer, log_in

VERSIONS = ".chat-versions span"


async def test_regenerate_and_edit_make_versions_a_person_can_step_between(chat: Any) -> None:
    await ask(chat, "First question")
    await finished(chat)
    first_answer = await last_answer(chat).get_attribute("data-id")

    await last_answer(chat).get_by_role("button", name="Answer this again").click()
    await expect(last_answer(chat)).not_to_have_attribute("data-id", first_answer)
    await finished(chat)
    await expect(last_answer(chat).locator(VERSIONS)).to_have_text("2/2")
    await last_answer(chat).get_by_role("button", name="Previous version").click()
    await expect(last_answer(chat)).to_have_attribute("data-id", first_answer)
    await expect(last_answer(chat).locator(VERSIONS)).to_have_text("1/2")
    ARTIFACTS.mkdir(exist_ok=True)
    await chat.screenshot(path=ARTIFACTS / "versions.png")  # docs/screenshot.png

    question = chat.locator(".chat-user").last
    await question.get_by_role("button", name="Edit this message").click()
    await question.get_by_role("textbox", name="Edited message").fill("Second question")
    await question.get_by_role("button", name="Ask the edited message").click()
    await finished(chat)
    await expect(chat.locator(".chat-user .chat-body")).to_have_text(["Second question"])
    await expect(chat.locator(".chat-user").last.locator(VERSIONS)).to_have_text("2/2")
    await expect(last_answer(chat).locator("blockquote")).to_contain_text("Second question")

    # Back to the first question: it comes with the answer last shown with it.
    await chat.locator(".chat-user").last.get_by_role("button", name="Previous version").click()
    await expect(chat.locator(".chat-user .chat-body")).to_have_text(["First question"])
    await expect(last_answer(chat)).to_have_attribute("data-id", first_answer)
    # The branch shown is stored: a reload shows it again.
    await chat.reload()
    await expect(chat.locator(".chat-user .chat-body")).to_have_text(["First question"])
    await expect(last_answer(chat)).to_have_attribute("data-id", first_answer)
    await expect(last_answer(chat).locator(VERSIONS)).to_have_text("1/2")
    ARTIFACTS.mkdir(exist_ok=True)
    await chat.screenshot(path=ARTIFACTS / "versions.png")  # docs/screenshot.png


async def test_code_blocks_and_whole_answers_can_be_copied(chat: Any) -> None:
    await chat.context.grant_permissions(["clipboard-read", "clipboard-write"])
    await ask(chat, "Show me code")
    await finished(chat)
    answer = last_answer(chat)

    await answer.get_by_role("button", name="Copy code").click()
    code = await chat.evaluate("navigator.clipboard.readText()")
    assert code.startswith("async def relay(upstream, socket):")
    assert code == await answer.locator("pre").inner_text()

    await answer.get_by_role("button", name="Copy the answer").click()
    copied = await chat.evaluate("navigator.clipboard.readText()")
    assert copied.startswith("**This is the built-in demo model.**")  # the Markdown source
    assert "```python\nasync def relay" in copied


async def test_an_answer_running_in_another_tab_shows_as_running_there_too(chat: Any) -> None:
    await ask(chat, "Take your time")
    await expect(last_answer(chat).locator(".chat-live")).to_have_text("Writing…")
    other = await chat.context.new_page()
    await other.goto(chat.url)

    running = last_answer(other)
    await expect(running.locator(".chat-live")).to_have_text("Writing…")
    await expect(other.locator("#stop")).to_be_visible()
    await finished(other)
    await expect(running.locator(".chat-live")).to_have_count(0)
    await expect(running.locator("pre code span.hl-k").first).to_be_visible()


async def test_the_page_follows_a_dark_system_theme_and_fits_a_phone(page: Any, site: Any) -> None:
    await page.emulate_media(color_scheme="dark")
    await page.set_viewport_size({"width": 375, "height": 700})
    chat = await log_in(page, site)
    await ask(chat, "Small screen, dark room")
    await finished(chat)

    background = await chat.evaluate("getComputedStyle(document.body).backgroundColor")
    assert background == "rgb(22, 24, 29)"
    # Nothing wider than the screen: no sideways scrolling of the page.
    assert await chat.evaluate("document.documentElement.scrollWidth") <= 375
    await expect(chat.locator("#prompt")).to_be_in_viewport()
    await expect(chat.locator("#send")).to_be_in_viewport()
    ARTIFACTS.mkdir(exist_ok=True)
    await chat.screenshot(path=ARTIFACTS / "phone-dark.png")
