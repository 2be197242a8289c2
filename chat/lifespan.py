"""Clean shutdown: running answers are saved as ``interrupted``, the upstream client closed.

Servers that speak the ASGI lifespan protocol (uvicorn, hypercorn) call
``LifespanApp``; route ``"lifespan"`` to it in ``ProtocolTypeRouter``. Daphne
has no lifespan protocol, so the first socket under daphne hooks ``shutdown``
into Twisted's "before shutdown" trigger instead (a SIGTERM or SIGINT then
waits for running answers to be saved before the process exits). Startup
(either way) starts the sweep for answers orphaned by a process that died.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from typing import Any

from django.db import DatabaseError

from chat import liveness, metrics, sockets, store
from chat.conf import conf
from chat.fanout import hub
from chat.generation import registry
from chat.sweep import sweeper
from chat.upstream import aclose_client

logger = logging.getLogger(__name__)

_daphne_hook_installed = False
_shutting_down = False


def draining() -> bool:
    """Whether this process is shutting down (its health check then says so: 503)."""
    return _shutting_down


async def drain() -> None:
    """Stop taking turns and sockets, tell the pages to reconnect (to another process),
    and let the running answers go on to their end, up to ``CHAT_DRAIN_TIMEOUT``."""
    global _shutting_down
    if _shutting_down:
        return
    _shutting_down = True
    metrics.DRAINING.set(1)
    running = len(registry.running_ids())
    if not running or not conf.CHAT_DRAIN_TIMEOUT:
        return
    closed = sockets.close_all()
    logger.info(
        "Draining: %d socket(s) told to reconnect, %d answer(s) to finish within %g s",
        closed,
        running,
        conf.CHAT_DRAIN_TIMEOUT,
    )
    await registry.drain(conf.CHAT_DRAIN_TIMEOUT)  # the heartbeat goes on meanwhile


async def shutdown() -> None:
    """Drain (if not done yet), save what still runs as interrupted, close everything."""
    await drain()
    running = len(registry.running_ids())
    if running:
        logger.info("Shutting down: saving %d running answer(s) as interrupted", running)
    await sweeper.stop()
    await registry.shutdown()
    sockets.close_all()  # after the ends of interrupted answers
    try:
        await store.forget_process(liveness.process_id())
    except DatabaseError:
        logger.exception("Could not remove this process's heartbeat; it expires by itself")
    await store.setups.close()
    await hub.close()
    await aclose_client()


class LifespanApp:
    """An ASGI app for ``scope["type"] == "lifespan"``."""

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                sweeper.ensure_running()
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await shutdown()
                await send({"type": "lifespan.shutdown.complete"})
                return


def started() -> None:
    """Called at every socket connect: under daphne, set up the process once.

    Daphne has no lifespan protocol, so the first socket does what a lifespan
    startup would: start the orphaned-answer sweep, and hook ``shutdown`` into
    Twisted's "before shutdown" trigger. Elsewhere (tests) it does nothing.
    """
    global _daphne_hook_installed
    if _daphne_hook_installed or "daphne.server" not in sys.modules:
        return
    reactor = sys.modules.get("twisted.internet.reactor")
    if reactor is None or not getattr(reactor, "running", False):
        return
    from twisted.internet import defer

    def before_shutdown() -> defer.Deferred[None]:
        return defer.Deferred.fromFuture(asyncio.ensure_future(shutdown()))

    reactor.addSystemEventTrigger("before", "shutdown", before_shutdown)
    _daphne_hook_installed = True
    sweeper.ensure_running()
