"""What a person sees of the adoption fixes: who is logged in and a Log out button,
readable Send/Stop in both colour schemes, a code block being written without its
fence line, Edit hidden while editing, a daily usage list that fits a laptop screen,
and no token count on an answer no server took.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.browser.conftest import ask, expect, finished, last_answer, log_in, start_site
from tests.servers import USER, Site, daphne, manage, prepare_site, unused_port

STAFF, STAFF_PASSWORD = "ada", "pw-ada-456"


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    """The module's demo site (as conftest's), with a superuser too."""
    env = prepare_site(
        tmp_path_factory.mktemp("site"), CHAT_DEMO_TOKENS_PER_SECOND="60", CHAT_SEND_WINDOW="2000"
    )
    create = f"User.objects.create_superuser({STAFF!r}, password={STAFF_PASSWORD!r})"
    manage(env, "shell", "-c", f"from django.contrib.auth.models import User; {create}")
    with daphne(env) as served:
        yield served


def luminance(css: str) -> float:
    """WCAG 2 relative luminance of a computed ``rgb(r, g, b)`` colour."""
    match = re.fullmatch(r"rgba?\((\d+), (\d+), (\d+)(?:, ([\d.]+))?\)", css)
    assert match, css
    assert match.group(4) in (None, "1"), f"a translucent colour: {css}"

    def linear(channel: str) -> float:
        c = int(channel) / 255
        return c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4

    r, g, b = (linear(match.group(i)) for i in (1, 2, 3))
    return 0.2126 * r + 0.7152 * g + 0.0722 * b


async def contrast(page: Any, selector: str) -> float:
    colors = await page.locator(selector).evaluate(
        "e => { const s = getComputedStyle(e); return [s.color, s.backgroundColor]; }"
    )
    lighter, darker = sorted((luminance(c) for c in colors), reverse=True)
    return (lighter + 0.05) / (darker + 0.05)


async def test_the_page_says_who_is_logged_in_and_logs_out(chat: Any, site: Site) -> None:
    await expect(chat.locator("#account")).to_have_text(f"Logged in as {USER}")
    await chat.locator("#log-out").click()
    await expect(chat.locator("#id_username")).to_be_visible()
    await chat.goto(site.url + "/chat/")
    await expect(chat).to_have_url(re.compile(r"/accounts/login/"))
    await expect(chat.locator("#id_username")).to_be_visible()
    await expect(chat.locator("#account")).to_have_count(0)


@pytest.mark.parametrize("scheme", ["dark", "light"])
async def test_send_and_stop_are_readable_in_dark_mode(page: Any, site: Site, scheme: str) -> None:
    await page.emulate_media(color_scheme=scheme)
    chat = await log_in(page, site)
    assert await contrast(chat, "#send") >= 4.5
    await ask(chat, "Contrast, please")
    await expect(chat.locator("#stop")).to_be_visible()
    assert await contrast(chat, "#stop") >= 4.5
    await chat.click("#stop")
    await finished(chat, "stopped")


# Measured in the page at the moment the streaming answer's tail is a code block
# with at least three characters of its second line: a range over the fence's
# first three characters, and one over the second line's first three.
FENCE_AND_CODE = """() => {
  const box = document.querySelector('.chat-streaming span.chat-tail.chat-tail-code');
  const node = box && box.firstChild;
  const text = node ? node.data : '';
  const newline = text.indexOf('\\n');
  if (newline < 0 || text.length < newline + 4) return null;
  const measure = (start) => {
    const range = document.createRange();
    range.setStart(node, start);
    range.setEnd(node, start + 3);
    const box = range.getBoundingClientRect();
    const rects = Array.from(range.getClientRects(), r => [r.width, r.height]);
    return {text: text.slice(start, start + 3), width: box.width, height: box.height, rects};
  };
  return {fence: measure(0), code: measure(newline + 1)};
}"""


async def test_the_fence_line_of_a_code_block_being_written_is_hidden(chat: Any) -> None:
    await ask(chat, "Show me code")
    seen = await (await chat.wait_for_function(FENCE_AND_CODE, timeout=15_000)).json_value()
    fence, code = seen["fence"], seen["code"]
    assert fence["text"] == "```"
    assert fence["width"] == 0 or fence["height"] == 0, seen
    assert code["text"] == "asy"
    assert code["width"] > 0 and code["height"] > 0, seen
    await finished(chat)


async def test_the_edit_button_is_hidden_while_editing(chat: Any) -> None:
    await ask(chat, "Edit me later")
    await finished(chat)
    question = chat.locator(".chat-user").last
    edit = question.get_by_role("button", name="Edit this message")
    await edit.click()
    await expect(question.locator("form.chat-edit")).to_be_visible()
    await expect(edit).to_be_hidden()
    await question.get_by_role("button", name="Keep the message as it was").click()
    await expect(question.locator("form.chat-edit")).to_have_count(0)
    await expect(edit).to_be_visible()


async def test_the_daily_usage_list_fits_a_1280_pixel_screen(page: Any, site: Site) -> None:
    await page.set_viewport_size({"width": 1280, "height": 800})
    await page.goto(site.url + "/admin/login/?next=/chat/")
    await page.fill("#id_username", STAFF)
    await page.fill("#id_password", STAFF_PASSWORD)
    await page.click("input[type=submit], button[type=submit]")
    await expect(page.locator("body[data-connected=true]")).to_be_attached()
    await ask(page, "Count my tokens")
    await finished(page)

    await page.goto(site.url + "/admin/chat/dailyusage/")
    table = page.locator("#result_list")
    await expect(table.locator("tbody tr", has_text=STAFF)).to_have_count(1)
    await expect(table.locator("th.column-total")).to_be_visible()
    box = await table.bounding_box()
    assert box["x"] + box["width"] <= 1280, box
    assert await page.evaluate("document.documentElement.scrollWidth") <= 1280


async def test_a_refused_connection_shows_no_token_count(page: Any, tmp_path: Path) -> None:
    nowhere = f"http://127.0.0.1:{unused_port()}/v1"
    for refusing in start_site(tmp_path, OPENAI_BASE_URL=nowhere, CHAT_MAX_RETRIES="0"):
        chat = await log_in(page, refusing)
        await ask(chat, "Anyone there?")
        await finished(chat, "failed")
        await expect(last_answer(chat).locator(".chat-status")).to_contain_text("Could not connect")
        await expect(last_answer(chat).locator(".chat-usage")).to_have_count(0)
