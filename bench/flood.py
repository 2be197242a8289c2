"""One user flooding histories: ``python -m bench.flood`` (see RESULTS.md).

User 0 asks one very long answer. User 1 (the victim) then streams an answer
twice: alone, and while 30 sockets of user 0 send ``watch`` for that long
answer 5 times a second. The table compares the victim's first delta and gaps
between deltas, and counts what the flooder got. The flooders run in a child
process (``--flooder``), so that reading their histories takes no time from the
event loop that timestamps the victim's deltas. Everything is on 127.0.0.1 and
every wait is bounded.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import re
import sys
import tempfile
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import psutil
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed

from bench.load import open_socket, percentile
from bench.processes import Relay, base_env, django_relay, start, stop
from bench.upstream import expected_text, run

FLOODER, VICTIM = 0, 1  # socket indexes, that is users bench-0 and bench-1
VICTIM_TOKENS, VICTIM_RATE = 300, 30.0
WATCHES_PER_SECOND = 5
WARMUP = 1.0  # seconds of flood before the victim sends
TYPE = re.compile(r'^\{"type":"(\w+)"')


@dataclass
class Answer:
    """One answer as a socket received it."""

    conversation: str = ""
    sent: float = 0.0
    deltas: list[float] = field(default_factory=list)  # arrival times (monotonic)
    text: list[str] = field(default_factory=list)
    status: str = ""


@dataclass
class Row:
    """One line of the table: the victim's answer in a phase, and what the flooder got."""

    phase: str
    answer: Answer
    relay_cpu_s: float
    flood: dict[str, int] = field(default_factory=dict)

    def cells(self) -> list[str]:
        gaps = [b - a for a, b in zip(self.answer.deltas, self.answer.deltas[1:], strict=False)]
        first = self.answer.deltas[0] - self.answer.sent if self.answer.deltas else None
        errors = {k: v for k, v in self.flood.items() if k.startswith("error ")}
        refused = self.flood.get("error slow_down", 0)
        return [
            self.phase,
            ms(first),
            ms(max(gaps, default=None)),
            ms(percentile(gaps, 0.99)),
            str(self.flood.get("history", 0)) if self.flood else "–",
            str(refused) if self.flood else "–",
            str(self.flood.get("closed", 0)) if self.flood else "–",
            f"{self.relay_cpu_s:.2f}",
            f"{self.flood.get('bytes', 0) / 1e6:.1f}" if self.flood else "–",
            ", ".join(f"{k[6:]}: {v}" for k, v in errors.items() if k != "error slow_down") or "–",
        ]


HEADER = (
    "| phase | victim first delta (ms) | victim max gap (ms) | victim p99 gap (ms) "
    "| histories served to the flooder | refused (slow_down) | flooder sockets closed "
    "| relay CPU s | MB sent to the flooder | other errors |\n"
    "|---|---|---|---|---|---|---|---|---|---|"
)


def ms(seconds: float | None) -> str:
    return "–" if seconds is None else f"{seconds * 1000:,.0f}"


def cpu(relay: Relay) -> float:
    times = psutil.Process(relay.pid).cpu_times()
    return float(times.user + times.system)


class Frames:
    """Reassembles ``part`` frames (the fix's large-frame format) into frames."""

    def __init__(self) -> None:
        self.parts: list[str] = []

    def feed(self, raw: str | bytes) -> dict[str, Any] | None:
        frame = orjson.loads(raw)
        if frame["type"] != "part":
            return frame  # type: ignore[no-any-return]
        self.parts.append(frame["data"])
        if not frame["last"]:
            return None
        whole, self.parts = "".join(self.parts), []
        return orjson.loads(whole)  # type: ignore[no-any-return]


async def ask(ws: ClientConnection, tokens: int, rate: float) -> Answer:
    """Ask one question on ``ws`` (echoing pings, as a page does) and read until ``done``."""
    answer, frames = Answer(), Frames()
    content = f"bench id={uuid.uuid4().hex[:12]} n={tokens} rate={rate}"
    answer.sent = time.monotonic()
    await ws.send(json.dumps({"type": "send", "conversation": None, "content": content}))
    while not answer.status:
        raw = await ws.recv()
        now = time.monotonic()
        if (frame := frames.feed(raw)) is None:
            continue
        kind = frame["type"]
        if kind == "delta":
            answer.deltas.append(now)
            answer.text.append(frame["text"])
        elif kind == "conversation":
            answer.conversation = frame["conversation"]["id"]
        elif kind == "ping":
            await ws.send(json.dumps({"type": "pong", "nonce": frame["nonce"]}))
        elif kind == "done":
            answer.status = frame["status"]
        elif kind == "error":
            raise RuntimeError(f"refused: {frame}")
    return answer


# The flooder (child process) ----------------------------------------------------------


async def flood_socket(
    ws: ClientConnection, conversation: str, stopping: asyncio.Event, counts: Counter[str]
) -> None:
    """Send ``watch`` 5 times a second until told to stop; count what comes back."""
    watch = json.dumps({"type": "watch", "conversation": conversation})

    async def send() -> None:
        while not stopping.is_set():
            await ws.send(watch)
            counts["watch sent"] += 1
            await asyncio.sleep(1 / WATCHES_PER_SECOND)

    async def read() -> None:
        inner: str | None = None  # the type of the frame whose parts are arriving
        while True:
            raw = await ws.recv(decode=True)
            counts["bytes"] += len(raw.encode())
            kind = match.group(1) if (match := TYPE.match(raw)) else "?"
            if kind == "part":
                counts["part"] += 1
                part = orjson.loads(raw)
                if inner is None:
                    inner = m.group(1) if (m := TYPE.match(part["data"])) else "?"
                if not part["last"]:
                    continue
                kind, inner = inner, None
            elif kind in ("error", "ping"):
                frame = orjson.loads(raw)
                if kind == "ping":
                    await ws.send(json.dumps({"type": "pong", "nonce": frame["nonce"]}))
                    continue
                kind = f"error {frame['code']}"
            counts[kind] += 1

    tasks = [asyncio.create_task(work()) for work in (send, read, stopping.wait)]
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        failures = [task.exception() for task in done if task is not tasks[2]]
        if closed := next((e for e in failures if isinstance(e, ConnectionClosed)), None):
            counts["closed"] += 1
            counts[f"close code {closed.rcvd.code if closed.rcvd else None}"] += 1
        elif error := next((e for e in failures if e is not None), None):
            raise error
    finally:
        for task in tasks:
            task.cancel()
        await ws.close()


async def flooder(url: str, origin: str, cookie: str, conversation: str, sockets: int) -> None:
    """Flood until stdin closes (at most 5 minutes); print the counts as JSON."""
    relay = Relay("flood", ws_url=url, origin=origin, cookies=[cookie])
    stopping, counts = asyncio.Event(), Counter[str]()
    opened = [await open_socket(relay, FLOODER) for _ in range(sockets)]  # all as user 0
    tasks = [flood_socket(ws, conversation, stopping, counts) for ws in opened]
    floods = asyncio.gather(*tasks, return_exceptions=True)
    print("ready", flush=True)
    stdin = asyncio.StreamReader()
    loop = asyncio.get_running_loop()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(stdin), sys.stdin)
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stdin.read(), 300)
    stopping.set()
    outcomes = await asyncio.wait_for(floods, 60)
    counts["socket errors"] = sum(isinstance(o, BaseException) for o in outcomes)
    print(json.dumps(counts), flush=True)


# The scenario --------------------------------------------------------------------------


async def phase(relay: Relay, name: str, conversation: str | None, sockets: int) -> Row:
    """Stream the victim's answer, alone or during a flood of ``conversation``."""
    ws = await open_socket(relay, VICTIM)
    child: asyncio.subprocess.Process | None = None
    try:
        if conversation:
            command = ["--flooder", relay.ws_url, relay.origin, relay.cookies[FLOODER]]
            child = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "bench.flood",
                *command,
                conversation,
                str(sockets),
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
            )
            assert child.stdout is not None and child.stdin is not None
            ready = await asyncio.wait_for(child.stdout.readline(), 60)
            assert ready.strip() == b"ready", ready
            await asyncio.sleep(WARMUP)
        cpu0 = cpu(relay)
        answer = await asyncio.wait_for(ask(ws, VICTIM_TOKENS, VICTIM_RATE), 120)
        counts: dict[str, int] = {}
        if child is not None:
            assert child.stdin is not None and child.stdout is not None
            child.stdin.close()
            counts = json.loads(await asyncio.wait_for(child.stdout.readline(), 90))
            await asyncio.wait_for(child.wait(), 30)
        row = Row(name, answer, cpu(relay) - cpu0, counts)
    finally:
        await ws.close()
        if child is not None and child.returncode is None:
            child.kill()
            await child.wait()
    if answer.status != "complete" or "".join(answer.text) != expected_text(VICTIM_TOKENS):
        print(f"victim's answer in {name}: status {answer.status}, text differs", file=sys.stderr)
    return row


async def scenario(tokens: int, sockets: int) -> list[Row]:
    env = base_env()
    upstream_process, port = start(
        [sys.executable, "-m", "bench.upstream"], env, r"listening (\d+)"
    )
    try:
        with tempfile.TemporaryDirectory() as workdir:
            database = f"sqlite:///{Path(workdir) / 'flood'}.sqlite3"
            upstream = f"http://127.0.0.1:{port}/v1"
            with django_relay("django-daphne", upstream, "daphne", database) as relay:
                ws = await open_socket(relay, FLOODER)
                try:
                    big = await asyncio.wait_for(ask(ws, tokens, 0), 300)
                finally:
                    await ws.close()
                size = sum(len(t.encode()) for t in big.text)
                print(f"flooder's answer: {tokens:,} tokens, {size / 1e3:,.0f} KB, {big.status}")
                baseline = await phase(relay, "baseline", None, sockets)
                flooded = await phase(
                    relay, f"{sockets} sockets × watch 5/s", big.conversation, sockets
                )
                return [baseline, flooded]
    finally:
        stop(upstream_process)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.flood", description=__doc__)
    parser.add_argument("--tokens", type=int, default=100_000, help="the flooded answer's tokens")
    parser.add_argument("--sockets", type=int, default=30, help="the flooder's sockets")
    parser.add_argument("--flooder", nargs=5, metavar="ARG", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.flooder:
        url, origin, cookie, conversation, sockets = args.flooder
        run(flooder(url, origin, cookie, conversation, int(sockets)))
        return
    import chat

    print(f"chat from {Path(chat.__file__).parent}")
    rows: list[Row] = []

    async def go() -> None:
        rows.extend(await scenario(args.tokens, args.sockets))

    run(go())
    print(HEADER)
    for row in rows:
        print("| " + " | ".join(row.cells()) + " |")
    for row in rows:
        if row.flood:
            print(f"flooder counts: {dict(sorted(row.flood.items()))}")


if __name__ == "__main__":
    main()
