"""The steady-state driver (``python -m bench.steady``): a short run reports whole rows."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.servers import ROOT

pytestmark = pytest.mark.integration


def steady(tmp_path: Path, relay: str) -> tuple[str, dict[str, Any]]:
    """One run of 3 sockets, 3 short answers each, on a machine however busy."""
    raw = tmp_path / "runs.json"
    done = subprocess.run(
        [sys.executable, "-m", "bench.steady", "--relay", relay, "--streams", "3",
         "--answers", "3", "--runs", "1", "--tokens", "30", "--max-load", "1000",
         "--max-busy", "1000", "--json", str(raw)],
        cwd=ROOT, check=True, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    (run,) = json.loads(raw.read_text())
    return done.stdout, run


def test_a_run_on_postgresql_counts_the_database_and_redis_work_per_answer(
    tmp_path: Path,
) -> None:
    """Every answer of the run completes and is timed; PostgreSQL's and Redis's work
    is counted per answer (the SQLite relays take the same path, less the counting)."""
    table, run = steady(tmp_path, "daphne-pg")
    assert "| daphne-pg | 3 | 9/9 |" in table
    assert run["complete"] == run["answers"] == 9
    assert run["p99_ms"] is not None and run["first_delta_p50_ms"] is not None
    assert run["relay_cores"] > 0 and run["tokens_per_cpu_s"] > 0
    database = run["database"]
    assert database["write_transactions"] > 0 and database["rows"] > 0
    assert database["wal_bytes"] > 0
    assert run["redis_commands"]["publish"] > 0 and run["redis_commands_per_answer"] > 0
