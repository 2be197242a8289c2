"""A process's heartbeat: on time even when its event loop is saturated, and it stops cleanly."""

from __future__ import annotations

import itertools
import threading
import time
from typing import Any

from chat.liveness import Heart


def busy(seconds: float) -> None:
    """Keep this thread computing, as an event loop with hundreds of answers starting does."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        sum(range(1000))


def test_the_heart_beats_on_time_while_the_event_loops_thread_is_saturated() -> None:
    beats: list[float] = []
    ended = threading.Event()
    heart = Heart()
    heart.start(lambda: beats.append(time.monotonic()), 0.05, ended.set)
    try:
        busy(0.6)
    finally:
        heart.stop()

    assert len(beats) >= 6  # one every 0.05 s, the busy thread notwithstanding
    assert max(b - a for a, b in itertools.pairwise(beats)) < 0.5
    assert ended.is_set() and not heart.beating  # its database connection closed


def test_a_failed_beat_is_logged_and_the_next_one_comes(caplog: Any) -> None:
    attempts: list[int] = []
    second = threading.Event()

    def beat() -> None:
        attempts.append(1)
        if len(attempts) == 1:
            raise ConnectionError("the database is restarting")
        second.set()

    heart = Heart()
    heart.start(beat, 0.01, lambda: None)
    try:
        assert second.wait(5)
    finally:
        heart.stop()
    assert "Could not renew this process's heartbeat" in caplog.text


def test_starting_twice_keeps_one_thread() -> None:
    heart = Heart()
    heart.start(lambda: None, 0.05, lambda: None)
    try:
        heart.start(lambda: None, 0.05, lambda: None)
        assert [t.name for t in threading.enumerate()].count("chat-heartbeat") == 1
    finally:
        heart.stop()
