"""Where the first delta's time goes when N turns start at once: ``python -m bench.burst``.

Why: at 500 streams starting together the first delta waits seconds, and the
bench's table cannot say for what. This runs the bench's scenario against one
``python -m chat.server`` on a fresh PostgreSQL database, then reads each
answer's own timeline from the database (stored, created, request sent, first
token, finished) and PostgreSQL's commit counter: how long the turn setups took
in all, and how many commits each answer cost (read once the relay has stopped:
its connections' statistics are flushed as they close).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from datetime import datetime
from typing import Any

import psycopg

from bench.load import percentile, run_streams
from bench.processes import (
    base_env,
    django_relay,
    postgres_database,
    start,
    stop,
    wait_for_backends_to_exit,
)
from bench.scenarios import Scenario

#: The stages of an answer, in order, as its timeline names them.
STAGES = ["stored", "started", "request_sent", "first_token", "finished"]


def commits(database: str) -> int:
    with psycopg.connect(database) as db:
        row = db.execute(
            "SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()"
        ).fetchone()
    assert row is not None
    return int(row[0])


def stages(database: str, since: float) -> dict[str, list[float]]:
    """Seconds from ``since`` (before the sockets open) at which each answer reached each stage."""
    reached: dict[str, list[float]] = {stage: [] for stage in STAGES}
    with psycopg.connect(database) as db:
        rows = db.execute("SELECT created_at, timeline FROM chat_message WHERE role = 'assistant'")
        for created, timeline in rows:
            reached["stored"].append(created.timestamp() - since)
            for event in timeline:
                if event["event"] in reached:
                    at = datetime.fromisoformat(event["at"]).timestamp()
                    reached[event["event"]].append(at - since)
    return reached


async def burst(streams: int, server: str, tokens: int = 300) -> dict[str, Any]:
    env = base_env()
    upstream_process, port = start(
        [sys.executable, "-m", "bench.upstream"], env, r"listening (\d+)"
    )
    upstream = f"http://127.0.0.1:{port}/v1"
    try:
        with postgres_database() as database:
            with django_relay("burst", upstream, server, database) as relay:
                scenario = Scenario(f"{streams} streams at once", streams, tokens, 30)
                before, since = commits(database), time.time()
                result = await run_streams(relay, upstream, scenario)
            await asyncio.to_thread(wait_for_backends_to_exit, database)
            return {
                "completed": result.completed,
                "first_delta_p50_ms": result.first_delta_p50_ms,
                "latency_p99_ms": result.latency_p99_ms,
                "commits_per_answer": (commits(database) - before) / streams,
                "stages": stages(database, since),
            }
    finally:
        stop(upstream_process)


def report(streams: int, outcome: dict[str, Any]) -> str:
    lines = [
        f"{outcome['completed']}/{streams} complete; first delta p50 "
        f"{outcome['first_delta_p50_ms']:,.0f} ms; added latency p99 "
        f"{outcome['latency_p99_ms']:,.0f} ms; {outcome['commits_per_answer']:.2f} PostgreSQL "
        "commits per answer (reads included: each statement outside a transaction is one)",
        "",
        "| stage | first (s) | p50 (s) | last (s) |",
        "|---|---|---|---|",
    ]
    for stage in STAGES:
        seconds = outcome["stages"][stage]
        if seconds:
            first, median, last = min(seconds), percentile(seconds, 0.5), max(seconds)
            lines.append(f"| {stage} | {first:.2f} | {median:.2f} | {last:.2f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streams", type=int, default=500)
    parser.add_argument("--server", choices=["daphne", "uvicorn"], default="daphne")
    parser.add_argument("--tokens", type=int, default=300, help="per answer, at 30 a second")
    args = parser.parse_args()
    print(report(args.streams, asyncio.run(burst(args.streams, args.server, args.tokens))))


if __name__ == "__main__":
    main()
