"""The capacity model's arithmetic (bench/capacity.py) and its command line."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys

import pytest

from bench.capacity import MEASURED, Load, Measured, database, plan, process_count, redis
from tests.servers import ROOT


@pytest.fixture(scope="module")
def measured() -> Measured:
    return Measured.load()


def test_every_measured_input_names_where_it_came_from() -> None:
    inputs = json.loads(MEASURED.read_text())["inputs"]
    assert set(inputs) == set(Measured.__dataclass_fields__)
    for name, entry in inputs.items():
        assert entry["value"] > 0, name
        assert entry["command"] and entry["date"], name


def test_doubling_the_streams_doubles_the_processes_and_the_per_stream_rates(
    measured: Measured,
) -> None:
    one = plan(Load(streams=50_000), measured)
    two = plan(Load(streams=100_000), measured)
    assert two.processes.count in (2 * one.processes.count - 1, 2 * one.processes.count)
    assert two.redis.messages_per_second == pytest.approx(2 * one.redis.messages_per_second)
    assert two.database.rows == pytest.approx(2 * one.database.rows, rel=0.01)
    assert two.database.checkpoint_rows == 2 * one.database.checkpoint_rows


def test_a_process_is_never_given_more_streams_than_one_sustained(measured: Measured) -> None:
    for streams in (1, 99, 1_000, 100_000, 123_457):
        count = process_count(Load(streams=streams), measured)
        assert streams / count <= measured.streams_per_process
        assert streams / (count - 1 or 1) > measured.streams_per_process or count == 1


def test_faster_streams_need_more_processes(measured: Measured) -> None:
    slow = process_count(Load(streams=100_000, tokens_per_second=30), measured)
    fast = process_count(Load(streams=100_000, tokens_per_second=60), measured)
    assert fast in (2 * slow - 1, 2 * slow)


def test_no_cross_process_watchers_means_no_redis_frames_beyond_announcements(
    measured: Measured,
) -> None:
    load = Load(streams=100_000, cross_process_share=0.0)
    result = redis(load, measured)
    assert result.cross_process_per_second == 0
    assert result.messages_per_second == pytest.approx(
        load.turns_per_second * measured.redis_messages_per_answer
    )
    everyone = redis(dataclasses.replace(load, cross_process_share=1.0), measured)
    assert everyone.messages_per_second > result.messages_per_second
    assert everyone.shards >= result.shards >= 1


def test_checkpoints_are_batched_one_transaction_per_process(measured: Measured) -> None:
    load = Load(streams=100_000)
    db = database(load, measured, process_total=400)
    assert db.checkpoint_transactions == 400
    assert db.checkpoint_rows == 100_000
    assert db.unbatched_checkpoint_transactions == 100_000
    slower = database(dataclasses.replace(load, checkpoint_interval=5.0), measured, 400)
    assert slower.checkpoint_rows == 20_000
    assert slower.checkpoint_transactions == 80


def test_no_streams_needs_nothing(measured: Measured) -> None:
    nothing = plan(Load(streams=0), measured)
    assert nothing.processes.count == 0
    assert nothing.redis.messages_per_second == 0 and nothing.redis.shards == 0
    assert nothing.database.transactions == 0 and nothing.database.rows == 0


def test_the_command_answers_for_100000_streams() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "bench.capacity", "--streams", "100000"],
        cwd=ROOT, check=True, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert "100,000 streams" in done.stdout
    assert "processes" in done.stdout and "shard" in done.stdout and "rows/s" in done.stdout
    raw = subprocess.run(
        [sys.executable, "-m", "bench.capacity", "--streams", "100000", "--json"],
        cwd=ROOT, check=True, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    numbers = json.loads(raw.stdout)
    assert numbers["processes"] > 0 and numbers["redis_shards"] >= 1
