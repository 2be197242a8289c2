"""Interpreting OpenAI ``chat.completion.chunk`` payloads, without sockets."""

from __future__ import annotations

from typing import Any

import pytest

from chat.exceptions import UpstreamProtocolError, UpstreamStreamError
from chat.upstream import Answer, UpstreamConfig, request_body


def choice(delta: dict[str, Any] | None = None, finish_reason: str | None = None) -> dict[str, Any]:
    return {"choices": [{"index": 0, "delta": delta or {}, "finish_reason": finish_reason}]}


def test_the_role_chunk_adds_no_text() -> None:
    assert Answer().apply(choice({"role": "assistant", "content": ""})) == ("", "")


def test_content_deltas_are_returned_as_text() -> None:
    assert Answer().apply(choice({"content": "Hi"})) == ("Hi", "")


def test_null_content_adds_no_text() -> None:
    assert Answer().apply(choice({"content": None})) == ("", "")


def test_the_finish_reason_is_kept() -> None:
    answer = Answer()
    answer.apply(choice({}, finish_reason="length"))
    assert answer.finish_reason == "length"


def test_the_usage_chunk_has_empty_choices() -> None:
    answer = Answer()
    usage = {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7}
    assert answer.apply({"choices": [], "usage": usage}) == ("", "")
    assert (answer.prompt_tokens, answer.completion_tokens) == (3, 4)


def test_azure_content_filter_chunks_without_choices_are_skipped() -> None:
    azure_first = {"choices": [], "prompt_filter_results": [{"prompt_index": 0}]}
    assert Answer().apply(azure_first) == ("", "")


def test_reasoning_is_kept_apart_from_the_answer() -> None:
    assert Answer().apply(choice({"reasoning_content": "hmm"})) == ("", "hmm")
    assert Answer().apply(choice({"reasoning": "openrouter"})) == ("", "openrouter")


def test_refusals_are_collected() -> None:
    answer = Answer()
    answer.apply(choice({"refusal": "I can't "}))
    answer.apply(choice({"refusal": "help with that."}))
    assert answer.refusal == "I can't help with that."


def test_tool_call_fragments_are_assembled() -> None:
    answer = Answer()
    answer.apply(
        choice(
            {
                "tool_calls": [
                    {
                        "index": 0,
                        "id": "call_1",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": ""},
                    }
                ]
            }
        )
    )
    answer.apply(choice({"tool_calls": [{"index": 0, "function": {"arguments": '{"city":'}}]}))
    answer.apply(choice({"tool_calls": [{"index": 0, "function": {"arguments": '"Oslo"}'}}]}))
    assert answer.tool_calls == [
        {"id": "call_1", "type": "function", "name": "get_weather", "arguments": '{"city":"Oslo"}'}
    ]


def test_an_error_object_in_the_stream_is_raised() -> None:
    with pytest.raises(UpstreamStreamError, match="overloaded"):
        Answer().apply({"error": {"message": "The server is overloaded", "type": "server_error"}})


@pytest.mark.parametrize("payload", [[], "text", 3, {"choices": ["nope"]}])
def test_a_chunk_of_the_wrong_shape_is_a_protocol_error(payload: Any) -> None:
    with pytest.raises(UpstreamProtocolError):
        Answer().apply(payload)


def test_the_request_body_streams_with_usage_and_keeps_extra_options() -> None:
    config = UpstreamConfig(base_url="http://x/v1", api_key="", model="m", options={"top_p": 0.5})
    body = request_body(config, [{"role": "user", "content": "hi"}])
    assert body == {
        "top_p": 0.5,
        "model": "m",
        "messages": [{"role": "user", "content": "hi"}],
        "stream": True,
        "stream_options": {"include_usage": True},
    }
