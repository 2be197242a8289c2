"""Several daphne processes on PostgreSQL and Redis: any socket on any process sees any answer.

These run against the real services this machine provides (PostgreSQL on
127.0.0.1:5432 as ``postgres``, Redis on 127.0.0.1:6379), each test with a
database and a Redis prefix of its own. Without the services they are
skipped, and ``.ci/run`` refuses to run without them.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import signal
import socket
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import psycopg
import pytest
import websockets

from bench.processes import postgres_database
from tests.fake_upstream import DONE, FakeUpstream, completion, event, hanging, paused, stream
from tests.servers import Site, daphne, log_in, manage, site_environment

PG = os.environ.get("CHAT_TEST_POSTGRES", "postgres://postgres@127.0.0.1:5432")
REDIS = os.environ.get("CHAT_TEST_REDIS", "redis://127.0.0.1:6379/0")


def reachable(port: int) -> bool:
    with socket.socket() as probe:
        probe.settimeout(1)
        return probe.connect_ex(("127.0.0.1", port)) == 0


pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        not (reachable(5432) and reachable(6379)),
        reason="needs PostgreSQL on 127.0.0.1:5432 and Redis on 127.0.0.1:6379",
    ),
]


@pytest.fixture
def database() -> Iterator[str]:
    with postgres_database(PG) as url:
        yield url


@pytest.fixture
async def upstream() -> AsyncIterator[FakeUpstream]:
    server = FakeUpstream()
    await server.start()
    yield server
    await server.close()


class Cluster:
    """Two daphne processes sharing one database and one Redis."""

    def __init__(self, sites: list[Site], cookie: str) -> None:
        self.sites = sites
        self.cookie = cookie

    def open(self, index: int) -> Any:
        site = self.sites[index]
        return websockets.connect(
            site.ws_url + "/ws/chat/",
            additional_headers={"Cookie": self.cookie, "Origin": site.url},
        )


@pytest.fixture
def checkpoint_interval() -> str:
    return "0.2"


@pytest.fixture
def orphan_after() -> str:
    return "2"


@pytest.fixture
def drain_timeout() -> str:
    return "0"  # a stopped process interrupts at once, unless a test asks for draining


@pytest.fixture
async def cluster(
    tmp_path: Path,
    database: str,
    upstream: FakeUpstream,
    checkpoint_interval: str,
    orphan_after: str,
    drain_timeout: str,
) -> AsyncIterator[Cluster]:
    env = site_environment(
        tmp_path,
        DATABASE_URL=database,
        REDIS_URL=REDIS,
        REDIS_PREFIX=f"chat-test-{uuid.uuid4().hex[:8]}",
        OPENAI_BASE_URL=upstream.url,
        OPENAI_API_KEY="sk-test",
        CHAT_MODEL="fake-model",
        CHAT_AUTO_TITLE="0",  # each test scripts the answers only
        CHAT_ORPHAN_AFTER=orphan_after,
        CHAT_DRAIN_TIMEOUT=drain_timeout,
        CHAT_CHECKPOINT_INTERVAL=checkpoint_interval,
    )
    await asyncio.to_thread(manage, env, "migrate", "--noinput")
    await asyncio.to_thread(
        manage,
        env,
        "shell",
        "-c",
        "from django.contrib.auth.models import User; "
        "User.objects.create_user('ann', password='pw-ann-123')",
    )
    with ExitStack() as stack:
        sites = [stack.enter_context(daphne(env)) for _ in range(2)]
        cookie = await log_in(sites[0], "ann", "pw-ann-123")
        yield Cluster(sites, cookie)


async def receive_until(socket: Any, kind: str, timeout: float = 10) -> list[dict[str, Any]]:
    frames = []
    async with asyncio.timeout(timeout):
        while True:
            frames.append(json.loads(await socket.recv()))
            if frames[-1]["type"] == kind:
                return frames


def rebuild_from(history: dict[str, Any], frames: list[dict[str, Any]], message: str) -> str:
    shown = next(m for m in history["messages"] if m["id"] == message)["content"]
    for frame in frames:
        if frame["type"] == "delta" and frame["message"] == message:
            assert frame["index"] == len(shown), "a gap or a duplicate"
            shown += frame["text"]
    return str(shown)


async def start_answer(socket: Any) -> tuple[str, str]:
    await socket.send(json.dumps({"type": "send", "conversation": None, "content": "go"}))
    frames = await receive_until(socket, "message")
    frames += await receive_until(socket, "message")
    return frames[0]["conversation"]["id"], frames[-1]["message"]["id"]


async def test_an_answer_generated_on_one_process_streams_to_a_socket_on_another(
    cluster: Cluster, upstream: FakeUpstream
) -> None:
    release = asyncio.Event()
    upstream.script(paused(["From "], release, ["process ", "A."]))
    async with cluster.open(0) as a, cluster.open(1) as b:
        conversation, answer = await start_answer(a)
        await b.send(json.dumps({"type": "watch", "conversation": conversation}))
        history = json.loads(await b.recv())
        release.set()
        frames = await receive_until(b, "done")
        assert rebuild_from(history, frames, answer) == "From process A."
        assert frames[-1]["status"] == "complete"


async def test_a_stop_on_another_process_closes_the_upstream(
    cluster: Cluster, upstream: FakeUpstream
) -> None:
    upstream.script(hanging("endless"))
    async with cluster.open(0) as a, cluster.open(1) as b:
        conversation, answer = await start_answer(a)
        await receive_until(a, "delta")
        await b.send(json.dumps({"type": "watch", "conversation": conversation}))
        await b.recv()
        await b.send(json.dumps({"type": "stop", "message": answer}))
        await asyncio.wait_for(upstream.requests[0].client_closed.wait(), timeout=5)
        assert (await receive_until(a, "done"))[-1]["status"] == "stopped"
        assert (await receive_until(b, "done"))[-1]["status"] == "stopped"


async def test_a_stop_from_another_process_reaches_an_answer_no_page_watches_any_more(
    cluster: Cluster, upstream: FakeUpstream
) -> None:
    # The page that asked was closed; the answer goes on (CHAT_ON_DISCONNECT "continue")
    # and its process must still be reachable: stopped, not taken for dead and interrupted.
    upstream.script(hanging("endless"))
    async with cluster.open(0) as a:
        conversation, answer = await start_answer(a)
        await receive_until(a, "delta")
    async with cluster.open(1) as b:
        await b.send(json.dumps({"type": "watch", "conversation": conversation}))
        await b.recv()
        await b.send(json.dumps({"type": "stop", "message": answer}))
        await asyncio.wait_for(upstream.requests[0].client_closed.wait(), timeout=5)
        assert (await receive_until(b, "done"))[-1]["status"] == "stopped"


# Rare checkpoints: the stored text cannot fill a gap, only the exact snapshot can.
@pytest.mark.parametrize("checkpoint_interval", ["30"])
async def test_reconnecting_anywhere_at_any_moment_shows_every_character_once(
    cluster: Cluster, upstream: FakeUpstream
) -> None:
    words = [f"w{i} " for i in range(150)]
    upstream.script(stream(*completion(words, pace=0.01)))
    expected = "".join(words)

    async def watch_from(process: int, delay: float, conversation: str, answer: str) -> str:
        await asyncio.sleep(delay)  # join at a random moment of the answer
        async with cluster.open(process) as watcher:
            await watcher.send(json.dumps({"type": "watch", "conversation": conversation}))
            history = json.loads(await watcher.recv())
            frames = await receive_until(watcher, "done")
            return rebuild_from(history, frames, answer)

    moments = random.Random(20261201)  # seeded: a failure can be run again as it was
    async with cluster.open(0) as a:
        conversation, answer = await start_answer(a)
        seen = await asyncio.gather(
            *(watch_from(i % 2, moments.uniform(0, 1.2), conversation, answer) for i in range(8))
        )
    assert seen == [expected] * 8


async def test_a_killed_process_leaves_an_interrupted_answer_with_its_text(
    cluster: Cluster, upstream: FakeUpstream, database: str
) -> None:
    upstream.script(stream(*completion([f"t{i} " for i in range(400)], pace=0.01)))
    async with cluster.open(0) as a, cluster.open(1) as b:
        conversation, answer = await start_answer(a)
        await b.send(json.dumps({"type": "watch", "conversation": conversation}))
        history = json.loads(await b.recv())
        frames: list[dict[str, Any]] = []
        while sum(len(f.get("text", "")) for f in frames) < 300:
            frames.append(json.loads(await b.recv()))
        cluster.sites[0].process.send_signal(signal.SIGKILL)
        frames += await receive_until(b, "done", timeout=15)
    received = rebuild_from(history, frames, answer)
    assert frames[-1]["status"] == "interrupted"
    with psycopg.connect(database) as db:
        row = db.execute(
            "SELECT status, content FROM chat_message WHERE id = %s", (answer,)
        ).fetchone()
    assert row is not None
    status, saved = row
    assert status == "interrupted"
    assert received.startswith(saved)
    # Checkpoints every 0.2 s at 100 tokens/s: at most a few dozen tokens lost.
    lost = len(received) - len(saved)
    print(f"SIGKILL lost {lost} of {len(received)} characters received by the watcher")
    assert lost < 200


async def test_a_new_turn_in_one_process_appears_in_the_other(
    cluster: Cluster, upstream: FakeUpstream
) -> None:
    upstream.script(stream(*completion(["first"])), stream(*completion(["second"])))
    async with cluster.open(0) as a, cluster.open(1) as b:
        conversation, _ = await start_answer(a)
        await receive_until(a, "done")
        await b.send(json.dumps({"type": "watch", "conversation": conversation}))
        await b.recv()
        await a.send(json.dumps({"type": "send", "conversation": conversation, "content": "more"}))
        frames = await receive_until(b, "done")
    contents = [f["message"]["content"] for f in frames if f["type"] == "message"]
    assert contents == ["more", ""]
    assert "".join(f["text"] for f in frames if f["type"] == "delta") == "second"


async def test_an_answer_finishes_with_no_one_watching_and_is_there_on_the_next_visit(
    cluster: Cluster, upstream: FakeUpstream
) -> None:
    release = asyncio.Event()
    upstream.script(paused(["Written "], release, ["while away."]))
    async with cluster.open(0) as a:
        conversation, answer = await start_answer(a)
        await receive_until(a, "delta")
    # The only socket is closed; for a second, the upstream must not be closed.
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(upstream.requests[0].client_closed.wait(), timeout=1)
    release.set()
    await asyncio.wait_for(upstream.requests[0].completed.wait(), timeout=10)
    async with cluster.open(1) as b:
        await b.send(json.dumps({"type": "watch", "conversation": conversation}))
        history = json.loads(await b.recv())
        shown = next(m for m in history["messages"] if m["id"] == answer)
        while shown["status"] == "streaming":  # saved a moment after the upstream finished
            frames = await receive_until(b, "done")
            shown = {
                "status": frames[-1]["status"],
                "content": rebuild_from(history, frames, answer),
            }
    assert (shown["status"], shown["content"]) == ("complete", "Written while away.")


async def checkpointed(database: str, message: str) -> str:
    """The answer's text once a checkpoint saved some (polled: it is another process's write)."""
    async with asyncio.timeout(5):
        while True:
            with psycopg.connect(database) as db:
                row = db.execute("SELECT content FROM chat_message WHERE id = %s", (message,))
                content = str(row.fetchone()[0])
            if content:
                return content
            await asyncio.sleep(0.05)


@contextlib.asynccontextmanager
async def watched_elsewhere(cluster: Cluster, database: str) -> AsyncIterator[tuple[Any, str, str]]:
    """An answer running on process 0, checkpointed, and a socket on process 1 watching it."""
    async with cluster.open(0) as a, cluster.open(1) as b:
        conversation, answer = await start_answer(a)
        await receive_until(a, "delta")
        await b.send(json.dumps({"type": "watch", "conversation": conversation}))
        await b.recv()
        await checkpointed(database, answer)
        yield b, conversation, answer


# The periodic sweep would take a minute: only the stop can end the answer in time.
@pytest.mark.parametrize("orphan_after", ["60"])
async def test_a_stop_ends_at_once_an_answer_whose_process_was_killed(
    cluster: Cluster, upstream: FakeUpstream, database: str
) -> None:
    upstream.script(hanging("Half an answer"), stream(*completion(["Again."])))
    async with watched_elsewhere(cluster, database) as (b, conversation, answer):
        cluster.sites[0].process.send_signal(signal.SIGKILL)
        cluster.sites[0].process.wait(timeout=5)
        started = time.monotonic()
        await b.send(json.dumps({"type": "stop", "message": answer}))
        done = (await receive_until(b, "done", timeout=5))[-1]
        assert (done["status"], done["error"]["code"]) == ("interrupted", "interrupted")
        assert done["usage"]["estimated"] is True
        assert time.monotonic() - started < 3
        # The conversation is not left busy: the next turn goes ahead.
        await b.send(json.dumps({"type": "send", "conversation": conversation, "content": "?"}))
        assert (await receive_until(b, "done"))[-1]["status"] == "complete"


@pytest.mark.parametrize("orphan_after", ["60"])
async def test_a_turn_after_a_killed_process_interrupts_its_answer_instead_of_waiting(
    cluster: Cluster, upstream: FakeUpstream, database: str
) -> None:
    upstream.script(hanging("Half an answer"), stream(*completion(["Next."])))
    async with cluster.open(0) as a:
        conversation, answer = await start_answer(a)
        await receive_until(a, "delta")
        await checkpointed(database, answer)
    cluster.sites[0].process.send_signal(signal.SIGKILL)
    cluster.sites[0].process.wait(timeout=5)
    async with cluster.open(1) as b:
        await b.send(json.dumps({"type": "send", "conversation": conversation, "content": "?"}))
        frames = await receive_until(b, "done")
    assert not [f for f in frames if f["type"] == "error"]
    assert frames[-1]["status"] == "complete"
    with psycopg.connect(database) as db:
        row = db.execute("SELECT status FROM chat_message WHERE id = %s", (answer,)).fetchone()
    assert row == ("interrupted",)


async def test_nul_characters_are_stored_exactly_as_shown_on_postgresql(
    cluster: Cluster, upstream: FakeUpstream, database: str
) -> None:
    """PostgreSQL refuses NUL, and strings longer than their column: neither costs the answer."""
    odd_end = event(
        {"choices": [{"delta": {}, "finish_reason": "f" * 100}], "model": "m\x00" * 300}
    )
    upstream.script(
        stream(*completion(["before\x00after", " and \x00\x00 end"])[:-3], odd_end, DONE)
    )
    async with cluster.open(0) as a:
        question = "a question \x00 with NUL"
        await a.send(json.dumps({"type": "send", "conversation": None, "content": question}))
        frames = await receive_until(a, "done")
    shown = "".join(f["text"] for f in frames if f["type"] == "delta")
    assert shown == "before\ufffdafter and \ufffd\ufffd end"
    assert frames[-1]["status"] == "complete"
    asked = next(f["message"] for f in frames if f["type"] == "message")
    assert asked["content"] == "a question \ufffd with NUL"
    with psycopg.connect(database) as db:
        rows = db.execute(
            "SELECT role, status, content FROM chat_message ORDER BY created_at"
        ).fetchall()
    assert rows == [
        ("user", "complete", "a question \ufffd with NUL"),
        ("assistant", "complete", shown),
    ]
    assert frames[-1]["finish_reason"] == "f" * 100


# Only the heartbeat can end the answer in time: its row is fresh, the age sweep a minute away.
@pytest.mark.parametrize("orphan_after", ["60"])
async def test_a_killed_process_is_noticed_within_five_seconds(
    cluster: Cluster, upstream: FakeUpstream, database: str
) -> None:
    upstream.script(hanging("Half an answer"))
    async with watched_elsewhere(cluster, database) as (b, _, answer):
        cluster.sites[0].process.send_signal(signal.SIGKILL)
        killed = time.monotonic()
        done = (await receive_until(b, "done", timeout=10))[-1]
        noticed = time.monotonic() - killed
    print(f"a SIGKILLed process was noticed after {noticed:.2f} s")
    assert (done["status"], done["error"]["code"]) == ("interrupted", "interrupted")
    assert noticed < 5
    with psycopg.connect(database) as db:
        row = db.execute("SELECT status, content FROM chat_message WHERE id = %s", (answer,))
        assert row.fetchone() == ("interrupted", "Half an answer")


@pytest.mark.parametrize("drain_timeout", ["30"])
async def test_a_deploy_lets_the_answer_finish_while_its_page_moves_to_another_process(
    cluster: Cluster, upstream: FakeUpstream, database: str
) -> None:
    release = asyncio.Event()
    upstream.script(paused(["Before the deploy. "], release, ["After it."]))
    async with cluster.open(0) as a:
        conversation, answer = await start_answer(a)
        await receive_until(a, "delta")
        cluster.sites[0].process.send_signal(signal.SIGTERM)  # a rolling restart begins
        with pytest.raises(websockets.ConnectionClosed) as closed:
            while True:
                await a.recv()
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 4503  # 1012 stand-in
    # The page reconnects, to the process that stays, and watches the answer there.
    async with cluster.open(1) as b:
        await b.send(json.dumps({"type": "watch", "conversation": conversation}))
        history = json.loads(await b.recv())
        release.set()  # the model goes on writing, to the draining process
        frames = await receive_until(b, "done")
    assert rebuild_from(history, frames, answer) == "Before the deploy. After it."
    assert frames[-1]["status"] == "complete"
    # The draining process exits by itself once its answer is saved.
    assert await asyncio.to_thread(cluster.sites[0].process.wait, 15) is not None
    with psycopg.connect(database) as db:
        row = db.execute("SELECT status, content FROM chat_message WHERE id = %s", (answer,))
        assert row.fetchone() == ("complete", "Before the deploy. After it.")


def heartbeat_ages(database: str) -> list[float]:
    with psycopg.connect(database) as db:
        rows = db.execute("SELECT extract(epoch FROM now() - seen_at) FROM chat_process")
        return [float(age) for (age,) in rows]


# The age sweep a minute away: only the heartbeat could end the answer in the test's time.
@pytest.mark.parametrize("orphan_after", ["60"])
async def test_a_database_that_drops_every_connection_does_not_make_live_processes_look_dead(
    cluster: Cluster, upstream: FakeUpstream, database: str
) -> None:
    """A PostgreSQL restart or failover closes every connection: each process reconnects
    its heartbeat and its check of the others, and nobody's running answer is ended."""
    gate = asyncio.Event()
    upstream.script(paused(["Half an answer, "], gate, ["and the rest."]))
    async with watched_elsewhere(cluster, database) as (b, _, answer):
        with psycopg.connect(database, autocommit=True) as db:
            db.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = %s AND pid <> pg_backend_pid()",
                (database.rsplit("/", 1)[1],),
            )
        # Two process timeouts (4 s each): a process whose beats kept failing is taken for dead.
        deadline = time.monotonic() + 8
        while time.monotonic() < deadline:
            with contextlib.suppress(TimeoutError):
                frame = json.loads(await asyncio.wait_for(b.recv(), 0.5))
                assert frame["type"] != "done", f"the live answer was ended: {frame}"
        ages = heartbeat_ages(database)
        assert len(ages) == 2 and max(ages) < 2, f"a heartbeat stopped after the drop: {ages}"
        gate.set()
        frames = await receive_until(b, "done")
    assert frames[-1]["status"] == "complete"
    with psycopg.connect(database) as db:
        row = db.execute("SELECT status, content FROM chat_message WHERE id = %s", (answer,))
        assert row.fetchone() == ("complete", "Half an answer, and the rest.")


async def test_idle_processes_keep_their_database_connections_instead_of_opening_new_ones(
    cluster: Cluster, database: str
) -> None:
    """The heartbeat and the check of the others run every half second: on connections
    kept open, not a new one each time (hundreds of processes would flood the primary)."""

    def sessions(db: psycopg.Connection[Any]) -> int:
        row = db.execute(
            "SELECT sessions FROM pg_stat_database WHERE datname = %s",
            (database.rsplit("/", 1)[1],),
        ).fetchone()
        assert row is not None
        return int(row[0])

    async with cluster.open(0), cluster.open(1):  # the sweeps start with the first socket
        await asyncio.sleep(1)  # let each process open what it keeps
        with psycopg.connect(database, autocommit=True) as db:
            before = sessions(db)
            await asyncio.sleep(3)  # six rounds of beats and checks in each process
            opened = sessions(db) - before
    assert opened == 0, f"{opened} connections opened in 3 s by two idle processes"
