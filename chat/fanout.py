"""Process-local fan-out of an answer's frames to the sockets watching its conversation.

Publishing is a plain function call that appends the frame to each watcher's
outbox: no channel-layer round trip, no copy, no task per frame. (Channels'
in-memory layer scans every channel and group on each send and receive and
deep-copies each message; at 100 streams that alone saturated the relay: see
bench/RESULTS.md.) Each socket drains its own outbox in its own task, so a
slow socket never holds up the answer or the other watchers.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from typing import Any, Protocol

Frame = Mapping[str, Any]


class Watcher(Protocol):
    def deliver(self, frame: Frame) -> None:
        """Take one frame; must not block (queue it and return)."""


class Hub:
    """Who watches which conversation in this process, and delivery to them."""

    def __init__(self) -> None:
        self._watchers: dict[uuid.UUID, set[Watcher]] = {}

    def subscribe(self, conversation_id: uuid.UUID, watcher: Watcher) -> None:
        self._watchers.setdefault(conversation_id, set()).add(watcher)

    def unsubscribe(self, conversation_id: uuid.UUID, watcher: Watcher) -> int:
        """Forget a watcher; return how many still watch the conversation."""
        watchers = self._watchers.get(conversation_id)
        if watchers is None:
            return 0
        watchers.discard(watcher)
        if not watchers:
            del self._watchers[conversation_id]
            return 0
        return len(watchers)

    def publish(self, conversation_id: uuid.UUID, frame: Frame) -> None:
        for watcher in self._watchers.get(conversation_id, ()):
            watcher.deliver(frame)

    def watching(self, conversation_id: uuid.UUID) -> int:
        return len(self._watchers.get(conversation_id, ()))


hub = Hub()
