"""The floor of our stack: a websocket relay with no Django (a yardstick, not product code).

``websockets`` + ``httpx`` (on the chat app's asyncio network backend) + the
chat app's own SSE decoder + orjson, one delta
frame per upstream network read, no auth, no database. It speaks the chat
protocol's ``send`` → ``delta``/``done`` subset. Run:
``python -m bench.relays.bare --upstream http://127.0.0.1:PORT/v1``.
"""

from __future__ import annotations

import argparse
import uuid

import httpx
import orjson
from websockets.asyncio.server import ServerConnection, serve

from bench.upstream import run
from chat import network
from chat.sse import SSEDecoder


async def relay(socket: ServerConnection, client: httpx.AsyncClient, upstream: str) -> None:
    async for raw in socket:
        frame = orjson.loads(raw)
        if frame.get("type") != "send":
            continue
        message = str(uuid.uuid4())
        await socket.send(orjson.dumps({"type": "message", "message": {"id": message}}).decode())
        body = {
            "model": "bench",
            "stream": True,
            "messages": [{"role": "user", "content": frame["content"]}],
        }
        index = 0
        decoder = SSEDecoder()
        async with client.stream("POST", f"{upstream}/chat/completions", json=body) as response:
            async for chunk in response.aiter_raw():
                texts = []
                for event in decoder.feed(chunk):
                    if event.data == "[DONE]":
                        break
                    choices = orjson.loads(event.data)["choices"]
                    if choices and (text := choices[0]["delta"].get("content")):
                        texts.append(text)
                if texts:
                    text = "".join(texts)
                    await socket.send(
                        orjson.dumps(
                            {"type": "delta", "message": message, "index": index, "text": text}
                        ).decode()
                    )
                    index += len(text)
        await socket.send(
            orjson.dumps({"type": "done", "message": message, "status": "complete"}).decode()
        )


async def main(port: int, upstream: str) -> None:
    transport = network.Transport()  # the same transport as the chat app
    async with httpx.AsyncClient(transport=transport, timeout=60) as client:
        server = await serve(
            lambda socket: relay(socket, client, upstream), "127.0.0.1", port, compression=None
        )
        print(f"listening {server.sockets[0].getsockname()[1]}", flush=True)
        await server.serve_forever()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--upstream", required=True)
    args = parser.parse_args()
    run(main(args.port, args.upstream))
