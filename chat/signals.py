"""Django signals for a project's own code: a turn started, an answer finished or failed.

Each is sent once per answer, after what it reports is saved, by the process
that ran the answer (for an answer whose process died, by the process that
marks it ``interrupted``), so a receiver may bill on ``answer_finished``. The
sender is ``chat.models.Message``; receivers may be sync (they run in
Channels' database thread, where the ORM works) or async. A receiver that
raises is logged and never fails the answer or the socket.

``turn_started``: ``message_id`` (the answer's), ``question_id`` (None for a
regenerated answer), ``conversation_id``, ``user_id`` (None for an anonymous
session), ``model``.

``answer_finished``: ``message_id``, ``conversation_id``, ``user_id``,
``status`` (``complete``, ``stopped``, ``failed`` or ``interrupted``),
``usage`` (``prompt_tokens``, ``completion_tokens``, ``total_tokens``,
``estimated``), ``model``, ``time_to_first_token`` and ``duration`` (seconds,
None if unknown), ``error`` (``{"code", "detail"}`` or None).

``answer_failed``: after ``answer_finished``, for status ``failed`` only, with
the same arguments.
"""

from __future__ import annotations

import logging
from typing import Any

from django.dispatch import Signal

from chat.models import Message

logger = logging.getLogger(__name__)

turn_started = Signal()
answer_finished = Signal()
answer_failed = Signal()


async def send(signal: Signal, **arguments: Any) -> None:
    """Send ``signal`` to every receiver; log, never raise, what a receiver raised."""
    for receiver, result in await signal.asend_robust(sender=Message, **arguments):
        if isinstance(result, Exception):
            logger.error("A receiver of a chat signal failed: %r", receiver, exc_info=result)


async def answer_ended(**arguments: Any) -> None:
    """``answer_finished``, then ``answer_failed`` if it failed."""
    await send(answer_finished, **arguments)
    if arguments["status"] == "failed":
        await send(answer_failed, **arguments)
