"""What one Redis sustains for cross-process traffic: ``python -m bench.redis_throughput``.

The capacity model (docs/capacity.md) needs the Redis cost of one message of
``chat.fanout`` (a batch of frames sent to one process's channel, or an
announcement sent to a conversation's group), through channels_redis as the app
uses it. Python clients on a small machine saturate long before Redis does, so
the figure kept is Redis's own CPU time per message (``INFO cpu`` before and
after, Redis runs commands on one thread): one Redis core then carries
``1 / cpu_per_message`` messages a second. Also reported: messages a second
actually delivered here, and Redis commands per message (``INFO commandstats``).

Consumers are processes with one channel each, like the app's processes
(``chat.process.*``); producers are processes with several sender tasks each,
like ``chat.fanout``'s publishers. Run it against a Redis nothing else uses
(the counters are the whole server's): e.g. ``redis-server --port 6390 --save ''``
and ``--redis redis://127.0.0.1:6390/0``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import time
import uuid
from dataclasses import asdict, dataclass
from multiprocessing.synchronize import Event
from pathlib import Path
from typing import Any

#: One chat.frames message: a conversation's few merged deltas, as chat.fanout sends them.
DELTA_TEXT = "w1 w2 w3 w4 w5 w6 "


@dataclass(frozen=True)
class Setup:
    redis: tuple[str, ...]  # one URL per shard (channels_redis ``hosts``)
    layer: str  # "pubsub" (RedisPubSubChannelLayer) or "core" (RedisChannelLayer)
    mode: str  # "send": to one process's channel; "group": group_send to a conversation
    consumers: int
    producers: int
    tasks: int  # concurrent sender tasks per producer process
    seconds: float
    prefix: str


@dataclass
class Outcome:
    layer: str
    mode: str
    seconds: float
    sent: int
    received: int
    messages_per_s: float
    redis_cpu_s: float  # beyond its idle rate
    redis_cpu_share: float  # of one core, during the run, beyond its idle rate
    redis_cpu_us_per_message: float
    one_core_messages_per_s: float  # 1 / cpu per message: what one Redis core would carry
    commands_per_message: float
    commands: dict[str, int]
    bytes_per_message: float
    shard_cpu_shares: list[float]  # each shard's part of the Redis CPU (one entry: one Redis)


def make_layer(setup: Setup) -> Any:
    """A channels_redis layer configured as project/settings.py configures it."""
    if setup.layer == "pubsub":
        from channels_redis.pubsub import RedisPubSubChannelLayer  # type: ignore[import-untyped]

        return RedisPubSubChannelLayer(hosts=list(setup.redis), prefix=setup.prefix)
    from channels_redis.core import RedisChannelLayer  # type: ignore[import-untyped]

    return RedisChannelLayer(
        hosts=list(setup.redis), prefix=setup.prefix, channel_capacity={"chat.process.*": 50_000}
    )


def message(conversation: str, index: int) -> dict[str, Any]:
    frame = {"type": "delta", "message": conversation, "index": index, "text": DELTA_TEXT}
    return {"type": "chat.frames", "origin": "bench", "frames": [[conversation, [frame]]]}


def consume(setup: Setup, number: int, names: Any, counts: Any, done: Event) -> None:
    """A process with one channel (and, in group mode, one group): count what arrives."""

    async def go() -> None:
        layer = make_layer(setup)
        channel = await layer.new_channel("chat.process.")
        group = f"chat.conversation.{number}"
        if setup.mode == "group":
            await layer.group_add(group, channel)
        names.put(channel if setup.mode == "send" else group)
        received = 0

        async def loop() -> None:
            nonlocal received
            while True:
                await layer.receive(channel)
                received += 1

        task = asyncio.create_task(loop())
        await asyncio.to_thread(done.wait)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        counts.put(received)

    asyncio.run(go())


def produce(setup: Setup, targets: list[str], counts: Any, start: Event, stop: Event) -> None:
    """A process with ``setup.tasks`` sender tasks, each one send at a time, until ``stop``."""

    async def go() -> None:
        layer = make_layer(setup)
        conversation = str(uuid.uuid4())
        sent = 0

        async def sender(offset: int) -> None:
            nonlocal sent
            i = offset
            while not stop.is_set():
                target = targets[i % len(targets)]
                if setup.mode == "send":
                    await layer.send(target, message(conversation, i))
                else:
                    await layer.group_send(target, message(conversation, i))
                sent += 1
                i += 1

        await asyncio.to_thread(start.wait)
        await asyncio.gather(*(sender(t) for t in range(setup.tasks)))
        counts.put(sent)

    asyncio.run(go())


def redis_counters(urls: tuple[str, ...]) -> dict[str, Any]:
    """CPU, network bytes and command calls, summed over the shards (CPU also each)."""
    import redis

    total: dict[str, Any] = {"cpu": 0.0, "net": 0, "commands": {}, "shards": []}
    for url in urls:
        client = redis.Redis.from_url(url)
        cpu = client.info("cpu")
        stats = client.info("stats")
        seconds = float(cpu["used_cpu_sys"]) + float(cpu["used_cpu_user"])
        total["cpu"] += seconds
        total["shards"].append(seconds)
        total["net"] += int(stats["total_net_input_bytes"]) + int(stats["total_net_output_bytes"])
        for name, row in client.info("commandstats").items():
            key = name.removeprefix("cmdstat_")
            total["commands"][key] = total["commands"].get(key, 0) + int(row["calls"])
    return total


def measure(setup: Setup) -> Outcome:
    """Run consumers and producers for ``setup.seconds``; read Redis before and after."""
    context = multiprocessing.get_context("spawn")
    names, counts, sent_counts = context.Queue(), context.Queue(), context.Queue()
    done, start, stop = context.Event(), context.Event(), context.Event()
    consumers = [
        context.Process(target=consume, args=(setup, n, names, counts, done))
        for n in range(setup.consumers)
    ]
    for process in consumers:
        process.start()
    targets = [names.get(timeout=60) for _ in consumers]
    producers = [
        context.Process(target=produce, args=(setup, targets, sent_counts, start, stop))
        for _ in range(setup.producers)
    ]
    for process in producers:
        process.start()
    time.sleep(2.0)  # let every producer connect and wait at the start line
    # Redis's own background work (its cron, idle consumers' blocking reads) is not
    # the messages' cost: measured over an idle second, then subtracted.
    idle0, idle_began = redis_counters(setup.redis), time.monotonic()
    time.sleep(2.0)
    before, began = redis_counters(setup.redis), time.monotonic()
    idle_rate = (before["cpu"] - idle0["cpu"]) / (began - idle_began)
    start.set()
    time.sleep(setup.seconds)
    stop.set()
    sent = sum(sent_counts.get(timeout=60) for _ in producers)
    time.sleep(1.0)  # the last messages arrive
    after, elapsed = redis_counters(setup.redis), time.monotonic() - began
    done.set()
    received = sum(counts.get(timeout=60) for _ in consumers)
    for process in [*producers, *consumers]:
        process.join(timeout=30)
    return outcome(setup, sent, received, before, after, elapsed, idle_rate)


def outcome(
    setup: Setup,
    sent: int,
    received: int,
    before: dict[str, Any],
    after: dict[str, Any],
    elapsed: float,
    idle_rate: float,
) -> Outcome:
    cpu = max(after["cpu"] - before["cpu"] - idle_rate * elapsed, 0.0)
    commands = {
        name: calls - before["commands"].get(name, 0)
        for name, calls in after["commands"].items()
        if calls - before["commands"].get(name, 0)
    }
    per_message = cpu / sent if sent else 0.0
    shards = [b - a for a, b in zip(before["shards"], after["shards"], strict=True)]
    return Outcome(
        layer=setup.layer,
        mode=setup.mode,
        seconds=setup.seconds,
        sent=sent,
        received=received,
        messages_per_s=sent / setup.seconds,
        redis_cpu_s=cpu,
        redis_cpu_share=cpu / elapsed,
        redis_cpu_us_per_message=per_message * 1e6,
        one_core_messages_per_s=1 / per_message if per_message else 0.0,
        commands_per_message=sum(commands.values()) / sent if sent else 0.0,
        commands=commands,
        bytes_per_message=(after["net"] - before["net"]) / sent if sent else 0.0,
        shard_cpu_shares=[part / sum(shards) if sum(shards) else 0.0 for part in shards],
    )


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.redis_throughput", description=__doc__)
    parser.add_argument(
        "--redis",
        default=os.environ.get("BENCH_REDIS", "redis://127.0.0.1:6379/0"),
        help="Redis URL; several, comma-separated, are shards (channels_redis hosts)",
    )
    parser.add_argument("--layer", choices=["pubsub", "core", "both"], default="both")
    parser.add_argument("--mode", choices=["send", "group", "both"], default="both")
    parser.add_argument("--consumers", type=int, default=2)
    parser.add_argument("--producers", type=int, default=2)
    parser.add_argument("--tasks", type=int, default=8, help="sender tasks per producer")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    layers = ["pubsub", "core"] if args.layer == "both" else [args.layer]
    modes = ["send", "group"] if args.mode == "both" else [args.mode]
    results = []
    for layer in layers:
        for mode in modes:
            setup = Setup(
                redis=tuple(url for url in args.redis.split(",") if url),
                layer=layer,
                mode=mode,
                consumers=args.consumers,
                producers=args.producers,
                tasks=args.tasks,
                seconds=args.seconds,
                prefix=f"bench-rt-{uuid.uuid4().hex[:8]}",
            )
            result = measure(setup)
            results.append(result)
            print(
                f"{layer:6} {mode:5} {result.messages_per_s:9,.0f} msg/s delivered "
                f"(received {result.received:,} of {result.sent:,}), Redis "
                f"{result.redis_cpu_share:.0%} of a core, "
                f"{result.redis_cpu_us_per_message:.1f} µs CPU/msg "
                f"→ {result.one_core_messages_per_s:,.0f} msg/s per Redis core, "
                f"{result.commands_per_message:.2f} commands/msg"
                + (
                    ", shards' CPU " + " / ".join(f"{x:.0%}" for x in result.shard_cpu_shares)
                    if len(result.shard_cpu_shares) > 1
                    else ""
                ),
                flush=True,
            )
    if args.json:
        args.json.write_text(json.dumps([asdict(r) for r in results], indent=1))


if __name__ == "__main__":
    main()
