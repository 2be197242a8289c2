"""Fan-out of an answer's frames to the sockets watching its conversation, in any process.

Within a process, publishing appends the frame to each watcher's queue: a
function call, no copy, no task per frame, and a slow socket never holds up
the answer or the other watchers (each drains its own queue).

Across processes (a channel layer other than the in-memory one), each process
joins a conversation's group once for all its watchers, and a frame is
published to the group once. Deltas go there only after another process said
it watches (``chat.interest``). Publishing only queues: sender tasks send each
conversation's frames in order and merged, so an answer never waits for Redis.
A watcher that joined late fills the gap in ``index`` from the answer's process.
The same route carries ``chat.control`` messages (stop, snapshot, alive).
Why it is built this way, with the measurements: bench/RESULTS.md.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Protocol

from channels.layers import InMemoryChannelLayer, get_channel_layer

from chat import control
from chat.protocol import coalesce

logger = logging.getLogger(__name__)

Frame = Mapping[str, Any]
#: Conversations whose frames are sent to the channel layer at once (each in order).
PUBLISHERS = 8
#: Waits before each new try of a send that failed; then the batch is dropped.
RETRY_DELAYS = (0.1, 0.5, 2.0)
ControlHandler = Callable[[control.Request], Awaitable[control.Reply | None]]


class Watcher(Protocol):
    def deliver(self, frame: Frame) -> None:
        """Take one frame; must not block (queue it and return)."""


def group_name(conversation_id: uuid.UUID) -> str:
    return f"chat.conversation.{conversation_id}"


class Remote:
    """This process's link to the others through the channel layer."""

    def __init__(self, hub: Hub, layer: Any) -> None:
        self.hub = hub
        self.layer = layer
        self.origin = uuid.uuid4().hex
        self.channel = ""
        self.replies: dict[str, asyncio.Future[control.Reply | None]] = {}
        self.task: asyncio.Task[None] | None = None
        # Frames waiting to go out, by conversation, and the conversations whose
        # frames are being sent now: one send at a time per conversation keeps
        # them in order, and what piles up meanwhile goes out merged.
        self.pending: dict[uuid.UUID, list[Frame]] = {}
        self.sending: set[uuid.UUID] = set()
        self.ready: deque[uuid.UUID] = deque()
        self.wake = asyncio.Event()
        self.progress = asyncio.Event()  # a conversation's send finished
        self.publishers: list[asyncio.Task[None]] = []

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
            logger.warning("Gave up sending %d conversation(s)' frames", len(self.pending))
        tasks = [t for t in (self.task, *self.publishers) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def publish(self, conversation_id: uuid.UUID, frame: Frame) -> None:
        """Queue a frame for the other processes; never waits for the channel layer."""
        frames = self.pending.get(conversation_id)
        if frames is not None:
            frames.append(frame)
            return
        self.pending[conversation_id] = [frame]
        if conversation_id not in self.sending:
            self.ready.append(conversation_id)
            self.wake.set()

    async def flushed(self, conversation_id: uuid.UUID | None = None) -> None:
        """Wait until every frame queued for this conversation (or for any) was sent."""
        while self.busy(conversation_id):
            self.progress.clear()
            await self.progress.wait()

    def busy(self, conversation_id: uuid.UUID | None) -> bool:
        if conversation_id is None:
            return bool(self.pending or self.sending)
        return conversation_id in self.pending or conversation_id in self.sending

    async def publish_loop(self) -> None:
        while True:
            if not self.ready:
                self.wake.clear()
                await self.wake.wait()
                continue
            conversation_id = self.ready.popleft()
            frames = coalesce(self.pending.pop(conversation_id))
            self.sending.add(conversation_id)
            try:
                await self.send_in_order(conversation_id, frames)
            finally:
                self.sending.discard(conversation_id)
                self.progress.set()
                if conversation_id in self.pending:
                    self.ready.append(conversation_id)
                    self.wake.set()

    async def send_in_order(self, conversation_id: uuid.UUID, frames: list[Frame]) -> None:
        """Send frames one after the other; a failed send is retried (Redis restarting).

        Past the retries the rest of the batch is dropped and logged: watchers
        elsewhere see a gap in ``index`` and fill it from this process.
        """
        sent = 0
        for delay in (*RETRY_DELAYS, None):
            try:
                for frame in frames[sent:]:
                    await self.send(conversation_id, "chat.frame", frame=dict(frame))
                    sent += 1
                return
            except Exception:
                if delay is None:
                    logger.exception("Dropped %d frame(s) for other processes", len(frames) - sent)
                    return
                logger.warning("Could not publish to other processes; retrying in %gs", delay)
                await asyncio.sleep(delay)

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
            return  # our own publication, already delivered locally
        conversation_id = uuid.UUID(message["conversation"])
        if kind == "chat.frame":
            frame = message["frame"]
            self.hub.deliver(conversation_id, frame)
            if frame["type"] == "message" and frame["message"]["status"] == "streaming":
                # An answer started elsewhere: ask for its deltas, we have watchers.
                await self.send(conversation_id, "chat.interest")
        elif kind == "chat.interest" and self.hub.control_handler is not None:
            await self.hub.control_handler(control.interest(conversation_id))
        elif kind == "chat.control" and self.hub.control_handler is not None:
            body = await self.hub.control_handler(message["body"])
            if body is not None and message.get("reply_to"):
                await self.layer.send(
                    message["reply_to"],
                    {"type": "chat.reply", "request": message["request"], "body": body},
                )

    async def send(self, conversation_id: uuid.UUID, kind: str, **fields: Any) -> None:
        await self.layer.group_send(
            group_name(conversation_id),
            {"type": kind, "origin": self.origin, "conversation": str(conversation_id), **fields},
        )

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


class Hub:
    """Who watches which conversation in this process, and delivery to them."""

    def __init__(self) -> None:
        self._watchers: dict[uuid.UUID, set[Watcher]] = {}
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
                layer = get_channel_layer()
                if layer is not None and not isinstance(layer, InMemoryChannelLayer):
                    remote = Remote(self, layer)
                    await remote.start()
                    self._remote = remote
                self._started = True
        return self._remote

    async def subscribe(self, conversation_id: uuid.UUID, watcher: Watcher) -> None:
        watchers = self._watchers.setdefault(conversation_id, set())
        first = not watchers
        watchers.add(watcher)
        if first and (remote := await self.remote()) is not None:
            await remote.layer.group_add(group_name(conversation_id), remote.channel)
            await remote.send(conversation_id, "chat.interest")

    async def unsubscribe(self, conversation_id: uuid.UUID, watcher: Watcher) -> int:
        """Forget a watcher; return how many still watch the conversation in this process."""
        watchers = self._watchers.get(conversation_id)
        if watchers is None:
            return 0
        watchers.discard(watcher)
        if watchers:
            return len(watchers)
        del self._watchers[conversation_id]
        if (remote := self._remote) is not None:
            await remote.layer.group_discard(group_name(conversation_id), remote.channel)
        return 0

    def deliver(self, conversation_id: uuid.UUID, frame: Frame) -> None:
        """Hand a frame to this process's watchers of the conversation."""
        for watcher in self._watchers.get(conversation_id, ()):
            watcher.deliver(frame)

    async def publish(
        self, conversation_id: uuid.UUID, frame: Frame, *, remote: bool = True
    ) -> None:
        """Deliver a frame to the conversation's watchers here, and unless ``remote`` is
        False queue it for those of other processes (an answer never waits for Redis)."""
        self.deliver(conversation_id, frame)
        if not remote:
            return
        link = self._remote if self._started else await self.remote()
        if link is not None:
            link.publish(conversation_id, frame)
            if frame["type"] == "message":
                # A new answer's first frames are out before it starts: another
                # process watching learns of it, and asks for its deltas, in time.
                await link.flushed(conversation_id)

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
