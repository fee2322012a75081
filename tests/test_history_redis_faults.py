"""Topic history in Redis when things go wrong between Redis and a process (issue #19, from a
review): losses during a repair, a read whose maker is cancelled, a resubscription that races
the resync, a refused script, a lagging feed, an envelope function that raises, a message not
made by our script, a catch-up that cannot finish.  Real redis-server; losses between Redis and
a process are made by dropping what the feed receives (pub/sub loses messages the same way)."""

from __future__ import annotations

import json
from typing import Any

import pytest
import trio
from websockets.trio.client import connect

from trio_wshandler import ConnectionClosedError, HistoryOptions, Position
from trio_wshandler import _recovery as recovery_module
from trio_wshandler._backplane_tasks import LaneTasks
from trio_wshandler._backplane_wire import Envelope, Kind, encode

from .conftest import wait_for, ws_url
from .redis_server import RedisServer
from .test_history_redis import (
    command,
    epoch_of,
    kill_pubsub,
    node,
    publish_numbered,
    receive,
    serving,
)


class SlowLink:
    """A backplane whose history reads are held after Redis answered, until ``gate`` is set."""

    def __init__(self, real: Any) -> None:
        self.real = real
        self.gate = trio.Event()
        self.entered = trio.Event()
        self.calls = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)

    async def read_history(self, *args: Any) -> Any:
        self.calls += 1
        snapshot = await self.real.read_history(*args)
        self.entered.set()
        await self.gate.wait()
        return snapshot


async def offsets_until_quiet(ws: Any, quiet: float = 1.0) -> list[int]:
    got = []
    with trio.move_on_after(10):
        while True:
            with trio.move_on_after(quiet) as idle:
                got.append(json.loads(await ws.recv())["offset"])
            if idle.cancelled_caught:
                break
    return got


async def test_a_second_loss_during_a_repair_is_repaired_too(redis: RedisServer) -> None:
    a, b = node(redis), node(redis)
    async with serving(a, b) as (_, server_b), connect(ws_url(server_b)) as ws:
        [conn] = await b.wait_connections(1)
        await conn.subscribe_from("room")
        shared = b._hub.shared
        assert shared is not None
        link = shared.link = SlowLink(shared.link)
        real_received = shared.received

        def lossy(topic: str, offset: int, *rest: Any) -> None:
            if offset not in (5, 9):  # lost between Redis and b
                real_received(topic, offset, *rest)

        shared.received = lossy  # type: ignore[method-assign]
        for i in range(1, 7):
            a.publish("room", f"m{i}")
        with trio.fail_after(5):
            await link.entered.wait()  # the repair of 5 has read Redis; its answer waits
        for i in range(7, 11):
            a.publish("room", f"m{i}")
        feed = shared.feeds["room"]
        await wait_for(lambda: 10 in feed.held)
        link.gate.set()
        for i in range(11, 16):
            a.publish("room", f"m{i}")
        assert await offsets_until_quiet(ws) == list(range(1, 16))
        assert not feed.repairing and not feed.held
        assert b.stats().history_gaps_repaired == 2


async def test_a_shared_read_is_made_again_when_its_maker_is_cancelled(redis: RedisServer) -> None:
    a, b = node(redis), node(redis)
    async with serving(a, b) as (_, server_b):
        await publish_numbered(a, 20)
        epoch = await epoch_of(b)
        shared = b._hub.shared
        assert shared is not None
        link = shared.link = SlowLink(shared.link)
        async with (
            connect(ws_url(server_b)),
            connect(ws_url(server_b)),
            connect(ws_url(server_b)),
        ):
            conns = await b.wait_connections(3)
            outcomes: dict[int, bool] = {}

            async def recover(i: int) -> None:
                outcomes[i] = (await conns[i].subscribe_from("room", Position(10, epoch))).recovered

            maker = trio.CancelScope()

            async def first() -> None:
                with maker:
                    await recover(0)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(first)
                await link.entered.wait()
                nursery.start_soon(recover, 1)
                nursery.start_soon(recover, 2)
                await trio.sleep(0.1)
                maker.cancel()  # the first client went away while its read was in flight
                await trio.sleep(0.1)
                link.gate.set()
        assert outcomes == {1: True, 2: True}
        assert link.calls == 2  # the cancelled one, and one made again for both


async def test_the_feeds_are_checked_once_the_new_subscription_is_in_force(
    redis: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A publication made while b's new pub/sub connection subscribes (after its failure) is
    found by the check that follows, not only when a later one reveals it."""
    a, b = node(redis), node(redis)
    slow = trio.Event()
    subscribe = LaneTasks._subscribe

    async def slow_subscribe(self: LaneTasks, subscription: Any, channels: list[str]) -> None:
        if slow.is_set() and b.backplane is not None and self.core.node_id == b.backplane.node_id:
            a.publish("room", "late")  # published before b subscribes again
            assert a.backplane is not None
            published = a.backplane.published
            while a.backplane.published == published:  # numbered by Redis
                await trio.sleep(0.001)
        await subscribe(self, subscription, channels)

    monkeypatch.setattr(LaneTasks, "_subscribe", slow_subscribe)
    async with serving(a, b) as (_, server_b), connect(ws_url(server_b)) as ws:
        [conn] = await b.wait_connections(1)
        await conn.subscribe_from("room")
        a.publish("room", "x")
        await receive(ws, 1)
        slow.set()
        assert b.backplane is not None
        await kill_pubsub(redis, b.backplane.node_id)
        with trio.fail_after(5):
            envelope = json.loads(await ws.recv())
        assert (envelope["data"], envelope["offset"]) == ("late", 2)


async def test_a_refused_publish_script_loses_that_publication_only(redis: RedisServer) -> None:
    spare = HistoryOptions(size=10, ttl=60)
    a, b = node(redis, room=spare, bad=spare), node(redis, room=spare, bad=spare)
    async with serving(a, b) as (_, server_b), connect(ws_url(server_b)) as ws:
        [conn] = await b.wait_connections(1)
        await conn.subscribe_from("room")
        a.publish("bad", "1")
        assert a.backplane is not None
        await wait_for(lambda: a.backplane is not None and a.backplane.published >= 1)
        async with await trio.open_tcp_stream("127.0.0.1", redis.port) as stream:
            await command(stream, b"DEL h:stream:bad")
            await command(stream, b"SET h:stream:bad oops")  # someone broke the key
        for i in range(5):
            a.publish("room", f"r{i}")
        a.publish("bad", "2")
        for i in range(5, 10):
            a.publish("room", f"r{i}")
        got = await receive(ws, 10)
        assert [e["data"] for e in got] == [f"r{i}" for i in range(10)]
        # (the refusal is counted when its batch's reply is read: maybe after r9 went out)
        await wait_for(lambda: a.backplane is not None and a.backplane.lost == 1)
        assert a.backplane.lost == 1 and a.backplane.connected
        assert a.backplane.reconnects == 0
        async with await trio.open_tcp_stream("127.0.0.1", redis.port) as stream:
            assert b"\r\n1\r\n" in await command(stream, b"HGET h:history:bad o")  # not taken


async def test_a_failed_recovery_answers_where_the_live_feed_starts(redis: RedisServer) -> None:
    a, b = node(redis), node(redis)
    async with (
        serving(a, b) as (_, server_b),
        connect(ws_url(server_b)) as first,
        connect(ws_url(server_b)) as ws,
    ):
        c0, c1 = await b.wait_connections(2)
        await c0.subscribe_from("room")  # b follows the topic
        a.publish("room", "m1")
        await first.recv()
        shared = b._hub.shared
        assert shared is not None
        real = shared.received
        late: list[Any] = []
        shared.received = lambda *args: late.append(args)  # type: ignore[method-assign]
        for i in range(2, 6):
            a.publish("room", f"m{i}")
        await wait_for(lambda: len(late) == 4)  # Redis is at 5, b's feed at 1
        answer = await c1.subscribe_from("room", Position(0, "0" * 16))
        shared.received = real  # type: ignore[method-assign]
        for args in late:
            real(*args)
        got = await receive(ws, 4)
        assert (answer.recovered, answer.reason, answer.position.offset) == (False, "epoch", 1)
        assert [e["offset"] for e in got] == [2, 3, 4, 5]  # all after the position given


def failing_envelope(topic: str, position: Position, data: str | bytes) -> str:
    if data == "boom":
        raise RuntimeError("envelope bug")
    return f"{position.offset}:{data!s}"


async def test_an_envelope_that_raises_is_logged_and_the_default_sent(
    redis: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    b = node(redis, room=HistoryOptions(size=10, ttl=60, envelope=failing_envelope))
    async with serving(b) as (server,), connect(ws_url(server)) as ws:
        [conn] = await b.wait_connections(1)
        await conn.subscribe_from("room")
        for text in ("a", "boom", "c"):
            b.publish("room", text)
        got = [await ws.recv() for _ in range(3)]
    assert got[0] == "1:a" and got[2] == "3:c"
    assert json.loads(got[1])["data"] == "boom" and json.loads(got[1])["offset"] == 2
    assert "the envelope function failed" in caplog.text


async def test_a_history_message_not_made_by_our_script_is_dropped(redis: RedisServer) -> None:
    b = node(redis)
    async with serving(b) as (server,), connect(ws_url(server)) as ws:
        [conn] = await b.wait_connections(1)
        top = (await conn.subscribe_from("room")).position
        head = encode(Envelope(Kind.HISTORY, "X" * 26, 1, "room"))
        forged = head + f"{top.offset + 1} {top.epoch} ".encode() + b"\xff"  # not UTF-8
        assert b.backplane is not None
        channel = b.backplane.names.topic("room").encode()
        async with await trio.open_tcp_stream("127.0.0.1", redis.port) as stream:
            await stream.send_all(
                b"*3\r\n$7\r\nPUBLISH\r\n$%d\r\n%s\r\n$%d\r\n%s\r\n"
                % (len(channel), channel, len(forged), forged)
            )
            await stream.receive_some()
        b.publish("room", "real")
        [envelope] = await receive(ws, 1)
        assert (envelope["data"], envelope["offset"]) == ("real", 1)


async def test_a_catch_up_that_cannot_finish_closes_within_its_bound(
    redis: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Redis goes back in the same epoch (a restore, or a failover to a replica that lags):
    the feed can never reach what a read promised; the replay ends with 1013 in
    CATCH_UP_TIMEOUT, not never."""
    monkeypatch.setattr(recovery_module, "CATCH_UP_TIMEOUT", 1.5)
    a, b = node(redis), node(redis)
    async with (
        serving(a, b) as (_, server_b),
        connect(ws_url(server_b)),
        connect(ws_url(server_b)) as ws,
    ):
        c0, c1 = await b.wait_connections(2)
        epoch = (await c0.subscribe_from("room")).position.epoch
        for i in range(10):
            a.publish("room", f"m{i}")
        shared = b._hub.shared
        assert shared is not None
        feed = shared.feeds["room"]
        await wait_for(lambda: feed.mirror is not None and feed.mirror.offset == 10)
        shared.received = lambda *args: None  # type: ignore[method-assign]
        for i in range(10, 20):
            a.publish("room", f"m{i}")
        await wait_for(lambda: a.backplane is not None and a.backplane.published >= 20)
        failed: list[BaseException] = []

        async def recover() -> None:
            try:
                await c1.subscribe_from("room", Position(15, epoch))
            except ConnectionClosedError as exc:
                failed.append(exc)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(recover)
            await trio.sleep(0.2)  # read (top 20); waiting for the feed to reach 20
            async with await trio.open_tcp_stream("127.0.0.1", redis.port) as stream:
                await command(stream, b"HSET h:history:room o 10")
            with trio.fail_after(5):
                while not failed:
                    await trio.sleep(0.05)
        assert "1013" in str(failed[0])
        assert dict(b.stats().recovery_failures) == {"unavailable": 1}
        with trio.fail_after(5):
            while True:
                try:
                    await ws.recv()
                except Exception:
                    break
        assert ws.close_code == 1013
