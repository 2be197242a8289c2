"""The per-token cost budget (bench/costs.py): a tiny run times every stage and sums them."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.servers import ROOT

pytestmark = pytest.mark.integration

STAGES = set(range(1, 15))  # the upstream read ... the title


def test_a_quick_budget_prints_a_row_per_stage_and_their_sum(tmp_path: Path) -> None:
    raw = tmp_path / "costs.json"
    done = subprocess.run(
        [sys.executable, "-m", "bench.costs", "--quick", "--json", str(raw)],
        cwd=ROOT, check=True, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    numbered = {int(n) for n in re.findall(r"^\| (\d+)\. ", done.stdout, flags=re.MULTILINE)}
    assert numbered == STAGES, done.stdout
    assert "| **sum** (daphne, SQLite" in done.stdout
    budget = json.loads(raw.read_text())
    assert list(budget["databases"]) == ["SQLite"]  # --quick: no PostgreSQL
    for row in budget["rows"] + budget["databases"]["SQLite"]:
        assert row["per_op_us"] > 0, row
    assert budget["sums"]["daphne_sqlite"] > 0


@pytest.mark.parametrize(
    "name", ["reads", "hop", "writes", "setup", "session", "final", "trips", "user"]
)
def test_a_before_and_after_comparison_times_both_versions(name: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "bench.ab", name, "--rounds", "2", "--ops", "100"],
        cwd=ROOT, check=True, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    timed = re.findall(r"^  (.+) \((before|after)\): ([\d.]+), ([\d.]+)$", done.stdout, re.M)
    assert [version for _, version, _, _ in timed] == ["before", "after"], done.stdout
    assert all(float(median) > 0 for _, _, median, _ in timed)
