"""Per-socket bounds, kept in memory: how fast a client may send, how far it may lag."""

from __future__ import annotations

import asyncio
import secrets
import time


class FrameBucket:
    """Allows ``rate`` frames a second on average and bursts of ``burst`` (twice ``rate``).

    Each frame a client sends costs the server work (some a database query), so
    a socket that floods is answered ``slow_down`` and, if it goes on, closed.
    """

    __slots__ = ("capacity", "excess", "rate", "refused", "stamp", "tokens")  # one a socket

    def __init__(self, rate: float, *, burst: float | None = None) -> None:
        self.rate = rate
        self.capacity = 2 * rate if burst is None else burst
        self.tokens = self.capacity
        self.stamp = time.monotonic()
        self.refused = 0  # frames refused since the last one allowed
        # Refused frames, forgiven at ``rate`` a second: a client that keeps
        # sending faster than it is allowed piles these up even though a frame
        # now and then gets through (which resets ``refused``).
        self.excess = 0.0

    def take(self) -> bool:
        now = time.monotonic()
        elapsed = now - self.stamp
        self.stamp = now
        self.tokens = min(self.capacity, self.tokens + elapsed * self.rate)
        self.excess = max(0.0, self.excess - elapsed * self.rate)
        if self.tokens >= 1:
            self.tokens -= 1
            self.refused = 0
            return True
        self.refused += 1
        self.excess += 1
        return False

    @property
    def full(self) -> bool:
        """Nothing spent that is not refilled by now: the bucket can be forgotten."""
        elapsed = time.monotonic() - self.stamp
        refilled = self.tokens + elapsed * self.rate >= self.capacity
        return refilled and self.excess <= elapsed * self.rate

    @property
    def abusive(self) -> bool:
        """A whole burst's worth refused beyond what was forgiven: the client is flooding.

        At twice the allowed rate that takes about ``capacity / rate`` (2) seconds;
        at 20 times, a tenth of that.
        """
        return self.excess > self.capacity


class HistoryBudget:
    """Histories one user may load in this process, however many sockets they open.

    A history is the costliest request a page makes (the whole active path,
    read, rendered and sent): one bucket per user, shared by their sockets,
    keeps one user from taking the process from everyone else.
    """

    FORGET_AFTER = 10_000  # buckets kept before idle ones are dropped

    def __init__(self) -> None:
        self._buckets: dict[str, FrameBucket] = {}

    def take(self, owner_key: str, per_minute: int) -> bool:
        bucket = self._buckets.get(owner_key)
        rate = per_minute / 60
        if bucket is None or bucket.rate != rate:
            if len(self._buckets) >= self.FORGET_AFTER:
                self._buckets = {k: b for k, b in self._buckets.items() if not b.full}
            bucket = self._buckets[owner_key] = FrameBucket(rate, burst=max(1, per_minute / 4))
        return bucket.take()


histories = HistoryBudget()


class SendWindow:
    """Bounds what a socket may have been sent without proof that it read it.

    The server pings the page every quarter window with an unguessable nonce.
    The page can only echo a nonce it has read, and a socket delivers in order,
    so an echo proves everything sent before that ping has left the server.
    Once more than ``size`` characters are unproven, the socket's sender waits;
    a client that never reads therefore costs at most about ``size`` characters
    of buffers, not an unbounded queue (daphne's write buffer has no cap).
    """

    __slots__ = ("_moved", "confirmed", "pinged", "pings", "sent", "size")  # one a socket

    def __init__(self, size: int) -> None:
        self.size = size
        self.sent = 0  # characters sent on this socket
        self.confirmed = 0  # of which the client has proven it read this many
        self.pinged = 0  # ``sent`` when the last ping went out
        self.pings: list[tuple[str, int]] = []  # a few at most: a list is smaller than a deque
        self._moved: asyncio.Future[None] | None = None

    def moved(self) -> asyncio.Future[None]:
        """Done at the client's next echo. Made only when a sender waits for one, which
        most sockets never do: an idle socket holds no ``asyncio.Event`` (760 bytes)."""
        if self._moved is None or self._moved.done():
            self._moved = asyncio.get_running_loop().create_future()
        return self._moved

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
                del self.pings[: position + 1]
                self.confirmed = mark
                if self._moved is not None and not self._moved.done():
                    self._moved.set_result(None)
                return True
        return False
