"""Upstream failures: the user gets a clear message, the answer keeps every character received."""

from __future__ import annotations

import json
import logging
import socket
import time
import zlib
from typing import Any

import pytest

from chat.models import Message
from tests.conftest import API_KEY, Connect, rebuild
from tests.fake_upstream import (
    DONE,
    HANG,
    RESET,
    FakeUpstream,
    Pause,
    Raw,
    Reply,
    chunk,
    completion,
    event,
    html_error,
    json_error,
    stream,
)

pytestmark = pytest.mark.django_db(transaction=True)

PARTIAL = [chunk("", role="assistant"), chunk("Par"), chunk("tial")]


async def run_turn(chat: Any) -> tuple[list[dict[str, Any]], Message]:
    await chat.send("question")
    frames = await chat.receive_until("done", timeout=10)
    done = frames[-1]
    return frames, await Message.objects.aget(pk=done["message"])


@pytest.mark.parametrize(
    ("reply", "code", "words"),
    [
        pytest.param(
            json_error(401, f"Incorrect API key provided: {API_KEY}"),
            "upstream_auth",
            "rejected the API key",
            id="401",
        ),
        pytest.param(json_error(403, "Forbidden"), "upstream_auth", "HTTP 403", id="403"),
        pytest.param(
            json_error(404, "The model does not exist"),
            "model_not_found",
            "does not know the model 'fake-model'",
            id="404",
        ),
        pytest.param(
            json_error(400, "context_length_exceeded"),
            "upstream_rejected",
            "context_length_exceeded",
            id="400",
        ),
        pytest.param(
            json_error(429, "Slow down", {"retry-after": "3600"}),
            "rate_limited",
            "Try again in 3600 s",
            id="429-long-retry-after",
        ),
        pytest.param(
            stream(headers={"content-type": "application/json"}),
            "upstream_garbage",
            "instead of an event stream",
            id="not-an-event-stream",
        ),
    ],
)
async def test_an_error_status_fails_the_answer_with_a_clear_message(
    connect: Connect, fake_upstream: FakeUpstream, user: Any, reply: Reply, code: str, words: str
) -> None:
    fake_upstream.script(reply)
    chat = await connect(user)
    frames, stored = await run_turn(chat)
    done = frames[-1]
    assert done["status"] == "failed"
    assert done["error"]["code"] == code
    assert words in done["error"]["detail"]
    assert API_KEY not in done["error"]["detail"]
    assert (stored.status, stored.error_code, stored.content) == ("failed", code, "")
    assert len(fake_upstream.requests) == 1  # not retried


@pytest.mark.parametrize(
    "first_failure",
    [
        pytest.param(json_error(429, "Slow down", {"retry-after": "0"}), id="429"),
        pytest.param(json_error(500, "oops"), id="500"),
        pytest.param(html_error(502), id="502-html"),
        pytest.param(json_error(503, "overloaded"), id="503"),
    ],
)
async def test_retryable_statuses_are_retried_before_the_first_token(
    connect: Connect, fake_upstream: FakeUpstream, user: Any, first_failure: Reply
) -> None:
    fake_upstream.script(first_failure, stream(*completion(["recovered"])))
    chat = await connect(user)
    frames, stored = await run_turn(chat)
    assert frames[-1]["status"] == "complete"
    assert rebuild(frames) == "recovered" == stored.content
    assert len(fake_upstream.requests) == 2


async def test_a_5xx_that_persists_fails_after_the_retries(
    connect: Connect, fake_upstream: FakeUpstream, user: Any, settings: Any
) -> None:
    settings.CHAT_MAX_RETRIES = 2
    fake_upstream.script(html_error(502), html_error(502), html_error(502))
    chat = await connect(user)
    frames, _ = await run_turn(chat)
    assert frames[-1]["error"]["code"] == "upstream_unavailable"
    assert "HTTP 502" in frames[-1]["error"]["detail"]
    assert "HTML error page" in frames[-1]["error"]["detail"]
    assert len(fake_upstream.requests) == 3


async def test_a_refused_connection_is_reported(
    connect: Connect, fake_upstream: FakeUpstream, user: Any, settings: Any
) -> None:
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]
    settings.OPENAI_BASE_URL = f"http://127.0.0.1:{port}/v1"
    chat = await connect(user)
    frames, stored = await run_turn(chat)
    assert frames[-1]["error"]["code"] == "upstream_unreachable"
    assert "Could not connect" in frames[-1]["error"]["detail"]
    assert stored.status == "failed"
    # Nothing reached a model: nothing was spent, and nothing is estimated.
    assert frames[-1]["usage"] == {
        "prompt_tokens": 0,
        "completion_tokens": 0,
        "total_tokens": 0,
        "estimated": False,
    }
    assert (stored.total_tokens, stored.usage_estimated) == (0, False)


@pytest.mark.parametrize(
    ("body", "code"),
    [
        pytest.param([*PARTIAL, RESET], "upstream_disconnected", id="reset-mid-stream"),
        pytest.param(
            [*PARTIAL, Raw(b"zz\r\nbroken")], "upstream_disconnected", id="truncated-chunk"
        ),
        pytest.param([*PARTIAL], "upstream_disconnected", id="ends-without-finish-or-done"),
        pytest.param(
            [*PARTIAL, event({"error": {"message": "Model crashed"}})],
            "upstream_error",
            id="error-object-in-stream",
        ),
        pytest.param(
            [*PARTIAL, event({"message": "Overloaded"}, name="error")],
            "upstream_error",
            id="error-event-in-stream",
        ),
        pytest.param([*PARTIAL, b"data: {not json\n\n"], "upstream_garbage", id="invalid-json"),
        pytest.param([*PARTIAL, Pause(0.5), HANG], "upstream_timeout", id="stall"),
    ],
)
async def test_a_stream_that_breaks_keeps_what_was_received(
    connect: Connect,
    fake_upstream: FakeUpstream,
    user: Any,
    settings: Any,
    body: list[Any],
    code: str,
) -> None:
    settings.CHAT_READ_TIMEOUT = 0.3
    fake_upstream.script(stream(*body))
    chat = await connect(user)
    frames, stored = await run_turn(chat)
    done = frames[-1]
    assert (done["status"], done["error"]["code"]) == ("failed", code)
    assert rebuild(frames) == "Partial" == stored.content
    assert stored.status == "failed" and stored.error_code == code
    assert len(fake_upstream.requests) == 1  # never retried after a token


async def test_a_stream_without_done_but_with_a_finish_reason_is_complete(
    connect: Connect, fake_upstream: FakeUpstream, user: Any
) -> None:
    fake_upstream.script(stream(*completion(["All here"], done=False)))
    chat = await connect(user)
    frames, stored = await run_turn(chat)
    assert frames[-1]["status"] == "complete" and stored.content == "All here"


@pytest.mark.parametrize(
    ("last", "code"),
    [
        pytest.param(event({"error": {"message": "Model crashed"}}), "upstream_error", id="error"),
        pytest.param(b"data: {not json}\n\n", "upstream_garbage", id="invalid-json"),
        pytest.param(b"data: " + b"x" * 2000 + b"\n\n", "upstream_garbage", id="oversized"),
    ],
)
async def test_text_that_arrives_with_the_failure_in_one_read_is_kept(
    connect: Connect, fake_upstream: FakeUpstream, user: Any, settings: Any, last: bytes, code: str
) -> None:
    # One chunk, so one network read: the text before the failure is still the answer's.
    settings.CHAT_MAX_EVENT_BYTES = 1024
    fake_upstream.script(stream(b"".join([*PARTIAL, last])))
    chat = await connect(user)
    frames, stored = await run_turn(chat)
    assert (frames[-1]["status"], frames[-1]["error"]["code"]) == ("failed", code)
    assert rebuild(frames) == "Partial" == stored.content


def gzipped(*events: bytes) -> list[bytes]:
    """A gzip stream flushed after every event, as a compressing proxy would send it."""
    compressor = zlib.compressobj(wbits=31)
    return [compressor.compress(e) + compressor.flush(zlib.Z_SYNC_FLUSH) for e in events]


async def test_the_stream_is_asked_uncompressed_and_read_right_if_compressed_anyway(
    connect: Connect, fake_upstream: FakeUpstream, user: Any
) -> None:
    gzip = {"content-type": "text/event-stream", "content-encoding": "gzip"}
    fake_upstream.script(
        stream(*gzipped(*completion(["Squeezed ", "but ", "whole"])), headers=gzip)
    )
    chat = await connect(user)
    frames, stored = await run_turn(chat)
    assert fake_upstream.requests[0].headers["accept-encoding"] == "identity"
    assert frames[-1]["status"] == "complete"
    assert rebuild(frames) == "Squeezed but whole" == stored.content


async def test_a_compressed_stream_that_breaks_keeps_what_was_decoded(
    connect: Connect, fake_upstream: FakeUpstream, user: Any
) -> None:
    gzip = {"content-type": "text/event-stream", "content-encoding": "gzip"}
    fake_upstream.script(stream(*gzipped(*PARTIAL), b"\x00not gzip at all", headers=gzip))
    chat = await connect(user)
    frames, stored = await run_turn(chat)
    done = frames[-1]
    assert (done["status"], done["error"]["code"]) == ("failed", "upstream_garbage")
    assert "could not be decoded" in done["error"]["detail"]
    assert rebuild(frames) == "Partial" == stored.content


async def test_an_oversized_event_fails_cleanly(
    connect: Connect, fake_upstream: FakeUpstream, user: Any
) -> None:
    huge = b"data: " + b"x" * (10 * 1024 * 1024) + b"\n\n"  # 10 MB, over the 4 MiB default
    fake_upstream.script(stream(*PARTIAL, huge, DONE))
    chat = await connect(user)
    frames, stored = await run_turn(chat)
    assert frames[-1]["error"]["code"] == "upstream_garbage"
    assert stored.content == "Partial"


async def test_a_slow_first_byte_past_the_timeout_is_reported(
    connect: Connect, fake_upstream: FakeUpstream, user: Any, settings: Any
) -> None:
    settings.CHAT_READ_TIMEOUT = 0.2
    settings.CHAT_MAX_RETRIES = 0
    fake_upstream.script(Reply(delay=1.0, body=completion(["late"])))
    chat = await connect(user)
    frames, _ = await run_turn(chat)
    assert frames[-1]["error"]["code"] == "upstream_unreachable"
    assert "did not answer in time" in frames[-1]["error"]["detail"]


async def test_an_unknown_host_is_reported(connect: Connect, user: Any, settings: Any) -> None:
    settings.OPENAI_BASE_URL = "http://no-such-host.invalid/v1"  # .invalid never resolves
    settings.CHAT_MAX_RETRIES = 0
    chat = await connect(user)
    frames, stored = await run_turn(chat)
    assert frames[-1]["error"]["code"] == "upstream_unreachable"
    assert stored.status == "failed"


@pytest.mark.parametrize(
    "garbage",
    [
        pytest.param(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" * 20, id="tls-handshake"),
        pytest.param(b"SSH-2.0-OpenSSH_9.6\r\n", id="not-http"),
    ],
)
async def test_a_server_that_does_not_speak_http_is_reported(
    connect: Connect, fake_upstream: FakeUpstream, user: Any, settings: Any, garbage: bytes
) -> None:
    settings.CHAT_MAX_RETRIES = 0
    fake_upstream.script(Reply(garbage=garbage))
    chat = await connect(user)
    frames, stored = await run_turn(chat)
    assert frames[-1]["error"]["code"] == "upstream_unreachable"
    assert stored.status == "failed"


async def test_a_connection_that_fails_before_any_response_is_retried(
    connect: Connect, fake_upstream: FakeUpstream, user: Any
) -> None:
    fake_upstream.script(Reply(garbage=b"SSH-2.0-OpenSSH_9.6\r\n"), stream(*completion(["back"])))
    chat = await connect(user)
    frames, stored = await run_turn(chat)
    assert (frames[-1]["status"], stored.content) == ("complete", "back")
    assert len(fake_upstream.requests) == 2


async def test_the_api_key_never_reaches_a_log_line(
    connect: Connect, fake_upstream: FakeUpstream, user: Any, caplog: Any
) -> None:
    caplog.set_level("DEBUG")
    chat_logger = logging.getLogger("chat")  # it does not propagate: listen to it directly
    chat_logger.addHandler(caplog.handler)
    fake_upstream.script(json_error(401, f"Incorrect API key provided: {API_KEY}"))
    chat = await connect(user)
    try:
        frames, _ = await run_turn(chat)
    finally:
        chat_logger.removeHandler(caplog.handler)
    assert API_KEY not in json.dumps(frames)
    assert any("upstream_auth" in record.getMessage() for record in caplog.records)
    assert all(API_KEY not in record.getMessage() for record in caplog.records)


async def test_an_upstream_that_never_answers_fails_the_turn_at_the_first_byte_deadline(
    connect: Connect, fake_upstream: FakeUpstream, user: Any, settings: Any
) -> None:
    """Not after three read timeouts: one deadline for the turn, retries included."""
    settings.CHAT_FIRST_BYTE_TIMEOUT = 0.5
    settings.CHAT_READ_TIMEOUT = 0.3  # each try gives up after this, and is retried
    settings.CHAT_MAX_RETRIES = 5
    settings.CHAT_RETRY_BACKOFF = 0.01
    fake_upstream.script(*(Reply(delay=30, body=completion(["late"])) for _ in range(6)))
    chat = await connect(user)
    started = time.monotonic()
    frames, stored = await run_turn(chat)
    assert time.monotonic() - started < 2
    assert frames[-1]["error"]["code"] == "upstream_timeout"
    assert "did not start answering within 0.5 s" in frames[-1]["error"]["detail"]
    assert (stored.status, stored.error_code) == ("failed", "upstream_timeout")
    assert len(fake_upstream.requests) == 2  # retried, but only within the deadline


async def test_no_retry_is_made_that_would_end_past_the_deadline(
    connect: Connect, fake_upstream: FakeUpstream, user: Any, settings: Any
) -> None:
    settings.CHAT_FIRST_BYTE_TIMEOUT = 1.0
    settings.CHAT_RETRY_BACKOFF = 2.0  # the first retry would start after the deadline
    fake_upstream.script(json_error(503, "overloaded"), stream(*completion(["never asked"])))
    chat = await connect(user)
    started = time.monotonic()
    frames, _ = await run_turn(chat)
    assert time.monotonic() - started < 1
    assert frames[-1]["error"]["code"] == "upstream_unavailable"  # the real cause, at once
    assert len(fake_upstream.requests) == 1
