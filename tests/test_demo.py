"""The built-in demo model: the real wire format, and a chat through it on a real server."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import websockets
from django.test import AsyncClient

from chat.demo import compose_answer
from chat.sse import SSEDecoder
from tests.servers import PASSWORD, USER, daphne, log_in, prepare_site


@pytest.fixture
def demo_settings(settings: Any) -> None:
    settings.OPENAI_API_KEY = ""
    settings.OPENAI_BASE_URL = ""
    settings.CHAT_DEMO_TOKENS_PER_SECOND = 10_000


async def test_the_demo_endpoint_streams_openai_chunks(demo_settings: None) -> None:
    response = await AsyncClient().post(
        "/chat/demo/v1/chat/completions",
        data={"model": "demo", "stream": True, "messages": [{"role": "user", "content": "Hi"}]},
        content_type="application/json",
    )
    assert response.status_code == 200
    assert response["Content-Type"] == "text/event-stream"
    decoder = SSEDecoder()
    events = [
        e for part in [p async for p in response.streaming_content] for e in decoder.feed(part)
    ]
    assert events[-1].data == "[DONE]"
    chunks = [json.loads(e.data) for e in events[:-1]]
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    assert text == compose_answer("Hi")
    assert chunks[-2]["choices"][0]["finish_reason"] == "stop"
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] > 0


async def test_the_demo_endpoint_answers_a_title_request(demo_settings: None) -> None:
    question = "User: How do I keep basil alive in winter?\n\nAssistant: Light."
    response = await AsyncClient().post(
        "/chat/demo/v1/chat/completions",
        data={"model": "demo", "messages": [{"role": "user", "content": question}]},
        content_type="application/json",
    )
    assert response.status_code == 200
    body = json.loads(response.content)
    assert body["object"] == "chat.completion"
    assert body["choices"][0]["message"]["content"] == "How do I keep basil alive"
    assert body["usage"]["total_tokens"] > 0


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(b"nope", id="not-json"),
        pytest.param(b'{"stream": true}', id="no-messages"),
    ],
)
async def test_the_demo_endpoint_rejects_bad_requests(demo_settings: None, body: bytes) -> None:
    response = await AsyncClient().post(
        "/chat/demo/v1/chat/completions", data=body, content_type="application/json"
    )
    assert response.status_code == 400
    assert json.loads(response.content)["error"]["message"]


async def test_the_demo_is_off_when_a_real_model_is_configured(settings: Any) -> None:
    settings.OPENAI_API_KEY = "sk-real"
    response = await AsyncClient().post(
        "/chat/demo/v1/chat/completions", data={}, content_type="application/json"
    )
    assert response.status_code == 404


@pytest.mark.integration
async def test_a_fresh_site_chats_with_the_demo_model_over_real_sockets(tmp_path: Path) -> None:
    env = prepare_site(tmp_path, CHAT_DEMO_TOKENS_PER_SECOND="2000")
    with daphne(env) as site:
        cookie = await log_in(site, USER, PASSWORD)
        async with websockets.connect(
            site.ws_url + "/ws/chat/",
            additional_headers={"Cookie": cookie, "Origin": site.url},
        ) as socket:
            await socket.send(
                json.dumps({"type": "send", "conversation": None, "content": "Hello, demo!"})
            )
            frames = []
            while not frames or frames[-1]["type"] != "done":
                frames.append(json.loads(await socket.recv()))
    text = "".join(f["text"] for f in frames if f["type"] == "delta")
    assert text == compose_answer("Hello, demo!")
    done = frames[-1]
    assert done["status"] == "complete" and done["finish_reason"] == "stop"
    assert '<span class="hl-k">async</span>' in done["html"]
