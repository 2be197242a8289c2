"""Which processes are alive: each writes a heartbeat row every eighth of ``CHAT_PROCESS_TIMEOUT``.

Every answer being written names the process that writes it (``Message.runner``),
so when a process is killed outright its answers are found and ended as
``interrupted`` by any other process within ``CHAT_PROCESS_TIMEOUT`` seconds, and
their watchers told. The age of an answer's row (``CHAT_ORPHAN_AFTER``) stays the
fallback for rows without a runner. The database is the meeting point, so this
works with or without Redis; it costs each process one small write a beat.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import uuid
from collections.abc import Callable

logger = logging.getLogger(__name__)

_identity: tuple[int, uuid.UUID] | None = None


def process_id() -> uuid.UUID:
    """This process's id; a process forked from another gets its own."""
    global _identity
    pid = os.getpid()
    if _identity is None or _identity[0] != pid:
        _identity = (pid, uuid.uuid4())
    return _identity[1]


def describe() -> tuple[str, int]:
    """The host name and pid written beside the id, for people reading the table."""
    return socket.gethostname(), os.getpid()


class Heart:
    """Renews this process's heartbeat from a thread of its own.

    A process whose event loop is saturated (hundreds of answers starting at once)
    is busy, not dead: beats that waited for the loop came seconds late, and the
    other processes ended its running answers as ``interrupted``. A thread beats on
    time whatever the loop does; only a dead process stops beating.
    """

    def __init__(self) -> None:
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()

    @property
    def beating(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self, beat: Callable[[], None], interval: float, done: Callable[[], None]) -> None:
        """Call ``beat`` now and every ``interval`` seconds until ``stop``; then ``done``."""
        if self.beating:
            return
        self._stopping.clear()
        self._thread = threading.Thread(
            target=self._run, args=(beat, interval, done), name="chat-heartbeat", daemon=True
        )
        self._thread.start()

    def _run(self, beat: Callable[[], None], interval: float, done: Callable[[], None]) -> None:
        try:
            while not self._stopping.is_set():
                try:
                    beat()
                except Exception:
                    logger.exception("Could not renew this process's heartbeat; trying again")
                self._stopping.wait(interval)
        finally:
            done()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop beating (blocks until the thread is out: run it off the event loop)."""
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None


heart = Heart()
