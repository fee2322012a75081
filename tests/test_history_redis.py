"""Topic history kept in Redis (issue #19): handlers with a RedisBackplane against a real
redis-server the tests start.  Two handlers served in this process stand for two processes here
(each has its own backplane, node id and Redis connections); tests/test_history_cluster.py runs
real processes."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import trio
from websockets.trio.client import connect

from trio_wshandler import (
    HistoryOptions,
    Position,
    RedisBackplane,
    Server,
    WebSocketHandler,
    default_envelope,
    serve,
)
from trio_wshandler._history_feed import GAP_CLOSE
from trio_wshandler.codec import encode_data

from .conftest import TIMEOUT, RawClient, RecordingHandler, wait_for, ws_url
from .redis_cluster import RedisCluster
from .redis_server import RedisServer

ROOM = HistoryOptions(size=100, ttl=60)


def node(
    redis: RedisServer | RedisCluster, prefix: str = "h", **history: HistoryOptions
) -> RecordingHandler:
    """A handler (a node of its own) with a backplane on ``redis`` (one Redis or a cluster)
    and a history for each topic of ``history`` (``room`` unless given)."""
    backplane = RedisBackplane(
        redis.url, prefix=prefix, heartbeat=0.1, presence_ttl=1.0, command_timeout=0.5
    )
    return RecordingHandler(history=history or {"room": ROOM}, backplane=backplane)


@asynccontextmanager
async def serving(*handlers: WebSocketHandler) -> AsyncIterator[list[Server]]:
    async with trio.open_nursery() as nursery:
        servers = [await nursery.start(serve, h, "127.0.0.1", 0) for h in handlers]
        try:
            yield servers
        finally:
            nursery.cancel_scope.cancel()


async def receive(ws: Any, n: int) -> list[dict[str, Any]]:
    with trio.fail_after(TIMEOUT):
        return [json.loads(await ws.recv()) for _ in range(n)]


def position(envelope: dict[str, Any]) -> Position:
    return Position(envelope["offset"], envelope["epoch"])


async def nothing_more(ws: Any) -> None:
    with trio.move_on_after(0.2):
        extra = await ws.recv()
        raise AssertionError(f"unexpected {extra!r}")


async def test_publications_from_one_process_are_recovered_in_another(redis: RedisServer) -> None:
    a, b = node(redis), node(redis)
    async with serving(a, b) as (_, server_b):
        async with connect(ws_url(server_b)) as ws:
            [first] = await b.wait_connections(1)
            fresh = await first.subscribe_from("room")
            assert not fresh.recovered and fresh.position.offset == 0
            epoch = fresh.position.epoch
            for i in range(3):
                a.publish("room", f"m{i}")
            got = await receive(ws, 3)
            assert [(e["data"], e["offset"], e["epoch"]) for e in got] == [
                (f"m{i}", i + 1, epoch) for i in range(3)
            ]
        last = position(got[-1])
        for i in range(3, 53):  # while the client is away
            a.publish("room", f"m{i}")
        async with connect(ws_url(server_b)) as ws:
            await wait_for(lambda: len(b.connections) == 2)
            recovery = await b.connections[1].subscribe_from("room", last)
            assert recovery.recovered and recovery.replayed == 50
            assert recovery.position == Position(53, epoch)
            b.publish("room", "live from b")
            got = await receive(ws, 51)
            await nothing_more(ws)
        assert [e["data"] for e in got] == [f"m{i}" for i in range(3, 53)] + ["live from b"]
        assert [e["offset"] for e in got] == list(range(4, 55))
        stats_a, stats_b = a.stats(), b.stats()
        assert stats_a.history_publications == 53 and stats_b.history_publications == 1
        assert (stats_b.recoveries, stats_b.recoveries_succeeded) == (1, 1)
        assert (stats_b.history_gaps_repaired, stats_b.history_gaps_closed) == (0, 0)


async def test_the_publisher_delivers_in_offset_order_too(redis: RedisServer) -> None:
    a, b = node(redis), node(redis)
    async with serving(a, b) as (server_a, _):
        async with connect(ws_url(server_a)) as ws:
            [conn] = await a.wait_connections(1)
            await conn.subscribe_from("room")
            async with trio.open_nursery() as nursery:  # both publish at once
                for handler, name in ((a, "a"), (b, "b")):
                    nursery.start_soon(publish_many, handler, name, 100)
            got = await receive(ws, 200)
        assert [e["offset"] for e in got] == list(range(1, 201))
        assert sorted(e["data"] for e in got) == sorted(f"{n}{i}" for n in "ab" for i in range(100))


async def publish_numbered(handler: WebSocketHandler, n: int) -> None:
    """``m0`` ... on "room" from ``handler``, and wait until Redis has numbered them all."""
    for i in range(n):
        handler.publish("room", f"m{i}")
    await wait_for(lambda: handler.backplane is not None and handler.backplane.published >= n)


async def publish_many(handler: WebSocketHandler, name: str, n: int) -> None:
    for i in range(n):
        handler.publish("room", f"{name}{i}")
        if i % 10 == 0:
            await trio.lowlevel.checkpoint()


async def test_a_position_too_old_or_from_another_epoch_recovers_nothing(
    redis: RedisServer,
) -> None:
    small = HistoryOptions(size=5, ttl=60, max_recover=300)
    a, b = node(redis, room=small), node(redis, room=small)
    async with serving(a, b) as (_, server_b):
        for i in range(20):
            a.publish("room", f"m{i}")
        async with connect(ws_url(server_b)) as ws:
            [conn] = await b.wait_connections(1)
            await wait_for(lambda: a.backplane is not None and a.backplane.published >= 20)
            fresh = await conn.subscribe_from("room")
            assert fresh.position.offset == 20
            epoch = fresh.position.epoch
            old = await conn.subscribe_from("room", Position(10, epoch))
            assert (old.recovered, old.reason) == (False, "too_old")
            assert old.position == Position(20, epoch)
            other = await conn.subscribe_from("room", Position(19, "0" * 16))
            assert (other.recovered, other.reason) == (False, "epoch")
            kept = await conn.subscribe_from("room", Position(16, epoch))
            assert (kept.recovered, kept.replayed) == (True, 4)
            got = await receive(ws, 4)
            assert [e["offset"] for e in got] == [17, 18, 19, 20]
        assert dict(b.stats().recovery_failures) == {"too_old": 1, "epoch": 1}


async def test_publications_racing_a_recovery_arrive_once_in_order(redis: RedisServer) -> None:
    a, b = node(redis), node(redis)
    async with serving(a, b) as (_, server_b):
        await publish_numbered(a, 30)
        async with connect(ws_url(server_b)) as ws:
            [conn] = await b.wait_connections(1)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(publish_many, a, "x", 60)
                recovery = await conn.subscribe_from("room", Position(10, await epoch_of(b)))
            assert recovery.recovered
            got = await receive(ws, 80)
            await nothing_more(ws)
        assert [e["offset"] for e in got] == list(range(11, 91))


async def epoch_of(handler: RecordingHandler) -> str:
    """The epoch of "room", as a subscription from nowhere on a connection of its own sees it."""
    source = handler._hub.source  # a test reads the epoch without a client
    assert source is not None
    source.hold("room")
    try:
        recovery, _ = await source.start("room", None)
    finally:
        source.release("room")
    return recovery.position.epoch


async def test_publications_lost_on_the_way_from_redis_are_repaired_from_the_stream(
    redis: RedisServer,
) -> None:
    a, b = node(redis), node(redis)
    async with serving(a, b) as (_, server_b), connect(ws_url(server_b)) as ws:
        [conn] = await b.wait_connections(1)
        await conn.subscribe_from("room")
        async with trio.open_nursery() as nursery:
            nursery.start_soon(publish_paced, a, 300)
            for _ in range(3):  # b's pub/sub connection dropped, publications going on
                await trio.sleep(0.3)
                assert b.backplane is not None
                await kill_pubsub(redis, b.backplane.node_id)
        got = await receive(ws, 300)
        await nothing_more(ws)
        assert [e["offset"] for e in got] == list(range(1, 301))
        assert [e["data"] for e in got] == [f"p{i}" for i in range(300)]
        stats = b.stats()
        assert stats.history_gaps_repaired >= 1 and stats.history_gaps_closed == 0
        assert stats.backplane is not None and stats.backplane.reconnects >= 1


async def publish_paced(handler: WebSocketHandler, n: int) -> None:
    for i in range(n):
        handler.publish("room", f"p{i}")
        await trio.sleep(0.005)


async def kill_pubsub(redis: RedisServer, node: str) -> None:
    """CLIENT KILL the pub/sub connection of the backplane of node id ``node`` (its Redis
    connections are named ``<prefix>:<node id>``)."""
    async with await trio.open_tcp_stream("127.0.0.1", redis.port) as stream:
        clients = (await command(stream, b"CLIENT LIST TYPE pubsub")).decode()
        [cid] = [
            fields["id"]
            for line in clients.splitlines()
            if (fields := dict(f.partition("=")[::2] for f in line.split()))
            and fields.get("name", "").endswith(f":{node}")
        ]
        assert (await command(stream, f"CLIENT KILL ID {cid}".encode())).startswith(b":1")


async def command(stream: trio.SocketStream, line: bytes) -> bytes:
    """One inline command, its whole answer (small: one read suffices on loopback)."""
    await stream.send_all(line + b"\r\n")
    with trio.fail_after(TIMEOUT):
        answer = await stream.receive_some(1 << 20)
    return answer


async def test_a_redis_restarted_empty_means_a_new_epoch(redis: RedisServer) -> None:
    a, b = node(redis), node(redis)
    async with serving(a, b) as (_, server_b):
        async with connect(ws_url(server_b)) as ws:
            [conn] = await b.wait_connections(1)
            await conn.subscribe_from("room")
            for i in range(5):
                a.publish("room", f"m{i}")
            got = await receive(ws, 5)
            redis.stop()
            redis.start()  # empty: the history and its position are gone
            # the feed finds the new epoch when its pub/sub connection is back: the
            # subscriber here is closed to come back and learn that it did not recover
            with trio.fail_after(TIMEOUT):
                while True:
                    try:
                        await ws.recv()
                    except Exception:
                        break
            assert ws.close_code == GAP_CLOSE
        assert b.stats().history_gaps_closed == 1
        async with connect(ws_url(server_b)) as ws:
            await wait_for(lambda: len(b.connections) == 2)
            back = await b.connections[1].subscribe_from("room", position(got[-1]))
            assert (back.recovered, back.reason, back.position.offset) == (False, "epoch", 0)
            assert back.position.epoch != got[-1]["epoch"]
            await wait_for(lambda: a.backplane is not None and a.backplane.connected)
            a.publish("room", "again")
            [envelope] = await receive(ws, 1)
            assert position(envelope) == Position(1, back.position.epoch)


async def test_a_reconnect_storm_costs_one_read(redis: RedisServer) -> None:
    """1,000 connections subscribe from the same position at once: each gets exactly its gap
    of 100, and Redis is read a handful of times, not 1,000."""
    a, b = node(redis), node(redis)
    n = 1000
    async with serving(a, b) as (_, server_b):
        for i in range(1, 151):
            a.publish("room", f"m{i}")
        epoch = await epoch_of(a)  # a's read: b has read nothing yet
        await wait_for(lambda: a.backplane is not None and a.backplane.published >= 150)
        expected = b"".join(
            encode_data(default_envelope("room", Position(o, epoch), f"m{o}"))
            for o in range(51, 151)
        )
        clients: list[trio.SocketStream] = []
        try:
            for _ in range(n):
                stream = await trio.open_tcp_stream("127.0.0.1", server_b.port)
                clients.append(stream)
                await RawClient(stream).handshake()
            await wait_for(lambda: len(b) == n)
            evals_before = await eval_calls(redis)
            outcomes: list[Any] = []

            async def recover(connection: Any) -> None:
                outcomes.append(await connection.subscribe_from("room", Position(50, epoch)))

            got: list[bytes] = []

            async def read(stream: trio.SocketStream) -> None:
                data = b""
                while len(data) < len(expected):
                    data += await stream.receive_some()
                got.append(data)

            with trio.fail_after(30):
                async with trio.open_nursery() as nursery:
                    for connection in list(b.registry):
                        nursery.start_soon(recover, connection)
                    for stream in clients:
                        nursery.start_soon(read, stream)
            evals = await eval_calls(redis) - evals_before
        finally:
            for stream in clients:
                await trio.aclose_forcefully(stream)
        assert len(outcomes) == n and all(o.recovered and o.replayed == 100 for o in outcomes)
        assert len(got) == n and all(data == expected for data in got)
        assert b.backplane is not None
        assert b.backplane.history_reads <= 3, b.backplane.history_reads
        assert evals <= 3, evals  # the read script is the only EVAL (publishing is EVALSHA)


async def eval_calls(redis: RedisServer) -> int:
    """How many EVAL commands the redis-server has run (INFO commandstats)."""
    async with await trio.open_tcp_stream("127.0.0.1", redis.port) as stream:
        info = (await command(stream, b"INFO commandstats")).decode()
    for line in info.splitlines():
        if line.startswith("cmdstat_eval:"):
            return int(line.split("calls=")[1].split(",")[0])
    return 0


async def test_a_plain_subscriber_of_a_topic_with_history_gets_its_envelopes(
    redis: RedisServer,
) -> None:
    a, b = node(redis), node(redis)
    async with serving(a, b) as (_, server_b), connect(ws_url(server_b)) as ws:
        [conn] = await b.wait_connections(1)
        a.publish("room", "before")  # before b follows the topic: not for this subscriber
        await wait_for(lambda: a.backplane is not None and a.backplane.published >= 1)
        conn.subscribe("room")
        assert b.backplane is not None
        await wait_for(lambda: b.backplane is not None and b.backplane.subscribed("room"))
        for i in range(3):
            a.publish("room", f"m{i}")
        got = await receive(ws, 3)
        await nothing_more(ws)
        assert [(e["offset"], e["data"]) for e in got] == [(2, "m0"), (3, "m1"), (4, "m2")]
