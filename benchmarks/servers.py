"""The servers under test, each run in its own process by ``run.py``.

    python benchmarks/servers.py KIND [deflate | count | chat]
    python benchmarks/servers.py trio_wshandler_redis URL PREFIX

KIND is one of ``trio_wshandler`` (``trio_wshandler_pure``: the same, unmasking in pure Python,
as an install without a C compiler), ``websockets_trio`` (``websockets_trio_pure``: without
its compiled speedups, the like-for-like row for ``trio_wshandler_pure``), ``trio_websocket``,
``websockets_asyncio``, ``floor``, ``floor_batched``, ``raw`` or ``picows``; and, for
``asgi_fanout.py``, ``trio_wshandler_asgi`` (the same handler mounted under Hypercorn),
``hypercorn_floor`` and ``hypercorn_floor_tasks`` (bare ASGI apps on Hypercorn).  Each binds
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
``count``
    print ``count {"messages": M, "bytes": B}``: the complete messages received so far and their
    payload bytes (``count`` and ``chat`` modes; always 0 in the others).
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

The receive-side modes (``inbound.py``; every KIND but ``floor_batched`` and ``raw``):

``count`` (the uploads)
    the message handler only counts what it receives (complete messages, and their payload
    bytes), echoes nothing, and the ``count`` command reports the totals.  Nothing is kept.
``chat`` (the chat room)
    every message received is counted and broadcast to every connected client (its sender
    too) as Text, with the library's idiomatic fan-out as above: trio_wshandler's
    ``handler.send_all`` (from a ``WebSocketConnection`` subclass's ``got_message``, as a user
    would write it), websockets' ``broadcast()``, a loop of ``send_message`` (trio-websocket)
    or of ``WSTransport.send`` (picows), and for ``floor`` the frame encoded once and written
    to every socket as its broadcast does.

In both the servers accept messages of up to 16 MiB (trio_wshandler's ``max_message_size``; the
peers already run with 16 MiB or no limit).  picows hands over frames, not messages: its
handlers count a message at each final frame (the fleets never fragment).

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
    just enough to echo data frames, answer Pings and Close (in ``count`` and ``chat`` modes
    it unmasks each data frame and counts it, or broadcasts it; the unmasking is plain Python,
    an XOR of big integers, so a library that unmasks in C can beat this "floor" on uploads).
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


class Received:
    """What a ``count`` or ``chat`` server has received: complete messages and payload bytes.

    Read by the ``count`` command between two moments, so that the benchmark measures what
    the server took in, not what the clients believe they sent."""

    def __init__(self) -> None:
        self.messages = 0
        self.bytes = 0

    def add(self, size: int, complete: bool | int = True) -> None:
        """A data frame of ``size`` payload bytes; ``complete``: it ends a message."""
        self.bytes += size
        if complete:
            self.messages += 1

    def answer(self, line: str) -> str | None:
        """The ``count`` command's answer; None for any other line (quit)."""
        if line.split() != ["count"]:
            return None
        return "count " + json.dumps({"messages": self.messages, "bytes": self.bytes})


#: the counts of this server process (one server per process)
RECEIVED = Received()
#: the receive-side modes, and the kinds that have them (see the module docstring)
MODES = ("echo", "count", "chat")
MODE_SERVERS = {
    "trio_wshandler",
    "trio_wshandler_pure",
    "websockets_trio",
    "websockets_trio_pure",
    "trio_websocket",
    "websockets_asyncio",
    "floor",
    "picows",
}
#: the largest incoming message in the receive-side modes (the uploads send 1 MiB)
MAX_MESSAGE = 1 << 24


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


def gc_command(line: str) -> str | None:
    """``gc freeze``, ``gc unfreeze``, ``gc threshold A B C``, ``gc collect`` or ``gc show``
    (the Trio servers, for ``gc_pauses.py``): apply it, answer ``gc {JSON}`` (the thresholds,
    the objects frozen, the objects each generation tracks); None if ``line`` is not one."""
    words = line.split()
    if not words or words[0] != "gc":
        return None
    if words[1:2] == ["freeze"]:
        gc.freeze()
    elif words[1:2] == ["unfreeze"]:
        gc.unfreeze()
    elif words[1:2] == ["threshold"]:
        gc.set_threshold(*(int(w) for w in words[2:5]))
    elif words[1:2] == ["collect"]:
        gc.collect()
    state = {
        "threshold": gc.get_threshold(),
        "frozen": gc.get_freeze_count(),
        "tracked": [len(gc.get_objects(generation)) for generation in range(3)],
    }
    return f"gc {json.dumps(state)}"


async def trio_commands(broadcast: Any, other: Any = None) -> None:
    """Read stdin commands in a thread; run broadcasts on the Trio loop.

    ``other(line)``, if given, answers the commands that are not ``broadcast`` (the answer is
    printed) or returns None (quit); without it any other line means quit.  ``gc ...``
    commands (:func:`gc_command`) are answered too.
    """
    pauses = Pauses()
    while True:
        line = await trio.to_thread.run_sync(sys.stdin.readline)
        answer = gc_command(line)
        if answer is not None:
            print(answer, flush=True)
            continue
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


async def asyncio_commands(broadcast: Any, other: Any = None) -> None:
    """Read stdin commands in a thread; run broadcasts on the asyncio loop.  ``other`` as for
    ``trio_commands``."""
    loop = asyncio.get_running_loop()
    pauses = Pauses()

    async def ticker() -> None:
        while True:
            start = loop.time()
            await asyncio.sleep(pauses.TICK)
            pauses.tick(loop.time() - start)

    while True:
        line = await loop.run_in_executor(None, sys.stdin.readline)
        command = parse_command(line)
        if command is None:
            answer = other(line) if other is not None else None
            if answer is None:
                break
            print(answer, flush=True)
            continue
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


def trio_wshandler_class(mode: str) -> Any:
    """The handler class of a mode: the demo's EchoHandler, or a counting or chat handler
    written with the public API as a user would (a ``WebSocketConnection`` subclass whose
    ``got_message`` counts, or counts and calls ``self.handler.send_all``)."""
    from trio_wshandler import WebSocketConnection, WebSocketHandler
    from trio_wshandler._demo import EchoHandler

    if mode == "echo":
        return EchoHandler

    class CountConnection(WebSocketConnection):
        async def got_message(self, message: str | bytes) -> None:
            RECEIVED.add(len(message))

    class ChatConnection(WebSocketConnection):
        async def got_message(self, message: str | bytes) -> None:
            RECEIVED.add(len(message))
            self.handler.send_all(message)  # Text in, Text out

    connection = CountConnection if mode == "count" else ChatConnection

    class Handler(WebSocketHandler):
        def get_connection(self, cx: Any, hdr: Any, cid: str) -> WebSocketConnection:
            return connection(self, cx, hdr, cid)

    return Handler


def trio_wshandler_handler(backplane: Any = None, mode: str = "echo") -> Any:
    from trio_wshandler import DeflateOptions

    # queues sized to hold a whole burst of the benchmark (the peers' buffers are unbounded);
    # compression as by default, negotiated only with a fleet that offers it (``deflate``)
    options: dict[str, Any] = {} if mode == "echo" else {"max_message_size": MAX_MESSAGE}
    return trio_wshandler_class(mode)(
        heartbeat=None,
        max_queue=1 << 16,
        max_queue_bytes=8 << 20,
        compression=DeflateOptions(),
        backplane=backplane,
        **options,
    )


async def run_trio_wshandler(deflate: bool = False, mode: str = "echo") -> None:
    from trio_wshandler import serve

    handler = trio_wshandler_handler(mode=mode)
    make = json_payload if deflate else payload

    async def broadcast(count: int, size: int, padding: bytes, paced: bool) -> None:
        for seq in range(count):
            handler.send_all(make(seq, size, padding))
            if paced:
                await trio.lowlevel.checkpoint()

    async with trio.open_nursery() as nursery:
        server = await nursery.start(serve, handler, "127.0.0.1", 0)
        announce(server.port)
        await trio_commands(broadcast, RECEIVED.answer)
        nursery.cancel_scope.cancel()


async def run_trio_wshandler_asgi(mode: str = "echo") -> None:
    """The same handler as ``trio_wshandler``, mounted under Hypercorn's Trio worker
    (``handler.asgi()``) instead of ``serve()``: Hypercorn frames each message for each client
    (``asgi_fanout.py``).  Hypercorn's access log is off, its other settings its defaults."""
    handler = trio_wshandler_handler(mode=mode)
    mount = handler.asgi()

    async def broadcast(count: int, size: int, padding: bytes, paced: bool) -> None:
        for seq in range(count):
            handler.send_all(payload(seq, size, padding))
            if paced:
                await trio.lowlevel.checkpoint()

    await serve_hypercorn(mount, broadcast, mount.configure)


async def serve_hypercorn(app: Any, broadcast: Any, configure: Any = None) -> None:
    """Serve ``app`` with Hypercorn's Trio worker on a free port (announced), access and error
    logs off, a backlog of 4096 (``configure(config)`` may set more), and run the commands
    with ``broadcast``."""
    from functools import partial

    from hypercorn.config import Config
    from hypercorn.trio import serve as hypercorn_serve

    config = Config()
    config.bind = ["127.0.0.1:0"]
    config.accesslog = None
    config.errorlog = None
    config.backlog = 4096
    if configure is not None:
        configure(config)
    async with trio.open_nursery() as nursery:
        shutdown = trio.Event()
        serving = partial(hypercorn_serve, app, config, shutdown_trigger=shutdown.wait)
        binds = await nursery.start(serving)
        announce(int(binds[0].rsplit(":", 1)[1]))
        await trio_commands(broadcast, RECEIVED.answer)
        nursery.cancel_scope.cancel()


async def run_hypercorn_floor(mode: str = "echo", tasks: bool = False) -> None:
    """The least an ASGI application pays per delivery on Hypercorn: a bare ASGI app whose
    broadcast awaits ``send`` for each client in turn, in the producer's task (no queue, no
    task per client: one client that reads nothing would stall every other).  With ``tasks``
    (``hypercorn_floor_tasks``) each client has a writer task of its own fed by an unbounded
    memory channel, the least an app that isolates its clients does."""
    sends: dict[int, Any] = {}

    async def writer(channel: Any, send: Any) -> None:
        async for message in channel:
            await send(message)

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        if scope["type"] != "websocket" or (await receive())["type"] != "websocket.connect":
            return
        await send({"type": "websocket.accept"})
        async with trio.open_nursery() as nursery:
            if tasks:
                into, out = trio.open_memory_channel[Any](math.inf)
                nursery.start_soon(writer, out, send)
                sends[id(send)] = into.send_nowait
            else:
                sends[id(send)] = send
            try:
                while (message := await receive())["type"] != "websocket.disconnect":
                    echo = {"bytes": message.get("bytes"), "text": message.get("text")}
                    await send({"type": "websocket.send", **echo})
            finally:
                del sends[id(send)]
                nursery.cancel_scope.cancel()

    async def broadcast(count: int, size: int, padding: bytes, paced: bool) -> None:
        for seq in range(count):
            message = {"type": "websocket.send", "bytes": payload(seq, size, padding)}
            for send in list(sends.values()):
                if tasks:
                    send(message)
                else:
                    await send(message)
            if paced:
                await trio.lowlevel.checkpoint()

    await serve_hypercorn(app, broadcast)


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


async def websockets_count(ws: Any) -> None:
    """The ``count`` handler of both websockets servers."""
    async for message in ws:
        RECEIVED.add(len(message))


async def run_websockets_trio(deflate: bool = False, mode: str = "echo") -> None:
    from websockets.trio.connection import broadcast as ws_broadcast
    from websockets.trio.server import serve

    make = json_payload if deflate else payload

    async def chat(ws: Any) -> None:
        async for message in ws:
            RECEIVED.add(len(message))
            await ws_broadcast(server.connections, message)

    handlers = {"echo": websockets_echo, "count": websockets_count, "chat": chat}
    async with trio.open_nursery() as nursery:
        server = await nursery.start(
            lambda task_status: serve(
                handlers[mode],
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

        await trio_commands(broadcast, RECEIVED.answer)
        nursery.cancel_scope.cancel()


# ---------------------------------------------------------------- trio-websocket


async def run_trio_websocket(mode: str = "echo") -> None:
    from trio_websocket import ConnectionClosed, serve_websocket

    connections: set[Any] = set()

    async def handle(request: Any) -> None:
        ws = await request.accept()
        connections.add(ws)
        try:
            if mode == "echo":
                while True:
                    await ws.send_message(await ws.get_message())
            while True:  # count, or chat: to every client, a loop of send_message
                message = await ws.get_message()
                RECEIVED.add(len(message))
                if mode == "chat":
                    for peer in list(connections):
                        with contextlib.suppress(ConnectionClosed):
                            await peer.send_message(message)
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
                max_message_size=MAX_MESSAGE,
            )
        )
        announce(server.port)
        await trio_commands(broadcast, RECEIVED.answer)
        nursery.cancel_scope.cancel()


# ---------------------------------------------------------------- websockets (asyncio)


async def run_websockets_asyncio(deflate: bool = False, mode: str = "echo") -> None:
    import websockets
    from websockets.asyncio.server import serve

    make = json_payload if deflate else payload

    async def chat(ws: Any) -> None:
        async for message in ws:
            RECEIVED.add(len(message))
            websockets.broadcast(server.connections, message)

    handlers = {"echo": websockets_echo, "count": websockets_count, "chat": chat}
    async with serve(
        handlers[mode],
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

        await asyncio_commands(broadcast, RECEIVED.answer)


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


async def run_floor(batched: bool = False, mode: str = "echo") -> None:
    """The plain Trio floor, and with ``batched`` its variant that writes once per round;
    ``mode`` (``floor`` only): echo, count or chat (see the module docstring)."""
    echo, chat = mode == "echo", mode == "chat"
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
                        elif opcode == 0xA:  # Pong
                            pass
                        elif echo:  # data (or continuation): echo it as it came
                            send(client, encode_frame(data, b0 & 0x8F))
                        else:  # count it, and in a chat send it to everybody as Text
                            RECEIVED.add(length, b0 & 0x80)
                            if chat:
                                fan_out(encode_frame(data, 0x81))
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

    def fan_out(frame: bytes) -> None:
        """One frame straight to every socket, with no task step per client."""
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

    async def broadcast(count: int, size: int, padding: bytes, paced: bool) -> None:
        """Each frame straight to every socket, from this loop (``fan_out``)."""
        for seq in range(count):
            fan_out(encode_frame(payload(seq, size, padding)))
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
        await trio_commands(broadcast_batched if batched else broadcast, RECEIVED.answer)
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
        await trio_commands(broadcast, RECEIVED.answer)
        nursery.cancel_scope.cancel()


# ---------------------------------------------------------------- picows (asyncio, Cython)


async def run_picows(mode: str = "echo") -> None:
    from picows import WSListener, WSMsgType, ws_create_server

    transports: set[Any] = set()
    data_types = (WSMsgType.BINARY, WSMsgType.TEXT, WSMsgType.CONTINUATION)
    text = WSMsgType.TEXT

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

    class Count(Echo):
        """Counts each data frame, a message at each final one."""

        def on_ws_frame(self, transport: Any, frame: Any) -> None:
            if frame.msg_type in data_types:
                RECEIVED.add(frame.payload_size, frame.fin)
            elif frame.msg_type == WSMsgType.CLOSE:
                super().on_ws_frame(transport, frame)

    class Chat(Echo):
        """Counts each data frame and sends it to every client as Text: a loop of send."""

        def on_ws_frame(self, transport: Any, frame: Any) -> None:
            if frame.msg_type in data_types:
                RECEIVED.add(frame.payload_size, frame.fin)
                message = frame.get_payload_as_memoryview()  # send copies it into its frame
                for peer in list(transports):
                    peer.send(text, message)
            elif frame.msg_type == WSMsgType.CLOSE:
                super().on_ws_frame(transport, frame)

    listener = {"echo": Echo, "count": Count, "chat": Chat}[mode]
    server = await ws_create_server(
        lambda request: listener(),
        "127.0.0.1",
        0,
        max_frame_size=MAX_MESSAGE,
        enable_auto_ping=False,
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

        await asyncio_commands(broadcast, RECEIVED.answer)


async def run_websockets_trio_pure(deflate: bool = False, mode: str = "echo") -> None:
    """websockets.trio without its compiled speedups (its pure-Python ``apply_mask``): the
    like-for-like row for ``trio_wshandler_pure``."""
    sys.modules["websockets.speedups"] = None  # type: ignore[assignment]  # import fails: fallback
    from websockets.frames import apply_mask

    assert apply_mask.__module__ == "websockets.utils", apply_mask.__module__
    await run_websockets_trio(deflate, mode)


async def run_trio_wshandler_pure(deflate: bool = False, mode: str = "echo") -> None:
    """trio_wshandler as an install without a C compiler runs it: unmasking in pure Python."""
    os.environ["TRIO_WSHANDLER_NO_SPEEDUPS"] = "1"  # read when the package is first imported
    await run_trio_wshandler(deflate, mode)


SERVERS = {
    "trio_wshandler": run_trio_wshandler,
    "trio_wshandler_pure": run_trio_wshandler_pure,
    "trio_wshandler_asgi": run_trio_wshandler_asgi,
    "hypercorn_floor": run_hypercorn_floor,
    "hypercorn_floor_tasks": functools.partial(run_hypercorn_floor, tasks=True),
    "websockets_trio": run_websockets_trio,
    "websockets_trio_pure": run_websockets_trio_pure,
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
    word = sys.argv[2] if len(sys.argv) > 2 else "echo"
    deflate = word == "deflate"
    if deflate and kind not in DEFLATE_SERVERS:
        sys.exit(f"{kind} has no permessage-deflate")
    if word not in (*MODES, "deflate"):
        sys.exit(f"unknown mode {word!r}: one of deflate, {', '.join(MODES)}")
    if word != "echo" and not deflate and kind not in MODE_SERVERS:
        sys.exit(f"{kind} has no {word} mode")
    run = SERVERS[kind]
    if deflate:
        run = functools.partial(run, deflate=True)
    elif word != "echo":
        run = functools.partial(run, mode=word)
    raise_fd_limit()
    if kind in ASYNCIO_SERVERS:
        asyncio.run(run())
    else:
        trio.run(run)


if __name__ == "__main__":
    main()
