"""Misbehaving clients: slow consumers, floods, stuck peers, garbage, stop under load."""

from __future__ import annotations

import gc
import os
from typing import Any

import pytest
import trio
import trio.lowlevel
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from websockets.trio.client import connect

from trio_wshandler import ConnectionClosedError, WebSocketHandler
from trio_wshandler._demo import EchoConnection
from trio_wshandler.codec import Opcode

from .conftest import (
    RawClient,
    RecordingHandler,
    client_frame,
    running,
    upgrade_request,
    wait_for,
    ws_url,
)


def live_tasks() -> int:
    """Every task in this Trio run (to check that nothing leaks)."""
    stack = [trio.lowlevel.current_root_task()]
    count = 0
    while stack:
        task = stack.pop()
        count += 1
        for nursery in task.child_nurseries:
            stack.extend(nursery.child_tasks)
    return count


async def stuck_client(port: int) -> trio.SocketStream:
    """Completes the handshake, then never reads again; a small receive buffer fills fast."""
    sock = trio.socket.socket()
    sock.setsockopt(trio.socket.SOL_SOCKET, trio.socket.SO_RCVBUF, 4096)
    await sock.connect(("127.0.0.1", port))
    stream = trio.SocketStream(sock)
    await stream.send_all(upgrade_request())
    head = b""
    while b"\r\n\r\n" not in head:
        head += await stream.receive_some(1)  # byte by byte: read nothing past the head
    assert b" 101 " in head
    return stream


async def test_one_slow_consumer_does_not_stall_the_others() -> None:
    """10 normal clients, 1 that never reads; 2000 broadcasts of 10 KB."""
    handler = RecordingHandler(max_queue_bytes=1 << 20, heartbeat=None, close_timeout=1)
    message_count, size, normal = 2000, 10_000, 10
    payload = os.urandom(size // 2).hex()
    received = [0] * normal
    in_order = [True] * normal
    peak_queued = 0

    async with running(handler) as server:
        stuck = await stuck_client(server.port)

        async def reader(i: int, task_status: Any) -> None:
            async with connect(ws_url(server), max_size=None, compression=None) as ws:
                task_status.started()
                for n in range(message_count):
                    message = await ws.recv()
                    in_order[i] &= message.startswith(f"{n}:")
                    received[i] += 1

        with trio.fail_after(60):
            async with trio.open_nursery() as nursery:
                for i in range(normal):
                    await nursery.start(reader, i)
                await handler.wait_connections(normal + 1)
                stuck_conn = handler.connections[0]
                for n in range(message_count):
                    handler.send_all(f"{n}:{payload}")
                    peak_queued = max(peak_queued, stuck_conn.queued_bytes)
                    await trio.lowlevel.checkpoint()  # a producer that yields, as any real one does
            await stuck_conn.closed.wait()
        await trio.aclose_forcefully(stuck)

    assert received == [message_count] * normal
    assert all(in_order)
    assert stuck_conn.close_code == 1013 and stuck_conn.close_reason == "slow consumer"
    # the server held at most max_queue_bytes (+1 message) for the stuck client
    assert peak_queued <= (1 << 20) + size + 100
    assert all(c.close_code == 1000 for c in handler.connections[1:])


async def _fill_until(conn: Any, done: Any, size: int = 65536, limit: int = 2000) -> int:
    """Send ``size``-byte messages to a client that does not read until ``done()``; the kernel
    takes the first ones, then the queue fills.  Returns how many were sent."""
    message = "x" * size
    for n in range(limit):
        try:
            conn.send(message)
        except ConnectionClosedError:
            return n
        if done():
            return n + 1
        await trio.lowlevel.checkpoint()  # let the flusher write what the socket takes
    raise AssertionError(f"{limit} messages of {size} bytes did not fill the queue")


async def test_drop_policy_drops_for_that_client_only() -> None:
    handler = RecordingHandler(slow_consumer="drop", max_queue=5, heartbeat=None)
    async with running(handler) as server:
        stuck = await stuck_client(server.port)
        [conn] = await handler.wait_connections(1)
        await _fill_until(conn, lambda: conn.dropped_messages > 0)
        assert conn.dropped_messages == 1
        assert conn.is_open
        async with RawClient.connect(server.port) as raw:  # another client gets everything
            await handler.wait_connections(2)
            assert handler.send_all("after") == 1  # dropped again for the stuck one only
            assert conn.dropped_messages == 2 and conn.is_open
            assert (await raw.receive_frame()).payload == b"after"
        await stuck.aclose()


async def test_a_full_queue_is_written_before_the_policy_applies() -> None:
    """A client that reads is never a slow consumer: six messages queued without a checkpoint
    on a queue of five go out, since the socket takes them."""
    handler = RecordingHandler(slow_consumer="drop", max_queue=5, heartbeat=None)
    async with running(handler) as server, RawClient.connect(server.port) as raw:
        [conn] = await handler.wait_connections(1)
        for i in range(6):
            conn.send(f"m{i}")
        assert conn.dropped_messages == 0
        for i in range(6):
            assert (await raw.receive_frame()).payload == f"m{i}".encode()


async def test_close_policy_send_raises_and_closes_1013() -> None:
    handler = RecordingHandler(max_queue=3, heartbeat=None)
    async with running(handler) as server:
        stuck = await stuck_client(server.port)
        [conn] = await handler.wait_connections(1)
        sent = await _fill_until(conn, lambda: False)
        assert not conn.is_open
        with pytest.raises(ConnectionClosedError):
            conn.send("one too many")
        raw = RawClient(stuck)  # now read: every message queued, then the Close
        for _ in range(sent):
            assert len((await raw.receive_frame()).payload) == 65536
        await raw.expect_close(1013)
        await stuck.aclose()


async def test_send_wait_waits_for_room_instead() -> None:
    handler = RecordingHandler(max_queue=2, heartbeat=None)
    async with running(handler) as server, connect(ws_url(server)) as ws:
        [conn] = await handler.wait_connections(1)
        with trio.fail_after(10):
            for i in range(50):
                await conn.send_wait(f"w{i}")
            got = [await ws.recv() for _ in range(50)]
    assert got == [f"w{i}" for i in range(50)]
    assert conn.dropped_messages == 0


async def test_send_timeout_disconnects_a_stuck_reader() -> None:
    handler = RecordingHandler(
        send_timeout=0.3, slow_consumer="drop", heartbeat=None, max_queue_bytes=64 << 20
    )
    async with running(handler) as server:
        stuck = await stuck_client(server.port)
        [conn] = await handler.wait_connections(1)
        big = b"x" * (1 << 20)
        for _ in range(40):  # far more than the socket buffers hold
            conn.send(big)
        with trio.fail_after(10):
            await conn.closed.wait()
        await trio.aclose_forcefully(stuck)
    assert conn.close_reason == "send timeout"


async def test_heartbeat_detects_a_peer_that_stopped_reading() -> None:
    """Keepalive does not depend on the write path: a stuck writer still gets the Pong timeout."""
    handler = RecordingHandler(
        heartbeat=0.2,
        pong_timeout=0.3,
        close_timeout=0.5,
        send_timeout=None,
        slow_consumer="drop",
        max_queue_bytes=64 << 20,
    )
    async with running(handler) as server:
        stuck = await stuck_client(server.port)
        [conn] = await handler.wait_connections(1)
        for _ in range(20):
            conn.send(b"y" * (1 << 20))  # the writer blocks forever on this
        with trio.fail_after(10):
            await conn.closed.wait()
        await trio.aclose_forcefully(stuck)
    assert conn.close_reason == "pong timeout"


async def test_ping_flood_gets_bounded_pong_work() -> None:
    handler = RecordingHandler(heartbeat=None)
    async with running(handler) as server, RawClient.connect(server.port) as raw:
        [conn] = await handler.wait_connections(1)
        ping = client_frame(b"p" * 125, Opcode.PING)
        for _ in range(30):  # 30,000 Pings of 125 bytes: 3.9 MB of Pongs if all were queued
            await raw.send(ping * 1000)  # while we read nothing
        await raw.send_frame("still serving")
        await wait_for(lambda: conn.messages == ["still serving"])
        # Pongs beyond the channel's room were dropped, never queued without bound: at most
        # max_queue + the control reserve, plus one batch in the writer's hands
        assert conn.queued_bytes <= (handler.max_queue + 8) * 127 + 256 * 1024
        pongs = 0
        with trio.move_on_after(1):
            while True:
                frame = await raw.receive_frame()
                pongs += frame.opcode == Opcode.PONG
        assert 0 < pongs <= 30_000


async def test_idle_timeout_closes_silent_clients() -> None:
    handler = RecordingHandler(idle_timeout=0.3, heartbeat=0.1, pong_timeout=5)
    async with running(handler) as server, connect(ws_url(server)) as ws:
        [conn] = await handler.wait_connections(1)
        for _ in range(4):  # messages keep it alive (Pings and Pongs do not)
            await ws.send("tick")
            await trio.sleep(0.15)
        assert conn.is_open
        with trio.fail_after(5):
            await conn.closed.wait()
    assert (conn.close_code, conn.close_reason) == (1001, "idle timeout")


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.binary(min_size=1, max_size=2048), masked_prefix=st.booleans())
async def test_any_input_never_crashes_the_server_or_leaks_tasks(
    data: bytes, masked_prefix: bool
) -> None:
    handler = RecordingHandler(heartbeat=None, close_timeout=0.2)
    async with running(handler) as server:
        before = live_tasks()
        async with RawClient.connect(server.port) as raw:
            if masked_prefix:  # start with a valid frame header so the garbage gets deeper
                data = client_frame(data, Opcode.BINARY)
            await raw.send(data)
            with trio.move_on_after(0.2):
                await raw.receive_eof()
        [conn] = handler.connections
        with trio.fail_after(5):
            await conn.closed.wait()
        await wait_for(lambda: live_tasks() <= before)  # the connection's tasks are all gone
        assert conn.events == ["registered", "deregister_connection", "connection_closed"]
        # and the server still works
        handler.connection_class = EchoConnection
        async with connect(ws_url(server)) as ws:
            await ws.send("alive")
            assert await ws.recv() == "alive"


async def test_stop_under_heavy_traffic() -> None:
    handler = RecordingHandler(heartbeat=None, close_timeout=2)
    clients = 20
    codes: list[int | None] = []
    async with running(handler) as server:
        before = live_tasks()

        async def client(task_status: Any) -> None:
            async with connect(ws_url(server), compression=None) as ws:
                task_status.started()
                try:
                    while True:
                        await ws.recv()
                except Exception:
                    codes.append(ws.close_code)

        async def traffic() -> None:
            while True:
                handler.send_all("z" * 1000)
                await trio.lowlevel.checkpoint()

        with trio.fail_after(20):
            async with trio.open_nursery() as nursery:
                for _ in range(clients):
                    await nursery.start(client)
                await handler.wait_connections(clients)
                async with trio.open_nursery() as producer:
                    producer.start_soon(traffic)
                    await trio.sleep(0.3)
                    start = trio.current_time()
                    handler.stop()
                    status = await _try_upgrade(server.port)
                    await handler.wait_stopped()
                    elapsed = trio.current_time() - start
                    producer.cancel_scope.cancel()
            # the clients ended by themselves, each with the server's Close
        gc.collect()
        await wait_for(lambda: live_tasks() <= before)
    assert status == 503
    assert codes == [1001] * clients
    assert elapsed < 2 * handler.close_timeout
    for conn in handler.connections:
        assert conn.events == ["registered", "deregister_connection", "connection_closed"]


async def _try_upgrade(port: int) -> int:
    from .conftest import raw_http

    status, _, _ = await raw_http(port, upgrade_request())
    return status


async def test_stop_listener_stops_accepting_first() -> None:
    handler = RecordingHandler(close_timeout=2)
    async with running(handler) as server, RawClient.connect(server.port) as raw:
        [conn] = await handler.wait_connections(1)
        port = server.port
        server.stop_listener(next(iter(server.listeners)))
        # the port refuses at once, while the open connection is still closing
        with pytest.raises(OSError):
            await trio.open_tcp_stream("127.0.0.1", port)
        assert not conn.closed.is_set()
        await raw.expect_close(1001)
        await raw.send_frame(b"\x03\xe9", Opcode.CLOSE)
        await conn.closed.wait()


def test_default_limits_are_documented() -> None:
    handler = WebSocketHandler()
    assert handler.max_queue_bytes == 1 << 20
    assert handler.slow_consumer == "close"
    assert handler.send_timeout == 30.0
