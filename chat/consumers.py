"""The chat socket: authenticate, validate every frame, and hand it to the right place.

The consumer never runs an answer itself: a turn is stored and its generation
started (``chat.turns``), owned by the process, and ``receive`` returns at
once, so a ``stop`` is handled while the answer streams. What the socket is
sent, in which order and how fast, is its ``Delivery``'s business
(``chat.delivery``); the consumer wires it to the websocket.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from channels.consumer import get_handler_name
from channels.exceptions import StopConsumer
from channels.generic.websocket import AsyncWebsocketConsumer
from channels.sessions import InstanceSessionWrapper

from chat import auth, demo, lifespan, metrics, sockets, store, turns
from chat.auth import owner_of
from chat.conf import conf
from chat.delivery import Delivery, SlowReader
from chat.exceptions import ClientError, NotAllowed, SessionEnded
from chat.fanout import hub
from chat.generation import registry
from chat.limits import FrameBucket, histories
from chat.models import Message, Owner
from chat.protocol import (
    ClientFrame,
    ConversationFrame,
    Edit,
    ErrorFrame,
    HistoryFrame,
    MessageInfo,
    Pong,
    Regenerate,
    Send,
    Stop,
    Switch,
    Watch,
    conversation_payload,
    error_frame,
    message_payload,
    parse_client_frame,
)
from chat.rendering import finished_html, off_loop, render_prefix
from chat.upstream import UpstreamConfig

logger = logging.getLogger(__name__)

CLOSE_NOT_AUTHENTICATED = 4401
CLOSE_FORBIDDEN = 4403
CLOSE_NOT_READING = 4408
CLOSE_TOO_MANY_FRAMES = 4429
CLOSE_SERVER_ERROR = 1011
#: The standard codes above 1000 (1011, 1012) are the server's to send: daphne
#: (autobahn) lets an application close only with 1000 or 3000-4999, and raises
#: otherwise. Each has a 4xxx stand-in, as 4401/4408/4429 mirror HTTP's codes.
STAND_INS = {CLOSE_SERVER_ERROR: 4500, sockets.RESTARTING: sockets.RESTARTING_APP}


class ChatConsumer(AsyncWebsocketConsumer):  # type: ignore[misc]  # channels is untyped
    # Frames reach sockets through chat.fanout, not through a channel per socket.
    channel_layer_alias = None
    owner: Owner | None = None
    watching: uuid.UUID | None = None
    session_key: str | None = None

    async def __call__(self, scope: dict[str, Any], receive: Any, send: AsgiSend) -> None:
        """Channels' consumer loop, for a socket with no channel of its own.

        Channels waits on its sources with ``asyncio.wait`` and a task per message
        (one kept pending per idle socket), built for a consumer that also reads a
        channel layer; this socket reads only the server. And Channels' ``dispatch``
        sends every message first to its database thread to close old connections:
        a page's echo of a ping then waited behind every turn's setup and save in
        that thread, and the socket's frames with it. Our database calls go through
        ``database_sync_to_async`` or ``chat.batches``, which do that check
        themselves, around each call. A subclass that gives the socket a channel of
        its own (``channel_layer_alias``) gets Channels' loop.
        """
        if self.channel_layer_alias is not None:
            await super().__call__(scope, receive, send)
            return
        self.scope = scope
        self.channel_layer = None
        self.base_send = send
        try:
            while True:
                message = await receive()
                handler = getattr(self, get_handler_name(message), None)
                if handler is None:
                    raise ValueError(f"No handler for message type {message['type']}")
                await handler(message)
        except StopConsumer:
            pass

    async def connect(self) -> None:
        lifespan.started()
        self.owner = owner_of(self.scope)
        self.delivery = Delivery(
            text_sender(self.base_send),
            text_of=self.current_text,
            window=conf.CHAT_SEND_WINDOW,
            slow_timeout=conf.CHAT_SLOW_CLIENT_TIMEOUT,
            frame_limit=conf.CHAT_MAX_FRAME_BYTES,
            ended=self.delivery_ended,
        )
        self.bucket = FrameBucket(conf.CHAT_FRAMES_PER_SECOND)
        self.flooded = False
        self.closing: tuple[int, ErrorFrame | None] | None = None  # once the sender stops
        # Asked before accepting: from the accept on, nothing awaits until the session is
        # tracked, so a logout the moment the socket opens still closes it.
        allowed = self.owner is not None and await auth.may_chat(self.scope.get("user"))
        await self.accept()
        metrics.SOCKETS.inc()
        self.counted = True
        if lifespan.draining():
            # This process is stopping: the page reconnects, to one that stays.
            await self.close_with(sockets.RESTARTING)
            return
        if self.owner is None:
            # Accept first so the page can show why, then close with an app code.
            await self.delivery.send_frame(error_frame("not_authenticated", "Log in to chat."))
            await self.close(code=CLOSE_NOT_AUTHENTICATED)
            return
        if not allowed:
            error = NotAllowed()
            await self.delivery.send_frame(error_frame(error.code, error.detail))
            await self.close(code=CLOSE_FORBIDDEN)
            return
        session = self.scope.get("session")
        self.session_key = session.session_key if session is not None else None
        if self.session_key:
            auth.track(self.session_key, self.end_session)
        sockets.opened(self.close_soon)

    async def disconnect(self, code: int) -> None:
        if getattr(self, "counted", False):
            metrics.SOCKETS.dec()
            self.counted = False
        if self.session_key:
            auth.untrack(self.session_key, self.end_session)
        sockets.closed(self.close_soon)
        if self.watching is not None:
            if (running := registry.running_in(self.watching)) is not None:
                running.answer.note("client_disconnected", code=code)
            await self.unwatch(on_disconnect=True)
        await self.delivery.close()

    async def delivery_ended(self, error: BaseException | None) -> None:
        """The sender stopped for good: close the socket rather than leave it half-alive."""
        if isinstance(error, SlowReader):
            logger.info("Closing a socket that read nothing for a full send window")
            await self.close(code=CLOSE_NOT_READING)
        elif error is not None:
            logger.error("Sending to a chat socket failed; closing it", exc_info=error)
            await self.close_with(CLOSE_SERVER_ERROR)
        elif self.closing is not None:
            code, frame = self.closing
            if frame is not None:
                await self.delivery.send_frame(frame)
            await self.close_with(code)

    async def close_with(self, code: int) -> None:
        """Close with ``code``, or its 4xxx stand-in where the server refuses it (daphne)."""
        try:
            await self.close(code=code)
        except Exception:  # autobahn raises a bare Exception for a code it will not send
            if code not in STAND_INS:
                raise
            await self.close(code=STAND_INS[code])

    def end_session(self) -> None:
        """The session logged out (``chat.auth``): the sender tells the page, then closes."""
        self.closing = (
            CLOSE_NOT_AUTHENTICATED,
            error_frame("not_authenticated", "You logged out."),
        )
        self.delivery.stop()

    def close_soon(self, code: int) -> None:
        """Close once what is queued was sent (``chat.sockets``: the process is stopping)."""
        if self.closing is None:
            self.closing = (code, None)
            self.delivery.stop()

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
        if isinstance(frame, Pong) and self.delivery.window.confirm(frame.nonce):
            return  # the echo of our own ping (one per ping): not a request, not budgeted
        if not self.bucket.take():
            if self.bucket.abusive and not self.flooded:
                self.flooded = True  # what it sends until it is gone is ignored
                logger.info("Closing a socket that keeps sending too many frames")
                await self.close(code=CLOSE_TOO_MANY_FRAMES)
            elif self.bucket.refused == 1:  # once a burst: refusals cost nothing more
                detail = f"Too many frames: at most {conf.CHAT_FRAMES_PER_SECOND:g} a second."
                await self.delivery.send_frame(error_frame("slow_down", detail))
            return
        try:
            if isinstance(frame, ClientError):
                raise frame
            # A turn checks the session in its own database call (one hop, not two).
            turn = isinstance(frame, Send | Edit | Regenerate)
            if not turn and not await auth.still_logged_in(self.scope, self.owner):
                raise SessionEnded("Your session ended (logged out): log in again to chat.")
            await self.handle(frame)
        except ClientError as error:
            await self.delivery.send_frame(error_frame(error.code, error.detail))
        except (SessionEnded, NotAllowed) as error:
            await self.delivery.send_frame(error_frame(error.code, error.detail))
            ended = isinstance(error, SessionEnded)
            await self.close(code=CLOSE_NOT_AUTHENTICATED if ended else CLOSE_FORBIDDEN)

    async def handle(self, frame: ClientFrame) -> None:
        assert self.owner is not None
        if isinstance(frame, Watch | Switch):
            if self.delivery.window.full:
                # A history costs a whole conversation; this socket has not read the last one.
                raise ClientError("slow_down", "The page has not read what it was sent yet.")
            if not histories.take(self.owner.key, conf.CHAT_HISTORIES_PER_MINUTE):
                raise ClientError(
                    "slow_down", "Too many conversations opened at once; try again in a moment."
                )
        if isinstance(frame, Send | Edit | Regenerate):
            if lifespan.draining():
                raise ClientError(
                    "restarting", "The server is restarting: send it again in a moment."
                )
            await self.start_turn(frame)
        elif isinstance(frame, Switch):
            conversation = await store.switch_branch(self.owner, frame.message)
            await self.show_conversation(conversation)
        elif isinstance(frame, Stop):
            await turns.stop(self.owner, frame.message)
        elif isinstance(frame, Watch):
            await self.show_conversation(frame.conversation)
        elif isinstance(frame, Pong):  # the nonce was no ping of ours (receive took the rest)
            raise ClientError("invalid_frame", "No ping with that nonce is waiting.")

    # Client frames ---------------------------------------------------------

    async def start_turn(self, frame: Send | Edit | Regenerate) -> None:
        """Store the turn the frame asks for, show its conversation here, start its answer."""
        assert self.owner is not None
        config = self.upstream_config()
        owner, scope = self.owner, self.scope
        turn = await turns.store_turn(
            owner, frame, config, still_allowed=lambda: auth.session_is_current(scope, owner)
        )
        await self.watch(turn.conversation.id)
        self.delivery.shown = turn.conversation.id  # the store checked the owner
        if turn.created:
            created: ConversationFrame = {
                "type": "conversation",
                "conversation": conversation_payload(turn.conversation),
            }
            self.delivery.deliver(created)
        await turns.launch(turn, self.owner, config)

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

    async def show_conversation(self, conversation_id: uuid.UUID) -> None:
        """Send the history, then the live frames of its running answer, if any."""
        assert self.owner is not None
        # Watch before reading, and hold the frames that arrive meanwhile: once
        # the history is ready they are sent after it, trimmed by ``index`` to
        # what the history does not already contain. Reading it checks the owner.
        self.delivery.holding = True
        try:
            await self.watch(conversation_id)
            try:
                transcript = await store.load_conversation(self.owner, conversation_id)
            except ClientError:
                await self.unwatch(on_disconnect=False)
                raise
            if (running := registry.running_in(conversation_id)) is not None:
                running.answer.note("client_watching")
            messages = transcript.path
            for message in messages:
                if message.status == Message.Statuses.STREAMING:
                    message.content, message.reasoning = await turns.text_so_far(message)
            rendered = await _render_all(messages)
            streaming: dict[str, tuple[int, int, int]] = {}
            finished: list[str] = []
            payloads: list[MessageInfo] = []
            for message, (html, end) in zip(messages, rendered, strict=True):
                if message.status == Message.Statuses.STREAMING:
                    lengths = (len(message.content), len(message.reasoning), end)
                    streaming[str(message.id)] = lengths
                else:
                    finished.append(str(message.id))
                versions = transcript.versions[message.id]
                payloads.append(
                    message_payload(message, html=html, rendered=end, versions=versions)
                )
            history: HistoryFrame = {
                "type": "history",
                "conversation": conversation_payload(transcript.conversation),
                "messages": payloads,
            }
            self.delivery.show_history(
                conversation_id, history, running=streaming, finished=finished
            )
            for message_id in streaming:
                if registry.get(uuid.UUID(message_id)) is None:
                    hub.expect(conversation_id, message_id)  # runs in another process
        finally:
            self.delivery.holding = False
            self.delivery.wake()

    async def current_text(self, message_id: uuid.UUID) -> str:
        """An answer's exact text now, for a gap in what this socket was sent."""
        running = registry.get(message_id)
        if running is not None:
            return running.text
        assert self.owner is not None
        stored = await store.load_message(self.owner, message_id)
        return (await turns.text_so_far(stored))[0] if stored is not None else ""

    # Watching ---------------------------------------------------------------

    async def watch(self, conversation_id: uuid.UUID) -> None:
        if self.watching == conversation_id:
            return
        if self.watching is not None:
            await self.unwatch(on_disconnect=False)
        self.watching = conversation_id
        self.delivery.show_nothing()  # until its owner is checked
        await hub.subscribe(conversation_id, self.delivery)

    async def unwatch(self, *, on_disconnect: bool) -> None:
        conversation_id, self.watching = self.watching, None
        self.delivery.shown = None
        if conversation_id is None:
            return
        if await hub.unsubscribe(conversation_id, self.delivery) == 0 and on_disconnect:
            registry.abandoned(conversation_id)


AsgiSend = Callable[[dict[str, Any]], Awaitable[None]]


def text_sender(base_send: AsgiSend) -> Callable[[str], Awaitable[None]]:
    """Sends one text frame to the socket, through ``frame_sender(base_send)``."""
    send = frame_sender(base_send)
    return lambda text: send({"type": "websocket.send", "text": text})


def frame_sender(base_send: AsgiSend) -> AsgiSend:
    """The ASGI ``send`` that the socket's frames go through: the consumer's own,
    less Channels' session wrapper where that is the one directly around it.

    The wrapper acts only on an HTTP response's start (to save the session and
    set its cookie); for every ``websocket.send`` it reads the lazy session twice
    and passes the message on, 3 µs a frame, as much as all of the delivery's own
    work (``python -m bench.costs``, row 8). Any other middleware that wraps
    ``send`` (a project's own) is kept: frames then go through it as before.
    """
    wrapper = getattr(base_send, "__self__", None)
    if isinstance(wrapper, InstanceSessionWrapper) and base_send == wrapper.send:
        send: AsgiSend = wrapper.real_send
        return send
    return base_send


async def _render_all(messages: list[Message]) -> list[tuple[str, int]]:
    """Each answer's HTML and the text length it covers: all of a finished answer,
    the complete blocks of a running one (the page shows the rest as text)."""

    def render(message: Message) -> tuple[str, int]:
        if message.role != Message.Roles.ASSISTANT:
            return "", 0
        if message.status == Message.Statuses.STREAMING:
            return render_prefix(message.content)
        return finished_html.render(message.id, message.content), len(message.content)

    return await off_loop(lambda: [render(m) for m in messages])
