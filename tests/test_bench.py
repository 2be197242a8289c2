"""The benchmark's own correctness: a tiny run where every stream arrives with the exact text."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.servers import ROOT

pytestmark = pytest.mark.integration


def test_a_tiny_benchmark_run_delivers_every_stream_exactly(tmp_path: Path) -> None:
    output, raw = tmp_path / "results.md", tmp_path / "results.json"
    subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--relays", "direct,django-daphne,bare-python",
         "--output", str(output), "--json", str(raw)],
        cwd=ROOT, check=True, capture_output=True, timeout=300,
    )  # fmt: skip
    results = json.loads(raw.read_text())
    streamed = [r for r in results if r["tokens"] or r["errors"]]
    assert {r["relay"] for r in streamed} == {"direct", "django-daphne", "bare-python"}
    for result in results:
        assert result["errors"] == 0, result
        assert result["completed"] == result["streams"], result
    daphne = [r for r in results if r["relay"] == "django-daphne" and r["latency_p50_ms"]]
    assert daphne and daphne[0]["db_writes"] is not None
    assert "| django-daphne |" in output.read_text()


def test_the_burst_probe_reads_every_answers_stages_and_its_commits() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "bench.burst", "--streams", "5", "--tokens", "30"],
        cwd=ROOT, check=True, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.stdout.startswith("5/5 complete;"), done.stdout
    rows = {line.split(" | ")[0].strip("| ") for line in done.stdout.splitlines()}
    assert {"stored", "started", "request_sent", "first_token", "finished"} <= rows
    commits = float(done.stdout.split(" PostgreSQL commits per answer")[0].rsplit("; ", 1)[1])
    assert commits > 0
