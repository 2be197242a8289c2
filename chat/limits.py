"""How fast one socket may send frames: a token bucket, kept per socket in memory."""

from __future__ import annotations

import time


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
