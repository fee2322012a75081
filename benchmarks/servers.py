"""The servers under test, each run in its own process by ``run.py``.

    python benchmarks/servers.py KIND [deflate]
    python benchmarks/servers.py trio_wshandler_redis URL PREFIX

KIND is one of ``trio_wshandler``, ``websockets_trio``, ``trio_websocket``,
``websockets_asyncio``, ``floor``, ``floor_batched``, ``raw`` or ``picows``.  Each binds
127.0.0.1 on a free port, prints ``port N``, echoes every message it receives (but ``raw``, which
never reads), and reads commands on stdin:

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

After each broadcast the server prints ``sent lag_ms=L gc_ms=G``: the event loop's worst stall
during it and its longest garbage collection (see ``Pauses``).

Each server uses its library the way its documentation recommends for fan-out: trio_wshandler's
``send_all``; websockets' ``broadcast()`` (trio and asyncio); a loop of ``send_message`` for
trio-websocket, which has no broadcast; a loop of ``WSTransport.send`` for picows (its core API,
on asyncio: what a user who only wants speed would pick).  No connection is compressed: the
websockets servers run with ``compression=None``, and trio_wshandler keeps its default
``DeflateOptions()``, which nothing negotiates (the fleet offers no permessage-deflate).

``deflate`` (trio_wshandler, websockets_trio and websockets_asyncio only: the libraries here that
support permessage-deflate): the compressed-broadcast scenario.  Each library runs with its
default compression settings (trio_wshandler: ``DeflateOptions()``, which answers every client
with server_no_context_takeover and compresses a ``send_all`` message once per window size;
websockets: ``compression="deflate"``, which keeps its context and compresses per connection,
12-bit windows, memLevel 5), and ``broadcast COUNT SIZE MODE`` sends COUNT *text* messages of
about SIZE bytes of JSON (``messages.py``: they compress about 3:1 and carry their number and
production time) instead of binary padding.  The echo handler echoes them, compressed as well.

``trio_wshandler_redis URL PREFIX`` (the cross-process scenario, ``run.py --scenarios cluster``):
trio_wshandler as above (``send_all``, the same options) with a ``RedisBackplane(URL,
prefix=PREFIX)`` at its defaults, so that ``send_all`` also publishes to Redis, and messages
that other processes of the same prefix publish reach this process's clients.  It prints
``port N node ID`` once the backplane is connected and subscribed, and takes one more command:

``stats``
    print ``stats {JSON}``: the backplane's counters (``published``, ``received``, ``lost``,
    ``misses``, ``reconnects``, ``round_trips``) and whether Redis answers (``connected``).

Three reference rows use no WebSocket library at all, only Trio and the frame bytes, encoded once
per message and shared by every client:

``floor``, the plain Trio floor
    the least Python and Trio can do: the producer writes the frame to every client socket with a
    non-blocking ``os.write`` straight from its loop, with no task step per client.  Only a client
    whose socket is full (a partial write or ``BlockingIOError``) gets the rest appended to its
    pending buffer, and a task that awaits writability and drains it, for as long as it is backed
    up (it ends when the buffer is empty).  One reader task per client parses the clients' frames
    just enough to echo data frames, answer Pings and Close.
``floor_batched``, the plain Trio floor with writes batched per round of the loop
    the same for a client's first frame in a round of the loop; the frames that follow it in the
    same round (a burst) are appended to the client's buffer, and one flusher task, woken once
    when the producer yields, writes each buffer with one ``os.write`` (a burst costs two system
    calls per client, not one per message and client; a buffer that reaches 64 KiB first is
    written by the producer at once).  When paced it does what ``floor`` does.
``raw``, a Trio queue and writer task per connection
    the design of the library without its WebSocket layer: each frame goes into every client's
    memory channel, and the client's writer task joins what is queued into one ``send_all``.  It
    does not read after the handshake, so it has no echo.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import functools
import gc
import hashlib
import json
import math
import os
import resource
import struct
import sys
import time
from typing import Any

import trio
from messages import json_message

HEADER = struct.Struct("!QQ")  # message number, production time in ns


def payload(seq: int, size: int, padding: bytes) -> bytes:
    return HEADER.pack(seq, time.time_ns()) + padding[: max(0, size - HEADER.size)]


def json_payload(seq: int, size: int, padding: bytes) -> str:
    """The compressed scenario's message (``deflate``): about SIZE bytes of JSON text."""
    return json_message(seq, size)


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


class Pauses:
    """The worst stall of the event loop during a broadcast, and the longest garbage collection.

    A ticker asks to be woken every millisecond and records how late it was (a stall: a long
    task step, a collection, anything that holds the loop); ``gc.callbacks`` time collections.
    Reported after ``sent`` as ``lag_ms=... gc_ms=...``.
    """

    TICK = 0.001

    def __init__(self) -> None:
        self.lag = 0.0
        self.gc = 0.0
        self._gc_start = 0.0
        gc.callbacks.append(self._on_gc)

    def _on_gc(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._gc_start = time.perf_counter()
        else:
            self.gc = max(self.gc, time.perf_counter() - self._gc_start)

    def tick(self, late: float) -> None:
        self.lag = max(self.lag, late - self.TICK)

    def report(self) -> str:
        text = f"sent lag_ms={self.lag * 1000:.1f} gc_ms={self.gc * 1000:.1f}"
        self.lag = self.gc = 0.0
        return text


async def trio_commands(broadcast: Any, other: Any = None) -> None:
    """Read stdin commands in a thread; run broadcasts on the Trio loop.

    ``other(line)``, if given, answers the commands that are not ``broadcast`` (the answer is
    printed) or returns None (quit); without it any other line means quit.
    """
    pauses = Pauses()
    while True:
        line = await trio.to_thread.run_sync(sys.stdin.readline)
        command = parse_command(line)
        if command is None:
            answer = other(line) if other is not None else None
            if answer is None:
                break
            print(answer, flush=True)
            continue
        async with trio.open_nursery() as nursery:

            async def ticker() -> None:
                while True:
                    start = trio.current_time()
                    await trio.sleep(pauses.TICK)
                    pauses.tick(trio.current_time() - start)

            nursery.start_soon(ticker)
            await trio.sleep(0.01)  # the ticker is asleep: a stall from here on is measured
            await broadcast(*command)
            nursery.cancel_scope.cancel()
        print(pauses.report(), flush=True)


async def asyncio_commands(broadcast: Any) -> None:
    """Read stdin commands in a thread; run broadcasts on the asyncio loop."""
    loop = asyncio.get_running_loop()
    pauses = Pauses()

    async def ticker() -> None:
        while True:
            start = loop.time()
            await asyncio.sleep(pauses.TICK)
            pauses.tick(loop.time() - start)

    while command := parse_command(await loop.run_in_executor(None, sys.stdin.readline)):
        task = asyncio.ensure_future(ticker())
        await asyncio.sleep(0.01)  # the ticker is asleep: a stall from here on is measured
        await broadcast(*command)
        task.cancel()
        print(pauses.report(), flush=True)


def encode_frame(payload: bytes, first: int = 0x82) -> bytes:
    """An unmasked server frame (by default a final Binary frame): the same bytes for every
    client.  The reference rows encode with this, not with the library under test."""
    n = len(payload)
    if n < 126:
        return bytes((first, n)) + payload
    if n < 65536:
        return struct.pack("!BBH", first, 126, n) + payload
    return struct.pack("!BBQ", first, 127, n) + payload


WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


async def plain_handshake(stream: trio.SocketStream) -> bytes | None:
    """Read a request head and answer it with a 101 (no checks); return what followed the head,
    or None if the client went away first."""
    head = bytearray()
    while (end := head.find(b"\r\n\r\n")) < 0:
        chunk = await stream.receive_some(4096)
        if not chunk:
            return None
        head += chunk
    key = b""
    for line in bytes(head[:end]).split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"sec-websocket-key":
            key = value.strip()
    accept = base64.b64encode(hashlib.sha1(key + WS_GUID).digest())
    await stream.send_all(
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Accept: " + accept + b"\r\n\r\n"
    )
    return bytes(head[end + 4 :])


# ---------------------------------------------------------------- trio_wshandler


def trio_wshandler_handler(backplane: Any = None) -> Any:
    from trio_wshandler import DeflateOptions
    from trio_wshandler._demo import EchoHandler

    # queues sized to hold a whole burst of the benchmark (the peers' buffers are unbounded);
    # compression as by default, negotiated only with a fleet that offers it (``deflate``)
    return EchoHandler(
        heartbeat=None,
        max_queue=1 << 16,
        max_queue_bytes=8 << 20,
        compression=DeflateOptions(),
        backplane=backplane,
    )


async def run_trio_wshandler(deflate: bool = False) -> None:
    from trio_wshandler import serve

    handler = trio_wshandler_handler()
    make = json_payload if deflate else payload

    async def broadcast(count: int, size: int, padding: bytes, paced: bool) -> None:
        for seq in range(count):
            handler.send_all(make(seq, size, padding))
            if paced:
                await trio.lowlevel.checkpoint()

    async with trio.open_nursery() as nursery:
        server = await nursery.start(serve, handler, "127.0.0.1", 0)
        announce(server.port)
        await trio_commands(broadcast)
        nursery.cancel_scope.cancel()


#: the backplane's counters, reported by ``stats``
BACKPLANE_COUNTERS = ("published", "received", "lost", "misses", "reconnects", "round_trips")


async def run_trio_wshandler_redis(url: str, prefix: str) -> None:
    """trio_wshandler with a RedisBackplane (the cross-process scenario): ``send_all`` as in
    ``run_trio_wshandler``, and the ``stats`` command."""
    from trio_wshandler import RedisBackplane, serve

    backplane = RedisBackplane(url, prefix=prefix)
    handler = trio_wshandler_handler(backplane)

    async def broadcast(count: int, size: int, padding: bytes, paced: bool) -> None:
        for seq in range(count):
            handler.send_all(payload(seq, size, padding))
            if paced:
                await trio.lowlevel.checkpoint()

    def stats(line: str) -> str | None:
        if line.split() != ["stats"]:
            return None
        counters: dict[str, Any] = {k: getattr(backplane, k) for k in BACKPLANE_COUNTERS}
        counters["connected"] = backplane.connected
        return "stats " + json.dumps(counters)

    async with trio.open_nursery() as nursery:
        server = await nursery.start(serve, handler, "127.0.0.1", 0)  # the backplane first
        print(f"port {server.port} node {backplane.node_id}", flush=True)
        await trio_commands(broadcast, stats)
        nursery.cancel_scope.cancel()


# ---------------------------------------------------------------- websockets (trio)


async def websockets_echo(ws: Any) -> None:
    """The echo handler of both websockets servers (trio and asyncio have the same API)."""
    async for message in ws:
        await ws.send(message)


async def run_websockets_trio(deflate: bool = False) -> None:
    from websockets.trio.connection import broadcast as ws_broadcast
    from websockets.trio.server import serve

    make = json_payload if deflate else payload

    async with trio.open_nursery() as nursery:
        server = await nursery.start(
            lambda task_status: serve(
                websockets_echo,
                0,
                host="127.0.0.1",
                compression="deflate" if deflate else None,  # "deflate": the default
                ping_interval=None,
                max_size=None,
                task_status=task_status,
            )
        )
        announce(server.listeners[0].socket.getsockname()[1])

        async def broadcast(count: int, size: int, padding: bytes, paced: bool) -> None:
            for seq in range(count):  # broadcast() awaits every write in both modes
                await ws_broadcast(server.connections, make(seq, size, padding))

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


async def run_websockets_asyncio(deflate: bool = False) -> None:
    import websockets
    from websockets.asyncio.server import serve

    make = json_payload if deflate else payload
    async with serve(
        websockets_echo,
        "127.0.0.1",
        0,
        compression="deflate" if deflate else None,  # "deflate": the default
        ping_interval=None,
        max_size=None,
    ) as server:
        announce(next(iter(server.sockets)).getsockname()[1])

        async def broadcast(count: int, size: int, padding: bytes, paced: bool) -> None:
            for seq in range(count):
                websockets.broadcast(server.connections, make(seq, size, padding))
                if paced:
                    await asyncio.sleep(0)

        await asyncio_commands(broadcast)


# ---------------------------------------------------------------- plain Trio floor


class FloorClient:
    """One client of the floor servers: its stream, its socket's fd, what is owed to it, and
    whether it was written to in this round of the loop (``floor_batched``: what follows waits
    for the end of the round) or waits for room in its socket (a drain task is on it)."""

    __slots__ = ("fd", "pending", "state", "stream")

    IDLE, ROUND, DRAINING = 0, 1, 2

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.fd = stream.socket.fileno()
        self.pending = bytearray()
        self.state = FloorClient.IDLE


#: A client owed more than this is disconnected (far above what any scenario queues).
FLOOR_MAX_PENDING = 256 << 20
#: floor_batched writes a client's batch before the end of the round once it is this big: one
#: huge write per client (a burst of 4 KiB messages) costs more than a few moderate ones.
FLOOR_BATCH = 64 << 10


def floor_drop(client: FloorClient) -> None:
    """Close a client's socket (its reader sees it and unregisters the client); later writes get
    EBADF, never another connection that reused the fd."""
    client.pending.clear()
    client.fd = -1
    client.stream.socket.close()


async def run_floor(batched: bool = False) -> None:
    """The plain Trio floor, and with ``batched`` its variant that writes once per round."""
    clients: dict[FloorClient, None] = {}  # only the reader tasks add and remove
    write = os.write
    IDLE, ROUND, DRAINING = FloorClient.IDLE, FloorClient.ROUND, FloorClient.DRAINING

    async def drain(client: FloorClient) -> None:
        """Runs only while ``client`` is backed up: wait for room, write what is pending."""
        pending, fd = client.pending, client.fd
        try:
            while pending:
                await trio.lowlevel.wait_writable(fd)
                with contextlib.suppress(BlockingIOError):
                    del pending[: write(fd, pending)]
        except (OSError, trio.ClosedResourceError):
            floor_drop(client)
        client.state = IDLE

    def write_now(client: FloorClient, data: bytes | bytearray) -> None:
        """Write to an idle client's socket; what does not fit goes to a drain task."""
        try:
            n = write(client.fd, data)
        except BlockingIOError:
            n = 0
        except OSError:
            return  # the peer is gone: its reader is about to see it
        if n != len(data):
            client.pending += memoryview(data)[n:]
            client.state = DRAINING
            nursery.start_soon(drain, client)

    def send(client: FloorClient, frame: bytes) -> None:
        """The readers' replies (echo, Pong, Close): written at once unless something is owed
        to the client, in which case they queue behind it."""
        if client.state:
            client.pending += frame
            if len(client.pending) > FLOOR_MAX_PENDING:
                floor_drop(client)
        else:
            write_now(client, frame)

    async def handle(stream: trio.SocketStream) -> None:
        async with stream:
            try:
                rest = await plain_handshake(stream)
            except trio.BrokenResourceError:
                return
            if rest is None:
                return
            buf = bytearray(rest)
            client = FloorClient(stream)
            clients[client] = None
            try:
                while True:
                    # what is buffered: masked client frames, each echoed as it came
                    pos, n = 0, len(buf)
                    while n - pos >= 6:
                        b0, length = buf[pos], buf[pos + 1] & 0x7F
                        start = pos + 2
                        if length == 126:
                            length, start = int.from_bytes(buf[start : start + 2], "big"), start + 2
                        elif length == 127:
                            length, start = int.from_bytes(buf[start : start + 8], "big"), start + 8
                        end = start + 4 + length
                        if end > n:
                            break
                        key = buf[start : start + 4]
                        data = (
                            int.from_bytes(buf[start + 4 : end], "little")
                            ^ int.from_bytes((key * (length // 4 + 1))[:length], "little")
                        ).to_bytes(length, "little")
                        pos = end
                        opcode = b0 & 0x0F
                        if opcode == 0x9:  # Ping: Pong
                            send(client, encode_frame(data, 0x8A))
                        elif opcode == 0x8:  # Close: echo it, and end
                            send(client, encode_frame(data[:2], 0x88))
                            return
                        elif opcode != 0xA:  # data (or continuation): echo it as it came
                            send(client, encode_frame(data, b0 & 0x8F))
                    del buf[:pos]
                    chunk = await stream.receive_some(65536)
                    if not chunk:
                        return
                    buf += chunk
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass
            finally:
                del clients[client]
                client.pending.clear()
                client.fd = -1  # a queued write must not reach a connection that reuses the fd

    async def broadcast(count: int, size: int, padding: bytes, paced: bool) -> None:
        """Each frame straight to every socket, from this loop: no task step per client."""
        for seq in range(count):
            frame = encode_frame(payload(seq, size, padding))
            length = len(frame)
            for client in clients:  # no checkpoint in here, so nobody changes ``clients``
                if client.state:  # backed up: queue behind what its drain task is writing
                    pending = client.pending
                    pending += frame
                    if len(pending) > FLOOR_MAX_PENDING:
                        floor_drop(client)
                    continue
                try:
                    n = write(client.fd, frame)
                except BlockingIOError:
                    n = 0
                except OSError:
                    continue  # the peer is gone: its reader is about to see it
                if n != length:
                    client.pending += memoryview(frame)[n:]
                    client.state = DRAINING
                    nursery.start_soon(drain, client)
            if paced:
                await trio.lowlevel.checkpoint()

    # floor_batched: a client's first frame of a round of the loop is written at once, as in
    # floor; what follows in the same round (a burst) is appended, and written with one write by
    # a flusher task woken once when the producer yields (or by the producer once the batch
    # reaches FLOOR_BATCH).
    written: list[FloorClient] = []  # the clients written to in this round
    lot = trio.lowlevel.ParkingLot()

    def flush(client: FloorClient) -> None:
        """Write a client's batch; what does not fit goes to a drain task."""
        pending = client.pending
        try:
            del pending[: write(client.fd, pending)]
        except BlockingIOError:
            pass
        except OSError:
            pending.clear()  # the peer is gone: its reader is about to see it
        if pending:
            client.state = DRAINING
            nursery.start_soon(drain, client)

    async def flusher() -> None:
        while True:
            await lot.park()
            batch = written.copy()
            written.clear()
            for client in batch:
                if client.state == ROUND:
                    client.state = IDLE
                    if client.pending:
                        flush(client)

    async def broadcast_batched(count: int, size: int, padding: bytes, paced: bool) -> None:
        for seq in range(count):
            frame = encode_frame(payload(seq, size, padding))
            length = len(frame)
            for client in clients:
                state = client.state
                if state:  # written this round, or backed up: append
                    pending = client.pending
                    pending += frame
                    if state == ROUND:
                        if len(pending) >= FLOOR_BATCH:
                            flush(client)
                    elif len(pending) > FLOOR_MAX_PENDING:
                        floor_drop(client)
                    continue
                try:
                    n = write(client.fd, frame)
                except BlockingIOError:
                    n = 0
                except OSError:
                    continue  # the peer is gone: its reader is about to see it
                if n != length:
                    client.pending += memoryview(frame)[n:]
                    client.state = DRAINING
                    nursery.start_soon(drain, client)
                else:
                    client.state = ROUND
                    written.append(client)
            if lot and written:
                lot.unpark()
            if paced:
                await trio.lowlevel.checkpoint()

    async with trio.open_nursery() as nursery:
        [listener] = await trio.open_tcp_listeners(0, host="127.0.0.1")
        nursery.start_soon(trio.serve_listeners, handle, [listener])
        if batched:
            nursery.start_soon(flusher)
        announce(listener.socket.getsockname()[1])
        await trio_commands(broadcast_batched if batched else broadcast)
        nursery.cancel_scope.cancel()


async def run_floor_batched() -> None:
    await run_floor(batched=True)


# ---------------------------------------------------------------- Trio queue + writer task


async def run_raw() -> None:
    queues: list[trio.MemorySendChannel[bytes]] = []

    async def handle(stream: trio.SocketStream) -> None:
        if await plain_handshake(stream) is None:
            return
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
            frame = encode_frame(payload(seq, size, padding))
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


# ---------------------------------------------------------------- picows (asyncio, Cython)


async def run_picows() -> None:
    from picows import WSListener, WSMsgType, ws_create_server

    transports: set[Any] = set()
    data_types = (WSMsgType.BINARY, WSMsgType.TEXT, WSMsgType.CONTINUATION)

    class Echo(WSListener):  # type: ignore[misc]
        def on_ws_connected(self, transport: Any) -> None:
            transports.add(transport)

        def on_ws_disconnected(self, transport: Any) -> None:
            transports.discard(transport)

        def on_ws_frame(self, transport: Any, frame: Any) -> None:
            if frame.msg_type in data_types:
                transport.send(frame.msg_type, frame.get_payload_as_memoryview(), frame.fin)
            elif frame.msg_type == WSMsgType.CLOSE:
                transport.send_close(frame.get_close_code(), frame.get_close_message())
                transport.disconnect()
            # Pings are answered by picows itself (enable_auto_pong)

    server = await ws_create_server(
        lambda request: Echo(), "127.0.0.1", 0, max_frame_size=1 << 24, enable_auto_ping=False
    )
    async with server:
        announce(server.sockets[0].getsockname()[1])
        binary = WSMsgType.BINARY

        async def broadcast(count: int, size: int, padding: bytes, paced: bool) -> None:
            for seq in range(count):
                message = payload(seq, size, padding)
                for transport in list(transports):
                    transport.send(binary, message)
                if paced:
                    await asyncio.sleep(0)

        await asyncio_commands(broadcast)


SERVERS = {
    "trio_wshandler": run_trio_wshandler,
    "websockets_trio": run_websockets_trio,
    "trio_websocket": run_trio_websocket,
    "websockets_asyncio": run_websockets_asyncio,
    "floor": run_floor,
    "floor_batched": run_floor_batched,
    "raw": run_raw,
    "picows": run_picows,
}
ASYNCIO_SERVERS = {"websockets_asyncio", "picows"}
#: the servers that can take part in the compressed scenario (``deflate``)
DEFLATE_SERVERS = {"trio_wshandler", "websockets_trio", "websockets_asyncio"}


def main() -> None:
    kind = sys.argv[1]
    if kind == "trio_wshandler_redis":  # servers.py trio_wshandler_redis URL PREFIX
        raise_fd_limit()
        trio.run(run_trio_wshandler_redis, sys.argv[2], sys.argv[3])
        return
    deflate = sys.argv[2:3] == ["deflate"]
    if deflate and kind not in DEFLATE_SERVERS:
        sys.exit(f"{kind} has no permessage-deflate")
    run = functools.partial(SERVERS[kind], deflate=True) if deflate else SERVERS[kind]
    raise_fd_limit()
    if kind in ASYNCIO_SERVERS:
        asyncio.run(run())
    else:
        trio.run(run)


if __name__ == "__main__":
    main()
