"""Server-side bounds: a thousand sockets opened and dropped leave a server that serves on."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import psutil
import pytest
import websockets

from tests.servers import PASSWORD, USER, daphne, log_in, prepare_site

pytestmark = pytest.mark.integration


async def test_a_thousand_abandoned_sockets_leave_the_server_serving(tmp_path: Path) -> None:
    env = prepare_site(
        tmp_path,
        CHAT_DEMO_TOKENS_PER_SECOND="200",
        CHAT_MAX_RUNNING_ANSWERS="100",
        CHAT_TURNS_PER_MINUTE="100",
    )
    with daphne(env) as site:
        cookie = await log_in(site, USER, PASSWORD)
        headers = {"Cookie": cookie, "Origin": site.url}
        server = psutil.Process(site.process.pid)
        before = server.memory_info().rss
        gate = asyncio.Semaphore(50)

        async def open_one() -> websockets.ClientConnection:
            async with gate:
                return await websockets.connect(
                    site.ws_url + "/ws/chat/", additional_headers=headers
                )

        sockets = await asyncio.gather(*(open_one() for _ in range(1000)))
        # A few of them start answers, then every socket vanishes without a goodbye
        # (no close frame: a laptop lid, a lost network).
        for socket in sockets[:20]:
            await socket.send(json.dumps({"type": "send", "conversation": None, "content": "hi"}))
        for socket in sockets:
            socket.transport.abort()

        async with websockets.connect(
            site.ws_url + "/ws/chat/", additional_headers=headers
        ) as fresh:
            await fresh.send(
                json.dumps({"type": "send", "conversation": None, "content": "still there?"})
            )
            frames = []
            try:
                async with asyncio.timeout(30):
                    while not frames or frames[-1]["type"] != "done":
                        frames.append(json.loads(await fresh.recv()))
            except TimeoutError:
                raise AssertionError(f"{frames[-3:]}\n{''.join(list(site.log)[-30:])}") from None
        assert frames[-1]["status"] == "complete"
        grown = (server.memory_info().rss - before) / 2**20
        print(f"1,000 sockets opened and abandoned: the server grew by {grown:.1f} MiB")
        assert grown < 100, f"the server grew by {grown:.0f} MiB"
        assert not any("Traceback" in line for line in site.log), "".join(site.log)
