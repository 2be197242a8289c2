"""Per-socket bounds, kept in memory: how fast a client may send, how far it may lag."""

from __future__ import annotations

import asyncio
import secrets
import time
from collections import deque


class FrameBucket:
    """Allows ``rate`` frames a second on average and bursts of ``2 * rate``.

    Each frame a client sends costs the server work (some a database query), so
    a socket that floods is answered ``slow_down`` and, if it goes on, closed.
    """

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self.capacity = 2 * rate
        self.tokens = self.capacity
        self.stamp = time.monotonic()
        self.refused = 0  # frames refused since the last one allowed

    def take(self) -> bool:
        now = time.monotonic()
        self.tokens = min(self.capacity, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= 1:
            self.tokens -= 1
            self.refused = 0
            return True
        self.refused += 1
        return False

    @property
    def abusive(self) -> bool:
        """Refused a whole burst's worth in a row: the client is not listening."""
        return self.refused > self.capacity


class SendWindow:
    """Bounds what a socket may have been sent without proof that it read it.

    The server pings the page every quarter window with an unguessable nonce.
    The page can only echo a nonce it has read, and a socket delivers in order,
    so an echo proves everything sent before that ping has left the server.
    Once more than ``size`` characters are unproven, the socket's sender waits;
    a client that never reads therefore costs at most about ``size`` characters
    of buffers, not an unbounded queue (daphne's write buffer has no cap).
    """

    def __init__(self, size: int) -> None:
        self.size = size
        self.sent = 0  # characters sent on this socket
        self.confirmed = 0  # of which the client has proven it read this many
        self.pinged = 0  # ``sent`` when the last ping went out
        self.pings: deque[tuple[str, int]] = deque()
        self.moved = asyncio.Event()

    @property
    def full(self) -> bool:
        return self.sent - self.confirmed > self.size

    def ping(self) -> str | None:
        """A nonce to send now, if a ping is due (a quarter window, or a full one)."""
        if self.sent == self.pinged:
            return None
        if self.sent - self.pinged < self.size // 4 and not self.full:
            return None
        nonce = secrets.token_urlsafe(12)
        self.pings.append((nonce, self.sent))
        self.pinged = self.sent
        return nonce

    def confirm(self, nonce: str) -> bool:
        """Record the client's echo of ``nonce``; False if no such ping is outstanding."""
        for position, (pending, mark) in enumerate(self.pings):
            if pending == nonce:
                for _ in range(position + 1):
                    self.pings.popleft()
                self.confirmed = mark
                self.moved.set()
                return True
        return False
