"""A turn's start and an answer's stop, apart from any socket.

``store_turn`` stores what a ``send``, ``edit`` or ``regenerate`` asks (an
answer whose process died, found in the way, is ended first); ``launch``
starts its generation and tells the conversation's watchers of the new
messages; ``stop`` reaches the answer wherever it runs, and ends it at once if
nothing runs it any more.
"""

from __future__ import annotations

import functools
import uuid
from collections.abc import Callable
from typing import Any, cast

from chat import control, requests, signals, store
from chat.conf import conf
from chat.exceptions import ClientError, ConversationBusy
from chat.fanout import hub
from chat.generation import Generation, registry, stop_anywhere
from chat.hooks import request_builder
from chat.models import Message, Owner
from chat.protocol import Edit, Regenerate, Send, message_payload
from chat.requests import UpstreamRequest
from chat.store import Turn
from chat.sweep import interrupt_orphan
from chat.upstream import UpstreamConfig

Asked = Send | Edit | Regenerate


async def store_turn(
    owner: Owner,
    frame: Asked,
    config: UpstreamConfig,
    *,
    still_allowed: Callable[[], bool] | None = None,
) -> Turn:
    """Store the turn ``frame`` asks for: the question (unless regenerated) and an empty answer.

    ``still_allowed`` runs first, in the same database call (the session check).
    """
    try:
        return await _store(owner, frame, config, still_allowed)
    except ConversationBusy as busy:
        # The answer in the way may have lost its process (killed): if no
        # process runs it, it is marked interrupted now and the turn goes ahead.
        if not await interrupt_if_orphaned(busy.message_id):
            raise
        return await _store(owner, frame, config, still_allowed)


async def _store(
    owner: Owner, frame: Asked, config: UpstreamConfig, still_allowed: Callable[[], bool] | None
) -> Turn:
    options: dict[str, Any] = {
        "model": config.model,
        "system_prompt": conf.CHAT_SYSTEM_PROMPT,
        "still_allowed": still_allowed,
    }
    if isinstance(frame, Send):
        return await store.start_turn(
            owner, frame.conversation, frame.content, parent_id=frame.parent, **options
        )
    if isinstance(frame, Edit):
        return await store.edit_turn(owner, frame.message, frame.content, **options)
    return await store.regenerate_turn(owner, frame.message, **options)


async def launch(turn: Turn, owner: Owner, config: UpstreamConfig) -> Generation:
    """Start the turn's answer; its messages go to every tab on the conversation first."""
    default = UpstreamRequest(
        turn.history, config.model, dict(config.options), dict(config.headers)
    )
    generation = Generation(
        message_id=turn.assistant_message.id,
        conversation_id=turn.conversation.id,
        owner_key=owner.key,
        history=turn.history,
        config=config,
        budget=turn.budget,
        title_after=turn.created,
        prepare=(
            functools.partial(requests.build, owner, turn.conversation, turn.path, default)
            if request_builder() is not None
            else None
        ),
    )
    # Known, and reachable from other processes, before its first frame: a process
    # that watches learns of it from that frame, and may ask about it at once.
    registry.register(generation)
    await hub.hold(turn.conversation.id)
    try:
        for message in (turn.user_message, turn.assistant_message):
            if message is not None:
                payload = message_payload(message, versions=turn.versions[message.id])
                await hub.announce(turn.conversation.id, {"type": "message", "message": payload})
    except BaseException:
        registry.unregister(generation)
        await hub.release(turn.conversation.id)
        raise
    registry.start(generation)  # which releases the conversation once the answer ended
    await signals.send(
        signals.turn_started,
        message_id=turn.assistant_message.id,
        question_id=turn.user_message.id if turn.user_message is not None else None,
        conversation_id=turn.conversation.id,
        user_id=owner.user_id,
        model=config.model,
    )
    return generation


async def stop(owner: Owner, message_id: uuid.UUID) -> None:
    """Stop ``owner``'s answer in whichever process writes it; raises ``ClientError`` if none."""
    generation = registry.get(message_id)
    if generation is not None and generation.owner_key == owner.key:
        generation.stop("user")
        return
    message = await store.load_message(owner, message_id)
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


async def interrupt_if_orphaned(message_id: uuid.UUID) -> bool:
    """Mark a ``streaming`` answer that no process runs ``interrupted``; True if it was
    (or if it ended meanwhile: either way the turn can go ahead)."""
    message = await store.load_message_anyones(message_id)
    if message is None or message.status != Message.Statuses.STREAMING:
        return message is not None
    if registry.get(message_id) is not None:
        return False
    if await hub.ask(message.conversation_id, control.alive(message_id)):
        return False
    return await interrupt_orphan(message_id)


async def text_so_far(message: Message) -> tuple[str, str]:
    """A running answer's exact text and reasoning now: from its process, else the checkpoint."""
    running = registry.get(message.id)
    if running is not None:
        return running.text, running.reasoning
    if message.status != Message.Statuses.STREAMING:
        return message.content, message.reasoning
    reply = await hub.ask(message.conversation_id, control.snapshot(message.id))
    if reply is not None:
        snapshot = cast(control.Snapshot, reply)  # the only reply to a snapshot request
        return snapshot["text"], snapshot["reasoning"]
    return message.content, message.reasoning
