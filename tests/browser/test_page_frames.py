"""The page's handling of frames, driven frame by frame: a test socket stands in for the server's.

An init script wraps the page's ``WebSocket``: the test hands the page frames
(``window.inject``) and reads what the page sent (``window.sentFrames``).
"""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest

from tests.browser.conftest import expect, log_in
from tests.servers import Site

HARNESS = """
window.sentFrames = [];
const Native = window.WebSocket;
window.WebSocket = function (url) {
  const socket = new Native(url);
  const send = socket.send.bind(socket);
  socket.send = (data) => { window.sentFrames.push(JSON.parse(data)); send(data); };
  window.inject = (frame) =>
    socket.dispatchEvent(new MessageEvent("message", { data: JSON.stringify(frame) }));
  return socket;
};
Object.assign(window.WebSocket, Native);
"""

CONVERSATION = str(uuid.uuid4())
ANSWER = str(uuid.uuid4())


def history(status: str = "streaming", content: str = "Hello", reasoning: str = "") -> Any:
    message = {
        "id": ANSWER,
        "conversation": CONVERSATION,
        "parent": None,
        "versions": [ANSWER],
        "role": "assistant",
        "content": content,
        "reasoning": reasoning,
        "refusal": "",
        "status": status,
        "finish_reason": None,
        "error": None,
        "usage": {
            "prompt_tokens": None,
            "completion_tokens": None,
            "total_tokens": None,
            "estimated": False,
        },
        "model": "m",
        "created_at": "2026-12-01T00:00:00+00:00",
        "html": "",
        "rendered": 0,
    }
    conversation = {
        "id": CONVERSATION,
        "title": "t",
        "model": "m",
        "created_at": "2026-12-01T00:00:00+00:00",
        "updated_at": "2026-12-01T00:00:00+00:00",
    }
    return {"type": "history", "conversation": conversation, "messages": [message]}


@pytest.fixture
async def page_with(page: Any, site: Site) -> Any:
    await page.add_init_script(HARNESS)
    return await log_in(page, site)


async def inject(page: Any, *frames: Any) -> None:
    for frame in frames:
        await page.evaluate("(frame) => window.inject(frame)", json.loads(json.dumps(frame)))


async def test_a_gap_asks_for_the_conversation_once_not_once_per_delta(page_with: Any) -> None:
    await inject(page_with, history())
    gapped = [{"type": "delta", "message": ANSWER, "index": 10 + i, "text": "x"} for i in range(5)]
    await inject(page_with, *gapped)
    watches = await page_with.evaluate("window.sentFrames.filter((f) => f.type === 'watch').length")
    assert watches == 1
    # Once the history came, a new gap asks again.
    await inject(page_with, history(), gapped[0])
    watches = await page_with.evaluate("window.sentFrames.filter((f) => f.type === 'watch').length")
    assert watches == 2


async def test_overlapping_reasoning_is_trimmed_not_dropped(page_with: Any) -> None:
    await inject(
        page_with,
        history(reasoning="Let me"),
        {"type": "reasoning", "message": ANSWER, "index": 3, "text": " me think"},
        {"type": "reasoning", "message": ANSWER, "index": 0, "text": "Let me think."},
    )
    await expect(page_with.locator(".chat-reasoning")).to_contain_text("Let me think.")
    text = await page_with.locator(".chat-reasoning").text_content()
    assert text == "ReasoningLet me think."


async def test_the_log_is_busy_while_an_answer_streams(page_with: Any) -> None:
    await inject(page_with, history())
    await expect(page_with.locator("#messages")).to_have_attribute("aria-busy", "true")
    done = {
        "type": "done",
        "message": ANSWER,
        "conversation": CONVERSATION,
        "status": "complete",
        "length": 5,
        "finish_reason": "stop",
        "usage": history()["messages"][0]["usage"],
        "error": None,
        "html": "<p>Hello</p>",
        "refusal": "",
    }
    await inject(page_with, done)
    await expect(page_with.locator("#messages")).to_have_attribute("aria-busy", "false")
