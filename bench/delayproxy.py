"""A TCP proxy that holds every chunk a while each way: a database farther away.

``python -m bench.delayproxy --target 127.0.0.1:5432 --delay-ms 1`` prints
``listening <port>``. Each chunk read from either side is written to the other
``--delay-ms`` after it arrived, in order, so a round trip gains twice the delay
without the proxy adding a queue of its own (chunks in flight overlap).
``python -m bench.steady --db-delay-ms X`` puts it in front of PostgreSQL.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib

from bench.upstream import run


async def forward(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, delay: float) -> None:
    """Copy one direction, each chunk ``delay`` seconds after it was read."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

    async def send() -> None:
        while True:
            due, chunk = await queue.get()
            if (wait := due - loop.time()) > 0:
                await asyncio.sleep(wait)
            if not chunk:
                writer.write_eof()
                return
            writer.write(chunk)
            await writer.drain()

    sender = asyncio.create_task(send())
    try:
        while True:
            chunk = await reader.read(65536)
            queue.put_nowait((loop.time() + delay, chunk))
            if not chunk:
                break
        await sender
    finally:
        sender.cancel()


async def serve(target_host: str, target_port: int, delay: float) -> None:
    async def handle(client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        server_r, server_w = await asyncio.open_connection(target_host, target_port)
        try:
            await asyncio.gather(
                forward(client_r, server_w, delay), forward(server_r, client_w, delay)
            )
        except OSError:
            pass  # either side hung up: the other is closed below
        finally:
            for writer in (client_w, server_w):
                writer.close()
                with contextlib.suppress(OSError):
                    await writer.wait_closed()

    server = await asyncio.start_server(handle, "127.0.0.1", 0, backlog=1024)
    print(f"listening {server.sockets[0].getsockname()[1]}", flush=True)
    async with server:
        await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.delayproxy", description=__doc__)
    parser.add_argument("--target", default="127.0.0.1:5432", help="host:port to forward to")
    parser.add_argument("--delay-ms", type=float, required=True, help="added each way")
    args = parser.parse_args()
    host, _, port = args.target.rpartition(":")
    run(serve(host, int(port), args.delay_ms / 1000))


if __name__ == "__main__":
    main()
