"""The SSE decoder against the WHATWG rules, byte by byte, and under any re-chunking."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from chat.sse import ServerSentEvent, SSEDecoder, SSEError


def decode(*chunks: bytes) -> list[ServerSentEvent]:
    decoder = SSEDecoder()
    events: list[ServerSentEvent] = []
    for part in chunks:
        events += decoder.feed(part)
    return events


@pytest.mark.parametrize(
    ("stream", "expected"),
    [
        pytest.param(b"data: hello\n\n", [ServerSentEvent("hello")], id="lf"),
        pytest.param(b"data: hello\r\n\r\n", [ServerSentEvent("hello")], id="crlf"),
        pytest.param(b"data: hello\r\r", [ServerSentEvent("hello")], id="cr"),
        pytest.param(b"data:hello\n\n", [ServerSentEvent("hello")], id="no-space-after-colon"),
        pytest.param(b"data:  two\n\n", [ServerSentEvent(" two")], id="only-one-space-removed"),
        pytest.param(b"data: a\ndata: b\n\n", [ServerSentEvent("a\nb")], id="multi-line-data"),
        pytest.param(b"data\n\n", [ServerSentEvent("")], id="field-without-colon"),
        pytest.param(b"data:\n\n", [ServerSentEvent("")], id="empty-data"),
        pytest.param(b": keep-alive\n\ndata: x\n\n", [ServerSentEvent("x")], id="comment"),
        pytest.param(b"event: ping\n\n", [], id="no-data-no-event"),
        pytest.param(
            b"event: error\ndata: {}\n\ndata: next\n\n",
            [ServerSentEvent("{}", event="error"), ServerSentEvent("next")],
            id="event-type-resets-after-dispatch",
        ),
        pytest.param(
            b"id: 7\ndata: a\n\ndata: b\n\n",
            [ServerSentEvent("a", id="7"), ServerSentEvent("b", id="7")],
            id="last-event-id-persists",
        ),
        pytest.param(b"id: a\0b\ndata: x\n\n", [ServerSentEvent("x")], id="id-with-null-ignored"),
        pytest.param(b"retry: 1500\ndata: x\n\n", [ServerSentEvent("x", retry=1500)], id="retry"),
        pytest.param(b"retry: soon\ndata: x\n\n", [ServerSentEvent("x")], id="retry-not-digits"),
        pytest.param(b"foo: bar\ndata: x\n\n", [ServerSentEvent("x")], id="unknown-field"),
        pytest.param(b"\xef\xbb\xbfdata: x\n\n", [ServerSentEvent("x")], id="bom-stripped"),
        pytest.param(b"\xef\xbb\xbf\xef\xbb\xbfdata: x\n\n", [], id="only-one-bom-stripped"),
        pytest.param(
            b"data: x\n\ndata: unfinished", [ServerSentEvent("x")], id="incomplete-dropped"
        ),
        pytest.param(b"data: [DONE]\n\n", [ServerSentEvent("[DONE]")], id="done-is-data"),
        pytest.param(
            "data: h\u00e9 \u6f22 \U0001f600\n\n".encode(),
            [ServerSentEvent("h\u00e9 \u6f22 \U0001f600")],
            id="utf8",
        ),
        pytest.param(b"data: \xff\n\n", [ServerSentEvent("\ufffd")], id="invalid-utf8-replaced"),
    ],
)
def test_events_follow_the_whatwg_rules(stream: bytes, expected: list[ServerSentEvent]) -> None:
    assert decode(stream) == expected


@pytest.mark.parametrize(
    "chunks",
    [
        pytest.param([b"data: a\r", b"\n\r\n"], id="crlf-split-after-cr"),
        pytest.param([b"data: a\r", b"\r"], id="cr-then-cr"),
        pytest.param([b"data: a\r\n\r", b"\ndata: b\r\n\r\n"], id="blank-crlf-split"),
        pytest.param([b"da", b"ta: ", b"a\n", b"\n"], id="field-split"),
        pytest.param(
            ["data: a\U0001f600".encode()[:-2], "\U0001f600".encode()[-2:], b"\n\n"],
            id="utf8-split-mid-character",
        ),
        pytest.param([b"\xef", b"\xbb\xbfdata: a\n\n"], id="bom-split"),
    ],
)
def test_splits_across_chunks_do_not_change_events(chunks: list[bytes]) -> None:
    assert decode(*chunks) == decode(b"".join(chunks))
    assert decode(*chunks)[0].data in ("a", "a\U0001f600")


def test_a_lone_cr_at_the_end_of_a_chunk_does_not_swallow_the_next_line() -> None:
    assert decode(b"data: a\r", b"data: b\n\n") == [ServerSentEvent("a\nb")]


def test_an_event_larger_than_the_limit_is_refused() -> None:
    decoder = SSEDecoder(max_event_size=100)
    with pytest.raises(SSEError):
        for _ in range(20):
            decoder.feed(b"x" * 10)
        decoder.feed(b"data: " + b"y" * 200 + b"\n")


def test_a_long_line_after_a_complete_one_is_bounded_too() -> None:
    decoder = SSEDecoder(max_event_size=10)
    with pytest.raises(SSEError):
        decoder.feed(b"data: a\n" + b"x" * 100)


def test_many_data_lines_are_bounded_too() -> None:
    decoder = SSEDecoder(max_event_size=100)
    with pytest.raises(SSEError):
        decoder.feed(b"data: 0123456789\n" * 20)


# Any re-chunking of a byte stream yields the same events ---------------------------

field_value = st.text(
    alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\r\n"), max_size=20
)
line_end = st.sampled_from(["\n", "\r", "\r\n"])


@st.composite
def event_streams(draw: st.DrawFn) -> tuple[bytes, list[ServerSentEvent]]:
    """A stream built from random events, with the events a correct parser must yield."""
    parts = ["\ufeff"] if draw(st.booleans()) else []
    expected: list[ServerSentEvent] = []
    last_id = ""
    for _ in range(draw(st.integers(0, 6))):
        # One line ending per event: a CR then an LF from the next line would be one CRLF.
        end = draw(line_end)
        if draw(st.booleans()):
            parts += [":", draw(field_value), end]
        event_type = draw(st.none() | st.sampled_from(["message", "error", "update"]))
        if event_type is not None:
            parts += ["event: ", event_type, end]
        if draw(st.booleans()):
            last_id = draw(field_value.filter(lambda v: "\0" not in v))
            # Without a space after the colon, a value's own leading space would be eaten.
            space = " " if draw(st.booleans()) or last_id.startswith(" ") else ""
            parts += ["id:", space, last_id, end]
        lines = draw(st.lists(field_value, max_size=3))
        for line in lines:
            # "data:" + value: with a space, exactly one leading space is removed.
            parts += ["data: ", line, end]
        parts.append(end)
        if lines:
            expected.append(ServerSentEvent("\n".join(lines), event_type or "message", last_id))
    return "".join(parts).encode(), expected


@given(stream=event_streams(), cuts=st.lists(st.integers(0, 10_000), max_size=12))
@settings(max_examples=300, deadline=None)
def test_any_rechunking_yields_the_same_events(
    stream: tuple[bytes, list[ServerSentEvent]], cuts: list[int]
) -> None:
    data, expected = stream
    points = sorted({c % (len(data) + 1) for c in cuts})
    chunks = [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True)]
    assert decode(*chunks) == expected
    assert decode(*(bytes([b]) for b in data)) == expected
