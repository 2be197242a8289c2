"""The built-in demo model: an OpenAI-compatible streaming endpoint served by the app itself.

It answers when neither ``OPENAI_API_KEY`` nor ``OPENAI_BASE_URL`` is set, so a
fresh checkout can chat at once. It speaks the real wire format (``POST
/chat/completions``, ``text/event-stream``, ``chat.completion.chunk`` events,
a usage chunk and ``[DONE]``) over real HTTP, and the relay reaches it like
any upstream, so the demo exercises the same path as production.
"""

from __future__ import annotations

import asyncio
import re
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import orjson
from django.http import HttpRequest, HttpResponse, JsonResponse, StreamingHttpResponse
from django.http.response import HttpResponseBase
from django.urls import reverse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_GET, require_POST

from chat.conf import conf

DEMO_MODEL = "demo"
_TOKEN = re.compile(r"\s*\S+|\s+")


def base_url_for(scope: dict[str, Any]) -> str | None:
    """The demo endpoint's URL on the server this socket came in on, or None if unknown."""
    server = scope.get("server")
    if not server or server[1] is None:
        return None  # a UNIX socket: set OPENAI_BASE_URL instead
    host, port = server
    host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)
    if ":" in host:
        host = f"[{host}]"
    scheme = "https" if scope.get("scheme") in ("https", "wss") else "http"
    path = reverse("chat:demo-completions").removesuffix("/chat/completions")
    return f"{scheme}://{host}:{port}{scope.get('root_path', '')}{path}"


def compose_answer(question: str) -> str:
    """The demo's reply: Markdown that exercises the page (quote, list, code, table)."""
    quoted = "\n".join(f"> {line}" for line in question.strip().splitlines()[:8])
    words = len(question.split())
    return (
        "**This is the built-in demo model.** No `OPENAI_API_KEY` is set, so this answer is "
        "streamed by the app itself, over the same OpenAI wire format a real model server "
        "speaks.\n\n"
        f"You wrote {words} word{'s' if words != 1 else ''}:\n\n{quoted}\n\n"
        "To talk to a real model:\n\n"
        "1. set `OPENAI_API_KEY` for OpenAI, or\n"
        "2. set `OPENAI_BASE_URL` for Ollama, vLLM, llama.cpp, OpenRouter and friends, and\n"
        "3. set `CHAT_MODEL` to the model's name.\n\n"
        "Each block is rendered as soon as it is complete; fenced code is highlighted:\n\n"
        "```python\n"
        "async def relay(upstream, socket):\n"
        "    async for delta in upstream:\n"
        "        await socket.send(delta)  # one frame per network read\n"
        "```\n\n"
        "| try this | and see |\n"
        "|---|---|\n"
        "| **Stop** while it streams | the partial answer is kept, marked stopped |\n"
        "| reload the page | the whole conversation is still there |\n"
    )


def _chunk(completion_id: str, created: int, **fields: Any) -> bytes:
    payload = {
        "id": completion_id,
        "object": "chat.completion.chunk",
        "created": created,
        "model": DEMO_MODEL,
        **fields,
    }
    return b"data: " + orjson.dumps(payload) + b"\n\n"


async def _stream(question: str, prompt_tokens: int) -> AsyncIterator[bytes]:
    completion_id = f"chatcmpl-demo-{uuid.uuid4().hex[:12]}"
    created = int(time.time())
    delay = 1.0 / conf.CHAT_DEMO_TOKENS_PER_SECOND
    tokens = _TOKEN.findall(compose_answer(question))
    yield _chunk(
        completion_id,
        created,
        choices=[
            {"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}
        ],
    )
    for token in tokens:
        await asyncio.sleep(delay)  # the pace of a model writing
        yield _chunk(
            completion_id,
            created,
            choices=[{"index": 0, "delta": {"content": token}, "finish_reason": None}],
        )
    yield _chunk(
        completion_id, created, choices=[{"index": 0, "delta": {}, "finish_reason": "stop"}]
    )
    usage = {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": len(tokens),
        "total_tokens": prompt_tokens + len(tokens),
    }
    yield _chunk(completion_id, created, choices=[], usage=usage)
    yield b"data: [DONE]\n\n"


def _completion(question: str, prompt_tokens: int) -> dict[str, Any]:
    """A non-streaming reply: the demo's idea of a title, the question's first words."""
    asked = question.removeprefix("User: ").splitlines()[0] if question.strip() else ""
    title = " ".join(asked.split()[:6]) or "Demo chat"
    return {
        "id": f"chatcmpl-demo-{uuid.uuid4().hex[:12]}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": "demo",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": title},
                "finish_reason": "stop",
            }
        ],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": len(title.split()),
            "total_tokens": prompt_tokens + len(title.split()),
        },
    }


def _error(status: int, message: str) -> JsonResponse:
    return JsonResponse(
        {"error": {"message": message, "type": "invalid_request_error"}}, status=status
    )


@csrf_exempt
@require_POST
def completions(request: HttpRequest) -> HttpResponseBase:
    """``POST /v1/chat/completions`` of the demo model (a streamed answer, or a short title)."""
    if not conf.demo_mode:
        return _error(404, "The demo model is off: a real model is configured.")
    try:
        body = orjson.loads(request.body)
        messages = body["messages"]
        question = next((m["content"] for m in reversed(messages) if m.get("role") == "user"), "")
    except (orjson.JSONDecodeError, KeyError, TypeError, AttributeError):
        return _error(400, "Expected a JSON body with a 'messages' list.")
    if not isinstance(question, str):
        return _error(400, "Only text messages are supported by the demo model.")
    prompt_tokens = sum(len(str(m.get("content", "")).split()) for m in messages)
    if not body.get("stream"):
        return JsonResponse(_completion(question, prompt_tokens))
    response = StreamingHttpResponse(
        _stream(question, prompt_tokens), content_type="text/event-stream"
    )
    response["Cache-Control"] = "no-cache"
    response["X-Request-Id"] = f"demo-{uuid.uuid4().hex[:16]}"
    return response


@require_GET
def models(request: HttpRequest) -> HttpResponse:
    """``GET /v1/models``: the demo model, so OpenAI clients can discover it."""
    if not conf.demo_mode:
        return _error(404, "The demo model is off: a real model is configured.")
    return JsonResponse(
        {"object": "list", "data": [{"id": DEMO_MODEL, "object": "model", "owned_by": "chat"}]}
    )
