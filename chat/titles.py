"""Conversation titles: a short one from the model after the first exchange.

A separate, small, non-streaming request with its own timeout, made after the
answer is saved and announced, so it can never delay or fail the answer. If
it fails the conversation keeps its provisional title, the question's first
words. Its tokens count towards the user's daily usage like an answer's.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import re
import uuid
from collections.abc import Mapping, Sequence

from chat import store, upstream
from chat.conf import conf
from chat.exceptions import UpstreamError
from chat.fanout import hub
from chat.protocol import TitleFrame
from chat.upstream import UpstreamConfig
from chat.usage import Usage

logger = logging.getLogger(__name__)

PROMPT = (
    "Write a title of at most six words for the conversation below. "
    "Reply with the title only: no quotes, no final punctuation."
)
EXCERPT = 1500  # characters of the question and of the answer sent for a title
MAX_TITLE = 80


def clean_title(raw: str) -> str:
    """The model's reply as a title: its first line, without quotes, markup or end punctuation."""
    line = next((line for line in raw.strip().splitlines() if line.strip()), "")
    line = re.sub(r"^(title\s*:\s*)", "", line.strip(), flags=re.IGNORECASE)
    line = line.strip().strip("\"'`*#_ ").rstrip(".!?:;,").strip()
    line = " ".join(line.split())
    return line if len(line) <= MAX_TITLE else line[: MAX_TITLE - 1].rstrip() + "…"


def title_request(question: str, answer: str) -> Sequence[Mapping[str, str]]:
    excerpt = f"User: {question[:EXCERPT]}\n\nAssistant: {answer[:EXCERPT]}"
    return [{"role": "system", "content": PROMPT}, {"role": "user", "content": excerpt}]


async def give_title(
    conversation_id: uuid.UUID,
    owner_key: str,
    question: str,
    answer: str,
    config: UpstreamConfig,
) -> str | None:
    """Ask the model for a title, store it and tell the conversation's pages; None if it failed."""
    messages = title_request(question, answer)
    title_config = dataclasses.replace(
        config, model=conf.CHAT_TITLE_MODEL or config.model, read_timeout=conf.CHAT_TITLE_TIMEOUT
    )
    try:
        async with asyncio.timeout(conf.CHAT_TITLE_TIMEOUT):
            text, reported = await upstream.complete(title_config, messages, max_tokens=24)
    except (UpstreamError, TimeoutError) as error:
        reason = error.detail if isinstance(error, UpstreamError) else "no reply in time"
        logger.info(
            "No title for conversation %s (%s): it keeps its first words", conversation_id, reason
        )
        return None
    title = clean_title(text)
    usage = Usage.of(reported, messages, text)
    await store.set_title(conversation_id, title, owner_key=owner_key, usage=usage)
    if not title:
        return None
    frame: TitleFrame = {"type": "title", "conversation": str(conversation_id), "title": title}
    await hub.announce(conversation_id, frame)
    return title
