"""What one idle socket costs in memory, by owner: ``python -m bench.memory``.

The bench's RSS per idle socket says how much; this says who. It starts one
relay (daphne, as ``python -m chat.server`` serves it, or ``--server uvicorn``)
with ``tracemalloc`` on, opens ``--sockets`` logged-in idle sockets, and prints
the Python memory they added, per socket, grouped by the package that
allocated it (the chat app, Channels, daphne/autobahn, Twisted, asyncio...),
then the largest allocation sites. RSS also counts what tracemalloc cannot
see (C allocations of uvloop and the interpreter's arenas), so the two differ.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import urllib.request
from pathlib import Path

from bench.load import open_socket, probe
from bench.processes import base_env as environment
from bench.processes import django_relay, start, stop


def fetch(url: str) -> dict[str, object]:
    with urllib.request.urlopen(url, timeout=60) as response:
        return dict(json.loads(response.read()))


async def measure(server: str, sockets: int) -> dict[str, object]:
    upstream_process, upstream_port = start(
        [sys.executable, "-m", "bench.upstream"], environment(), r"listening (\d+)"
    )
    os.environ["PYTHONTRACEMALLOC"] = "1"
    try:
        with tempfile.TemporaryDirectory() as folder:
            database = f"sqlite:///{Path(folder) / 'memory.sqlite3'}"
            upstream = f"http://127.0.0.1:{upstream_port}/v1"
            with django_relay(f"django-{server}", upstream, server, database) as relay:
                assert relay.stats_url is not None
                base = relay.stats_url.replace("/bench/stats/", "/bench/memory/")
                # Warm up: one socket first, so imports and caches are not counted.
                first = await open_socket(relay, 0)
                await probe(first)
                fetch(base + "?snapshot=1")
                opened = []
                for start_index in range(1, sockets + 1, 50):
                    batch = range(start_index, min(sockets + 1, start_index + 50))
                    opened += await asyncio.gather(*(open_socket(relay, i) for i in batch))
                await asyncio.gather(*(probe(ws) for ws in opened))
                report = fetch(base + f"?sockets={len(opened)}")
                await asyncio.gather(*(ws.close() for ws in [first, *opened]))
                return report
    finally:
        os.environ.pop("PYTHONTRACEMALLOC", None)
        stop(upstream_process)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--server", choices=["daphne", "uvicorn"], default="daphne")
    parser.add_argument("--sockets", type=int, default=500)
    args = parser.parse_args()
    report = asyncio.run(measure(args.server, args.sockets))
    print(f"{args.server}, {args.sockets} idle sockets: Python memory per socket (tracemalloc)")
    print(f"{'bytes':>8}  owner")
    for owner, size in report["owners"]:  # type: ignore[attr-defined]
        print(f"{size:8,.0f}  {owner}")
    print(f"{report['total']:8,.0f}  in all\n")
    print("largest sites (bytes per socket):")
    for site, size in report["sites"]:  # type: ignore[attr-defined]
        print(f"{size:8,.0f}  {site}")


if __name__ == "__main__":
    main()
