"""A real WebSocket peer for tests/hardening.rs, built on the `websockets` library.

  python3 websocket_peer.py serve
      An echo server on a free loopback port; prints the port, then serves until stdin
      closes. It echoes each message with the request headers it was opened with, so the
      test can see what the sidecar forwarded.
  python3 websocket_peer.py client URL HEADER=VALUE...
      Opens URL with those headers, sends one message, prints the echo as JSON; on a
      refused handshake prints {"refused": status}.
"""
import asyncio
import json
import logging
import sys

import websockets


async def serve():
    # A refused handshake (the test's negative case) is expected: no traceback for it.
    logging.getLogger("websockets").setLevel(logging.CRITICAL)
    async def echo(ws):
        headers = {k.lower(): v for k, v in ws.request.headers.raw_items()}
        async for msg in ws:
            await ws.send(json.dumps({"echo": msg, "path": ws.request.path, "headers": headers}))

    async with websockets.serve(echo, "127.0.0.1", 0) as server:
        port = server.sockets[0].getsockname()[1]
        print(port, flush=True)
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, sys.stdin.read)


async def client(url, pairs):
    headers = [tuple(p.split("=", 1)) for p in pairs]
    try:
        async with websockets.connect(url, additional_headers=headers, open_timeout=5) as ws:
            await ws.send("hello through portcullis")
            reply = await asyncio.wait_for(ws.recv(), 5)
            print(reply, flush=True)
    except websockets.exceptions.InvalidStatus as e:
        print(json.dumps({"refused": e.response.status_code}), flush=True)


if __name__ == "__main__":
    if sys.argv[1] == "serve":
        asyncio.run(serve())
    else:
        asyncio.run(client(sys.argv[2], sys.argv[3:]))
