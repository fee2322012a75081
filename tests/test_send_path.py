"""Send path v2: the flusher, backed-up sockets, fast senders that read, no-progress timeouts,
descriptor reuse, and the listener's timer sweep."""

from __future__ import annotations

import json
import socket
from typing import Any

import trio
from websockets.trio.client import connect

from trio_wshandler import WebSocketConnection
from trio_wshandler._demo import EchoHandler
from trio_wshandler._flusher import COALESCE_BYTES
from trio_wshandler._send_queue import MAX_PONGS_OWED, SendQueue
from trio_wshandler.codec import Opcode, encode_message

from .conftest import RawClient, RecordingHandler, cli, client_frame, running, wait_for
from .test_hardening import stuck_client


async def test_ten_thousand_messages_in_one_write_to_the_echo_process() -> None:
    """A client that reads promptly is never a slow consumer, however fast it sends."""
    async with cli("echo") as port, RawClient.connect(port) as raw:
        await raw.send(b"".join(client_frame(b"%d" % i, Opcode.TEXT) for i in range(10_000)))
        for i in range(10_000):
            frame = await raw.receive_frame()
            assert (frame.opcode, frame.payload) == (Opcode.TEXT, b"%d" % i)
        await raw.send_frame("last")
        assert (await raw.receive_frame()).payload == b"last"


async def test_ten_thousand_messages_to_the_chat_demo_reach_everyone() -> None:
    # (without the demo's rate limit, which would take 8 minutes to let them through)
    async with cli("demo", "--no-rate-limit") as port:
        url = f"ws://127.0.0.1:{port}/ws"
        async with connect(url, max_queue=None) as observer, RawClient.connect(port, "/ws") as raw:
            sender_chats = 0

            async def sender_reads() -> None:  # as Node's ws does: it reads while it sends
                nonlocal sender_chats
                while sender_chats < 10_000:  # it gets every broadcast too, and no Close
                    frame = await raw.receive_frame()
                    assert frame.opcode == Opcode.TEXT, frame
                    sender_chats += json.loads(frame.payload)["type"] == "chat"

            seen: list[str] = []
            with trio.fail_after(30):
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(sender_reads)
                    frames = [client_frame(b"m%d" % i, Opcode.TEXT) for i in range(10_000)]
                    await raw.send(b"".join(frames))
                    while len(seen) < 10_000:
                        message = json.loads(await observer.recv())
                        if message["type"] == "chat":
                            seen.append(message["text"])
            assert seen == [f"m{i}" for i in range(10_000)]
            assert sender_chats == 10_000


async def test_a_client_that_floods_and_never_reads_is_stopped() -> None:
    """Its echoes fill its queue, so we stop reading it (backpressure), and it is dropped when
    its socket takes nothing for send_timeout; another client is not affected."""
    handler = EchoHandler(max_queue=64, send_timeout=0.5, heartbeat=None)
    async with running(handler) as server:
        flooder = await stuck_client(server.port)
        [conn] = await wait_for_connections(handler, 1)
        message = client_frame(b"x" * 1000, Opcode.BINARY)
        sent = 0
        with trio.move_on_after(5):
            while sent < 100_000:  # until the kernel buffers are full and it blocks
                with trio.move_on_after(0.5) as blocked:
                    try:
                        await flooder.send_all(message * 10)
                    except trio.BrokenResourceError:  # dropped already (send_timeout)
                        break
                if blocked.cancelled_caught:
                    break
                sent += 10
        assert sent < 100_000, "the server kept reading a client that does not read"
        async with connect(f"ws://127.0.0.1:{server.port}/") as other:
            await other.send("fine")
            assert await other.recv() == "fine"
        with trio.fail_after(5):
            await conn.wait_closed()
        assert (conn.close_code, conn.close_reason) == (1013, "send timeout")
        await trio.aclose_forcefully(flooder)


async def wait_for_connections(handler: Any, n: int) -> list[WebSocketConnection]:
    await wait_for(lambda: len(handler) >= n)
    return [handler.connection(cid) for cid in handler.connection_ids()]


async def test_send_timeout_means_no_progress() -> None:
    """A client that reads 4 KiB every 50 ms (80 KB/s) gets 300 KB with send_timeout=1 s: the
    whole takes about 4 s, but every wait makes progress, so it is never dropped."""
    handler = RecordingHandler(send_timeout=1.0, heartbeat=None, max_queue_bytes=1 << 20)
    async with running(handler) as server:
        slow = await stuck_client(server.port)
        [conn] = await handler.wait_connections(1)
        for _ in range(3):
            conn.send(b"y" * 100_000)
        received = 0
        with trio.fail_after(20):
            while received < 300_000 + 3 * 4:  # three Binary frames of 100,000 bytes
                chunk = await slow.receive_some(4096)
                assert chunk, "dropped"
                received += len(chunk)
                await trio.sleep(0.05)
        assert conn.is_open
        await trio.aclose_forcefully(slow)


def test_a_coalesced_write_stays_within_coalesce_bytes() -> None:
    queue = SendQueue(100, 10 << 20)
    big = b"z" * (200 * 1024)
    for _ in range(2):
        assert queue.put_data(big)
    frames, size = queue.take(COALESCE_BYTES)
    assert (len(frames), size) == (1, len(big))  # two would be 400 KiB
    frames, size = queue.take(COALESCE_BYTES)
    assert (len(frames), size) == (1, len(big))
    huge = b"h" * (COALESCE_BYTES + 1)
    assert queue.put_data(huge) and queue.put_data(b"after")
    assert queue.take(COALESCE_BYTES) == ([huge], len(huge))  # a larger frame goes alone
    assert queue.take(COALESCE_BYTES) == ([b"after"], 5)
    assert queue.in_channel == 0


async def test_a_stale_listing_never_writes_to_a_reused_descriptor() -> None:
    """The kernel reuses descriptor numbers at once: a connection listed for the flusher that
    closed meanwhile must not have its frames written to whoever now has its number."""
    handler = RecordingHandler(heartbeat=None)
    async with running(handler) as server:
        async with RawClient.connect(server.port):
            [a] = await handler.wait_connections(1)
            core = a._core
            assert core.sock is not None
            fd = core.sock.fileno()
            flusher = core.flusher
            assert flusher is not None
        await a.closed.wait()
        async with RawClient.connect(server.port) as b_client:
            await handler.wait_connections(1)
            b = handler.connections[1]
            b_sock = b._core.sock
            assert b_sock is not None and b_sock.fileno() == fd  # the number was reused
            # a's frames, listed late: exactly what a stale listing would hold
            core.queue = SendQueue(10, 1 << 20)
            core.queue.put_data(encode_message("for a only"))
            flusher.schedule(core)
            b.send("for b")
            await trio.sleep(0.1)
            assert (await b_client.receive_frame()).payload == b"for b"
            with trio.move_on_after(0.3):
                extra = await b_client.receive_frame()
                raise AssertionError(f"b got {extra}")


async def test_live_pong_timeout_applies_to_a_ping_already_waiting() -> None:
    """The timer sweep reads the settings at every tick: shortening pong_timeout while a Ping
    waits for its Pong applies to that Ping."""
    handler = RecordingHandler(heartbeat=0.1, pong_timeout=30, close_timeout=0.5)
    async with running(handler) as server:
        sock = socket.create_connection(("127.0.0.1", server.port))  # answers nothing
        try:
            raw = RawClient(trio.SocketStream(trio.socket.from_stdlib_socket(sock)))
            await raw.handshake()
            [conn] = await handler.wait_connections(1)
            assert (await raw.receive_frame()).opcode == Opcode.PING
            handler.pong_timeout = 0.2
            with trio.fail_after(3):
                await conn.wait_closed()
            assert (conn.close_code, conn.close_reason) == (1011, "pong timeout")
        finally:
            sock.close()


async def test_paced_broadcast_reaches_everyone_in_order() -> None:
    """A producer that yields after every send_all (one flusher round per message)."""
    handler = RecordingHandler(heartbeat=None)
    async with running(handler) as server:
        async with trio.open_nursery() as nursery:
            got: list[list[bytes]] = [[] for _ in range(20)]

            async def client(i: int, task_status: Any) -> None:
                async with RawClient.connect(server.port) as raw:
                    task_status.started()
                    while len(got[i]) < 200:
                        got[i].append((await raw.receive_frame()).payload)

            for i in range(20):
                await nursery.start(client, i)
            await handler.wait_connections(20)
            for n in range(200):
                assert handler.send_all(b"%d" % n) == 20
                await trio.lowlevel.checkpoint()
        assert all(g == [b"%d" % n for n in range(200)] for g in got)


def test_a_close_always_fits_behind_data_and_pongs() -> None:
    queue = SendQueue(4, 1 << 20)
    for _ in range(4):
        assert queue.put_data(b"d")
    assert not queue.put_data(b"d")
    pongs = 0
    while queue.put_pong(b"p"):
        pongs += 1
    assert pongs == MAX_PONGS_OWED
    assert queue.put_control(b"heartbeat ping") and queue.put_control(b"close")


async def test_a_slow_reader_that_talks_is_not_closed_as_idle() -> None:
    """While its queue is over half full the server stops reading it, so its messages (and
    Pongs) wait unread: the timers must not take that for silence."""
    handler = RecordingHandler(heartbeat=None, idle_timeout=0.4, slow_consumer="drop", max_queue=16)
    async with running(handler) as server, RawClient.connect(server.port) as raw:
        [conn] = await handler.wait_connections(1)

        async def slow_reader() -> None:  # reads steadily, much slower than the broadcast
            while True:
                await raw.receive_frame()
                await trio.sleep(0.03)

        sent = 0

        async def talker() -> None:  # a message every 0.05 s: never idle
            nonlocal sent
            while True:
                await raw.send_frame(f"m{sent}")
                sent += 1
                await trio.sleep(0.05)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(slow_reader)
            async with trio.open_nursery() as talking:
                talking.start_soon(talker)
                for _ in range(2500):  # 8 KiB every millisecond for about 3 s
                    handler.send_all(b"b" * 8192)
                    await trio.sleep(0.001)
                assert conn.is_open, (conn.close_code, conn.close_reason)
                talking.cancel_scope.cancel()
            assert conn.dropped_messages > 0  # it really was slow
            # still reading: its queue empties, and the server reads it again
            await wait_for(lambda: len(conn.messages) == sent and conn.queued_bytes == 0)
            assert conn.messages == [f"m{i}" for i in range(sent)]
            nursery.cancel_scope.cancel()
