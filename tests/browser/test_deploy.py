"""A deploy seen from the page: the process writing an answer is restarted mid-answer.

Two daphne processes share PostgreSQL and Redis behind a small load balancer
that, like nginx or a cloud one, sends each new connection to the first
process whose health check says 200. The process running the answer gets
SIGTERM: it drains, the page reconnects through the balancer to the other
process, and the answer, still written by the draining one, arrives whole.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
import uuid
from collections.abc import AsyncIterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from bench.processes import postgres_database
from tests.browser.conftest import ask, expect, finished, last_answer, log_in
from tests.conftest import API_KEY
from tests.fake_upstream import FakeUpstream, paused
from tests.servers import PASSWORD, USER, Site, daphne, manage, site_environment


def reachable(port: int) -> bool:
    with socket.socket() as probe:
        probe.settimeout(1)
        return probe.connect_ex(("127.0.0.1", port)) == 0


pytestmark = pytest.mark.skipif(
    not (reachable(5432) and reachable(6379)),
    reason="needs PostgreSQL on 127.0.0.1:5432 and Redis on 127.0.0.1:6379",
)


@dataclass
class Balancer:
    """Each new TCP connection goes to the first backend whose /chat/health/ is 200."""

    backends: list[Site]
    url: str = ""

    async def pick(self) -> Site:
        async with httpx.AsyncClient(timeout=2) as client:
            for site in self.backends:
                with contextlib.suppress(httpx.HTTPError):
                    if (await client.get(site.url + "/chat/health/")).status_code == 200:
                        return site
        raise ConnectionError("no healthy backend")

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            site = await self.pick()
            host, port = site.url.removeprefix("http://").split(":")
            upstream_reader, upstream_writer = await asyncio.open_connection(host, int(port))
        except (ConnectionError, OSError):
            writer.close()
            return

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(ConnectionError):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            dst.close()

        await asyncio.gather(pipe(reader, upstream_writer), pipe(upstream_reader, writer))


@pytest.fixture
async def two_processes(tmp_path: Path, fake_upstream: FakeUpstream) -> AsyncIterator[Any]:
    with postgres_database() as database:
        env = site_environment(
            tmp_path,
            DATABASE_URL=database,
            REDIS_URL="redis://127.0.0.1:6379/0",
            REDIS_PREFIX=f"chat-deploy-{uuid.uuid4().hex[:8]}",
            OPENAI_BASE_URL=fake_upstream.url,
            OPENAI_API_KEY=API_KEY,
            CHAT_MODEL="fake-model",
            CHAT_AUTO_TITLE="0",
            CHAT_DRAIN_TIMEOUT="30",
        )
        await asyncio.to_thread(manage, env, "migrate", "--noinput")
        create = f"User.objects.create_user({USER!r}, password={PASSWORD!r})"
        await asyncio.to_thread(
            manage, env, "shell", "-c", f"from django.contrib.auth.models import User; {create}"
        )
        with ExitStack() as stack:
            sites = [stack.enter_context(daphne(env)) for _ in range(2)]
            balancer = Balancer(sites)
            server = await asyncio.start_server(balancer.handle, "127.0.0.1", 0)
            balancer.url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
            try:
                yield balancer
            finally:
                server.close()


async def test_a_restart_mid_answer_shows_the_whole_answer_once(
    page: Any, two_processes: Balancer, fake_upstream: FakeUpstream
) -> None:
    release = asyncio.Event()
    fake_upstream.script(paused(["Before the deploy. "], release, ["After it."]))
    front = Site(
        two_processes.url, "", two_processes.backends[0].process, two_processes.backends[0].log
    )
    chat = await log_in(page, front)
    await page.evaluate(
        "window.closes = []; new MutationObserver(() => {"
        " if (document.body.dataset.connected === 'false') window.closes.push(Date.now());"
        "}).observe(document.body, {attributeFilter: ['data-connected']})"
    )
    await ask(chat, "Tell me across a deploy")
    await expect(last_answer(chat)).to_contain_text("Before the deploy.")

    first = two_processes.backends[0].process
    first.send_signal(signal.SIGTERM)  # the process writing the answer is being replaced
    await chat.wait_for_function("window.closes.length > 0")  # told to reconnect
    await expect(chat.locator("body[data-connected=true]")).to_be_attached(timeout=10_000)
    release.set()

    await finished(chat, "complete")
    body = last_answer(chat).locator(".chat-body")
    await expect(body).to_have_text("Before the deploy. After it.")
    assert await asyncio.to_thread(first.wait, 20) is not None  # it exited once it was done
