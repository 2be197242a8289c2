"""``python -m bench.profile``: where a relay's busy samples went, by owner, in µs per token."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from bench import profile

ROOT = Path(__file__).resolve().parent.parent

# py-spy's folded stacks (``--format raw``): frames outermost first, then the sample count.
STACKS = """\
process 1;thread 1;run (asyncio/events.py:80);feed (chat/sse.py:40) 30
process 1;thread 1;run (asyncio/events.py:80);send (daphne/server.py:240);__send (libc.so.6) 50
process 1;thread 2;execute (psycopg/cursor.py:700) 20
process 1;thread 3;_worker (concurrent/thread.py:80);_queue_SimpleQueue_get (python3.11) 900
process 1;thread 1;relay (bench/relays/bare.py:40);PyObject_Malloc (libpython3.11.so) 20
"""


def test_samples_are_grouped_by_owner_and_waiting_threads_are_left_out(tmp_path: Path) -> None:
    folded = tmp_path / "relay.txt"
    folded.write_text(STACKS)
    total, own, _ = profile.shares(profile.read(folded), "owner")
    assert total == 120  # the waiting thread's 900 samples are not work
    assert own == {
        "write system call": 50,
        "SSE and chunk parsing": 30,
        "database (sqlite/psycopg/ORM)": 20,
        "the bare relay's own code": 20,  # the interpreter's work counts for its caller
    }


def test_waiting_for_the_interpreters_lock_is_counted_apart_from_the_code_that_waited(
    tmp_path: Path,
) -> None:
    folded = tmp_path / "relay.txt"
    write = "run (asyncio/events.py:80);write (chat/server.py:73);sock_send_impl (python3.11)"
    folded.write_text(
        f"process 1;thread 1;{write};pthread_cond_signal (libc.so.6);0x7f00aa (libc.so.6) 7\n"
        "process 1;thread 2;execute (psycopg/cursor.py:700);pthread_mutex_lock (libc.so.6) 3\n"
        f"process 1;thread 1;{write};send (libc.so.6) 10\n"
    )
    total, own, _ = profile.shares(profile.read(folded), "owner")
    assert total == 20
    assert own == {"interpreter lock hand-overs": 10, "write system call": 10}


def test_with_the_cpu_per_token_each_owner_gets_its_microseconds(tmp_path: Path) -> None:
    folded = tmp_path / "relay.txt"
    folded.write_text(STACKS)
    done = subprocess.run(
        [sys.executable, "-m", "bench.profile", str(folded), "--per-token", "120"],
        cwd=ROOT, check=True, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    rows = re.findall(r"^ +[\d.]+% +[\d.]+% +([\d.]+)  (.+)$", done.stdout, re.M)
    costs = {owner: float(us) for us, owner in rows}
    assert costs["write system call"] == 50.0  # 50 of 120 busy samples, of 120 µs
    assert costs["SSE and chunk parsing"] == 30.0
    assert sum(costs.values()) == 120.0


def test_the_databases_samples_are_split_by_the_app_calls_that_made_them(tmp_path: Path) -> None:
    folded = tmp_path / "relay.txt"
    turn = "_whole (chat/batches.py:60);start_turn (chat/store.py:400);insert (chat/store.py:190)"
    folded.write_text(
        STACKS
        + f"process 1;thread 4;{turn};execute (psycopg/cursor.py:700) 40\n"
        + "process 1;thread 4;_whole (chat/batches.py:60);commit (django/db/transaction.py:9) 10\n"
    )
    total, own, _ = profile.shares(profile.read(folded), "database")
    assert total == 170  # shares of all busy samples, the database's alone listed
    assert own == {
        "start_turn > insert": 40,
        "a batch's transaction (savepoints, commit)": 10,
        "(no chat/ call)": 20,  # the psycopg sample with no app call on its stack
    }
