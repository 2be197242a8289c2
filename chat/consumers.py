"""The chat socket: authenticate once, validate every frame, start / stop / watch answers.

The consumer never runs an answer itself: ``receive`` stores the turn, hands
the ``Generation`` to the process-wide registry and returns at once, so a
``stop`` is handled while the answer streams. Frames of the watched
conversation arrive through ``deliver`` into an outbox that this socket's own
sender task drains, in order, exactly once by ``index``, merging what piled up.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections import deque
from typing import Any

from asgiref.sync import sync_to_async
from channels.generic.websocket import AsyncWebsocketConsumer

from chat import auth, demo, lifespan, store
from chat.auth import owner_of
from chat.conf import conf
from chat.exceptions import ClientError, ConversationBusy, SessionEnded
from chat.fanout import Frame, hub
from chat.generation import Generation, registry, stop_anywhere
from chat.limits import FrameBucket, SendWindow, histories
from chat.models import Message, Owner
from chat.protocol import (
    ClientFrame,
    Edit,
    Pong,
    Regenerate,
    Send,
    Stop,
    Switch,
    Watch,
    coalesce,
    conversation_of,
    conversation_payload,
    dumps,
    error_frame,
    frame_texts,
    message_payload,
    parse_client_frame,
)
from chat.rendering import finished_html, render_prefix
from chat.sweep import interrupt_orphan
from chat.upstream import UpstreamConfig

logger = logging.getLogger(__name__)

CLOSE_NOT_AUTHENTICATED = 4401
CLOSE_NOT_READING = 4408
CLOSE_TOO_MANY_FRAMES = 4429
CLOSE_SERVER_ERROR = 1011


class SlowReader(Exception):
    """Raised when the page read nothing for ``CHAT_SLOW_CLIENT_TIMEOUT`` with a full window."""


class ChatConsumer(AsyncWebsocketConsumer):  # type: ignore[misc]  # channels is untyped
    # Frames reach sockets through chat.fanout, not through a channel per socket.
    channel_layer_alias = None
    owner: Owner | None = None
    watching: uuid.UUID | None = None
    #: The conversation this socket may show: set once its owner was checked.
    #: Frames of any other conversation are dropped, whatever their kind.
    shown: uuid.UUID | None = None
    session_key: str | None = None

    async def connect(self) -> None:
        lifespan.started()
        self.owner = owner_of(self.scope)
        # Code points of each answer this socket already has: its text, its
        # reasoning and its HTML, under the keys ``_keys`` gives.
        self.positions: dict[str, int] = {}
        self.finished: set[str] = set()
        self.outbox: deque[Frame] = deque()
        self.wake = asyncio.Event()
        self.holding = False  # while a history is prepared, frames wait in the outbox
        self.ending = False  # the session logged out: close once the sender wakes
        self.flooded = False
        self.bucket = FrameBucket(conf.CHAT_FRAMES_PER_SECOND)
        self.window = SendWindow(conf.CHAT_SEND_WINDOW)
        await self.accept()
        if self.owner is None:
            # Accept first so the page can show why, then close with an app code.
            await self.send_frame(error_frame("not_authenticated", "Log in to chat."))
            await self.close(code=CLOSE_NOT_AUTHENTICATED)
            return
        session = self.scope.get("session")
        self.session_key = session.session_key if session is not None else None
        if self.session_key:
            auth.track(self.session_key, self.end_session)
        self.sender = asyncio.create_task(self.send_loop(), name="chat-socket-sender")

    async def disconnect(self, code: int) -> None:
        if self.session_key:
            auth.untrack(self.session_key, self.end_session)
        if self.watching is not None:
            if (running := registry.running_in(self.watching)) is not None:
                running.answer.note("client_disconnected", code=code)
            await self.unwatch(on_disconnect=True)
        sender = getattr(self, "sender", None)
        if sender is not None:
            sender.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sender

    async def send_frame(self, frame: Any) -> None:
        """Send a frame, in ``part`` frames if it is over ``CHAT_MAX_FRAME_BYTES``.

        Between the parts of a large frame (a long history) the send window is
        honoured as between frames: a page that reads nothing is not sent the rest.
        """
        texts = frame_texts(frame, limit=conf.CHAT_MAX_FRAME_BYTES)
        if len(texts) == 1:
            self.window.sent += len(texts[0])
            await self.send(text_data=texts[0])
            return
        for text in texts:
            self.window.sent += len(text)
            await self.send(text_data=text)
            await self.ping_if_due()
            if self.window.full and not await self.wait_for_reader():
                raise SlowReader

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        if self.owner is None or self.flooded:
            return
        frame: ClientFrame | ClientError
        try:
            if text_data is None:
                raise ClientError("invalid_frame", "Frames must be JSON text, not binary.")
            frame = parse_client_frame(text_data, max_chars=conf.CHAT_MAX_MESSAGE_CHARS)
        except ClientError as error:
            frame = error
        if isinstance(frame, Pong) and self.window.confirm(frame.nonce):
            return  # the echo of our own ping (one per ping): not a request, not budgeted
        if not self.bucket.take():
            if self.bucket.abusive and not self.flooded:
                self.flooded = True  # what it sends until it is gone is ignored
                logger.info("Closing a socket that keeps sending too many frames")
                await self.close(code=CLOSE_TOO_MANY_FRAMES)
            elif self.bucket.refused == 1:  # once a burst: refusals cost nothing more
                detail = f"Too many frames: at most {conf.CHAT_FRAMES_PER_SECOND:g} a second."
                await self.send_frame(error_frame("slow_down", detail))
            return
        try:
            if isinstance(frame, ClientError):
                raise frame
            if not await auth.still_logged_in(self.scope, self.owner):
                raise SessionEnded("Your session ended (logged out): log in again to chat.")
            await self.handle(frame)
        except ClientError as error:
            await self.send_frame(error_frame(error.code, error.detail))
        except SessionEnded as error:
            await self.send_frame(error_frame(error.code, error.detail))
            await self.close(code=CLOSE_NOT_AUTHENTICATED)

    def end_session(self) -> None:
        """The session logged out (``chat.auth``): the sender tells the page, then closes."""
        self.ending = True
        self.wake.set()

    async def handle(self, frame: ClientFrame) -> None:
        assert self.owner is not None
        if isinstance(frame, Watch | Switch):
            if self.window.full:
                # A history costs a whole conversation; this socket has not read the last one.
                raise ClientError("slow_down", "The page has not read what it was sent yet.")
            if not histories.take(self.owner.key, conf.CHAT_HISTORIES_PER_MINUTE):
                raise ClientError(
                    "slow_down", "Too many conversations opened at once; try again in a moment."
                )
        if isinstance(frame, Send | Edit | Regenerate):
            await self.start_turn(frame)
        elif isinstance(frame, Switch):
            conversation = await store.switch_branch(self.owner, frame.message)
            await self.show_conversation(conversation)
        elif isinstance(frame, Stop):
            await self.stop_answer(frame)
        elif isinstance(frame, Watch):
            await self.show_conversation(frame.conversation)
        elif isinstance(frame, Pong):  # the nonce was no ping of ours (receive took the rest)
            raise ClientError("invalid_frame", "No ping with that nonce is waiting.")

    # Client frames ---------------------------------------------------------

    async def start_turn(self, frame: Send | Edit | Regenerate) -> None:
        """Store the turn the frame asks for and start its answer."""
        assert self.owner is not None
        config = self.upstream_config()
        options = {"model": config.model, "system_prompt": conf.CHAT_SYSTEM_PROMPT}
        try:
            turn = await self.store_turn(frame, options)
        except ConversationBusy as busy:
            # The answer in the way may have lost its process (killed): if no
            # process runs it, it is marked interrupted now and the turn goes ahead.
            if not await self.interrupt_if_orphaned(busy.message_id):
                raise
            turn = await self.store_turn(frame, options)
        conversation_id = turn.conversation.id
        await self.watch(conversation_id)
        self.shown = conversation_id  # the store checked the owner
        if turn.created:
            self.deliver(
                {"type": "conversation", "conversation": conversation_payload(turn.conversation)}
            )
        generation = Generation(
            message_id=turn.assistant_message.id,
            conversation_id=conversation_id,
            owner_key=self.owner.key,
            history=turn.history,
            config=config,
            budget=turn.budget,
            title_after=turn.created,
        )
        # Known before its first frame, so that another process's interest in it,
        # which that frame may prompt, finds it.
        registry.register(generation)
        try:
            # Published, so that every tab on this conversation sees the new turn.
            for message in (turn.user_message, turn.assistant_message):
                if message is not None:
                    payload = message_payload(message, versions=turn.versions[message.id])
                    await generation.publish({"type": "message", "message": payload})
        except BaseException:
            registry.unregister(generation)
            raise
        registry.start(generation)

    async def store_turn(self, frame: Send | Edit | Regenerate, options: dict[str, Any]) -> Any:
        assert self.owner is not None
        if isinstance(frame, Send):
            return await store.start_turn(
                self.owner, frame.conversation, frame.content, parent_id=frame.parent, **options
            )
        if isinstance(frame, Edit):
            return await store.edit_turn(self.owner, frame.message, frame.content, **options)
        return await store.regenerate_turn(self.owner, frame.message, **options)

    async def interrupt_if_orphaned(self, message_id: uuid.UUID) -> bool:
        """Mark a ``streaming`` answer that no process runs ``interrupted``; True if it was."""
        message = await store.load_message_anyones(message_id)
        if message is None or message.status != Message.Statuses.STREAMING:
            return message is not None  # it ended meanwhile: the turn can go ahead
        if registry.get(message_id) is not None:
            return False
        if await hub.ask(message.conversation_id, {"action": "alive", "message": str(message_id)}):
            return False
        return await interrupt_orphan(message_id)

    def upstream_config(self) -> UpstreamConfig:
        if not conf.demo_mode:
            return UpstreamConfig.from_settings()
        base_url = demo.base_url_for(self.scope)
        if base_url is None:
            raise ClientError(
                "not_configured",
                "No model is configured: set OPENAI_API_KEY or OPENAI_BASE_URL on the server.",
            )
        return UpstreamConfig.from_settings(base_url=base_url)

    async def stop_answer(self, frame: Stop) -> None:
        assert self.owner is not None
        generation = registry.get(frame.message)
        if generation is not None and generation.owner_key == self.owner.key:
            generation.stop("user")
            return
        message = await store.load_message(self.owner, frame.message)
        if message is None:
            raise ClientError("not_found", "No such message.")
        # Running in another process: the one that runs it answers.
        streaming = message.status == Message.Statuses.STREAMING
        if streaming and await stop_anywhere(message.id, message.conversation_id, "user"):
            return
        # No process runs it (its process died): it ends now, not at the next sweep.
        if streaming and await interrupt_orphan(message.id):
            return
        raise ClientError("not_running", "That answer is not being written any more.")

    async def show_conversation(self, conversation_id: uuid.UUID) -> None:
        """Send the history, then the live frames of its running answer, if any."""
        assert self.owner is not None
        # Watch before reading, and hold the frames that arrive meanwhile: once
        # the history is ready they are sent after it, trimmed by ``index`` to
        # what the history does not already contain.
        self.holding = True
        try:
            await self.watch(conversation_id)
            try:
                transcript = await store.load_conversation(self.owner, conversation_id)
            except ClientError:
                await self.unwatch(on_disconnect=False)
                raise
            self.shown = conversation_id
            if (running := registry.running_in(conversation_id)) is not None:
                running.answer.note("client_watching")
            messages = transcript.path
            for message in messages:
                if message.status == Message.Statuses.STREAMING:
                    message.content, message.reasoning = await self.text_so_far(message)
            rendered = await _render_all(messages)
            self.positions.clear()
            self.finished.clear()
            payloads: list[dict[str, Any]] = []
            for message, (html, end) in zip(messages, rendered, strict=True):
                mid = str(message.id)
                if message.status == Message.Statuses.STREAMING:
                    for key, length in zip(
                        _keys(mid), (len(message.content), len(message.reasoning), end), strict=True
                    ):
                        self.positions[key] = length
                else:
                    self.finished.add(mid)
                payloads.append(
                    message_payload(
                        message, html=html, rendered=end, versions=transcript.versions[message.id]
                    )
                )
            history = {
                "type": "history",
                "conversation": conversation_payload(transcript.conversation),
                "messages": payloads,
            }
            # Before every frame held meanwhile; a history not sent yet is stale now.
            stale = [frame for frame in self.outbox if frame["type"] == "history"]
            for frame in stale:
                self.outbox.remove(frame)
            self.outbox.appendleft(history)
        finally:
            self.holding = False
            self.wake.set()

    async def text_so_far(self, message: Message) -> tuple[str, str]:
        """A running answer's exact text now: from its process, else the last checkpoint."""
        running = registry.get(message.id)
        if running is not None:
            return running.text, running.reasoning
        if message.status != Message.Statuses.STREAMING:
            return message.content, message.reasoning
        request = {"action": "snapshot", "message": str(message.id)}
        reply = await hub.ask(message.conversation_id, request)
        if reply is not None:
            return str(reply["text"]), str(reply["reasoning"])
        return message.content, message.reasoning

    # Watching ---------------------------------------------------------------

    async def watch(self, conversation_id: uuid.UUID) -> None:
        if self.watching == conversation_id:
            return
        if self.watching is not None:
            await self.unwatch(on_disconnect=False)
        self.watching = conversation_id
        self.shown = None  # until its owner is checked
        self.positions.clear()
        self.finished.clear()
        await hub.subscribe(conversation_id, self)

    async def unwatch(self, *, on_disconnect: bool) -> None:
        conversation_id, self.watching, self.shown = self.watching, None, None
        if conversation_id is None:
            return
        if await hub.unsubscribe(conversation_id, self) == 0 and on_disconnect:
            registry.abandoned(conversation_id)

    def deliver(self, frame: Frame) -> None:
        """Queue a frame for this socket (called by the fan-out; never blocks)."""
        self.outbox.append(frame)
        self.wake.set()

    async def send_loop(self) -> None:
        """Drain the outbox; if sending fails, close the socket rather than leave it half-alive."""
        try:
            await self.drain()
        except SlowReader:
            logger.info("Closing a socket that read nothing for a full send window")
            await self.close(code=CLOSE_NOT_READING)
        except Exception:
            logger.exception("Sending to a chat socket failed; closing it")
            await self.close(code=CLOSE_SERVER_ERROR)

    async def drain(self) -> None:
        """Send the outbox in order; what piled up meanwhile goes out as fewer frames."""
        while True:
            await self.wake.wait()
            self.wake.clear()
            if self.ending:
                await self.send_frame(error_frame("not_authenticated", "You logged out."))
                await self.close(code=CLOSE_NOT_AUTHENTICATED)
                return
            while self.outbox and not self.holding:
                frames = list(self.outbox)
                self.outbox.clear()
                for frame in coalesce(frames):
                    await self.forward(frame)
                await self.ping_if_due()
                if self.window.full and not await self.wait_for_reader():
                    raise SlowReader

    async def ping_if_due(self) -> None:
        nonce = self.window.ping()
        if nonce is not None:
            # Not counted in the window: a ping is tiny, and counting it would make it due again.
            await self.send(text_data=dumps({"type": "ping", "nonce": nonce}))

    async def wait_for_reader(self) -> bool:
        """Hold further frames until the page proves it read; False if it does not in time.

        The ping that covers everything sent went out just before (``ping_if_due``).
        """
        try:
            async with asyncio.timeout(conf.CHAT_SLOW_CLIENT_TIMEOUT):
                while self.window.full:
                    self.window.moved.clear()
                    await self.window.moved.wait()
        except TimeoutError:
            return False
        return True

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
                for key in _keys(message["id"]):
                    self.positions.setdefault(key, 0)
        elif kind == "done":
            mid = frame["message"]
            if mid in self.finished:
                return
            if mid in self.positions and self.positions[mid] < frame["length"]:
                await self.resync(mid, self.positions[mid])
            self.finished.add(mid)
            for key in _keys(mid):
                self.positions.pop(key, None)
        await self.send_frame(frame)

    async def resync(self, message_id: str, have: int) -> int:
        """Send what this socket missed of an answer; return its new position."""
        running = registry.get(uuid.UUID(message_id))
        if running is not None:
            text = running.text
        else:
            assert self.owner is not None
            stored = await store.load_message(self.owner, uuid.UUID(message_id))
            text = (await self.text_so_far(stored))[0] if stored is not None else ""
        if len(text) > have:
            await self.send_frame(
                {"type": "delta", "message": message_id, "index": have, "text": text[have:]}
            )
            have = len(text)
        else:
            logger.info("Cannot fill a gap in message %s at %d yet", message_id, have)
        self.positions[message_id] = have
        return have


def _keys(message_id: str) -> tuple[str, str, str]:
    """The ``positions`` keys of an answer's text, reasoning and HTML."""
    return message_id, message_id + ":r", message_id + ":h"


async def _render_all(messages: list[Message]) -> list[tuple[str, int]]:
    """Each answer's HTML and the text length it covers: all of a finished answer,
    the complete blocks of a running one (the page shows the rest as text)."""

    def render(message: Message) -> tuple[str, int]:
        if message.role != Message.Roles.ASSISTANT:
            return "", 0
        if message.status == Message.Statuses.STREAMING:
            return render_prefix(message.content)
        return finished_html.render(message.id, message.content), len(message.content)

    return await sync_to_async(lambda: [render(m) for m in messages], thread_sensitive=False)()
