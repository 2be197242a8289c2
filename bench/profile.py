"""Sum up py-spy's folded stacks (``BENCH_PROFILE``): where a relay's busy samples went.

``python -m bench.profile FILE [--by function|owner] [--top N]`` prints each
entry's share of the samples: ``self`` where the sample's innermost frame was,
``total`` where it was anywhere on the stack. ``--by owner`` groups frames by
what owns the code (the event loop, the database, the chat app's modules, the
web server...), which is how bench/RESULTS.md reports a profile; ``--by database``
splits the database's samples by the chat app's calls on their stack (the turn's
setup, a final save...), as shares of all busy samples; with
``--per-token US`` (the relay's CPU per token in a run without the profiler)
each share is also given in µs per token. Samples of threads waiting (a queue,
a poll) are left out: busy samples only.
"""

from __future__ import annotations

import argparse
import collections
import re
from pathlib import Path

#: Who owns a frame, by the first pattern its text matches (function and file).
OWNERS = [
    ("garbage collector", r"gc_collect|collect_main|_PyGC_|gc_collect_main|deduce_unreachable"),
    # A thread taking or handing over the interpreter's lock: CPython's GIL is a pthread
    # mutex and condition, and contention on it (the database threads against the
    # event loop) shows as these calls and the unnamed libc frames (futex) under them.
    (
        "interpreter lock hand-overs",
        r"\b(pthread_mutex_(un)?lock|pthread_cond_signal|take_gil|drop_gil) \(",
    ),
    ("database (sqlite/psycopg/ORM)", r"sqlite|psycopg|libpq|django/db/"),
    (
        "write system call",
        r"\b(__)?(libc_)?(write|writev|send|sendmsg)\b \(libc|sock_sendmsg|__send",
    ),
    ("event loop (uvloop/asyncio/twisted)", r"uvloop|asyncio/|twisted/|libuv|epoll"),
    ("channel layer (redis)", r"channels_redis|redis/|msgpack"),
    (
        "websocket server (daphne/autobahn/uvicorn/websockets)",
        r"daphne/|autobahn/|uvicorn/|websockets/",
    ),
    ("Channels and asgiref", r"channels/|asgiref/"),
    ("httpx/httptools/upstream read", r"httpx/|httpcore/|httptools|chat/network\.py"),
    ("SSE and chunk parsing", r"chat/sse\.py|chat/upstream\.py|orjson"),
    ("chat: generation", r"chat/generation\.py"),
    ("chat: fan-out and delivery", r"chat/fanout\.py|chat/delivery\.py|chat/protocol\.py"),
    ("chat: consumer", r"chat/consumers\.py|chat/limits\.py"),
    ("chat: rendering", r"chat/rendering\.py|markdown_it|nh3|pygments"),
    ("chat: other", r"chat/"),
    ("the bare relay's own code", r"bench/relays/"),
    ("Python interpreter", r"python3|libpython|_Py|Py[A-Z]"),
]


UNOWNED = {"other", "Python interpreter"}
#: Waiting, not working: py-spy counts a thread blocked in native code as active when it
#: records native stacks (a worker waiting for its queue, a loop polling).
IDLE = re.compile(
    r"_queue_SimpleQueue_get|pthread_cond_(timed)?wait|PyThread_acquire_lock_timed"
    r"|sem_(clock|timed)?wait|\b(epoll_p?wait|poll|select) \("
)


def read(path: Path) -> list[tuple[list[str], int]]:
    """(frames outermost first, samples) per line of ``frame;frame;... count``."""
    stacks = []
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if stack and count.isdigit():
            stacks.append((stack.split(";"), int(count)))
    return stacks


def owner(frame: str) -> str:
    for name, pattern in OWNERS:
        if re.search(pattern, frame):
            return name
    return "other"


DATABASE = next(name for name, _ in OWNERS if name.startswith("database"))
CHAT = re.compile(r"\(\S*chat/\w+\.py")
BATCHES = "chat/batches.py"


def _owner_of_sample(frames: list[str]) -> str:
    names = [owner(f) for f in frames]
    return next((n for n in reversed(names) if n not in UNOWNED), names[-1])


def _function(frame: str) -> str:
    return frame.partition(" (")[0]


def shares(
    stacks: list[tuple[list[str], int]], key: str
) -> tuple[int, collections.Counter[str], collections.Counter[str]]:
    """Samples in all; self and total samples per function (or owner)."""
    total_samples = 0
    own: collections.Counter[str] = collections.Counter()
    anywhere: collections.Counter[str] = collections.Counter()
    for frames, count in stacks:
        frames = [f for f in frames if not f.startswith(("process ", "thread "))]
        if not frames or any(IDLE.search(f) for f in frames[-4:]):
            continue
        total_samples += count
        if key == "database":  # the database's samples, by the app's calls on the stack
            if _owner_of_sample(frames) != DATABASE:
                continue
            calls = [_function(f) for f in frames if CHAT.search(f) and BATCHES not in f]
            batch = any(BATCHES in f for f in frames)
            names = [
                " > ".join(list(dict.fromkeys(calls))[-3:])
                or ("a batch's transaction (savepoints, commit)" if batch else "(no chat/ call)")
            ]
        else:
            names = [owner(f) if key == "owner" else f for f in frames]
        # By owner, native code without an owner of its own (libc, the interpreter)
        # counts for the innermost frame that has one: the code that called it.
        innermost = names[-1]
        if key == "owner":
            innermost = next((n for n in reversed(names) if n not in UNOWNED), innermost)
        own[innermost] += count
        for name in set(names):
            anywhere[name] += count
    return total_samples, own, anywhere


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("files", nargs="+", type=Path)
    parser.add_argument(
        "--by",
        choices=["function", "owner", "database"],
        default="owner",
        help="database: the database's samples only, by the chat app's calls on their stack",
    )
    parser.add_argument("--top", type=int, default=20)
    parser.add_argument(
        "--per-token",
        type=float,
        metavar="US",
        help="the relay's CPU µs per token (from a run without the profiler): "
        "also print each entry's self share of it",
    )
    args = parser.parse_args()
    for path in args.files:
        total, own, anywhere = shares(read(path), args.by)
        print(f"\n{path.name}: {total:,} busy samples")
        unit = f" {'µs/token':>8}" if args.per_token else ""
        print(f"{'self':>7} {'total':>7}{unit}  {args.by}")
        for name, count in own.most_common(args.top):
            cost = f" {args.per_token * count / total:8.1f}" if args.per_token else ""
            print(
                f"{100 * count / total:6.1f}% {100 * anywhere[name] / total:6.1f}%{cost}"
                f"  {name[:110]}"
            )


if __name__ == "__main__":
    main()
