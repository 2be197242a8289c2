"""The relay benchmark: ``python -m bench`` (see bench/README section in RESULTS.md).

Starts the fast fake upstream, then each relay in its own process, drives the
same scenarios against each with websocket clients in this process, and writes
the tables into ``bench/RESULTS.md`` (between the ``results`` markers). The
relay's CPU time and memory are read with psutil from its process. Everything
runs on 127.0.0.1 and every wait is bounded.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import json
import os
import platform
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import httpx
import orjson
import psutil
from websockets.asyncio.client import ClientConnection, connect

from bench.upstream import expected_text, run
from chat import network
from chat.sse import SSEDecoder

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
RESULTS = BENCH / "RESULTS.md"
START, END = "<!-- results:start -->", "<!-- results:end -->"
USERS = 1000  # as many as the most sockets a scenario opens


@dataclass(frozen=True)
class Scenario:
    name: str
    streams: int = 0
    tokens: int = 0
    rate: float = 0.0  # tokens per second per stream; 0 = as fast as possible
    idle_sockets: int = 0


# Idle sockets first: the relay's memory is measured before anything else grew its heap.
FULL = [
    Scenario("1,000 idle sockets", idle_sockets=1000),
    Scenario("1 stream × 500 tokens at 100/s", 1, 500, 100),
    Scenario("100 streams × 300 tokens at 30/s", 100, 300, 30),
    Scenario("500 streams × 300 tokens at 30/s", 500, 300, 30),
    Scenario("20 streams × 2,000 tokens, as fast as possible", 20, 2000, 0),
]
QUICK = [
    Scenario("20 idle sockets", idle_sockets=20),
    Scenario("8 streams × 40 tokens at 200/s", 8, 40, 200),
    Scenario("2 streams × 200 tokens, as fast as possible", 2, 200, 0),
]


@dataclass
class Result:
    relay: str
    scenario: str
    streams: int = 0
    completed: int = 0
    errors: int = 0
    latency_p50_ms: float | None = None
    latency_p99_ms: float | None = None
    latency_max_ms: float | None = None
    first_delta_p50_ms: float | None = None
    frames: int = 0
    tokens: int = 0
    seconds: float = 0.0
    relay_cpu_s: float | None = None
    loadgen_cpu_s: float = 0.0
    db_writes: int | None = None
    rss_per_socket_kb: float | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def tokens_per_cpu_s(self) -> float | None:
        return self.tokens / self.relay_cpu_s if self.relay_cpu_s else None

    @property
    def frames_per_cpu_s(self) -> float | None:
        return self.frames / self.relay_cpu_s if self.relay_cpu_s else None


# Relays -----------------------------------------------------------------------------


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


def base_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "CHAT_"))}
    env["PYTHONPATH"] = str(ROOT)
    return env


@contextlib.contextmanager
def postgres_database() -> Iterator[str]:
    """A fresh PostgreSQL database on this machine's server, dropped afterwards."""
    import psycopg

    server = os.environ.get("BENCH_POSTGRES", "postgres://postgres@127.0.0.1:5432")
    name = f"chat_bench_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(f"{server}/postgres", autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"{server}/{name}"
    finally:
        with psycopg.connect(f"{server}/postgres", autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


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
            yield first


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


# Load generation ------------------------------------------------------------------------


def token_ends(n: int) -> list[int]:
    """Code-point offsets where each token of the expected text ends."""
    ends, total = [], 0
    for i in range(n):
        total += len(f"w{i} ")
        ends.append(total)
    return ends


@dataclass
class Stream:
    id: str
    sent_at: float = 0.0
    arrivals: list[tuple[float, int, int]] = field(default_factory=list)  # (time, index, length)
    text: list[str] = field(default_factory=list)
    error: str | None = None


async def open_socket(relay: Relay, index: int = 0) -> ClientConnection:
    headers = {}
    if relay.cookies:
        headers["Cookie"] = relay.cookies[index % len(relay.cookies)]
    if relay.origin:
        headers["Origin"] = relay.origin
    return await connect(
        relay.ws_url,
        additional_headers=headers,
        compression=None,
        max_size=None,
        open_timeout=60,
        ping_interval=None,
    )


async def open_sockets(relay: Relay, count: int) -> list[ClientConnection]:
    gate = asyncio.Semaphore(50)  # a listen backlog overflows when thousands connect at once

    async def one(index: int) -> ClientConnection:
        async with gate:
            return await open_socket(relay, index)

    return list(await asyncio.gather(*(one(i) for i in range(count))))


async def drive(socket: ClientConnection, stream: Stream, scenario: Scenario) -> None:
    clock, loads = time.time, orjson.loads
    stream.sent_at = clock()
    await socket.send(
        json.dumps(
            {
                "type": "send",
                "conversation": None,
                "content": f"bench id={stream.id} n={scenario.tokens} rate={scenario.rate}",
            }
        )
    )
    while True:
        raw = await socket.recv()
        now = clock()
        frame = loads(raw)
        kind = frame["type"]
        if kind == "delta":
            stream.arrivals.append((now, frame["index"], len(frame["text"])))
            stream.text.append(frame["text"])
        elif kind == "done":
            if frame["status"] != "complete":
                stream.error = f"status {frame['status']}: {frame.get('error')}"
            return
        elif kind == "error":
            stream.error = f"error frame: {frame}"
            return


async def drive_pair(
    sender: ClientConnection, watcher: ClientConnection, stream: Stream, scenario: Scenario
) -> None:
    """Start the answer on one process and measure it on a socket of the other."""
    clock, loads = time.time, orjson.loads
    stream.sent_at = clock()
    content = f"bench id={stream.id} n={scenario.tokens} rate={scenario.rate}"
    await sender.send(json.dumps({"type": "send", "conversation": None, "content": content}))
    while (frame := loads(await sender.recv()))["type"] != "conversation":
        pass
    drain = asyncio.create_task(drain_socket(sender))
    try:
        await watcher.send(
            json.dumps({"type": "watch", "conversation": frame["conversation"]["id"]})
        )
        history = loads(await watcher.recv())
        # Text already in the history measures how late the watcher joined, not the
        # relay: it counts for the exact-text check but not for latency.
        stream.text.append(history["messages"][-1]["content"])
        while True:
            raw = await watcher.recv()
            now = clock()
            frame = loads(raw)
            if frame["type"] == "delta":
                stream.arrivals.append((now, frame["index"], len(frame["text"])))
                stream.text.append(frame["text"])
            elif frame["type"] == "done":
                if frame["status"] != "complete":
                    stream.error = f"status {frame['status']}: {frame.get('error')}"
                return
    finally:
        drain.cancel()


async def drain_socket(socket: ClientConnection) -> None:
    async for _ in socket:
        pass


async def drive_direct(
    client: httpx.AsyncClient, upstream: str, stream: Stream, scenario: Scenario
) -> None:
    clock, loads = time.time, orjson.loads
    body = {
        "model": "bench",
        "stream": True,
        "messages": [
            {
                "role": "user",
                "content": f"bench id={stream.id} n={scenario.tokens} rate={scenario.rate}",
            }
        ],
    }
    decoder = SSEDecoder()
    index = 0
    stream.sent_at = clock()
    async with client.stream("POST", f"{upstream}/chat/completions", json=body) as response:
        async for chunk in response.aiter_raw():
            now = clock()
            texts = []
            for event in decoder.feed(chunk):
                if event.data != "[DONE]":
                    choices = loads(event.data)["choices"]
                    if choices and (text := choices[0]["delta"].get("content")):
                        texts.append(text)
            if texts:
                text = "".join(texts)
                stream.arrivals.append((now, index, len(text)))
                stream.text.append(text)
                index += len(text)


def cpu_seconds(relay: Relay | None) -> float | None:
    """CPU time of the relay's process (and of its peer process, if any)."""
    if relay is None or relay.pid is None:
        return None
    times = psutil.Process(relay.pid).cpu_times()
    total = float(times.user + times.system)
    peer = cpu_seconds(relay.peer)
    return total + (peer or 0.0)


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def run_streams(relay: Relay | None, upstream: str, scenario: Scenario) -> Result:
    result = Result(relay.name if relay else "direct", scenario.name, streams=scenario.streams)
    streams = [Stream(uuid.uuid4().hex[:12]) for _ in range(scenario.streams)]
    timeout = 60 + (scenario.tokens / scenario.rate if scenario.rate else 60)
    writes_before = await db_writes(relay)
    me = psutil.Process()
    if relay is None:
        # The floor: the fastest reader we have, the chat app's own transport.
        async with httpx.AsyncClient(transport=network.Transport(), timeout=60) as client:
            cpu0, own0, t0 = None, me.cpu_times(), time.monotonic()
            outcomes = await asyncio.gather(
                *(
                    asyncio.wait_for(drive_direct(client, upstream, s, scenario), timeout)
                    for s in streams
                ),
                return_exceptions=True,
            )
            cpu1 = None
    else:
        sockets = await open_sockets(relay, scenario.streams)
        watchers = await open_sockets(relay.peer, scenario.streams) if relay.peer else []
        try:
            cpu0, own0, t0 = cpu_seconds(relay), me.cpu_times(), time.monotonic()
            if relay.peer:
                runs = [
                    drive_pair(ws, watcher, s, scenario)
                    for ws, watcher, s in zip(sockets, watchers, streams, strict=True)
                ]
            else:
                runs = [drive(ws, s, scenario) for ws, s in zip(sockets, streams, strict=True)]
            outcomes = await asyncio.gather(
                *(asyncio.wait_for(run, timeout) for run in runs), return_exceptions=True
            )
            cpu1 = cpu_seconds(relay)
        finally:
            await asyncio.gather(
                *(ws.close() for ws in [*sockets, *watchers]), return_exceptions=True
            )
    result.seconds = time.monotonic() - t0
    own1 = me.cpu_times()
    result.loadgen_cpu_s = (own1.user + own1.system) - (own0.user + own0.system)
    if cpu0 is not None and cpu1 is not None:
        result.relay_cpu_s = cpu1 - cpu0
    writes_after = await db_writes(relay)
    if writes_before is not None and writes_after is not None:
        result.db_writes = writes_after - writes_before

    ends = token_ends(scenario.tokens)
    expected = expected_text(scenario.tokens)
    latencies: list[float] = []
    first: list[float] = []
    async with httpx.AsyncClient(timeout=30) as client:
        for stream, outcome in zip(streams, outcomes, strict=True):
            emitted = (
                await client.get(f"{upstream.removesuffix('/v1')}/emissions?id={stream.id}")
            ).json()
            if isinstance(outcome, BaseException):
                stream.error = repr(outcome)
            elif (got := "".join(stream.text)) != expected:
                pairs = enumerate(zip(got, expected, strict=False))
                at = next((i for i, (a, b) in pairs if a != b), None)
                at = min(len(got), len(expected)) if at is None else at
                stream.error = (
                    f"text differs from what the upstream sent at {at} (of {len(expected)}): "
                    f"got {got[at : at + 20]!r}, expected {expected[at : at + 20]!r}"
                )
            if stream.error:
                result.errors += 1
                if len(result.notes) < 3:
                    result.notes.append(stream.error[:200])
                continue
            result.completed += 1
            result.frames += len(stream.arrivals)
            result.tokens += scenario.tokens
            if stream.arrivals:
                first.append(stream.arrivals[0][0] - stream.sent_at)
            if scenario.rate and len(emitted) == scenario.tokens and stream.arrivals:
                first_index = stream.arrivals[0][1]
                token = next((i for i, end in enumerate(ends) if end > first_index), len(ends))
                for arrived, index, length in stream.arrivals:
                    while token < len(ends) and ends[token] <= index + length:
                        latencies.append(arrived - emitted[token])
                        token += 1
    ms = 1000.0
    if latencies:
        result.latency_p50_ms = percentile(latencies, 0.5) * ms  # type: ignore[operator]
        result.latency_p99_ms = percentile(latencies, 0.99) * ms  # type: ignore[operator]
        result.latency_max_ms = max(latencies) * ms
    if first:
        result.first_delta_p50_ms = percentile(first, 0.5) * ms  # type: ignore[operator]
    return result


async def db_writes(relay: Relay | None) -> int | None:
    if relay is None or relay.stats_url is None:
        return None
    async with httpx.AsyncClient(timeout=30) as client:
        count = int((await client.get(relay.stats_url)).json()["db_writes"])
    return count + (await db_writes(relay.peer) or 0)


async def run_idle(relay: Relay, scenario: Scenario) -> Result:
    result = Result(relay.name, scenario.name, streams=scenario.idle_sockets)
    process = psutil.Process(relay.pid)
    await asyncio.sleep(0.5)  # let the relay settle after the previous scenario's sockets closed
    before = process.memory_info().rss
    sockets: list[ClientConnection] = []
    try:
        gate = asyncio.Semaphore(50)

        async def one(index: int) -> None:
            async with gate:
                sockets.append(await open_socket(relay, index))

        outcomes = await asyncio.gather(
            *(one(i) for i in range(scenario.idle_sockets)), return_exceptions=True
        )
        result.errors = sum(isinstance(o, BaseException) for o in outcomes)
        result.completed = len(sockets)
        # A round trip on every socket proves each one is really open and served.
        probes = await asyncio.gather(*(probe(ws) for ws in sockets), return_exceptions=True)
        result.errors += sum(isinstance(p, BaseException) for p in probes)
        after = process.memory_info().rss
        if sockets:
            result.rss_per_socket_kb = (after - before) / len(sockets) / 1024
    finally:
        await asyncio.gather(*(ws.close() for ws in sockets), return_exceptions=True)
    return result


async def probe(ws: ClientConnection) -> None:
    pong = await ws.ping()
    await asyncio.wait_for(pong, 30)


# Orchestration -----------------------------------------------------------------------


RELAYS = [
    "direct",
    "django-daphne",
    "django-daphne-asyncio",
    "django-uvicorn",
    "django-daphne-redis-x2",
    "bare-python",
    "node",
]


async def bench(relays: list[str], scenarios: list[Scenario]) -> list[Result]:
    results: list[Result] = []
    env = base_env()
    upstream_process, upstream_port = start(
        [sys.executable, "-m", "bench.upstream"], env, r"listening (\d+)"
    )
    upstream = f"http://127.0.0.1:{upstream_port}/v1"
    try:
        with tempfile.TemporaryDirectory() as workdir:

            def sqlite(name: str) -> str:
                return f"sqlite:///{Path(workdir) / name}.sqlite3"

            for name in relays:
                factory: Callable[[], contextlib.AbstractContextManager[Relay]] | None
                factory = {
                    "django-daphne": lambda: django_relay(
                        "django-daphne", upstream, "daphne", sqlite("django-daphne")
                    ),
                    "django-daphne-asyncio": lambda: django_relay(
                        "django-daphne-asyncio",
                        upstream,
                        "daphne-asyncio",
                        sqlite("django-daphne-asyncio"),
                    ),
                    "django-uvicorn": lambda: django_relay(
                        "django-uvicorn", upstream, "uvicorn", sqlite("django-uvicorn")
                    ),
                    "django-daphne-redis-x2": lambda: django_cluster(upstream),
                    "bare-python": lambda: bare_relay(upstream),
                    "node": lambda: node_relay(upstream),
                }.get(name)
                if factory is None:
                    for scenario in scenarios:
                        if scenario.streams:
                            results.append(await run_streams(None, upstream, scenario))
                            print(summary(results[-1]), flush=True)
                    continue
                with factory() as relay:
                    for scenario in scenarios:
                        if relay.peer and not scenario.streams:
                            continue  # idle memory is the single-process rows' business
                        if scenario.streams:
                            results.append(await run_streams(relay, upstream, scenario))
                        else:
                            results.append(await run_idle(relay, scenario))
                        print(summary(results[-1]), flush=True)
                        if results[-1].errors and relay.pid in LOGS:
                            print("".join(LOGS[relay.pid]), file=sys.stderr)
    finally:
        stop(upstream_process)
    return results


def summary(result: Result) -> str:
    return (
        f"{result.relay:15} {result.scenario:50} ok={result.completed}/{result.streams} "
        f"p50={fmt(result.latency_p50_ms, 2)}ms p99={fmt(result.latency_p99_ms, 2)}ms "
        f"tok/cpu-s={fmt(result.tokens_per_cpu_s, 0)} "
        f"rss/socket={fmt(result.rss_per_socket_kb, 1)}KB"
    )


def fmt(value: float | None, digits: int) -> str:
    if value is None:
        return "–"
    return f"{value:,.{digits}f}"


def ratio(value: float | None, base: float | None) -> str:
    if value is None or not base:
        return "–"
    return f"{value / base:.2f}×"


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    node = (
        subprocess.run(["node", "--version"], capture_output=True, text=True).stdout.strip()
        if shutil.which("node")
        else "absent"
    )
    return (
        f"{time.strftime('%Y-%m-%d')}, {cpu}, {psutil.cpu_count()} cores, "
        f"{psutil.virtual_memory().total / 2**30:.0f} GiB, Python {platform.python_version()}, "
        f"Node {node}"
    )


def report(results: list[Result], command: str) -> str:
    lines = [f"Generated by `{command}` on {machine()}.", ""]
    by_scenario: dict[str, list[Result]] = {}
    for result in results:
        by_scenario.setdefault(result.scenario, []).append(result)
    for scenario, rows in by_scenario.items():
        lines += [f"### {scenario}", ""]
        direct = next((r for r in rows if r.relay == "direct"), None)
        node = next((r for r in rows if r.relay == "node"), None)
        if rows[0].rss_per_socket_kb is not None or "idle" in scenario:
            lines += [
                "| relay | sockets open | errors | RSS per idle socket |",
                "|---|---|---|---|",
            ]
            lines += [
                f"| {r.relay} | {r.completed}/{r.streams} | {r.errors} | "
                f"{fmt(r.rss_per_socket_kb, 1)} KB |"
                for r in rows
            ]
            lines.append("")
            continue
        lines += [
            "| relay | completed | errors | added latency p50 / p99 / max (ms) | p50 over direct "
            "| first delta p50 (ms) | delta frames/s | tokens per relay CPU-s | vs Node "
            "| frames per relay CPU-s | DB writes per stream |",
            "|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r in rows:
            over = (
                fmt(r.latency_p50_ms - direct.latency_p50_ms, 2)
                if direct
                and r.latency_p50_ms is not None
                and direct.latency_p50_ms is not None
                and r is not direct
                else "–"
            )
            writes = (
                fmt(r.db_writes / r.completed, 1)
                if r.db_writes is not None and r.completed
                else "–"
            )
            latency = " / ".join(
                (fmt(r.latency_p50_ms, 2), fmt(r.latency_p99_ms, 2), fmt(r.latency_max_ms, 1))
            )
            rate = fmt(r.frames / r.seconds if r.seconds else None, 0)
            vs_node = ratio(r.tokens_per_cpu_s, node.tokens_per_cpu_s if node else None)
            lines.append(
                f"| {r.relay} | {r.completed}/{r.streams} | {r.errors} | {latency} | {over} "
                f"| {fmt(r.first_delta_p50_ms, 1)} | {rate} | {fmt(r.tokens_per_cpu_s, 0)} "
                f"| {vs_node} | {fmt(r.frames_per_cpu_s, 0)} | {writes} |"
            )
        notes = [f"{r.relay}: {n}" for r in rows for n in r.notes]
        if notes:
            lines += ["", "Errors: " + "; ".join(notes)]
        lines.append("")
    return "\n".join(lines)


def write_results(text: str, path: Path) -> None:
    if path.exists() and START in path.read_text():
        before, rest = path.read_text().split(START, 1)
        after = rest.split(END, 1)[1] if END in rest else ""
        path.write_text(f"{before}{START}\n{text}\n{END}{after}")
    else:
        path.write_text(f"# Benchmark results\n\n{START}\n{text}\n{END}\n")


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="tiny scenarios (for the test suite)")
    parser.add_argument("--relays", default=",".join(RELAYS), help=f"comma-separated: {RELAYS}")
    parser.add_argument("--output", type=Path, default=RESULTS, help="the Markdown file to update")
    parser.add_argument("--json", type=Path, help="also write the raw results as JSON here")
    parser.add_argument("--only", help="run only the scenarios whose name contains this text")
    args = parser.parse_args()
    relays = [r for r in args.relays.split(",") if r]
    unknown = set(relays) - set(RELAYS)
    if unknown:
        parser.error(f"unknown relays: {sorted(unknown)}")
    scenarios = QUICK if args.quick else FULL
    if args.only:
        scenarios = [s for s in scenarios if args.only in s.name]
    holder: list[list[Result]] = []

    async def go() -> None:
        holder.append(await bench(relays, scenarios))

    run(go())
    results = holder[0]
    command = "python -m bench" + (" --quick" if args.quick else "")
    write_results(report(results, command), args.output)
    if args.json:
        args.json.write_text(
            json.dumps(
                [{**asdict(r), "tokens_per_cpu_s": r.tokens_per_cpu_s} for r in results], indent=1
            )
        )
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
