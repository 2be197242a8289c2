"""Database calls that arrive together are made together: one thread hop, one commit.

Every database call of the relay queues on Channels' one database thread. When
hundreds of turns start at once (a busy minute, a reconnect storm) each paid its
own hop, connection check and commit, one after the other, and the last turn's
first token waited for all of them; when hundreds of answers ended at once,
their saves queued in front of the next turns. A ``Batch`` runs the calls that
came while its previous call was in the thread as one call, in one transaction:
alone, a call goes at once, as before; under load, the queue never holds more
than one call of each batch, so a turn's setup waits behind at most one batch of
final saves, not behind five hundred of them.

What a call raises reaches its own caller only, and the others commit. A trip
takes no savepoint per call (two round trips each: 6-9 % of a busy relay's
profile samples): when a call raises, the whole transaction rolls back, and the
calls before it are made again as a trip of their own, those after it as
another; the call that raised is not made again. If the commit itself fails (a
deadlock with another process, a dropped connection), each call is made again
alone. So a batched function runs whole or not at all, alone or in a trip, and
needs no ``atomic`` block of its own; but it may be made more than once, so it
does database work only, and what it returns comes from its last run.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math
import threading
import time
from collections.abc import Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Generic, ParamSpec, TypeVar

from channels.db import database_sync_to_async
from django.db import connection, transaction

logger = logging.getLogger(__name__)

#: How long closing waits for a thread still making a trip.
CLOSE_WAIT = 5.0

P = ParamSpec("P")
R = TypeVar("R")


@dataclass(slots=True)
class Outcome(Generic[R]):
    """What one call returned, or raised."""

    value: R | None = None
    error: BaseException | None = None


def _whole(call: Callable[[], Any]) -> Outcome[Any]:
    """One call alone, whole or not at all: its own transaction.

    What it raises (a refusal, a database error) rolls it back and goes to its
    caller.
    """
    try:
        with transaction.atomic():
            return Outcome(call())
    except Exception as error:  # the caller gets it back
        return Outcome(error=error)


def in_db_thread(func: Callable[P, R]) -> Callable[P, Coroutine[Any, Any, R]]:
    """``database_sync_to_async``, typed: the call runs in Channels' database thread."""
    return database_sync_to_async(func)  # type: ignore[no-any-return]


def ready_kept_connection() -> None:
    """Before a call on a connection a thread of ours keeps open: drop it if it failed.

    Django checks a connection between requests; a thread of our own has none, so a
    connection the database dropped (a restart, a failover) would fail every call
    after it. This reconnects on the next call instead, as a request would.
    """
    if connection.errors_occurred or (
        connection.close_at is not None and time.monotonic() >= connection.close_at
    ):
        connection.close_if_unusable_or_obsolete()


def _run(calls: list[Callable[[], Any]]) -> list[Outcome[Any]]:
    """Each call's outcome, the calls made in one transaction while none raises."""
    if len(calls) <= 1:
        return [_whole(call) for call in calls]
    values: list[Any] = []
    try:
        with transaction.atomic():
            for call in calls:
                values.append(call())
    except Exception as error:
        failed = len(values)  # the call that raised; all of them if the commit failed
        if failed == len(calls):
            logger.warning(
                "A batch of %d database calls failed to commit; making them one by one",
                len(calls),
            )
            return [_whole(call) for call in calls]
        # Rolled back whole: the calls before it again, without it, and those after it.
        return [*_run(calls[:failed]), Outcome(error=error), *_run(calls[failed + 1 :])]
    return [Outcome(value) for value in values]


_run_in_db_thread = in_db_thread(_run)


def _run_on_kept_connection(calls: list[Callable[[], Any]]) -> list[Outcome[Any]]:
    ready_kept_connection()
    return _run(calls)


class Batch:
    """A queue of database calls, made together whenever several wait.

    With ``lanes`` (and a database other than SQLite, which takes one writer at a
    time: there Channels' database thread serves every batch), trips run on that
    many threads of the batch's own, each on a connection it keeps, up to ``lanes``
    at once: a trip mostly waits for the database's answers, and with the database a
    few milliseconds away one thread is full long before the process. Without,
    trips run in Channels' database thread, one at a time.
    """

    def __init__(self, name: str, most: int = 50, lanes: int = 0) -> None:
        self.name = name
        self.most = most
        self.lanes = lanes
        self._waiting: list[tuple[Callable[[], Any], asyncio.Future[Any]]] = []
        self._drainers: set[asyncio.Task[None]] = set()
        self._executor: ThreadPoolExecutor | None = None
        #: How many calls each trip to the database carried (the last hundred).
        self.sizes: list[int] = []

    def of(self, func: Callable[P, R]) -> Callable[P, Coroutine[Any, Any, R]]:
        """``func`` (synchronous, database work) as an awaitable queued on this batch."""

        @functools.wraps(func)
        async def queued(*args: P.args, **kwargs: P.kwargs) -> R:
            loop = asyncio.get_running_loop()
            if any(drainer.get_loop() is not loop for drainer in self._drainers):
                # An event loop of before (a test's, a server restarted in-process).
                self._waiting, self._drainers = [], set()
            future: asyncio.Future[R] = loop.create_future()
            self._waiting.append((functools.partial(func, *args, **kwargs), future))
            self._drainers = {drainer for drainer in self._drainers if not drainer.done()}
            if len(self._drainers) < self._lanes():
                name = f"chat-batch-{self.name}"
                self._drainers.add(loop.create_task(self._drain(), name=name))
            return await future

        return queued

    def _own_threads(self) -> bool:
        return self.lanes > 0 and connection.vendor != "sqlite"

    def _lanes(self) -> int:
        return self.lanes if self._own_threads() else 1

    async def _trip(self, calls: list[Callable[[], Any]]) -> list[Outcome[Any]]:
        if not self._own_threads():
            return await _run_in_db_thread(calls)
        if self._executor is None:
            self._executor = ThreadPoolExecutor(self.lanes, thread_name_prefix=f"chat-{self.name}")
        work = functools.partial(_run_on_kept_connection, calls)
        return await asyncio.get_running_loop().run_in_executor(self._executor, work)

    async def close(self) -> None:
        """Close the connections of the batch's threads and let them go (the process stops)."""
        executor, self._executor = self._executor, None
        if executor is None:
            return
        # One job a thread: each waits until every thread holds one, then closes the
        # connection of its own thread (Django's connections belong to their thread).
        every_thread = threading.Barrier(self.lanes, timeout=CLOSE_WAIT)

        def close_mine() -> None:
            try:
                every_thread.wait()
            finally:
                connection.close()

        loop = asyncio.get_running_loop()
        closing = [loop.run_in_executor(executor, close_mine) for _ in range(self.lanes)]
        outcomes = await asyncio.gather(*closing, return_exceptions=True)
        executor.shutdown(wait=False)
        for outcome in outcomes:
            if isinstance(outcome, threading.BrokenBarrierError):
                # A trip still ran (a turn's setup at shutdown): that thread's
                # connection closes with the process instead.
                logger.warning("A %s thread was busy at shutdown", self.name)
            elif isinstance(outcome, BaseException):
                raise outcome

    async def _drain(self) -> None:
        while self._waiting:
            # A caller that went away (its socket closed) before its call was made
            # does not need it: a turn nobody would run is not stored.
            waiting = [(call, future) for call, future in self._waiting if not future.done()]
            # At most ``most`` a trip: each caller waits for its whole batch, so five
            # hundred turns in one trip would all start when the last is stored. With
            # several lanes, a share of what waits: the other lanes take the rest.
            take = min(self.most, math.ceil(len(waiting) / self._lanes()))
            waiting, self._waiting = waiting[:take], waiting[take:]
            if not waiting:
                continue
            self.sizes = [*self.sizes[-99:], len(waiting)]
            try:
                outcomes = await self._trip([call for call, _ in waiting])
            except Exception as error:  # the hop itself failed: every caller hears of it
                outcomes = [Outcome(error=error)] * len(waiting)
            for (_, future), outcome in zip(waiting, outcomes, strict=True):
                if future.done():  # its caller went away meanwhile
                    continue
                if outcome.error is not None:
                    future.set_exception(outcome.error)
                else:
                    future.set_result(outcome.value)
