"""The load generator: websocket clients that drive the scenarios against a relay and time it.

``bench()`` starts the fake upstream and each relay (``bench.processes``), runs
every scenario against it from this process, and returns one ``Result`` a row.
The timing code lives here, apart from process management and the report, so
that what is measured and how can be read in one place.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import orjson
import psutil
from websockets.asyncio.client import ClientConnection, connect

from bench.processes import (
    LOGS,
    Relay,
    bare_relay,
    base_env,
    django_cluster,
    django_postgres,
    django_relay,
    django_watched,
    node_relay,
    profiled,
    start,
    stop,
)
from bench.report import summary
from bench.scenarios import Result, Scenario
from bench.upstream import expected_text
from chat import network
from chat.sse import SSEDecoder


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
        if history["messages"][-1]["status"] != "streaming":
            return  # it ended before the watcher joined: the history holds all of it
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


def postgres_cpu_seconds() -> float:
    """CPU time of this machine's PostgreSQL server processes (all of them)."""
    total = 0.0
    for process in psutil.process_iter(["name", "cpu_times"]):
        times = process.info["cpu_times"]
        if process.info["name"] in ("postgres", "postmaster") and times is not None:
            total += times.user + times.system
    return total


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
        watch_on = relay.watchers_on
        watchers = await open_sockets(watch_on, scenario.streams) if watch_on else []
        try:
            # Sampled once the sockets are open: a native sample pauses the relay,
            # and hundreds of handshakes meanwhile would time out.
            with profiled(relay, scenario.name):
                cpu0, own0, t0 = cpu_seconds(relay), me.cpu_times(), time.monotonic()
                database0 = postgres_cpu_seconds() if relay.postgres else None
                if watch_on:
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
                if database0 is not None:
                    result.database_cpu_s = postgres_cpu_seconds() - database0
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
    "django-daphne-pg",
    "django-uvicorn-pg",
    "django-daphne-pg-watched",
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
                    "django-daphne-pg": lambda: django_postgres(
                        "django-daphne-pg", upstream, "daphne"
                    ),
                    "django-uvicorn-pg": lambda: django_postgres(
                        "django-uvicorn-pg", upstream, "uvicorn"
                    ),
                    "django-daphne-pg-watched": lambda: django_watched(upstream),
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
                        if relay.watchers_on and not scenario.streams:
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
