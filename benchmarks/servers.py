"""The servers under test, each run in its own process by ``run.py``.

    python benchmarks/servers.py KIND

KIND is one of ``trio_wshandler``, ``websockets_trio``, ``trio_websocket``,
``websockets_asyncio`` or ``raw``.  Each binds 127.0.0.1 on a free port, prints ``port N``, echoes
every message it receives, and reads commands on stdin:

``broadcast COUNT SIZE MODE``
    send COUNT binary messages of SIZE bytes to every connected client, then print ``sent``.
    MODE ``burst``: the messages are produced back to back, the producer awaiting only what the
    library makes it await (a burst of events, or many producers in one scheduling round);
    ``paced``: the producer also yields to the event loop after every message (one event per
    round of the loop, the worst case for coalescing).  Each payload starts with the message
    number and the time it was produced (``time.time_ns``), from which the clients compute
    delivery latency.
``quit``
    exit.

Each server uses its library the way its documentation recommends for fan-out: trio_wshandler's
``send_all``; websockets' ``broadcast()`` (trio and asyncio); a loop of ``send_message`` for
trio-websocket, which has no broadcast.  ``raw`` is the floor: a plain Trio TCP server that
answers any request head with a 101 and writes the very same frame bytes to each client through a
per-client queue and writer task (joining what is queued into one ``send_all``), with no
WebSocket layer at all.  No server offers compression.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import resource
import struct
import sys
import time
from typing import Any

import trio

HEADER = struct.Struct("!QQ")  # message number, production time in ns


def payload(seq: int, size: int, padding: bytes) -> bytes:
    return HEADER.pack(seq, time.time_ns()) + padding[: max(0, size - HEADER.size)]


def raise_fd_limit() -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def announce(port: int) -> None:
    print(f"port {port}", flush=True)


def parse_command(line: str) -> tuple[int, int, bytes, bool] | None:
    """``broadcast COUNT SIZE MODE`` -> (count, size, padding, paced); None means quit."""
    words = line.split()
    if not words or words[0] != "broadcast":
        return None
    size = int(words[2])
    return int(words[1]), size, b"p" * size, words[3] == "paced"


async def trio_commands(broadcast: Any) -> None:
    """Read stdin commands in a thread; run broadcasts on the Trio loop."""
    while command := parse_command(await trio.to_thread.run_sync(sys.stdin.readline)):
        await broadcast(*command)
        print("sent", flush=True)


# ---------------------------------------------------------------- trio_wshandler


async def run_trio_wshandler() -> None:
    from trio_wshandler import serve
    from trio_wshandler._demo import EchoHandler

    # queues sized to hold a whole burst of the benchmark (the peers' buffers are unbounded)
    handler = EchoHandler(heartbeat=None, max_queue=1 << 16, max_queue_bytes=8 << 20)

    async def broadcast(count: int, size: int, padding: bytes, paced: bool) -> None:
        for seq in range(count):
            handler.send_all(payload(seq, size, padding))
            if paced:
                await trio.lowlevel.checkpoint()

    async with trio.open_nursery() as nursery:
        server = await nursery.start(serve, handler, "127.0.0.1", 0)
        announce(server.port)
        await trio_commands(broadcast)
        nursery.cancel_scope.cancel()


# ---------------------------------------------------------------- websockets (trio)


async def websockets_echo(ws: Any) -> None:
    """The echo handler of both websockets servers (trio and asyncio have the same API)."""
    async for message in ws:
        await ws.send(message)


async def run_websockets_trio() -> None:
    from websockets.trio.connection import broadcast as ws_broadcast
    from websockets.trio.server import serve

    async with trio.open_nursery() as nursery:
        server = await nursery.start(
            lambda task_status: serve(
                websockets_echo,
                0,
                host="127.0.0.1",
                compression=None,
                ping_interval=None,
                max_size=None,
                task_status=task_status,
            )
        )
        announce(server.listeners[0].socket.getsockname()[1])

        async def broadcast(count: int, size: int, padding: bytes, paced: bool) -> None:
            for seq in range(count):  # broadcast() awaits every write in both modes
                await ws_broadcast(server.connections, payload(seq, size, padding))

        await trio_commands(broadcast)
        nursery.cancel_scope.cancel()


# ---------------------------------------------------------------- trio-websocket


async def run_trio_websocket() -> None:
    from trio_websocket import ConnectionClosed, serve_websocket

    connections: set[Any] = set()

    async def handle(request: Any) -> None:
        ws = await request.accept()
        connections.add(ws)
        try:
            while True:
                await ws.send_message(await ws.get_message())
        except ConnectionClosed:
            pass
        finally:
            connections.discard(ws)

    async def broadcast(count: int, size: int, padding: bytes, paced: bool) -> None:
        for seq in range(count):  # send_message awaits the write in both modes
            message = payload(seq, size, padding)
            for ws in list(connections):
                with contextlib.suppress(ConnectionClosed):
                    await ws.send_message(message)

    async with trio.open_nursery() as nursery:
        server = await nursery.start(
            lambda task_status: serve_websocket(
                handle,
                "127.0.0.1",
                0,
                ssl_context=None,
                task_status=task_status,
                message_queue_size=1,
                max_message_size=1 << 24,
            )
        )
        announce(server.port)
        await trio_commands(broadcast)
        nursery.cancel_scope.cancel()


# ---------------------------------------------------------------- websockets (asyncio)


async def run_websockets_asyncio() -> None:
    import websockets
    from websockets.asyncio.server import serve

    loop = asyncio.get_running_loop()
    async with serve(
        websockets_echo, "127.0.0.1", 0, compression=None, ping_interval=None, max_size=None
    ) as server:
        announce(next(iter(server.sockets)).getsockname()[1])
        while command := parse_command(await loop.run_in_executor(None, sys.stdin.readline)):
            count, size, padding, paced = command
            for seq in range(count):
                websockets.broadcast(server.connections, payload(seq, size, padding))
                if paced:
                    await asyncio.sleep(0)
            print("sent", flush=True)


# ---------------------------------------------------------------- raw floor


async def run_raw() -> None:
    from trio_wshandler.codec import encode_message

    queues: list[trio.MemorySendChannel[bytes]] = []

    async def handle(stream: trio.SocketStream) -> None:
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = await stream.receive_some(4096)
            if not chunk:
                return
            head += chunk
        await stream.send_all(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"
        )
        send, receive = trio.open_memory_channel[bytes](math.inf)
        queues.append(send)
        try:
            async for frame in receive:
                frames = [frame]
                while True:
                    try:
                        frames.append(receive.receive_nowait())
                    except trio.WouldBlock:
                        break
                await stream.send_all(b"".join(frames) if len(frames) > 1 else frame)
        except trio.BrokenResourceError:
            pass
        finally:
            queues.remove(send)

    async def broadcast(count: int, size: int, padding: bytes, paced: bool) -> None:
        for seq in range(count):
            frame = encode_message(payload(seq, size, padding))
            for queue in queues:
                queue.send_nowait(frame)
            if paced:
                await trio.lowlevel.checkpoint()

    async with trio.open_nursery() as nursery:
        [listener] = await trio.open_tcp_listeners(0, host="127.0.0.1")
        nursery.start_soon(trio.serve_listeners, handle, [listener])
        announce(listener.socket.getsockname()[1])
        await trio_commands(broadcast)
        nursery.cancel_scope.cancel()


SERVERS = {
    "trio_wshandler": run_trio_wshandler,
    "websockets_trio": run_websockets_trio,
    "trio_websocket": run_trio_websocket,
    "websockets_asyncio": run_websockets_asyncio,
    "raw": run_raw,
}


def main() -> None:
    kind = sys.argv[1]
    raise_fd_limit()
    if kind == "websockets_asyncio":
        asyncio.run(run_websockets_asyncio())
    else:
        trio.run(SERVERS[kind])


if __name__ == "__main__":
    main()
