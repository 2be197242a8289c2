"""Fan-out of an answer's frames to the sockets watching its conversation, in any process.

Within a process, publishing appends the frame to each watcher's queue: a
function call, no copy, no task per frame, and a slow socket never holds up
the answer or the other watchers (each drains its own queue).

Across processes (a channel layer other than the in-memory one), a process is
a member of a conversation's group while it has watchers of it or runs an
answer in it. The group carries what every member needs: a new turn's
messages, a title, the end of an answer whose process died, the requests of
``chat.control``, and each process's "I have watchers here" (interest). An
answer's own frames go only to the processes that said so, straight to their
channels, never back to the process that runs it. Publishing only queues:
sender tasks send what piled up for one process as one message, in order, so
an answer never waits for Redis and Redis carries a message per send, not per
token. A watcher that joined late fills the gap in ``index`` from the answer's
process; one whose answer's end was lost gets it from the store
(``chat.sweep.recover_missed_ends``). Measurements: bench/RESULTS.md.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, NamedTuple, Protocol

from channels.exceptions import ChannelFull
from channels.layers import InMemoryChannelLayer, get_channel_layer

from chat import control
from chat.protocol import coalesce

logger = logging.getLogger(__name__)

Frame = Mapping[str, Any]
#: Destinations whose frames are sent to the channel layer at once (each in order).
PUBLISHERS = 8
#: Waits before each new try of a send that failed; then the batch is dropped.
RETRY_DELAYS = (0.1, 0.5, 2.0)
#: Seconds between two messages to one process: what comes meanwhile goes out as one.
#: At 100 streams of 30 tokens/s that is ~15 frames a message instead of ~1, for at most
#: this much added latency on the other process only (bench/RESULTS.md).
LINGER = 0.005
ControlHandler = Callable[[control.Request], Awaitable[control.Reply | None]]


class Watcher(Protocol):
    def deliver(self, frame: Frame) -> None:
        """Take one frame; must not block (queue it and return)."""


def group_name(conversation_id: uuid.UUID) -> str:
    return f"chat.conversation.{conversation_id}"


class Target(NamedTuple):
    """Where a batch goes: a conversation's group, or one process's channel."""

    name: str
    group: bool


class Expected(NamedTuple):
    """An answer running in another process that watchers here show."""

    message_id: str
    heard_at: float  # time.monotonic() of its last frame here, or of the last check


class Remote:
    """This process's link to the others through the channel layer."""

    def __init__(self, hub: Hub, layer: Any) -> None:
        self.hub = hub
        self.layer = layer
        self.origin = uuid.uuid4().hex
        self.channel = ""
        self.replies: dict[str, asyncio.Future[control.Reply | None]] = {}
        self.task: asyncio.Task[None] | None = None
        #: By conversation, the channels of the other processes that have watchers of it.
        self.interested: dict[uuid.UUID, set[str]] = {}
        # What waits to go out, by destination, as (conversation, frame), and the
        # destinations being sent to now: one send at a time per destination keeps
        # its frames in order, and what piles up meanwhile goes out as one message.
        self.pending: dict[Target, list[tuple[str, Frame]]] = {}
        self.sending: set[Target] = set()
        self.ready: deque[Target] = deque()
        self.wake = asyncio.Event()
        self.progress = asyncio.Event()  # a destination's send finished
        self.publishers: list[asyncio.Task[None]] = []
        self.sent_at: dict[Target, float] = {}  # loop time of the last message to a process

    async def start(self) -> None:
        self.channel = await self.layer.new_channel("chat.process.")
        self.task = asyncio.create_task(self.receive_loop(), name="chat-fanout-receive")
        self.publishers = [
            asyncio.create_task(self.publish_loop(), name="chat-fanout-publish")
            for _ in range(PUBLISHERS)
        ]

    async def stop(self, *, flush_timeout: float = 5.0) -> None:
        """Send what is still queued (the ends of interrupted answers), then stop."""
        try:
            async with asyncio.timeout(flush_timeout):
                await self.flushed()
        except TimeoutError:
            logger.warning("Gave up sending to %d destination(s)", len(self.pending))
        tasks = [t for t in (self.task, *self.publishers) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    # Sending ------------------------------------------------------------------

    def forward(self, conversation_id: uuid.UUID, frame: Frame) -> None:
        """Queue an answer's frame for the processes with watchers of its conversation."""
        channels = self.interested.get(conversation_id)
        if channels:
            conversation = str(conversation_id)
            for channel in channels:
                self.queue(Target(channel, group=False), conversation, frame)

    def announce(self, conversation_id: uuid.UUID, frame: Frame) -> Target:
        """Queue a frame for every process in the conversation's group; return where it goes."""
        target = Target(group_name(conversation_id), group=True)
        self.queue(target, str(conversation_id), frame)
        return target

    def queue(self, target: Target, conversation: str, frame: Frame) -> None:
        items = self.pending.get(target)
        if items is not None:
            items.append((conversation, frame))
            return
        self.pending[target] = [(conversation, frame)]
        if target not in self.sending:
            self.ready.append(target)
            self.wake.set()

    async def flushed(self, target: Target | None = None) -> None:
        """Wait until every frame queued for ``target`` (or for any) was sent."""
        while self.busy(target):
            self.progress.clear()
            await self.progress.wait()

    def busy(self, target: Target | None) -> bool:
        if target is None:
            return bool(self.pending or self.sending)
        return target in self.pending or target in self.sending

    async def publish_loop(self) -> None:
        while True:
            if not self.ready:
                self.wake.clear()
                await self.wake.wait()
                continue
            target = self.ready.popleft()
            self.sending.add(target)
            try:
                if not target.group:
                    loop = asyncio.get_running_loop()
                    wait = self.sent_at.get(target, 0.0) + LINGER - loop.time()
                    if wait > 0:
                        await asyncio.sleep(wait)  # frames for it keep piling up meanwhile
                    self.sent_at[target] = loop.time()
                items = self.pending.pop(target)
                await self.send_batch(target, batch(items))
            finally:
                self.sending.discard(target)
                self.progress.set()
                if target in self.pending:
                    self.ready.append(target)
                    self.wake.set()

    async def send_batch(self, target: Target, frames: list[list[Any]]) -> None:
        """Send one message of frames; a failed send is retried (Redis restarting).

        Past the retries the batch is dropped and logged: watchers elsewhere see
        a gap in ``index`` and fill it from this process, or miss an answer's end
        and read it from the store. A process whose channel is full is gone (or
        hopelessly behind): it is sent nothing more until it says it watches again.
        """
        message = {"type": "chat.frames", "origin": self.origin, "frames": frames}
        for delay in (*RETRY_DELAYS, None):
            try:
                if target.group:
                    await self.layer.group_send(target.name, message)
                else:
                    await self.layer.send(target.name, message)
                return
            except ChannelFull:
                logger.warning("Process channel %s is full; no more frames to it", target.name)
                for channels in self.interested.values():
                    channels.discard(target.name)
                return
            except Exception:
                if delay is None:
                    logger.exception("Dropped %d frame(s) for other processes", len(frames))
                    return
                logger.warning("Could not publish to other processes; retrying in %gs", delay)
                await asyncio.sleep(delay)

    async def send(self, conversation_id: uuid.UUID, kind: str, **fields: Any) -> None:
        """Send one message to the conversation's group at once."""
        await self.layer.group_send(
            group_name(conversation_id),
            {"type": kind, "origin": self.origin, "conversation": str(conversation_id), **fields},
        )

    async def tell_interest(self, conversation_id: uuid.UUID, *, watching: bool) -> None:
        """Tell the group this process has watchers of the conversation (or no longer)."""
        kind = "chat.interest" if watching else "chat.uninterest"
        await self.send(conversation_id, kind, channel=self.channel)

    # Receiving ----------------------------------------------------------------

    async def receive_loop(self) -> None:
        while True:
            message = await self.layer.receive(self.channel)
            try:
                await self.dispatch(message)
            except Exception:
                logger.exception("Could not handle a message from another process: %r", message)

    async def dispatch(self, message: dict[str, Any]) -> None:
        kind = message.get("type")
        if kind == "chat.reply":
            future = self.replies.pop(message["request"], None)
            if future is not None and not future.done():
                future.set_result(message.get("body"))
            return
        if message.get("origin") == self.origin:
            return  # our own announcement, already delivered locally
        if kind == "chat.frames":
            await self.receive_frames(message["frames"], message["origin"])
            return
        conversation_id = uuid.UUID(message["conversation"])
        if kind == "chat.interest":
            self.interested.setdefault(conversation_id, set()).add(message["channel"])
        elif kind == "chat.uninterest":
            self.interested.get(conversation_id, set()).discard(message["channel"])
        elif kind == "chat.control" and self.hub.control_handler is not None:
            body = await self.hub.control_handler(message["body"])
            if body is not None and message.get("reply_to"):
                await self.layer.send(
                    message["reply_to"],
                    {"type": "chat.reply", "request": message["request"], "body": body},
                )

    async def receive_frames(self, frames: list[list[Any]], origin: str) -> None:
        hub = self.hub
        for conversation, conversation_frames in frames:
            conversation_id = uuid.UUID(conversation)
            for frame in conversation_frames:
                hub.deliver(conversation_id, frame)
                hub.heard(conversation_id, frame)
                if (
                    frame["type"] == "message"
                    and frame["message"]["status"] == "streaming"
                    and hub.watched(conversation_id)
                ):
                    # An answer started in a process that may not know we watch: say so.
                    await self.tell_interest(conversation_id, watching=True)

    async def ask(
        self, conversation_id: uuid.UUID, body: control.Request, timeout: float
    ) -> control.Reply | None:
        """Send a control message; return the first process's reply, or None in time."""
        request = uuid.uuid4().hex
        future: asyncio.Future[control.Reply | None]
        future = self.replies[request] = asyncio.get_running_loop().create_future()
        try:
            await self.send(
                conversation_id, "chat.control", body=dict(body), request=request,
                reply_to=self.channel,
            )  # fmt: skip
            async with asyncio.timeout(timeout):
                return await future
        except TimeoutError:
            return None
        finally:
            self.replies.pop(request, None)


def batch(items: list[tuple[str, Frame]]) -> list[list[Any]]:
    """``[[conversation, [frames...]], ...]``: each conversation's frames in order, merged."""
    by_conversation: dict[str, list[Frame]] = {}
    for conversation, frame in items:
        by_conversation.setdefault(conversation, []).append(frame)
    return [
        [conversation, [dict(frame) for frame in coalesce(frames)]]
        for conversation, frames in by_conversation.items()
    ]


class Hub:
    """Who watches which conversation in this process, and delivery to them."""

    def __init__(self, layer: Any = None) -> None:
        self._layer = layer
        self._watchers: dict[uuid.UUID, set[Watcher]] = {}
        #: Conversations with answers running here, and how many.
        self._running: dict[uuid.UUID, int] = {}
        self._expected: dict[uuid.UUID, Expected] = {}
        self._remote: Remote | None = None
        self._started = False
        self._starting: asyncio.Lock | None = None
        #: Answers control messages from other processes (the registry, set at startup:
        #: ``ChatConfig.ready``).
        self.control_handler: ControlHandler | None = None

    async def remote(self) -> Remote | None:
        """The cross-process link, set up on first use; None with the in-memory layer."""
        if self._started:
            return self._remote
        if self._starting is None:
            self._starting = asyncio.Lock()
        async with self._starting:
            if not self._started:
                layer = self._layer if self._layer is not None else get_channel_layer()
                if layer is not None and not isinstance(layer, InMemoryChannelLayer):
                    remote = Remote(self, layer)
                    await remote.start()
                    self._remote = remote
                self._started = True
        return self._remote

    # Membership ---------------------------------------------------------------

    def member(self, conversation_id: uuid.UUID) -> bool:
        return conversation_id in self._watchers or conversation_id in self._running

    def watched(self, conversation_id: uuid.UUID) -> bool:
        return conversation_id in self._watchers

    async def _join(self, conversation_id: uuid.UUID, remote: Remote) -> None:
        try:
            await remote.layer.group_add(group_name(conversation_id), remote.channel)
        except Exception:
            # Watchers and answers here still work; other processes cannot reach
            # them until the next join (Redis restarting).
            logger.warning("Could not join conversation %s's group", conversation_id, exc_info=True)

    async def _leave_if_done(self, conversation_id: uuid.UUID) -> None:
        remote = self._remote
        if remote is None or self.member(conversation_id):
            return
        remote.interested.pop(conversation_id, None)
        try:
            await remote.layer.group_discard(group_name(conversation_id), remote.channel)
        except Exception:
            # Harmless: what the group sends here is dropped, and membership expires.
            logger.warning(
                "Could not leave conversation %s's group", conversation_id, exc_info=True
            )

    async def subscribe(self, conversation_id: uuid.UUID, watcher: Watcher) -> None:
        member = self.member(conversation_id)
        watchers = self._watchers.setdefault(conversation_id, set())
        first = not watchers
        watchers.add(watcher)
        if first and (remote := await self.remote()) is not None:
            if not member:
                await self._join(conversation_id, remote)
            await remote.tell_interest(conversation_id, watching=True)

    async def unsubscribe(self, conversation_id: uuid.UUID, watcher: Watcher) -> int:
        """Forget a watcher; return how many still watch the conversation in this process."""
        watchers = self._watchers.get(conversation_id)
        if watchers is None:
            return 0
        watchers.discard(watcher)
        if watchers:
            return len(watchers)
        del self._watchers[conversation_id]
        self._expected.pop(conversation_id, None)
        if (remote := self._remote) is not None:
            await remote.tell_interest(conversation_id, watching=False)
            await self._leave_if_done(conversation_id)
        return 0

    async def hold(self, conversation_id: uuid.UUID) -> None:
        """An answer starts here: other processes can reach it through the group (stop,
        snapshot, alive) even when no socket of this process watches it."""
        member = self.member(conversation_id)
        self._running[conversation_id] = self._running.get(conversation_id, 0) + 1
        if not member and (remote := await self.remote()) is not None:
            await self._join(conversation_id, remote)

    async def release(self, conversation_id: uuid.UUID) -> None:
        """An answer that ran here ended (its ``done`` is queued)."""
        count = self._running.get(conversation_id, 0) - 1
        if count > 0:
            self._running[conversation_id] = count
            return
        self._running.pop(conversation_id, None)
        await self._leave_if_done(conversation_id)

    # Frames -------------------------------------------------------------------

    def deliver(self, conversation_id: uuid.UUID, frame: Frame) -> None:
        """Hand a frame to this process's watchers of the conversation."""
        for watcher in self._watchers.get(conversation_id, ()):
            watcher.deliver(frame)

    async def publish(
        self, conversation_id: uuid.UUID, frame: Frame, *, remote: bool = True
    ) -> None:
        """Deliver a frame of an answer running here to the conversation's watchers here
        and (unless ``remote`` is False) queue it for the processes that watch it too."""
        self.deliver(conversation_id, frame)
        if remote and (link := self._remote if self._started else await self.remote()):
            link.forward(conversation_id, frame)

    async def announce(self, conversation_id: uuid.UUID, frame: Frame) -> None:
        """Deliver a frame to every watcher of the conversation in every process, and
        wait until it is out: a new turn's messages (another process watching learns
        of the answer, and says so, before its first delta), a title, the end of an
        answer whose process died."""
        self.deliver(conversation_id, frame)
        if (link := await self.remote()) is not None:
            await link.flushed(link.announce(conversation_id, frame))

    # Answers running elsewhere --------------------------------------------------

    def expect(self, conversation_id: uuid.UUID, message_id: uuid.UUID | str) -> None:
        """Watchers here show an answer another process runs: recover its end if lost."""
        if self._remote is not None and conversation_id in self._watchers:
            self._expected[conversation_id] = Expected(str(message_id), time.monotonic())

    def heard(self, conversation_id: uuid.UUID, frame: Frame) -> None:
        """A frame of the conversation came from another process."""
        kind = frame["type"]
        if kind == "done":
            expected = self._expected.get(conversation_id)
            if expected is not None and expected.message_id == frame["message"]:
                del self._expected[conversation_id]
        elif kind == "message":
            if frame["message"]["status"] == "streaming":
                self.expect(conversation_id, frame["message"]["id"])
        elif (expected := self._expected.get(conversation_id)) is not None:
            self._expected[conversation_id] = expected._replace(heard_at=time.monotonic())

    def silent_answers(self, longer_than: float) -> list[tuple[uuid.UUID, uuid.UUID]]:
        """(conversation, message) of answers running elsewhere not heard of for
        ``longer_than`` seconds; each is then not listed again for as long."""
        now = time.monotonic()
        silent = []
        for conversation_id, expected in list(self._expected.items()):
            if now - expected.heard_at >= longer_than:
                silent.append((conversation_id, uuid.UUID(expected.message_id)))
                self._expected[conversation_id] = expected._replace(heard_at=now)
        return silent

    def ended(self, conversation_id: uuid.UUID, frame: Frame) -> None:
        """Deliver the ``done`` of an answer read from the store (its own was lost)."""
        self.heard(conversation_id, frame)
        self.deliver(conversation_id, frame)

    async def ask(
        self, conversation_id: uuid.UUID, body: control.Request, *, timeout: float = 1.0
    ) -> control.Reply | None:
        """Ask the other processes (the one running an answer answers); None if none did."""
        remote = await self.remote()
        if remote is None:
            return None
        return await remote.ask(conversation_id, body, timeout)

    async def close(self) -> None:
        """Stop listening to other processes (on shutdown)."""
        if self._remote is not None:
            await self._remote.stop()
        self._remote = None
        self._started = False
        self._starting = None


hub = Hub()
