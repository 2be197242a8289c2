"""Starting and stopping the servers the benchmark measures: the fake upstream and each relay.

Each relay runs in a process of its own, started here and stopped when its
``with`` block ends; its output is kept (``LOGS``) for error reports. The test
suite uses ``postgres_database`` from here too, so this module imports nothing
heavy and nothing from the load generator.
"""

from __future__ import annotations

import collections
import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
USERS = 1000  # as many as the most sockets a scenario opens


@dataclass
class Relay:
    name: str
    ws_url: str = ""
    origin: str = ""
    #: One logged-in user per socket (socket i is user i): 500 people, not one with 500 tabs.
    cookies: list[str] = field(default_factory=list)
    stats_url: str | None = None
    process: subprocess.Popen[str] | None = None
    #: A second process on the same Redis and database: watchers connect there.
    peer: Relay | None = None
    #: The relay's database is PostgreSQL on this machine: its CPU is reported too.
    postgres: bool = False
    #: Each stream is also watched by a second socket of this same process (the
    #: one-process baseline of the two-process row: the same sockets, no Redis).
    watched: bool = False

    @property
    def watchers_on(self) -> Relay | None:
        """Where each stream's second socket connects, if it has one."""
        return self.peer or (self if self.watched else None)

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def start(
    command: list[str], env: dict[str, str], pattern: str, cwd: Path = ROOT
) -> tuple[subprocess.Popen[str], int]:
    """Start a server; return it and the port it printed (within 60 s)."""
    process = subprocess.Popen(
        command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    assert process.stdout is not None
    deadline = time.monotonic() + 60
    seen = []
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            break
        seen.append(line)
        if match := re.search(pattern, line):
            # Keep draining its output so that a chatty server never blocks on a full pipe.
            drain(process)
            return process, int(match.group(1))
    process.kill()
    raise RuntimeError(f"{command[0]} did not start:\n{''.join(seen)}")


LOGS: dict[int, collections.deque[str]] = {}


def drain(process: subprocess.Popen[str]) -> None:
    """Read a server's output in a thread, keeping its last lines for error reports."""
    lines = LOGS[process.pid] = collections.deque(maxlen=60)

    def read() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            lines.append(line)

    threading.Thread(target=read, daemon=True).start()


def stop(process: subprocess.Popen[str] | None) -> None:
    if process is None:
        return
    process.terminate()
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@contextlib.contextmanager
def profiled(relay: Relay, scenario: str) -> Iterator[None]:
    """With ``BENCH_PROFILE=<folder>``, py-spy samples the relay (and its peer) meanwhile.

    Folded stacks (``--format raw``, idle threads left out, ``--native`` unless
    ``BENCH_PROFILE_NATIVE=0``) go to ``<folder>/<relay>-<scenario>-<pid>.txt``;
    ``python -m bench.profile`` sums them up. Sampling pauses the relay for each
    native sample and shares the CPU: profiled runs are not timed runs. The rate is
    ``BENCH_PROFILE_RATE`` a second (default 250; 50 for a native profile, whose
    pauses at 250 a second saturated the relay at 100 streams and failed 500).
    """
    folder = os.environ.get("BENCH_PROFILE")
    spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not folder or not Path(spy).exists():
        yield
        return
    Path(folder).mkdir(parents=True, exist_ok=True)
    native = os.environ.get("BENCH_PROFILE_NATIVE", "1") != "0"
    rate = os.environ.get("BENCH_PROFILE_RATE", "50" if native else "250")
    samplers = []
    for target in (relay, relay.peer):
        if target is None or target.pid is None:
            continue
        slug = re.sub(r"\W+", "-", f"{relay.name}-{scenario}").strip("-")
        output = Path(folder) / f"{slug}-{target.pid}.txt"
        command = [spy, "record", "--pid", str(target.pid), "--rate", rate, "--format", "raw"]
        # py-spy reads native stacks only from a paused process; otherwise it need not pause it.
        command += ["--output", str(output), "--native" if native else "--nonblocking"]
        samplers.append(
            subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        )
    try:
        yield
    finally:
        for sampler in samplers:
            sampler.send_signal(signal.SIGINT)
        for sampler in samplers:
            sampler.wait(timeout=60)


def base_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "CHAT_"))}
    env["PYTHONPATH"] = str(ROOT)
    return env


@contextlib.contextmanager
def postgres_database(server: str | None = None) -> Iterator[str]:
    """A fresh PostgreSQL database on ``server`` (default: this machine's), dropped afterwards."""
    import psycopg

    server = server or os.environ.get("BENCH_POSTGRES", "postgres://postgres@127.0.0.1:5432")
    name = f"chat_bench_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(f"{server}/postgres", autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"{server}/{name}"
    finally:
        with psycopg.connect(f"{server}/postgres", autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def wait_for_backends_to_exit(database: str, timeout: float = 30.0) -> None:
    """Until the relay's connections are gone: a backend flushes its statistics as it
    exits (idle ones only every ten seconds), so the commit counter is whole then."""
    deadline = time.monotonic() + timeout
    import psycopg

    with psycopg.connect(database, autocommit=True) as db:
        while time.monotonic() < deadline:
            row = db.execute(
                "SELECT count(*) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid()"
            ).fetchone()
            if row is not None and row[0] == 0:
                return
            time.sleep(0.05)
    raise TimeoutError("the relay's database connections did not close")


@contextlib.contextmanager
def django_cluster(upstream: str) -> Iterator[Relay]:
    """Two daphne processes on Redis and PostgreSQL: answers run on one, watchers on the other."""
    redis = os.environ.get("BENCH_REDIS", "redis://127.0.0.1:6379/0")
    with postgres_database() as database:
        extra = {"REDIS_URL": redis, "REDIS_PREFIX": f"chat-bench-{uuid.uuid4().hex[:8]}"}
        with (
            django_relay("django-daphne-redis-x2", upstream, "daphne", database, extra) as first,
            django_relay("peer", upstream, "daphne", database, extra) as second,
        ):
            first.peer = second
            first.postgres = True
            yield first


@contextlib.contextmanager
def django_postgres(name: str, upstream: str, server: str) -> Iterator[Relay]:
    """One relay process on a fresh PostgreSQL database, as production runs it."""
    with postgres_database() as database, django_relay(name, upstream, server, database) as relay:
        relay.postgres = True
        yield relay


@contextlib.contextmanager
def django_watched(upstream: str) -> Iterator[Relay]:
    """One daphne process on PostgreSQL, each answer watched by a second socket of it."""
    with (
        postgres_database() as database,
        django_relay("django-daphne-pg-watched", upstream, "daphne", database) as relay,
    ):
        relay.watched = relay.postgres = True
        yield relay


@contextlib.contextmanager
def django_relay(
    name: str, upstream: str, server: str, database: str, extra: dict[str, str] | None = None
) -> Iterator[Relay]:
    env = base_env()
    env.update(
        DJANGO_SETTINGS_MODULE="bench.settings",
        DATABASE_URL=database,
        BENCH_UPSTREAM_URL=upstream,
        **(extra or {}),
    )
    keys = subprocess.run(
        [sys.executable, "-m", "bench.prepare", str(USERS)],
        env=env,
        cwd=ROOT,
        check=True,
        capture_output=True,
        text=True,
    ).stdout.split()
    if server in ("daphne", "daphne-asyncio"):
        # As the README serves it: daphne on uvloop (chat.server), or daphne itself.
        command = [
            sys.executable,
            "-m",
            "chat.server" if server == "daphne" else "daphne",
            "-v",
            "1",
            "-b",
            "127.0.0.1",
            "-p",
            "0",
            "project.asgi:application",
        ]
        process, port = start(command, env, r"Listening on TCP address [\d.]+:(\d+)")
    else:
        port = free_port()
        command = [
            sys.executable,
            "-m",
            "uvicorn",
            "project.asgi:application",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--no-access-log",
            "--log-level",
            "info",
            "--ws",
            "websockets",
        ]
        process, port = start(command, env, r"Uvicorn running on http://127.0.0.1:(\d+)")
    try:
        yield Relay(
            name,
            ws_url=f"ws://127.0.0.1:{port}/ws/chat/",
            origin=f"http://127.0.0.1:{port}",
            cookies=[f"sessionid={key}" for key in keys],
            stats_url=f"http://127.0.0.1:{port}/bench/stats/",
            process=process,
        )
    finally:
        stop(process)


@contextlib.contextmanager
def node_relay(upstream: str) -> Iterator[Relay]:
    folder = BENCH / "relays" / "node"
    if not (folder / "node_modules" / "eventsource-parser").exists():
        npm = shutil.which("npm")
        if npm is None:
            raise RuntimeError("npm is needed for the Node relay")
        subprocess.run(
            [npm, "install", "--no-package-lock", "--no-audit", "--no-fund", "--silent"],
            cwd=folder,
            check=True,
        )
    process, port = start(
        ["node", "relay.js", upstream, "0"], base_env(), r"listening (\d+)", cwd=folder
    )
    try:
        yield Relay("node", ws_url=f"ws://127.0.0.1:{port}/ws/chat/", process=process)
    finally:
        stop(process)


@contextlib.contextmanager
def bare_relay(upstream: str) -> Iterator[Relay]:
    command = [sys.executable, "-m", "bench.relays.bare", "--upstream", upstream]
    process, port = start(command, base_env(), r"listening (\d+)")
    try:
        yield Relay("bare-python", ws_url=f"ws://127.0.0.1:{port}/ws/chat/", process=process)
    finally:
        stop(process)
