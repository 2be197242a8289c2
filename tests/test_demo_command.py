"""``make run`` (``manage.py demo``): one greeting, and a clear error when the port is taken."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.servers import ROOT, site_environment, unused_port

pytestmark = pytest.mark.integration


def test_a_busy_port_fails_at_once_and_says_how_to_choose_another(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            [sys.executable, "manage.py", "demo", f"127.0.0.1:{port}"],
            cwd=ROOT,
            env=site_environment(tmp_path),
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert result.returncode != 0
    assert f"Port {port} is already in use" in result.stderr
    assert "make run PORT=8001" in result.stderr


def test_the_demo_greets_once_and_serves(tmp_path: Path) -> None:
    port = unused_port()
    process = subprocess.Popen(
        [sys.executable, "manage.py", "demo", f"127.0.0.1:{port}"],
        cwd=ROOT,
        env=site_environment(tmp_path),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            assert process.poll() is None, "the demo exited"
            with socket.socket() as probe:
                if probe.connect_ex(("127.0.0.1", port)) == 0:
                    break
            assert time.monotonic() < deadline, "the demo did not listen within 60 s"
            time.sleep(0.1)  # another process opens the port: there is no event to wait on
    finally:
        process.terminate()
        output, _ = process.communicate(timeout=30)
    assert output.count(f"Open http://127.0.0.1:{port}/") == 1, output
