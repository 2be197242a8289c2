"""Answers orphaned by a process that died are marked ``interrupted``, keeping their text.

Every running answer's row is touched at least every ``CHAT_ORPHAN_AFTER / 3``
seconds by its process's checkpoints, even when no new text came. A row still
``streaming`` but untouched for ``CHAT_ORPHAN_AFTER`` seconds has no process
behind it any more (killed, crashed, its machine gone): each process sweeps
for those at startup and then periodically, and tells watchers how they ended.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import uuid
from typing import cast

from chat import liveness, signals, store
from chat.conf import conf
from chat.fanout import Hub, hub
from chat.generation import registry
from chat.models import Message
from chat.protocol import (
    INTERRUPTED,
    DoneFrame,
    FinalStatus,
    done_frame,
    stored_error,
    stored_usage,
)
from chat.rendering import off_loop, render_markdown

logger = logging.getLogger(__name__)


#: An answer another process runs, not heard of for this long, is looked up in the store.
RECOVER_AFTER = 2.0


def ended_frame(message: Message, html: str) -> DoneFrame:
    """The ``done`` of an ended answer as it is stored: one its process could not send
    (it died: the sweep estimated the usage), or one lost on the way."""
    return done_frame(
        message.id,
        message.conversation_id,
        length=len(message.content),
        status=cast(FinalStatus, message.status),
        usage=stored_usage(message),
        error=stored_error(message),
        html=html,
        finish_reason=message.finish_reason or None,
        refusal=message.refusal,
    )


async def sweep_once() -> int:
    """Mark orphaned answers ``interrupted`` now; return how many there were."""
    orphans = await store.interrupt_orphans(
        older_than=conf.CHAT_ORPHAN_AFTER,
        running=list(registry.running_ids()),
        detail=INTERRUPTED["detail"],
    )
    await _announce(orphans)
    if orphans:
        logger.warning("Marked %d orphaned answer(s) as interrupted", len(orphans))
    return len(orphans)


async def sweep_dead_processes() -> int:
    """End the answers of processes whose heartbeat stopped (``chat.liveness``)."""
    orphans = await store.interrupt_dead_processes(
        older_than=0,
        running=list(registry.running_ids()),
        detail=INTERRUPTED["detail"],
        silent_for=conf.CHAT_PROCESS_TIMEOUT,
    )
    await _announce(orphans)
    if orphans:
        logger.warning("Marked %d answer(s) of a dead process as interrupted", len(orphans))
    return len(orphans)


async def interrupt_orphan(message_id: uuid.UUID) -> bool:
    """Mark one answer that no process claims ``interrupted`` at once; False if it ended.

    The caller asked every process first (``stop_anywhere``): a user who finds
    an answer orphaned is never left waiting for the periodic sweep.
    """
    orphans = await store.interrupt_orphans(
        older_than=0,
        running=list(registry.running_ids()),
        detail=INTERRUPTED["detail"],
        message_id=message_id,
    )
    await _announce(orphans)
    if orphans:
        logger.warning("Marked orphaned answer %s as interrupted on request", message_id)
    return bool(orphans)


async def _announce(orphans: list[Message]) -> None:
    for message in orphans:
        # The whole answer's HTML as the page builds it, block by block.
        html = await off_loop(render_markdown, message.content)
        await hub.announce(message.conversation_id, ended_frame(message, html))
        # Its process died before it could tell: this one does (the row changed once).
        await signals.answer_ended(
            message_id=message.id,
            conversation_id=message.conversation_id,
            user_id=message.conversation.owner_id,
            status=message.status,
            usage=stored_usage(message),
            model=message.model,
            time_to_first_token=None,
            duration=None,
            error=stored_error(message),
        )


async def recover_missed_ends(watching: Hub = hub) -> int:
    """Give watchers here the end of answers that ended elsewhere without their ``done``
    reaching this process (dropped after the channel layer's retries); return how many."""
    silent = watching.silent_answers(RECOVER_AFTER)
    if not silent:
        return 0
    ended = await store.ended_answers([message_id for _, message_id in silent])
    for message in ended:
        html = await off_loop(render_markdown, message.content)
        watching.ended(message.conversation_id, ended_frame(message, html))
        logger.warning("The end of message %s was lost on its way here: read it", message.id)
    return len(ended)


class Sweeper:
    """The process's periodic sweep, started by the first socket that connects."""

    def __init__(self) -> None:
        self.task: asyncio.Task[None] | None = None

    def ensure_running(self) -> None:
        if self.task is None or self.task.done():
            self.task = asyncio.create_task(self._loop(), name="chat-orphan-sweep")
        if store.beats_in_a_thread():
            beat = functools.partial(store.beat_now, liveness.process_id(), *liveness.describe())
            interval = conf.CHAT_PROCESS_TIMEOUT / 8
            liveness.heart.start(beat, interval, store.close_connection)

    async def _loop(self) -> None:
        """Beat, end dead processes' answers and recover lost ends, every eighth of
        ``CHAT_PROCESS_TIMEOUT``; sweep answers by age every half ``CHAT_ORPHAN_AFTER``."""
        loop = asyncio.get_running_loop()
        next_age_sweep = loop.time()
        while True:
            try:
                if not liveness.heart.beating:  # SQLite: no peers wait on it
                    await store.beat(liveness.process_id(), *liveness.describe())
                await sweep_dead_processes()
                await recover_missed_ends()
                if loop.time() >= next_age_sweep:
                    await sweep_once()
                    next_age_sweep = loop.time() + conf.CHAT_ORPHAN_AFTER / 2
            except Exception:
                logger.exception("The orphaned-answer sweep failed; it runs again later")
            await asyncio.sleep(conf.CHAT_PROCESS_TIMEOUT / 8)

    async def stop(self) -> None:
        """Stop sweeping and beating (before this process's heartbeat row is removed)."""
        if self.task is not None:
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)
            self.task = None
        await asyncio.to_thread(liveness.heart.stop)
        await store.liveness_checks.close()


sweeper = Sweeper()
