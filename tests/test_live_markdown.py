"""A streaming answer renders as it grows: each complete Markdown block once, as sanitized HTML.

The page shows the block being written as text and replaces it by the
server's HTML when the next block starts, so its work per delta is
proportional to the delta. What it builds this way equals what a reload shows.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from chat.rendering import BlockSplitter, render_block, render_markdown, render_prefix
from tests.conftest import Connect, rebuild
from tests.fake_upstream import FakeUpstream, completion, paused, stream

pytestmark = pytest.mark.django_db(transaction=True)

ANSWER = (
    "# Title\n\nFirst paragraph,\nstill first.\n\n- one\n\n- two\n  more of two\n\n"
    "```python\nx = 1\n\ny = 2\n```\n\n> quoted <script>window.pwned=1</script>\n\nLast words."
)


def html_frames(frames: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [f for f in frames if f["type"] == "html"]


async def test_blocks_arrive_as_html_in_order_and_add_up_to_the_final_html(
    connect: Connect, fake_upstream: FakeUpstream, user: Any
) -> None:
    pieces = [ANSWER[i : i + 7] for i in range(0, len(ANSWER), 7)]
    fake_upstream.script(stream(*completion(pieces)))
    chat = await connect(user)

    await chat.send("Markdown, please")
    frames = await chat.receive_until("done")

    blocks = html_frames(frames)
    # The title; the paragraph with its loose list; the code; and, once the answer
    # ends, the rest (a block is known complete only when the next one starts).
    assert len(blocks) == 4
    assert [b["index"] for b in blocks] == [0] + [b["end"] for b in blocks[:-1]]
    assert blocks[-1]["end"] == len(ANSWER) == frames[-1]["length"]
    assert "".join(b["html"] for b in blocks) == frames[-1]["html"] == render_markdown(ANSWER)
    assert rebuild(frames) == ANSWER
    assert "<script" not in frames[-1]["html"] and "&lt;script&gt;" in frames[-1]["html"]
    # A block's HTML never arrives before its text.
    for block in blocks:
        position = frames.index(block)
        assert len(rebuild(frames[:position])) >= block["end"]


async def test_a_tab_opened_mid_answer_gets_the_blocks_so_far_then_the_rest_once(
    connect: Connect, fake_upstream: FakeUpstream, user: Any
) -> None:
    release = asyncio.Event()
    fake_upstream.script(paused(["# Title\n\nOne.\n\n", "Two"], release, [".\n\nThree."]))
    first = await connect(user)
    await first.send("go")
    while rebuild(first.frames) != "# Title\n\nOne.\n\nTwo":
        await first.receive()
    conversation = first.frames[0]["conversation"]["id"]
    second = await connect(user)

    await second.watch(conversation)
    history = await second.receive()
    release.set()
    frames = await second.receive_until("done")

    answer = history["messages"][1]
    assert answer["status"] == "streaming"
    # "One." is not known to be complete until the line after it ends.
    assert answer["rendered"] == len("# Title\n\n")
    assert answer["html"] == render_markdown("# Title\n\n")
    blocks = html_frames(frames)
    assert [b["index"] for b in blocks] == [answer["rendered"]] + [b["end"] for b in blocks[:-1]]
    assert blocks[-1]["end"] == len("# Title\n\nOne.\n\nTwo.\n\nThree.")
    assert answer["html"] + "".join(b["html"] for b in blocks) == frames[-1]["html"]
    await first.receive_until("done")


@given(st.text(alphabet="ab #->`~\n *1.", max_size=300), st.lists(st.integers(1, 20)))
def test_blocks_do_not_depend_on_how_the_text_was_chunked(text: str, sizes: list[int]) -> None:
    whole = BlockSplitter()
    expected = whole.feed(text)
    chunked, blocks, at = BlockSplitter(), [], 0
    for size in sizes or [1]:
        blocks += chunked.feed(text[at : at + size])
        at += size
    blocks += chunked.feed(text[at:])
    assert blocks == expected
    assert "".join(blocks) + chunked.rest() == text
    assert render_prefix(text) == ("".join(map(render_block, expected)), len("".join(expected)))
