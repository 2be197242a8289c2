"""This process's open chat sockets, so that a process that stops can close them all.

A socket closed with ``RESTARTING`` (1012, "Service Restart"; 4503 under daphne) reconnects at once:
through the load balancer, to a process that stays, where it watches its
conversation again and gets the rest of any running answer exactly once.
"""

from __future__ import annotations

from collections.abc import Callable

#: WebSocket close code 1012, "Service Restart": reconnect, without backing off.
RESTARTING = 1012
#: The same, where the server lets applications send only 1000 and 3000-4999 (daphne).
RESTARTING_APP = 4503

Closer = Callable[[int], None]
_open: set[Closer] = set()


def opened(close: Closer) -> None:
    _open.add(close)


def closed(close: Closer) -> None:
    _open.discard(close)


def close_all(code: int = RESTARTING) -> int:
    """Ask every open socket of this process to close with ``code``; return how many."""
    closers = list(_open)
    for close in closers:
        close(code)
    return len(closers)
