"""Before against after, in one process: ``python -m bench.ab NAME [--rounds N]``.

Why: a change of a microsecond per token is lost in the run-to-run noise of this
shared machine (``python -m bench.costs`` moved one row by a third between two
runs of the same code). Here both versions of one step run in the same process,
alternately, round after round, so drift on the machine falls on both alike; the
median and the minimum of the rounds are printed. Each comparison keeps the
"before" code it needs (replaced by the change it measures) beside the app's
current code. CPU time of the process (``time.process_time``), uvloop, garbage
collector on.

- ``reads``: an upstream read that waits for its bytes (as at 30 tokens/s),
  with a timer made and cancelled per read (before) and with the connection's
  one deadline (``chat.network.Connection.read``, after).
- ``hop``: a frame's text from the socket's delivery to the server's ASGI
  ``send`` (a list here), through Channels' consumer ``send`` and session wrapper
  (before) and through ``chat.consumers.text_sender`` (after).
- ``writes``: a websocket frame through daphne over a real socket on
  127.0.0.1, with Twisted's buffered write (before) and with ``chat.server``'s
  eager write (after).
- ``setup``: a new conversation's turn setup (``store.start_turn``, with the
  session check, as a socket makes it), its rows inserted by the ORM
  (``save``, ``bulk_create``: before) and by ``store.insert`` (after). On a
  fresh SQLite file, or ``--database URL`` (a PostgreSQL database, migrated).
- ``session``: the session check of a turn (``chat.auth.session_is_current``),
  the session loaded by Django's database engine (before) and read in one
  statement, decoded by the engine (after). Same databases as ``setup``.
- ``user``: the session check of a turn, its user found by Django's
  ``get_user`` through ``ModelBackend`` (the ORM's query, before) and by
  ``chat.auth.logged_in_user`` (the user's row by one statement made once,
  after). Same databases as ``setup``.
- ``trips``: turns that start together (``--ops`` of them at once, a new
  conversation each), each call of a batch's trip in a savepoint of its own
  (before) and the trip one transaction, rolled back and split when a call
  raises (``chat.batches._run``, after). Same databases as ``setup``.
- ``final``: an answer's final save with the day's usage
  (``store.finish_message``), the message row updated by the ORM (before) and by
  ``store.update`` (after). Same databases as ``setup``.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from bench import costs

Variants = dict[str, Callable[[], None]]


async def read_with_a_timer_per_read(self: Any, timeout: float | None) -> bytes:
    """``chat.network.Connection.read`` before the one deadline per connection."""
    import httpx

    from chat import network

    protocol = self._protocol
    if not protocol.chunks and not protocol.eof:
        loop = asyncio.get_running_loop()
        waiter = protocol.waiter = loop.create_future()
        timer = loop.call_later(timeout, network._expire, waiter) if timeout is not None else None
        try:
            await waiter
        finally:
            protocol.waiter = None
            if timer is not None:
                timer.cancel()
    if protocol.chunks:
        data: bytes = protocol.chunks.popleft()
        if len(data) > network.READ_SIZE:
            protocol.chunks.appendleft(data[network.READ_SIZE :])
            data = data[: network.READ_SIZE]
        protocol.buffered -= len(data)
        if protocol.reading_paused and protocol.buffered < network.LOW_WATER:
            self._transport.resume_reading()
            protocol.reading_paused = False
        return data
    if protocol.error is not None:
        raise httpx.ReadError(str(protocol.error) or type(protocol.error).__name__)
    return b""


def with_method(
    loop: asyncio.AbstractEventLoop,
    work: Callable[[], Coroutine[Any, Any, None]],
    owner: type,
    name: str,
    method: Any,
) -> Callable[[], None]:
    """A round of ``work`` with ``owner.name`` replaced by ``method`` meanwhile."""

    def run() -> None:
        kept = owner.__dict__[name]
        setattr(owner, name, method)
        try:
            loop.run_until_complete(work())
        finally:
            setattr(owner, name, kept)

    return run


def reads(loop: asyncio.AbstractEventLoop, ops: int) -> tuple[Variants, str]:
    import httpx

    from chat import network

    replies = costs.upstream_replies(ops)
    current = network.Connection.read

    async def work() -> None:
        transport = costs.null_socket_transport(replies, trickling=True)
        async with httpx.AsyncClient(transport=transport, timeout=60.0) as client:
            url = f"{costs.UPSTREAM_URL}/chat/completions"
            response = await client.send(client.build_request("POST", url), stream=True)
            async for _ in response.aiter_raw():
                pass

    def using(read: Any) -> Callable[[], None]:
        return with_method(loop, work, network.Connection, "read", read)

    variants = {
        "a timer per read (before)": using(read_with_a_timer_per_read),
        "one deadline per connection (after)": using(current),
    }
    return variants, "µs per read that waits"


def writes(loop: asyncio.AbstractEventLoop, ops: int) -> tuple[Variants, str]:
    from twisted.internet import tcp

    from chat.server import write_eagerly

    buffered = tcp.Connection.write
    write_eagerly()
    eager = tcp.Connection.write
    server = costs.daphne_server(loop, real=True)
    message = {"type": "websocket.send", "text": costs.frame_text()}

    async def work() -> None:
        for i in range(ops):
            await server.send(message)
            await asyncio.sleep(0)  # the loop writes (Twisted's buffer: when writable)
            if i % 256 == 255:
                server.drain()
        await asyncio.sleep(0)
        server.drain()

    def using(write: Any) -> Callable[[], None]:
        return with_method(loop, work, tcp.Connection, "write", write)

    variants = {
        "Twisted's buffered write (before)": using(buffered),
        "eager write, chat.server (after)": using(eager),
    }
    return variants, "µs per frame, daphne over a real socket"


def hop(loop: asyncio.AbstractEventLoop, ops: int) -> tuple[Variants, str]:
    sent: list[dict[str, Any]] = []

    async def into_list(message: dict[str, Any]) -> None:
        sent.append(message)

    consumer = costs.consumer_send(loop, into_list)
    text = costs.frame_text()
    after = costs.frame_send(consumer)

    async def through_channels() -> None:
        for _ in range(ops):
            await consumer.send(text_data=text)
        sent.clear()

    async def through_text_sender() -> None:
        for _ in range(ops):
            await after(text)
        sent.clear()

    variants = {
        "Channels' consumer send and session wrapper (before)": lambda: loop.run_until_complete(
            through_channels()
        ),
        "text_sender (after)": lambda: loop.run_until_complete(through_text_sender()),
    }
    return variants, "µs per frame from the delivery to the server's send"


def swapping_store(
    loop: asyncio.AbstractEventLoop,
    work: Callable[[], Coroutine[Any, Any, None]],
    prepare: Callable[[], None],
    name: str,
    before: tuple[str, Any],
) -> Variants:
    """Rounds of ``work`` with ``chat.store.<name>`` replaced by ``before`` (its label and
    function), then with the app's own; ``prepare`` runs before each round's clock."""
    from chat import store

    current = getattr(store, name)

    def using(function: Any) -> Callable[[], None]:
        return Prepared(with_method(loop, work, store, name, function), prepare)  # type: ignore[arg-type]

    return {f"{before[0]} (before)": using(before[1]), f"store.{name} (after)": using(current)}


def orm_insert(rows: list[Any]) -> None:
    """``store.insert`` before: the ORM's save of a new conversation, bulk_create of messages."""
    from chat.models import Conversation, Message

    if isinstance(rows[0], Conversation):
        rows[0].save(force_insert=True)
    else:
        Message.objects.bulk_create(rows)


def setup(loop: asyncio.AbstractEventLoop, ops: int) -> tuple[Variants, str]:
    from chat import store

    crowd: list[costs.Person] = []  # each turn a new user: no limit is reached

    async def work() -> None:
        for person in crowd:
            await store.start_turn(
                person.owner, None, "How many words are in this question?", model="bench",
                system_prompt="", still_allowed=person.still_allowed,
            )  # fmt: skip

    def prepare() -> None:
        crowd[:] = costs.people(ops)

    before = ("the ORM's save and bulk_create", orm_insert)
    variants = swapping_store(loop, work, prepare, "insert", before)
    return variants, "µs per turn setup (a new conversation)"


def savepoint_per_call(calls: list[Callable[[], Any]]) -> list[Any]:
    """``chat.batches._run`` before: each call of a trip in a savepoint of its own."""
    from django.db import DatabaseError, transaction

    from chat import batches

    def whole(call: Callable[[], Any]) -> Any:
        try:
            with transaction.atomic():
                return batches.Outcome(call())
        except Exception as error:
            return batches.Outcome(error=error)

    if len(calls) == 1:
        return [whole(calls[0])]
    try:
        with transaction.atomic():
            return [whole(call) for call in calls]
    except DatabaseError:
        return [whole(call) for call in calls]


def trips(loop: asyncio.AbstractEventLoop, ops: int) -> tuple[Variants, str]:
    from chat import batches, store

    crowd: list[costs.Person] = []

    def turn(person: costs.Person) -> Coroutine[Any, Any, Any]:
        return store.start_turn(  # type: ignore[no-any-return]
            person.owner, None, "How many words are in this question?", model="bench",
            system_prompt="", still_allowed=person.still_allowed,
        )  # fmt: skip

    async def work() -> None:
        await asyncio.gather(*(turn(person) for person in crowd))

    def prepare() -> None:
        crowd[:] = costs.people(ops)

    def using(run: Any) -> Callable[[], None]:
        # Both ways in: the lanes' threads call ``_run``, Channels' thread its wrapper.
        def swapped() -> None:
            kept = batches._run, batches._run_in_db_thread
            batches._run, batches._run_in_db_thread = run, batches.in_db_thread(run)
            try:
                loop.run_until_complete(work())
            finally:
                batches._run, batches._run_in_db_thread = kept

        return Prepared(swapped, prepare)

    variants = {
        "a savepoint per call (before)": using(savepoint_per_call),
        "one transaction a trip (after)": using(batches._run),
    }
    return variants, f"µs per turn setup, {ops} at once"


def djangos_session(key: str) -> Any:
    """``chat.auth._stored_session`` before: the engine's store, loaded by its own query."""
    from importlib import import_module

    from django.conf import settings

    return import_module(settings.SESSION_ENGINE).SessionStore(key)


def session_checks(ops: int, name: str, before: tuple[str, Any], after: str) -> Variants:
    """Session checks of ``ops`` users, ``chat.auth.<name>`` replaced by ``before`` (its
    label and function), then the app's own (labelled ``after``); in this thread, as the
    database thread makes them."""
    from chat import auth

    current = getattr(auth, name)
    crowd = costs.people(ops)

    def using(function: Any) -> Callable[[], None]:
        def run() -> None:
            kept = getattr(auth, name)
            setattr(auth, name, function)
            try:
                for person in crowd:
                    assert person.still_allowed()
            finally:
                setattr(auth, name, kept)

        return run

    return {f"{before[0]} (before)": using(before[1]), f"{after} (after)": using(current)}


def session(loop: asyncio.AbstractEventLoop, ops: int) -> tuple[Variants, str]:
    before = ("Django's session load", djangos_session)
    variants = session_checks(ops, "_stored_session", before, "one statement, Django's decode")
    return variants, "µs per session check (chat.auth.session_is_current)"


def djangos_get_user(session: Any) -> Any:
    """``chat.auth.logged_in_user`` before: Django's ``get_user`` for the session."""
    from types import SimpleNamespace

    from django.contrib.auth import get_user

    return get_user(SimpleNamespace(session=session))  # type: ignore[arg-type]


def user(loop: asyncio.AbstractEventLoop, ops: int) -> tuple[Variants, str]:
    before = ("Django's get_user", djangos_get_user)
    variants = session_checks(ops, "logged_in_user", before, "one statement made once")
    return variants, "µs per session check (chat.auth.session_is_current)"


def orm_update(model: Any, pk: Any, values: dict[str, Any]) -> int:
    """``store.update`` before: the ORM's ``filter(pk=...).update(...)``."""
    return int(model.objects.filter(pk=pk).update(**values))


def final(loop: asyncio.AbstractEventLoop, ops: int) -> tuple[Variants, str]:
    from chat import store
    from chat.usage import Usage

    turns: list[tuple[Any, str]] = []
    text, usage = costs.expected_text(costs.TOKENS), Usage(14, costs.TOKENS, estimated=False)

    async def prepare_turns(crowd: list[costs.Person]) -> None:
        for person in crowd:
            turn = await store.start_turn(
                person.owner, None, "How many words?", model="bench", system_prompt=""
            )
            turns.append((turn, person.owner.key))

    async def work() -> None:
        for turn, owner_key in turns:
            await store.finish_message(
                turn.assistant_message.id, owner_key=owner_key, usage=usage,
                timeline=costs.timeline(), content=text, reasoning="", refusal="",
                tool_calls=[], status="complete", finish_reason="stop", error_code="",
                error_detail="", model="bench", upstream_request_id="",
                time_to_first_token=timedelta(seconds=0.01), duration=timedelta(seconds=10),
            )  # fmt: skip

    def prepare() -> None:
        turns.clear()
        loop.run_until_complete(prepare_turns(costs.people(ops)))

    variants = swapping_store(loop, work, prepare, "update", ("the ORM's update", orm_update))
    return variants, "µs per final save (store.finish_message, with the day's usage)"


COMPARISONS = {
    "reads": (reads, 2_000),
    "hop": (hop, 20_000),
    "writes": (writes, 5_000),
    "setup": (setup, 50),
    "session": (session, 200),
    "final": (final, 50),
    "trips": (trips, 50),
    "user": (user, 200),
}

#: The comparisons that need a migrated database (SQLite by default, or ``--database``).
DATABASE_COMPARISONS = {"setup", "session", "final", "trips", "user"}


@dataclass(frozen=True)
class Prepared:
    """A round with something to make before its clock starts (the users of its turns)."""

    round: Callable[[], None]
    prepare: Callable[[], None]

    def __call__(self) -> None:
        self.round()


def compare(variants: Variants, ops: int, rounds: int) -> dict[str, list[float]]:
    """µs per operation of each variant, one entry per round, the variants alternating."""
    results: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(rounds):
        for name, run in variants.items():
            if isinstance(run, Prepared):
                run.prepare()
            started = time.process_time()
            run()
            results[name].append((time.process_time() - started) / ops * 1e6)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("name", choices=sorted(COMPARISONS))
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--ops", type=int, help="operations per round")
    parser.add_argument("--database", help="DATABASE_URL for setup (default: a fresh SQLite file)")
    args = parser.parse_args()
    from chat.server import install_uvloop

    install_uvloop()  # before daphne.server is imported, as python -m chat.server does
    with tempfile.TemporaryDirectory(prefix="chat-ab-") as folder:
        url = args.database or f"sqlite:///{folder}/ab.sqlite3"
        run(args, url if args.name in DATABASE_COMPARISONS else "sqlite:///:memory:")


def run(args: argparse.Namespace, url: str) -> None:
    costs.setup_django(url)
    if args.name in DATABASE_COMPARISONS:
        from django.core.management import call_command

        call_command("migrate", interactive=False, verbosity=0)
    from daphne.server import twisted_loop

    asyncio.set_event_loop(twisted_loop)
    make, default_ops = COMPARISONS[args.name]
    ops = args.ops or default_ops
    variants, unit = make(twisted_loop, ops)
    results = compare(variants, ops, args.rounds)
    print(f"{args.name}: {unit}, {args.rounds} rounds of {ops} (median, min)")
    for name, values in results.items():
        print(f"  {name}: {statistics.median(values):.2f}, {min(values):.2f}")


if __name__ == "__main__":
    main()
