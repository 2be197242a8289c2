"""Which processes are alive: each writes a heartbeat row every eighth of ``CHAT_PROCESS_TIMEOUT``.

Every answer being written names the process that writes it (``Message.runner``),
so when a process is killed outright its answers are found and ended as
``interrupted`` by any other process within ``CHAT_PROCESS_TIMEOUT`` seconds, and
their watchers told. The age of an answer's row (``CHAT_ORPHAN_AFTER``) stays the
fallback for rows without a runner. The database is the meeting point, so this
works with or without Redis; it costs each process one small write a beat.
"""

from __future__ import annotations

import os
import socket
import uuid

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
