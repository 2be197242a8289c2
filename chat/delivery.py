"""One socket's delivery: each character of an answer once, in order, in as few frames as fit.

Frames of the conversation a socket shows reach its ``Delivery`` through the
fan-out (``deliver``, which only queues). A sender task drains the queue in
order (``run``): it merges what piled up, drops by ``index`` what the socket
already has, fills a gap from the answer's exact text, paces the socket by its
send window (the page must echo pings), and cuts frames over the size bound
into ``part`` frames. The task runs only while there is something to send, or
an answer is being written to the socket (its next frame is a token away: the
sender waits for it rather than end and be started again for each token): an
idle socket holds no task (memory: thousands of sockets are idle). It knows
nothing of websockets or consumers: a test drives it with a list as its socket.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from chat.fanout import Frame
from chat.limits import SendWindow
from chat.protocol import HistoryFrame, PingFrame, coalesce, conversation_of, dumps, frame_texts

logger = logging.getLogger(__name__)

#: Sends one websocket text message.
Send = Callable[[str], Awaitable[None]]
#: An answer's exact text now (from its process, else the last checkpoint); "" if unknown.
TextOf = Callable[[uuid.UUID], Awaitable[str]]
#: Told why the sender stopped for good: what it raised (``SlowReader``...), or None
#: after ``stop`` once the queue was sent.
Ended = Callable[[BaseException | None], Awaitable[None]]


class SlowReader(Exception):
    """Raised when the page read nothing for ``slow_timeout`` seconds with a full window."""


def keys(message_id: str) -> tuple[str, str, str]:
    """The ``positions`` keys of an answer's text, reasoning and HTML."""
    return message_id, message_id + ":r", message_id + ":h"


class Delivery:
    """What one socket is sent, and when."""

    # Slots, not a dict: one of these lives as long as each open socket.
    __slots__ = (
        "_ended",
        "_idle",
        "_loop",
        "_over",
        "_send",
        "_sender",
        "_text_of",
        "finished",
        "frame_limit",
        "holding",
        "outbox",
        "positions",
        "shown",
        "slow_timeout",
        "stopping",
        "window",
    )

    def __init__(
        self,
        send: Send,
        *,
        text_of: TextOf,
        window: int,
        slow_timeout: float,
        frame_limit: int,
        ended: Ended | None = None,
    ) -> None:
        self._send = send
        self._text_of = text_of
        self._ended = ended
        self._sender: asyncio.Task[None] | None = None
        #: What the sender awaits between an answer's frames (``_next_frame``).
        self._idle: asyncio.Future[None] | None = None
        # Asked once: each ``get_running_loop()`` is a ``getpid`` system call (CPython 3.11).
        self._loop: asyncio.AbstractEventLoop | None = None
        self._over = False  # the sender stopped for good (``ended`` was told)
        self.window = SendWindow(window)
        self.slow_timeout = slow_timeout
        self.frame_limit = frame_limit
        #: Code points of each answer this socket already has: its text, its
        #: reasoning and its HTML, under the keys ``keys`` gives.
        self.positions: dict[str, int] = {}
        self.finished: set[str] = set()
        #: The conversation this socket may show, once its owner was checked:
        #: frames of any other conversation are dropped, whatever their kind.
        self.shown: uuid.UUID | None = None
        self.outbox: list[Frame] = []
        self.holding = False  # while a history is prepared, frames wait in the outbox
        self.stopping = False

    # Fed by the fan-out and by the socket --------------------------------------

    def deliver(self, frame: Frame) -> None:
        """Queue a frame for this socket (called by the fan-out; never blocks)."""
        self.outbox.append(frame)
        if not self.holding and (self._sender is None or self._idle is not None):
            self.wake()

    def wake(self) -> None:
        """Wake the sender waiting for an answer's next frame; or start one if there is
        something to send (or to stop) and none runs."""
        idle = self._idle
        if idle is not None:
            # It sends what is due, then waits again or ends (``_send_all``).
            self._idle = None
            if not idle.done():
                idle.set_result(None)
            return
        due = (self.outbox or self.stopping) and not self.holding and not self._over
        if self._sender is None and due:
            loop = self._loop
            if loop is None:
                loop = self._loop = asyncio.get_running_loop()
            self._sender = loop.create_task(self._send_all(), name="chat-socket-sender")

    async def close(self) -> None:
        """Cancel the sender, if one runs (the socket is gone)."""
        sender = self._sender
        if sender is not None:
            sender.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sender

    def show_nothing(self) -> None:
        """Forget every answer: the socket moves to another conversation (not shown yet)."""
        self.shown = None
        self.positions.clear()
        self.finished.clear()
        self.wake()  # a sender waiting for an answer's next frame has none to wait for

    def show_history(
        self,
        conversation_id: uuid.UUID,
        history: HistoryFrame,
        *,
        running: dict[str, tuple[int, int, int]],
        finished: list[str],
    ) -> None:
        """Send ``history`` before every frame held meanwhile, then those trimmed to follow it.

        ``running`` gives, for each answer still being written, the lengths of
        its text, reasoning and HTML that the history holds.
        """
        self.shown = conversation_id
        self.positions.clear()
        self.finished.clear()
        for mid, lengths in running.items():
            for key, length in zip(keys(mid), lengths, strict=True):
                self.positions[key] = length
        self.finished.update(finished)
        # A history not sent yet is stale now.
        self.outbox[:] = [history, *(f for f in self.outbox if f["type"] != "history")]

    def stop(self) -> None:
        """Send what is queued, then tell ``ended`` (the socket is about to close)."""
        self.stopping = True
        self.wake()

    # The sender ----------------------------------------------------------------

    async def run(self) -> None:
        """Send the outbox in order until it is empty (or held); raises ``SlowReader`` for
        a page that stopped reading, and whatever sending raised."""
        while self.outbox and not self.holding:
            frames, self.outbox = self.outbox, []
            for frame in coalesce(frames):
                await self.forward(frame)
            await self._pace()

    async def _send_all(self) -> None:
        error: Exception | None = None
        try:
            await self.run()
            # While an answer is being written here (``positions`` holds it from its
            # ``message`` frame to its ``done``), its next frame is a token away.
            while self.positions and not (self.stopping or self.outbox):
                await self._next_frame()
                await self.run()
        except Exception as exc:
            error = exc
        if error is None and not self.stopping:
            self._sender = None  # all sent: the next frame starts a sender again
            return
        self._over = True  # and ``_sender`` stays: the loop keeps only a weak reference
        if self._ended is not None:
            await self._ended(error)
        elif error is not None:
            logger.error("Sending to a socket failed", exc_info=error)

    async def _next_frame(self) -> None:
        """Wait for ``wake``: cheaper than a sender task started for each token, which is
        made, scheduled and freed (a frame delivered from a woken sender: 6.0 against
        7.2 µs, ``python -m bench.costs``)."""
        loop = self._loop
        assert loop is not None  # set by ``wake`` before it started this sender
        self._idle = idle = loop.create_future()
        try:
            await idle
        finally:
            self._idle = None

    async def send_frame(self, frame: Any) -> None:
        """Send a frame, in ``part`` frames if it is over ``frame_limit``.

        Between the parts of a large frame (a long history) the send window is
        honoured as between frames: a page that reads nothing is not sent the rest.
        """
        texts = frame_texts(frame, limit=self.frame_limit)
        if len(texts) == 1:
            self.window.sent += len(texts[0])
            await self._send(texts[0])
            return
        for text in texts:
            self.window.sent += len(text)
            await self._send(text)
            await self._pace()

    async def forward(self, frame: Frame) -> None:
        """Send one frame if it is ours to show, trimmed to what this socket lacks."""
        kind = frame["type"]
        conversation = conversation_of(frame)
        if conversation is not None and conversation != str(self.shown):
            return  # of a conversation this socket does not show (or not yet: unchecked)
        if kind == "delta" or kind == "reasoning":
            key = frame["message"] if kind == "delta" else frame["message"] + ":r"
            have = self.positions.get(key)
            if have is None:
                return  # an answer of a conversation this socket no longer shows
            index, text = frame["index"], frame["text"]
            end = index + len(text)
            if end <= have:
                return  # already sent (in the history, or a duplicate)
            if index > have and kind == "delta":
                have = await self.resync(frame["message"], have)
                if end <= have:
                    return
                if index > have:
                    return  # still a gap: never show text out of place; ``done`` fills it
            if index < have:
                frame = {**frame, "index": have, "text": text[have - index :]}
            self.positions[key] = end
        elif kind == "html":
            key = frame["message"] + ":h"
            if self.positions.get(key) != frame["index"]:
                return  # not shown here, already in the history, or after a gap
            self.positions[key] = frame["end"]
        elif kind == "message":
            message = frame["message"]
            if message["status"] == "streaming":
                for key in keys(message["id"]):
                    self.positions.setdefault(key, 0)
        elif kind == "done":
            mid = frame["message"]
            if mid in self.finished:
                return
            if mid in self.positions and self.positions[mid] < frame["length"]:
                await self.resync(mid, self.positions[mid])
            self.finished.add(mid)
            for key in keys(mid):
                self.positions.pop(key, None)
        await self.send_frame(frame)

    async def resync(self, message_id: str, have: int) -> int:
        """Send what this socket missed of an answer; return its new position."""
        text = await self._text_of(uuid.UUID(message_id))
        if len(text) > have:
            await self.send_frame(
                {"type": "delta", "message": message_id, "index": have, "text": text[have:]}
            )
            have = len(text)
        else:
            logger.info("Cannot fill a gap in message %s at %d yet", message_id, have)
        self.positions[message_id] = have
        return have

    # Flow control -------------------------------------------------------------

    async def _pace(self) -> None:
        """Ping when due; with a full window, wait for the page's echo (or give up)."""
        nonce = self.window.ping()
        if nonce is not None:
            # Not counted in the window: a ping is tiny, and counting it would make it due again.
            ping: PingFrame = {"type": "ping", "nonce": nonce}
            await self._send(dumps(ping))
        if self.window.full and not await self._wait_for_reader():
            raise SlowReader

    async def _wait_for_reader(self) -> bool:
        """Hold further frames until the page proves it read; False if it does not in time.

        The ping that covers everything sent went out just before (``_pace``).
        """
        try:
            async with asyncio.timeout(self.slow_timeout):
                while self.window.full:
                    await self.window.moved()
        except TimeoutError:
            return False
        return True
