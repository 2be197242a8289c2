"""Markdown to sanitized HTML, a block at a time, so a streaming answer renders as it grows.

An answer is cut into blocks at blank lines that are outside fenced code and
followed by a line that starts a new top-level block (not indented, not a list
item, so loose lists and their continuations stay whole). Each block is
rendered on its own, once, when the next one starts; the finished answer's
HTML is exactly the blocks' HTML joined, so what a page built while the answer
streamed equals what a reload shows.

Model output is untrusted: markdown-it-py renders it with raw HTML disabled,
Pygments highlights fenced code, and nh3 (the Rust ``ammonia`` sanitizer)
then keeps only an allow-list of tags, attributes and URL schemes, so a
``<script>``, an ``onerror=`` or a ``javascript:`` link can never run.
"""

from __future__ import annotations

import re
import threading
import uuid
from collections import OrderedDict
from collections.abc import Callable
from functools import lru_cache
from typing import ParamSpec, TypeVar

import nh3
from asgiref.sync import sync_to_async
from markdown_it import MarkdownIt
from pygments import highlight
from pygments.formatters import HtmlFormatter
from pygments.lexers import get_lexer_by_name
from pygments.util import ClassNotFound

ALLOWED_TAGS = {
    "a",
    "blockquote",
    "br",
    "code",
    "del",
    "div",
    "em",
    "h1",
    "h2",
    "h3",
    "h4",
    "h5",
    "h6",
    "hr",
    "li",
    "ol",
    "p",
    "pre",
    "s",
    "span",
    "strong",
    "table",
    "tbody",
    "td",
    "th",
    "thead",
    "tr",
    "ul",
}
ALLOWED_ATTRIBUTES = {
    "a": {"href", "title"},
    "code": {"class"},
    "div": {"class"},
    "span": {"class"},
    "td": {"style"},
    "th": {"style"},
    "ol": {"start"},
}
URL_SCHEMES = {"http", "https", "mailto"}

_formatter = HtmlFormatter(nowrap=True, classprefix="hl-")


def _highlight(code: str, lang: str, attrs: str) -> str:
    try:
        lexer = get_lexer_by_name(lang.strip().split()[0]) if lang.strip() else None
    except ClassNotFound:
        lexer = None
    if lexer is None:
        return ""  # markdown-it escapes and wraps it itself
    return highlight(code, lexer, _formatter)


@lru_cache(maxsize=1)
def _markdown() -> MarkdownIt:
    md = MarkdownIt("commonmark", {"html": False, "linkify": False, "highlight": _highlight})
    md.enable(["table", "strikethrough"])
    return md


P = ParamSpec("P")
R = TypeVar("R")


async def off_loop(render: Callable[P, R], *args: P.args, **kwargs: P.kwargs) -> R:
    """Run a render in a worker thread: a long code block costs Pygments milliseconds,
    which on the event loop would hold up every socket of the process."""
    result: R = await sync_to_async(render, thread_sensitive=False)(*args, **kwargs)
    return result


def render_block(text: str) -> str:
    """Render one block of ``text`` (Markdown from a model) to HTML safe to insert in the page."""
    html = _markdown().render(text)
    clean: str = nh3.clean(
        html,
        tags=ALLOWED_TAGS,
        attributes=ALLOWED_ATTRIBUTES,
        url_schemes=URL_SCHEMES,
        link_rel="noopener noreferrer nofollow",
        filter_style_properties={"text-align"},
    )
    return clean


def render_markdown(text: str) -> str:
    """A whole answer's HTML: its blocks rendered one by one, as while it streamed."""
    splitter = BlockSplitter()
    blocks = splitter.feed(text)
    blocks.append(splitter.rest())
    return "".join(render_block(block) for block in blocks if block)


class FinishedHtml:
    """The HTML of finished answers, by id, least recently used dropped past ``max_chars``.

    A finished answer's text never changes, so its HTML is rendered once per
    process: a history (``watch``, ``switch``, a reload) of long code answers
    would otherwise cost Pygments seconds each time it is asked for. Histories
    are rendered in worker threads, hence the lock.
    """

    def __init__(self, max_chars: int = 32 * 1024 * 1024) -> None:
        self.max_chars = max_chars
        self._html: OrderedDict[uuid.UUID, tuple[int, str]] = OrderedDict()
        self._chars = 0
        self._lock = threading.Lock()

    def render(self, message_id: uuid.UUID, text: str) -> str:
        key = message_id
        with self._lock:
            cached = self._html.get(key)
            if cached is not None and cached[0] == len(text):
                self._html.move_to_end(key)
                return cached[1]
        html = render_markdown(text)
        with self._lock:
            previous = self._html.pop(key, None)
            if previous is not None:
                self._chars -= len(previous[1])
            if len(html) <= self.max_chars:
                self._html[key] = (len(text), html)
                self._chars += len(html)
            while self._chars > self.max_chars:
                _, (_, dropped) = self._html.popitem(last=False)
                self._chars -= len(dropped)
        return html


finished_html = FinishedHtml()


def render_prefix(text: str) -> tuple[str, int]:
    """The HTML of ``text``'s complete blocks, and the length of text they cover."""
    blocks = BlockSplitter().feed(text)
    return "".join(render_block(block) for block in blocks), sum(len(b) for b in blocks)


_FENCE = re.compile(r" {0,3}(`{3,}|~{3,})")
_LIST_ITEM = re.compile(r"(?:[-+*]|\d{1,9}[.)])(?:[ \t]|$)")


class BlockSplitter:
    """Cuts a growing text into complete Markdown blocks, looking at each line once."""

    def __init__(self) -> None:
        self._pending: list[str] = []  # text of the block being written
        self._line: list[str] = []  # the last, unfinished line
        self._fence = ""  # the open code fence, if any
        self._after_blank = False

    def feed(self, chunk: str) -> list[str]:
        """Add ``chunk``; return the blocks it completed (usually none), in order."""
        if "\n" not in chunk:
            self._line.append(chunk)
            return []
        done: list[str] = []
        self._line.append(chunk)
        lines = "".join(self._line).split("\n")
        self._line[:] = [lines.pop()]
        for line in lines:
            if self._starts_block(line) and self._pending:
                done.append("".join(self._pending))
                self._pending.clear()
            self._pending.append(line + "\n")
        return done

    def rest(self) -> str:
        """What is left after the last complete block (the answer's end)."""
        return "".join(self._pending) + "".join(self._line)

    def _starts_block(self, line: str) -> bool:
        blank = not line.strip()
        fence = _FENCE.match(line)
        if self._fence:
            if fence and fence.group(1).startswith(self._fence) and not line[fence.end() :].strip():
                self._fence = ""
            self._after_blank = False
            return False
        starts = self._after_blank and not blank and not line[0].isspace()
        starts = starts and not _LIST_ITEM.match(line)
        if fence:
            self._fence = fence.group(1)
        self._after_blank = blank
        return starts
