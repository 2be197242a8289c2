"""Real servers for end-to-end tests: the project under daphne, in its own process."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
LISTENING = re.compile(r"Listening on TCP address [\d.]+:(\d+)")


@dataclass
class Site:
    url: str
    ws_url: str
    process: subprocess.Popen[str]
    log: deque[str]


def site_environment(tmp_path: Path, **extra: str) -> dict[str, str]:
    """The environment of a fresh demo site with its own SQLite database."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "CHAT_"))}
    env.pop("DJANGO_SETTINGS_MODULE", None)
    env.update(DATABASE_URL=f"sqlite:///{tmp_path / 'site.sqlite3'}", DJANGO_DEBUG="1")
    # A test's server stops at once (answers still running are saved as interrupted);
    # the tests of draining ask for it.
    env.update(PYTHONUNBUFFERED="1", CHAT_DRAIN_TIMEOUT="0")
    env.update(**extra)
    return env


def manage(env: dict[str, str], *args: str) -> None:
    subprocess.run(
        [sys.executable, "manage.py", *args], cwd=ROOT, env=env, check=True, capture_output=True
    )


USER, PASSWORD = "dora", "pw-dora-123"


def prepare_site(tmp_path: Path, **extra: str) -> dict[str, str]:
    """A migrated demo site with the user ``USER``; returns its environment."""
    env = site_environment(tmp_path, **extra)
    manage(env, "migrate", "--noinput")
    create = f"User.objects.create_user({USER!r}, password={PASSWORD!r})"
    manage(env, "shell", "-c", f"from django.contrib.auth.models import User; {create}")
    return env


@contextmanager
def daphne(
    env: dict[str, str], *, port: int = 0, timeout: float = 20.0, launcher: str = "chat.server"
) -> Iterator[Site]:
    """Serve the project with daphne (on a free port by default); stop it afterwards.

    ``launcher`` is the module run: ``chat.server`` (daphne on uvloop, as the README
    serves it) or ``daphne`` itself.
    """
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            launcher,
            "-v",
            "1",
            "-b",
            "127.0.0.1",
            "-p",
            str(port),
            "project.asgi:application",
        ],
        cwd=ROOT,
        env=env,
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert process.stderr is not None
        deadline = time.monotonic() + timeout
        bound = None
        seen: deque[str] = deque(maxlen=200)
        while bound is None and time.monotonic() < deadline:
            line = process.stderr.readline()
            if not line:
                break
            seen.append(line)
            if match := LISTENING.search(line):
                bound = match.group(1)
        if bound is None:
            raise RuntimeError("daphne did not start:\n" + "".join(seen))
        # Keep reading its log, so that a full pipe never blocks the server.
        threading.Thread(target=seen.extend, args=(process.stderr,), daemon=True).start()
        yield Site(f"http://127.0.0.1:{bound}", f"ws://127.0.0.1:{bound}", process, seen)
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            # A server that does not exit on SIGTERM is a failure, not a hang of the suite.
            process.kill()
            process.wait(timeout=10)
            raise
        finally:
            if process.stderr is not None:
                process.stderr.close()


def unused_port() -> int:
    """A port nothing listens on (bound, then released)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def log_in(site: Site, username: str, password: str) -> str:
    """Log in through the real login form; return the session cookie header value."""
    async with httpx.AsyncClient(base_url=site.url) as client:
        page = await client.get("/accounts/login/")
        token = client.cookies["csrftoken"]
        response = await client.post(
            "/accounts/login/",
            data={"username": username, "password": password, "csrfmiddlewaretoken": token},
            headers={"Referer": site.url + "/accounts/login/"},
        )
        assert response.status_code == 302, page.text
        return f"sessionid={client.cookies['sessionid']}"
