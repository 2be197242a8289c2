"""Turns spread out in time, one process's limit: ``python -m bench.steady``.

``python -m bench`` starts every stream in the same instant, a reconnect storm.
Users' turns arrive one after another, so here socket *i* of N starts
at *i*/N of an answer's duration and then asks ``--answers`` answers back to
back: turns arrive at N per answer's duration and N answers stream at once.
Only each socket's middle answer, when all N stream, is timed, the bench's way
(added latency per token against the upstream's emission time; first delta
from ``send``), and CPU is read over that middle window. ``--mode burst`` runs
the bench's own ``run_streams`` instead (every stream at once).

Relays: ``daphne`` and ``uvicorn`` as in the bench (SQLite, in-memory layer);
``daphne-pg`` (``python -m chat.server`` on a fresh PostgreSQL database and
Redis pub/sub, as deployed); ``daphne-x2`` (the bench's two-process cluster,
``--share`` of the answers watched from the second process). On PostgreSQL it
counts, per answer, write transactions, rows, WAL and Redis commands (on a
Redis of its own, so nobody else's commands are counted). The machine is
shared: each run first waits for the 1-minute load average to drop under
``--max-load`` (and the last 5 s under ``--max-busy`` cores) and records it, and
"others" is the CPU everything else used.
The capacity model (docs/capacity.md) takes its per-process inputs from here.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from bisect import bisect_right
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal, NamedTuple

import httpx
import psutil
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import WebSocketException

from bench.load import (
    Stream,
    cpu_seconds,
    drive,
    drive_pair,
    open_socket,
    open_sockets,
    percentile,
    postgres_cpu_seconds,
    run_streams,
    token_ends,
)
from bench.processes import (
    ROOT,
    Relay,
    base_env,
    django_cluster,
    django_relay,
    free_port,
    postgres_database,
    start,
    stop,
    wait_for_backends_to_exit,
)
from bench.report import fmt
from bench.scenarios import Scenario
from bench.upstream import expected_text, run

RelayName = Literal["daphne", "uvicorn", "daphne-pg", "daphne-x2"]
RELAYS: tuple[RelayName, ...] = ("daphne", "uvicorn", "daphne-pg", "daphne-x2")
P99_TARGET_MS, FIRST_DELTA_TARGET_MS = 50.0, 100.0  # issue #14
STATS_FLUSH_S = 12  # PostgreSQL backends report their statistics within 10 s when idle
CHECKPOINT_INTERVAL_S = 1.0  # CHAT_CHECKPOINT_INTERVAL's default, which the bench keeps


@dataclass(frozen=True)
class Options:
    relay: RelayName
    streams: int
    answers: int
    tokens: int
    rate: float
    mode: Literal["steady", "burst"]
    share: float
    db_delay_ms: float
    max_load: float
    max_busy: float
    max_wait_s: float


@dataclass
class Run:
    """One run's row: what the table shows, and more in the JSON."""

    relay: str
    mode: str
    streams: int
    started: str
    load_1min: float
    busy_before: float  # cores the machine used in the 5 s before the run
    waited_s: float
    commit: str  # the checkout's, as the relay started: others commit to it meanwhile
    answers: int = 0  # in all, every socket's
    complete: int = 0
    p99_ms: float | None = None
    first_delta_p50_ms: float | None = None
    met: bool = False
    relay_cores: float | None = None
    tokens_per_cpu_s: float | None = None
    others_cores: float | None = None  # everything else on the machine, servers included
    servers_cores: float | None = None  # of which PostgreSQL and Redis (daphne-pg, daphne-x2)
    window_s: float = 0.0
    rss_base_mb: float | None = None
    rss_growth_kb_per_stream: float | None = None  # peak while streaming, over the idle sockets
    frames_per_answer: float | None = None
    database: dict[str, float] | None = None
    redis_commands: dict[str, int] | None = None
    redis_commands_per_answer: float | None = None
    redis_cpu_ms_per_answer: float | None = None  # its idle rate not subtracted
    notes: list[str] = field(default_factory=list)


# The middle window ------------------------------------------------------------------


class Server(NamedTuple):
    """The fake upstream (its URL without ``/v1``) or Redis: their CPU is read too."""

    url: str
    pid: int


class Sample(NamedTuple):
    at: float
    relay: float
    own: float
    upstream: float
    servers: float  # PostgreSQL's and Redis's, when the relay uses them
    machine: float


def machine_busy() -> float:
    """CPU seconds every core of this machine spent busy (idle, iowait, steal left out)."""
    t = psutil.cpu_times()
    return float(t.user + t.nice + t.system + t.irq + t.softirq)


def own_cpu(process: psutil.Process) -> float:
    times = process.cpu_times()
    return float(times.user + times.system)


@dataclass
class Window:
    """From the first socket's middle answer starting to the last one's ending."""

    relay: Relay
    upstream: psutil.Process
    redis: psutil.Process
    streams: int
    start: Sample | None = None
    end: Sample | None = None
    finished: int = 0
    me: psutil.Process = field(default_factory=psutil.Process)

    def sample(self) -> Sample:
        return Sample(
            time.time(),
            cpu_seconds(self.relay) or 0.0,
            own_cpu(self.me),
            own_cpu(self.upstream),
            (postgres_cpu_seconds() + own_cpu(self.redis)) if self.relay.postgres else 0.0,
            machine_busy(),
        )

    def enter(self) -> None:
        if self.start is None:
            self.start = self.sample()

    def leave(self) -> None:
        self.finished += 1
        if self.finished == self.streams:
            self.end = self.sample()


def tokens_between(streams: list[Stream], ends: list[int], start: float, end: float) -> int:
    """Tokens that arrived in [start, end], from every answer of every socket."""
    return sum(
        bisect_right(ends, index + length) - bisect_right(ends, index)
        for stream in streams
        for at, index, length in stream.arrivals
        if start <= at <= end
    )


def added_latencies(stream: Stream, emitted: list[float], ends: list[int]) -> list[float]:
    """Each token's arrival less its emission upstream (as ``run_streams`` times them)."""
    return [
        at - emitted[token]
        for at, index, length in stream.arrivals
        for token in range(bisect_right(ends, index), bisect_right(ends, index + length))
    ]


# Steady mode --------------------------------------------------------------------------


async def steady(
    options: Options, relay: Relay, upstream: Server, redis: Server, result: Run
) -> list[Stream]:
    """Stagger the sockets, time their middle answers; return every answer's stream."""
    n, scenario = options.streams, Scenario("steady", 1, options.tokens, options.rate)
    duration = options.tokens / options.rate
    middle = options.answers // 2
    assert relay.pid is not None
    window = Window(relay, psutil.Process(upstream.pid), psutil.Process(redis.pid), n)
    relay_process = psutil.Process(relay.pid)
    result.rss_base_mb = relay_process.memory_info().rss / 1e6
    sockets = await open_sockets(relay, n)
    await asyncio.sleep(0.5)  # let the relay settle: the idle sockets' RSS is the baseline
    idle_rss = peak_rss = relay_process.memory_info().rss
    watched = {i for i in range(n) if int((i + 1) * options.share) > int(i * options.share)}
    per_socket: list[list[Stream]] = [[] for _ in range(n)]
    timeout = 60 + duration

    async def turns(i: int, ws: ClientConnection) -> None:
        await asyncio.sleep(i / n * duration)
        for k in range(options.answers):
            stream = Stream(uuid.uuid4().hex[:12])
            per_socket[i].append(stream)
            if k == middle:
                window.enter()
            try:
                if i in watched and relay.peer is not None:
                    # A fresh watcher a turn: a finished conversation's late frames (its
                    # title) must not reach the next turn's watch.
                    watcher = await open_socket(relay.peer, i)
                    try:
                        await asyncio.wait_for(drive_pair(ws, watcher, stream, scenario), timeout)
                    finally:
                        await watcher.close()
                else:
                    await asyncio.wait_for(drive(ws, stream, scenario), timeout)
            except (TimeoutError, WebSocketException, OSError) as error:
                stream.error = repr(error)
            if k == middle:
                window.leave()
            if stream.error:
                return

    async def watch_rss() -> None:
        nonlocal peak_rss
        while True:
            peak_rss = max(peak_rss, relay_process.memory_info().rss)
            await asyncio.sleep(0.5)

    rss = asyncio.create_task(watch_rss())
    try:
        await asyncio.gather(*(turns(i, ws) for i, ws in enumerate(sockets)))
    finally:
        rss.cancel()
        await asyncio.gather(*(ws.close() for ws in sockets), return_exceptions=True)
    result.rss_growth_kb_per_stream = (peak_rss - idle_rss) / n / 1024
    everything = [s for streams in per_socket for s in streams]
    middles = [streams[middle] for streams in per_socket if len(streams) > middle]
    await score(result, everything, middles, options.tokens, upstream)
    if window.start is not None:
        cpu_in(result, window.start, window.end or window.sample(), everything, options.tokens)
    return everything


async def score(
    result: Run, everything: list[Stream], middles: list[Stream], tokens: int, upstream: Server
) -> None:
    """Completion over every answer; latency and first delta over the middle ones."""
    expected, ends = expected_text(tokens), token_ends(tokens)
    for stream in everything:
        if stream.error is None and "".join(stream.text) != expected:
            stream.error = "text differs from what the upstream sent"
    result.answers = len(everything)
    result.complete = sum(s.error is None for s in everything)
    result.notes = sorted({s.error for s in everything if s.error})[:3]
    latencies: list[float] = []
    first: list[float] = []
    async with httpx.AsyncClient(timeout=30) as client:
        for stream in middles:
            if stream.error or not stream.arrivals:
                continue
            emitted = (await client.get(f"{upstream.url}/emissions?id={stream.id}")).json()
            first.append(stream.arrivals[0][0] - stream.sent_at)
            if len(emitted) == tokens:
                latencies += added_latencies(stream, emitted, ends)
    result.p99_ms = ms(percentile(latencies, 0.99))
    result.first_delta_p50_ms = ms(percentile(first, 0.5))


def cpu_in(result: Run, start: Sample, end: Sample, everything: list[Stream], tokens: int) -> None:
    """The middle window's CPU: the relay's, per token, and everything else's."""
    d = Sample(*(b - a for a, b in zip(start, end, strict=True)))
    if d.at <= 0:
        return
    result.window_s = d.at
    result.relay_cores = d.relay / d.at
    arrived = tokens_between(everything, token_ends(tokens), start.at, end.at)
    result.tokens_per_cpu_s = arrived / d.relay if d.relay else None
    result.others_cores = (d.machine - d.relay - d.own - d.upstream) / d.at
    result.servers_cores = d.servers / d.at


def ms(seconds: float | None) -> float | None:
    return None if seconds is None else seconds * 1000


# Burst mode ---------------------------------------------------------------------------


async def burst(options: Options, relay: Relay, upstream: Server, result: Run) -> None:
    """The bench's own run: every stream starts at once (x2: each watched elsewhere)."""
    scenario = Scenario("burst", options.streams, options.tokens, options.rate)
    machine0 = machine_busy()
    row = await run_streams(relay, f"{upstream.url}/v1", scenario)
    others = machine_busy() - machine0 - (row.relay_cpu_s or 0.0) - row.loadgen_cpu_s
    result.answers, result.complete = options.streams, row.completed
    result.p99_ms, result.first_delta_p50_ms = row.latency_p99_ms, row.first_delta_p50_ms
    result.window_s, result.tokens_per_cpu_s = row.seconds, row.tokens_per_cpu_s
    result.relay_cores = (row.relay_cpu_s or 0.0) / row.seconds
    result.others_cores = others / row.seconds  # the upstream's CPU is in here
    result.frames_per_answer = row.frames / row.completed if row.completed else None
    result.notes = row.notes


# Servers and counters -----------------------------------------------------------------


@contextlib.contextmanager
def own_redis() -> Iterator[Server]:
    """A Redis nobody else uses: its command counters are this run's alone."""
    command = ["redis-server", "--bind", "127.0.0.1", "--port", str(free_port()), "--save", ""]
    process, port = start(command, base_env(), r"Running mode=standalone, port=(\d+)")
    try:
        yield Server(f"redis://127.0.0.1:{port}/0", process.pid)
    finally:
        stop(process)


@contextlib.contextmanager
def relay_for(
    options: Options,
    upstream: Server,
    redis_url: str,
    stopped: Callable[[str], None] = lambda database: None,
) -> Iterator[Relay]:
    """A fresh relay (and database) for one run; on PostgreSQL, ``stopped`` reads the
    database once the relay has stopped and its connections have flushed their
    statistics (an idle one would keep them up to ten seconds)."""
    base = f"{upstream.url}/v1"
    if options.relay == "daphne-x2":
        os.environ["BENCH_REDIS"] = redis_url  # django_cluster's Redis
        with django_cluster(base) as relay:
            yield relay
        return
    if options.relay != "daphne-pg":
        with (
            tempfile.TemporaryDirectory() as folder,
            django_relay(
                options.relay,
                base,
                options.relay,
                f"sqlite:///{Path(folder) / 'bench.sqlite3'}",
            ) as relay,
        ):
            yield relay
        return
    extra = {"REDIS_URL": redis_url, "REDIS_PREFIX": f"chat-steady-{uuid.uuid4().hex[:8]}"}
    with postgres_database() as database, delayed(database, options.db_delay_ms) as url:
        with django_relay("daphne-pg", base, "daphne", url, extra) as relay:
            relay.postgres = True
            yield relay
        wait_for_backends_to_exit(database)
        stopped(database)


@contextlib.contextmanager
def delayed(database: str, delay_ms: float) -> Iterator[str]:
    """The database's URL, through ``bench.delayproxy`` when there is a delay."""
    if not delay_ms:
        yield database
        return
    server, _, name = database.rpartition("/")
    host = server.rpartition("@")[2]
    command = [sys.executable, "-m", "bench.delayproxy", "--target", host]
    proxy, port = start([*command, "--delay-ms", str(delay_ms)], base_env(), r"listening (\d+)")
    try:
        yield f"{server.rpartition('@')[0]}@127.0.0.1:{port}/{name}"
    finally:
        stop(proxy)


PG_COUNTERS = """
SELECT pg_current_wal_flush_lsn()::text,
  pg_snapshot_xmax(pg_current_snapshot())::text::bigint,
  (SELECT sessions FROM pg_stat_database WHERE datname = current_database()),
  (SELECT coalesce(sum(xact_commit), 0) FROM pg_stat_database
    WHERE datname IS DISTINCT FROM current_database()),
  (SELECT wal_bytes FROM pg_stat_wal)::bigint,
  (SELECT coalesce(sum(n_tup_ins + n_tup_upd), 0) FROM pg_stat_user_tables
    WHERE relname <> 'chat_process'),
  (SELECT coalesce(sum(n_tup_ins + n_tup_upd), 0) FROM pg_stat_user_tables
    WHERE relname = 'chat_process')
"""
#: Not the answers' commands: a client connecting (the relay's pub/sub connection opens
#: on first use) and this driver's own reading.
HANDSHAKES = {"hello", "client", "select", "auth", "info"}
PG_NAMES = ("xids", "sessions", "other_databases_commits", "wal_bytes", "rows", "heartbeats")


#: Write transactions, counted in the WAL: one commit record each, however many
#: savepoints (subtransaction ids) it held; read-only transactions write none.
COMMITS = """
SELECT coalesce(sum(count), 0) FROM pg_get_wal_stats(%s::pg_lsn, %s::pg_lsn, true)
WHERE "resource_manager/record_type" = 'Transaction/COMMIT'
"""


def pg_counters(database: str, since: str | None = None) -> tuple[str, dict[str, float]]:
    """The server's counters now, and its WAL position (``since`` one: commits since)."""
    import psycopg  # the postgres extra, as bench.processes does

    with psycopg.connect(database, autocommit=True) as connection:
        if since is None:
            connection.execute("CREATE EXTENSION IF NOT EXISTS pg_walinspect")
        lsn, *values = connection.execute(PG_COUNTERS).fetchone() or ()
        found = connection.execute(COMMITS, (since, lsn)).fetchone() if since else None
    counters = {k: float(v) for k, v in zip(PG_NAMES, values, strict=True)}
    return lsn, {"at": time.time(), "commits": float(found[0]) if found else 0.0, **counters}


def redis_counters(url: str) -> dict[str, int]:
    import redis  # the redis extra

    with redis.Redis.from_url(url) as client:
        stats = client.info("commandstats")
    return {k.removeprefix("cmdstat_"): int(v["calls"]) for k, v in stats.items()}


def database_url(relay: Relay) -> str | None:
    """The relay's PostgreSQL database, straight (not through the delay proxy)."""
    if not relay.postgres or relay.process is None:
        return None
    name = psutil.Process(relay.pid).environ()["DATABASE_URL"].rpartition("/")[2]
    return f"{os.environ.get('BENCH_POSTGRES', 'postgres://postgres@127.0.0.1:5432')}/{name}"


def per_answer(
    before: dict[str, float], after: dict[str, float], result: Run, span_s: float, processes: int
) -> dict[str, float]:
    """The database's work per answer (and per process a second for what is not per answer)."""
    d = {k: after[k] - before[k] for k in before}
    answers = result.answers
    # One checkpoint transaction a second while any answer streams: counted, not measured.
    checkpoints = span_s // CHECKPOINT_INTERVAL_S
    return {
        "write_transactions": (d["commits"] - d["heartbeats"] - checkpoints) / answers,
        "write_transactions_raw": d["commits"] / answers,
        # The same by transaction ids, as first measured: a savepoint takes one of its own.
        "transaction_ids": (d["xids"] - d["heartbeats"] - checkpoints) / answers,
        "heartbeats_per_process_s": d["heartbeats"] / d["at"] / processes,
        "checkpoint_transactions_estimated": checkpoints,
        "rows": d["rows"] / answers,
        "wal_bytes": d["wal_bytes"] / answers,
        "new_connections_per_process_s": d["sessions"] / d["at"] / processes,
        "other_databases_commits": d["other_databases_commits"],
    }


# One run, many runs -------------------------------------------------------------------


def wait_for_quiet(options: Options) -> tuple[float, float, float]:
    """Wait (at most ``max_wait_s``) for the 1-minute load average to be under ``max_load``
    and the machine's last 5 s under ``max_busy`` cores (the load average lags a minute
    behind a benchmark someone else starts); return both and the wait."""
    began = time.monotonic()
    while True:
        before = machine_busy()
        time.sleep(5)
        busy, load = (machine_busy() - before) / 5, os.getloadavg()[0]
        waited = time.monotonic() - began
        if (load < options.max_load and busy < options.max_busy) or waited > options.max_wait_s:
            return load, busy, waited


async def one_run(options: Options, upstream: Server, redis: Server) -> Run:
    load, busy, waited = await asyncio.to_thread(wait_for_quiet, options)
    started = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
    result = Run(
        options.relay, options.mode, options.streams, started, load, busy, waited, commit()
    )
    after: dict[str, float] = {}

    def read_database(database: str) -> None:
        after.update(pg_counters(database, since=lsn)[1])

    lsn, pg_before, processes = "", None, 1
    with relay_for(options, upstream, redis.url, read_database) as relay:
        database = database_url(relay)
        lsn, pg_before = pg_counters(database) if database else ("", None)
        processes = 2 if relay.peer else 1
        redis_before, redis_cpu = redis_counters(redis.url), own_cpu(psutil.Process(redis.pid))
        began = time.time()
        if options.mode == "burst":
            await burst(options, relay, upstream, result)
            span = time.time() - began
        else:
            streams = await steady(options, relay, upstream, redis, result)
            sends = [s.sent_at for s in streams if s.sent_at]
            span = max((s.arrivals[-1][0] for s in streams if s.arrivals), default=began)
            span -= min(sends, default=began)
        ended = time.time()
        if database and pg_before and relay.peer:
            # The cluster's database outlives this context: wait out the idle flush.
            await asyncio.sleep(STATS_FLUSH_S)
            read_database(database)
        if relay.postgres:
            redis_after = redis_counters(redis.url)
            redis_cpu = own_cpu(psutil.Process(redis.pid)) - redis_cpu
            result.redis_cpu_ms_per_answer = redis_cpu * 1000 / result.answers
            result.redis_commands = {
                k: n - redis_before.get(k, 0)
                for k, n in redis_after.items()
                if k.partition("|")[0] not in HANDSHAKES and n != redis_before.get(k, 0)
            }
            result.redis_commands_per_answer = sum(result.redis_commands.values()) / result.answers
    if pg_before and after:
        after["at"] = ended  # rates a second over the run, not its shutdown
        result.database = per_answer(pg_before, after, result, span, processes)
        if others := result.database["other_databases_commits"]:
            # Transaction ids and WAL are the whole server's: theirs are counted too.
            result.notes.append(f"other databases committed meanwhile ({others:.0f})")
    result.met = (
        result.complete == result.answers
        and result.p99_ms is not None
        and result.p99_ms <= P99_TARGET_MS
        and result.first_delta_p50_ms is not None
        and result.first_delta_p50_ms <= FIRST_DELTA_TARGET_MS
    )
    return result


def table(runs: list[Run]) -> str:
    lines = [
        "| relay | streams | answers complete | met both targets | p99 (ms) "
        "| first delta p50 (ms) | relay CPU (cores) | tokens per relay CPU-s "
        "| others (cores; of which PostgreSQL and Redis) "
        "| load (1 min) | PG write transactions / answer | PG rows / answer "
        "| WAL / answer (KB) | PG new connections / process·s | Redis commands / answer | notes |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in runs:
        db = r.database or {}
        wal = db.get("wal_bytes")
        lines.append(
            f"| {r.relay} | {r.streams} | {r.complete}/{r.answers} | {'yes' if r.met else 'no'} "
            f"| {fmt(r.p99_ms, 1)} | {fmt(r.first_delta_p50_ms, 0)} | {fmt(r.relay_cores, 2)} "
            f"| {fmt(r.tokens_per_cpu_s, 0)} | {fmt(r.others_cores, 2)} "
            f"({fmt(r.servers_cores, 2)}) | {r.load_1min:.2f} "
            f"| {fmt(db.get('write_transactions'), 2)} | {fmt(db.get('rows'), 1)} "
            f"| {fmt(wal / 1024 if wal is not None else None, 1)} "
            f"| {fmt(db.get('new_connections_per_process_s'), 2)} "
            f"| {fmt(r.redis_commands_per_answer, 2)} | {'; '.join(r.notes)} |"
        )
    return "\n".join(lines)


def commit() -> str:
    done = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True)
    return done.stdout.decode().strip() or "unknown"


async def runs(options: Options, count: int) -> list[Run]:
    process, port = start([sys.executable, "-m", "bench.upstream"], base_env(), r"listening (\d+)")
    upstream = Server(f"http://127.0.0.1:{port}", process.pid)
    results: list[Run] = []
    try:
        with own_redis() as redis:
            for _ in range(count):
                results.append(await one_run(options, upstream, redis))
                print(table(results[-1:]).splitlines()[-1], flush=True)
    finally:
        stop(process)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.steady", description=__doc__)
    parser.add_argument("--relay", choices=RELAYS, required=True)
    parser.add_argument("--streams", type=int, required=True)
    parser.add_argument("--answers", type=int, default=3, help="per socket, back to back")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--mode", choices=("steady", "burst"), default="steady")
    parser.add_argument("--share", type=float, help="daphne-x2: answers watched elsewhere (1)")
    parser.add_argument("--tokens", type=int, default=300, help="per answer")
    parser.add_argument("--rate", type=float, default=30.0, help="tokens a second")
    parser.add_argument("--db-delay-ms", type=float, default=0.0, help="daphne-pg: each way")
    parser.add_argument("--max-load", type=float, default=1.0, help="wait for a quieter machine")
    parser.add_argument("--max-busy", type=float, default=0.3, help="cores, over the last 5 s")
    parser.add_argument("--max-wait", type=float, default=240.0, help="seconds, at most")
    parser.add_argument("--json", type=Path, help="also write the runs as JSON here")
    args = parser.parse_args()
    x2 = args.relay == "daphne-x2"
    share = args.share if args.share is not None else float(x2)
    if not 0 <= share <= 1 or (share and not x2):
        parser.error("--share is a fraction, and only daphne-x2 has another process")
    if args.mode == "burst" and x2 and share != 1:
        parser.error("--mode burst watches every answer of daphne-x2 (the bench's row): --share 1")
    if args.db_delay_ms and args.relay != "daphne-pg":
        parser.error("--db-delay-ms is for daphne-pg")
    options = Options(
        args.relay, args.streams, args.answers if args.mode == "steady" else 1, args.tokens,
        args.rate, args.mode, share, args.db_delay_ms, args.max_load, args.max_busy, args.max_wait,
    )  # fmt: skip
    print(f"python -m bench.steady {' '.join(sys.argv[1:])} (commit {commit()})", flush=True)
    print(table([]), flush=True)
    holder: list[list[Run]] = []

    async def go() -> None:
        holder.append(await runs(options, args.runs))

    run(go())
    if args.json:
        args.json.write_text(json.dumps([asdict(r) for r in holder[0]], indent=1))


if __name__ == "__main__":
    main()
