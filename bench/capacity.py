"""A capacity model: ``python -m bench.capacity --streams 100000``.

Why: issue #14 asks what it takes to serve 100,000 concurrent streams. Nobody
can run that here, so this turns what one process, one Redis and one
PostgreSQL primary were *measured* to do on this machine (``bench/capacity.json``,
each number with the command and date it came from) into processes, machines,
Redis shards and database write rates for any number of streams. It is plain
arithmetic, kept in small functions so that each step can be read, tested
(tests/test_capacity.py) and argued with; docs/capacity.md explains the model,
the measurements and its weakest assumption.

The model, per second, for S streams of R tokens/s with answers of T tokens:
- an answer lasts T/R seconds, so S streams start S·R/T turns a second (Little's
  law: pauses between a user's turns do not change it);
- a process keeps its latency targets up to the measured number of streams, scaled
  by tokens a second, one process per core; memory is its base RSS plus the
  measured RSS per socket;
- Redis carries each answer's own commands (its announcements to the
  conversation's group, the group join and leave) and, for the share of streams
  watched from another process, one message per frame (the unbatched bound); a
  Redis shard is one core at a chosen utilization, at the measured CPU per message;
- PostgreSQL takes one checkpoint transaction per process per interval (rows:
  one per running answer), a fixed number of transactions and rows per answer
  (turn setup, final save, title), and each process's heartbeat.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

MEASURED = Path(__file__).resolve().parent / "capacity.json"


# Inputs -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Measured:
    """The measured inputs (bench/capacity.json ``inputs``, by name, their ``value``)."""

    rate: float  # tokens a second per stream in the measurements
    streams_per_process: float  # at the latency targets, with turns arriving spread out
    tokens_per_cpu_second: float
    rss_base_mb: float  # a process before any socket
    rss_per_idle_socket_kb: float
    rss_per_streaming_socket_kb: float
    redis_messages_per_answer: float  # commands when nobody watches from another process
    redis_messages_per_cross_stream_second: float  # frames/s to a watcher elsewhere
    redis_cpu_us_per_message: float
    pg_transactions_per_answer: float  # write transactions: turn setup, final save
    pg_rows_per_answer: float  # rows inserted or updated by them
    pg_title_transactions: float  # per new conversation, when titles are on
    pg_title_rows: float
    pg_process_transactions_per_second: float  # heartbeat writes
    pg_process_rows_per_second: float
    pg_process_connections_per_second: float  # new connections a process opens (it keeps its own)
    pg_wal_bytes_per_stream_second: float
    pg_primary_transactions_per_second: float  # pgbench TPC-B-like
    pg_primary_checkpoint_rows_per_second: float  # pgbench, batched like the checkpoints
    pg_primary_connections_per_second: float  # pgbench -C
    pg_primary_wal_mb_per_second: float  # WAL written during the checkpoint pgbench

    @classmethod
    def load(cls, path: Path = MEASURED) -> Measured:
        inputs = json.loads(path.read_text())["inputs"]
        return cls(**{name: float(inputs[name]["value"]) for name in cls.__dataclass_fields__})


@dataclass(frozen=True)
class Load:
    """What is asked of the deployment."""

    streams: int
    tokens_per_second: float = 30.0
    answer_tokens: int = 300
    cross_process_share: float = 0.1  # streams watched by a socket on another process
    sockets_per_stream: float = 1.0  # open sockets per streaming answer (tabs, idle pages)
    new_conversation_share: float = 1.0  # answers that are a conversation's first (a title)
    checkpoint_interval: float = 1.0  # CHAT_CHECKPOINT_INTERVAL
    cores_per_machine: int = 8
    memory_per_machine_gb: float = 32.0
    redis_utilization: float = 0.5  # of a Redis core, per shard

    @property
    def answer_seconds(self) -> float:
        return self.answer_tokens / self.tokens_per_second

    @property
    def turns_per_second(self) -> float:
        """Answers started a second: each stream asks again as soon as its answer ends."""
        return self.streams / self.answer_seconds


# The model ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Processes:
    count: int
    streams_each: float
    cores: float  # CPU used by all processes
    tokens_per_second: float
    rss_each_mb: float
    machines_by_cpu: int
    machines_by_memory: int

    @property
    def machines(self) -> int:
        return max(self.machines_by_cpu, self.machines_by_memory)


def process_count(load: Load, m: Measured) -> int:
    """Processes so that none carries more tokens a second than one did at the targets."""
    if load.streams <= 0:
        return 0
    per_process = m.streams_per_process * m.rate / load.tokens_per_second
    return math.ceil(load.streams / per_process)


def processes(load: Load, m: Measured) -> Processes:
    count = process_count(load, m)
    each = load.streams / count if count else 0.0
    tokens = load.streams * load.tokens_per_second
    cores = tokens / m.tokens_per_cpu_second
    sockets = each * load.sockets_per_stream
    streaming = min(sockets, each)
    rss = (
        m.rss_base_mb
        + streaming * m.rss_per_streaming_socket_kb / 1024
        + (sockets - streaming) * m.rss_per_idle_socket_kb / 1024
    )
    # One event loop per process uses at most one core: a process per core.
    by_cpu = math.ceil(count / load.cores_per_machine)
    by_memory = math.ceil(count * rss / 1024 / load.memory_per_machine_gb)
    return Processes(count, each, cores, tokens, rss, by_cpu, by_memory)


@dataclass(frozen=True)
class Redis:
    announcements_per_second: float
    cross_process_per_second: float
    cpu_cores: float
    shards: int

    @property
    def messages_per_second(self) -> float:
        return self.announcements_per_second + self.cross_process_per_second


def redis(load: Load, m: Measured) -> Redis:
    announcements = load.turns_per_second * m.redis_messages_per_answer
    # Frames follow tokens (about one delta per upstream read): scale by the rate.
    per_stream = m.redis_messages_per_cross_stream_second * load.tokens_per_second / m.rate
    cross = load.streams * load.cross_process_share * per_stream
    cores = (announcements + cross) * m.redis_cpu_us_per_message / 1e6
    shards = math.ceil(cores / load.redis_utilization) if cores else 0
    return Redis(announcements, cross, cores, max(shards, 1 if load.streams else 0))


@dataclass(frozen=True)
class Database:
    checkpoint_transactions: float
    turn_transactions: float
    process_transactions: float
    checkpoint_rows: float
    turn_rows: float
    process_rows: float
    connections: float
    wal_mb: float
    unbatched_checkpoint_transactions: float  # one transaction per answer per interval

    @property
    def transactions(self) -> float:
        return self.checkpoint_transactions + self.turn_transactions + self.process_transactions

    @property
    def rows(self) -> float:
        return self.checkpoint_rows + self.turn_rows + self.process_rows


def database(load: Load, m: Measured, process_total: int) -> Database:
    turns = load.turns_per_second
    titles = turns * load.new_conversation_share
    running = 1 if load.streams else 0
    return Database(
        checkpoint_transactions=process_total * running / load.checkpoint_interval,
        turn_transactions=turns * m.pg_transactions_per_answer + titles * m.pg_title_transactions,
        process_transactions=process_total * m.pg_process_transactions_per_second,
        checkpoint_rows=load.streams / load.checkpoint_interval,
        turn_rows=turns * m.pg_rows_per_answer + titles * m.pg_title_rows,
        process_rows=process_total * m.pg_process_rows_per_second,
        connections=process_total * m.pg_process_connections_per_second,
        # As measured (1 s checkpoints, 300-token answers): each checkpoint rewrites the
        # whole answer so far, so longer answers or intervals change it; not modelled.
        wal_mb=load.streams * m.pg_wal_bytes_per_stream_second / 1e6,
        unbatched_checkpoint_transactions=load.streams / load.checkpoint_interval,
    )


@dataclass(frozen=True)
class Plan:
    load: Load
    processes: Processes
    redis: Redis
    database: Database


def plan(load: Load, m: Measured) -> Plan:
    procs = processes(load, m)
    return Plan(load, procs, redis(load, m), database(load, m, procs.count))


# Output -------------------------------------------------------------------------------


def against(value: float, capacity: float) -> str:
    """``value`` as a multiple of what this machine's primary was measured to sustain."""
    return f"{value / capacity:.2f}× the {capacity:,.0f}/s this machine's primary sustained"


def describe(p: Plan, m: Measured) -> str:
    load, procs, r, db = p.load, p.processes, p.redis, p.database
    return "\n".join(
        [
            f"{load.streams:,} streams × {load.tokens_per_second:g} tokens/s, answers of "
            f"{load.answer_tokens} tokens ({load.answer_seconds:g} s): "
            f"{procs.tokens_per_second:,.0f} tokens/s, {load.turns_per_second:,.0f} turns/s",
            "",
            "Processes",
            f"  {procs.count:,} processes of {procs.streams_each:,.0f} streams (at most "
            f"{m.streams_per_process:g} streams of {m.rate:g} tokens/s each: the latency targets)",
            f"  CPU: {procs.cores:,.0f} cores busy at {m.tokens_per_cpu_second:,.0f} tokens per "
            f"CPU-second; a process per core: {procs.machines_by_cpu:,} machines of "
            f"{load.cores_per_machine} cores",
            f"  memory: {procs.rss_each_mb:,.0f} MB per process: {procs.machines_by_memory:,} "
            f"machines of {load.memory_per_machine_gb:g} GB",
            f"  machines: {procs.machines:,}",
            "",
            f"Redis (cross-process share {load.cross_process_share:g})",
            f"  {r.messages_per_second:,.0f} messages/s: {r.announcements_per_second:,.0f} for "
            f"answers starting and ending + {r.cross_process_per_second:,.0f} of deltas to "
            "other processes (one a frame: the unbatched bound)",
            f"  {r.cpu_cores:.2f} Redis cores at {m.redis_cpu_us_per_message:.0f} µs a message: "
            f"{r.shards} shard(s) at {load.redis_utilization:.0%} of a core each",
            "",
            f"PostgreSQL (a checkpoint every {load.checkpoint_interval:g} s)",
            f"  {db.transactions:,.0f} write transactions/s: {db.checkpoint_transactions:,.0f} "
            f"checkpoints + {db.turn_transactions:,.0f} turns (setup, final save, title) + "
            f"{db.process_transactions:,.0f} heartbeats; "
            f"{against(db.transactions, m.pg_primary_transactions_per_second)} (TPC-B-like)",
            f"    checkpoints unbatched (a transaction per answer) would be "
            f"{db.unbatched_checkpoint_transactions:,.0f}/s",
            f"  {db.rows:,.0f} rows/s: {db.checkpoint_rows:,.0f} checkpointed + "
            f"{db.turn_rows:,.0f} turns + {db.process_rows:,.0f} heartbeats; "
            f"{against(db.rows, m.pg_primary_checkpoint_rows_per_second)} (batched rows)",
            f"  {db.wal_mb:,.0f} MB/s of WAL (at 1 s checkpoints of 300-token answers); "
            f"{against(db.wal_mb, m.pg_primary_wal_mb_per_second).replace('/s', ' MB/s')}",
            f"  {db.connections:,.0f} new connections/s (processes keep theirs: reconnections); "
            f"{against(db.connections, m.pg_primary_connections_per_second)}",
        ]
    )


def as_json(p: Plan) -> dict[str, Any]:
    return {
        "processes": p.processes.count,
        "machines": p.processes.machines,
        "machines_by_cpu": p.processes.machines_by_cpu,
        "machines_by_memory": p.processes.machines_by_memory,
        "cores": p.processes.cores,
        "redis_messages_per_second": p.redis.messages_per_second,
        "redis_shards": p.redis.shards,
        "db_transactions_per_second": p.database.transactions,
        "db_rows_per_second": p.database.rows,
        "db_connections_per_second": p.database.connections,
        "db_wal_mb_per_second": p.database.wal_mb,
    }


def parse(argv: list[str] | None = None) -> tuple[Load, Path, bool, float | None]:
    parser = argparse.ArgumentParser(prog="python -m bench.capacity", description=__doc__)
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    add = parser.add_argument
    add("--streams", type=int, required=True, help="concurrent streams")
    add("--tokens-per-second", type=float, default=30.0, help="per stream (default 30)")
    add("--answer-tokens", type=int, default=300, help="tokens per answer (default 300)")
    add("--cross-process-share", type=float, default=0.1, help="0..1 (default 0.1)")
    add("--sockets-per-stream", type=float, default=1.0, help="open sockets per stream")
    add("--new-conversation-share", type=float, default=1.0, help="answers that get a title")
    add("--checkpoint-interval", type=float, default=1.0, help="CHAT_CHECKPOINT_INTERVAL")
    add("--cores-per-machine", type=int, default=8)
    add("--memory-per-machine-gb", type=float, default=32.0)
    add("--redis-utilization", type=float, default=0.5, help="of a core per shard")
    add("--streams-per-process", type=float, help="instead of the measured figure")
    add("--measured", type=Path, default=MEASURED, help="the measured inputs (JSON)")
    add("--json", action="store_true", help="print the results as JSON")
    args = parser.parse_args(argv)
    if not 0 <= args.cross_process_share <= 1:
        parser.error("--cross-process-share is a share: 0 to 1")
    load = Load(
        streams=args.streams,
        tokens_per_second=args.tokens_per_second,
        answer_tokens=args.answer_tokens,
        cross_process_share=args.cross_process_share,
        sockets_per_stream=args.sockets_per_stream,
        new_conversation_share=args.new_conversation_share,
        checkpoint_interval=args.checkpoint_interval,
        cores_per_machine=args.cores_per_machine,
        memory_per_machine_gb=args.memory_per_machine_gb,
        redis_utilization=args.redis_utilization,
    )
    return load, args.measured, args.json, args.streams_per_process


def main(argv: list[str] | None = None) -> None:
    load, path, raw, per_process = parse(argv)
    measured = Measured.load(path)
    if per_process:
        measured = dataclasses.replace(measured, streams_per_process=per_process)
    result = plan(load, measured)
    print(json.dumps(as_json(result), indent=1) if raw else describe(result, measured))


if __name__ == "__main__":
    main()
