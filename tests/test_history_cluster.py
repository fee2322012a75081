"""Topic history across three real processes and a real redis-server (issue #19): clients of
every process recover what they missed, whichever process published it; a Redis restarted
empty is a new epoch; a process whose pub/sub connection is killed repairs what it lost from
the stream.  Clients speak the PubSubConnection JSON protocol (tests/history_node.py)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio
from websockets.trio.client import connect

from .redis_server import RedisServer
from .test_backplane import WAIT, nodes
from .test_history_redis import kill_pubsub

pytest.importorskip("coredis", reason="the backplane needs coredis (pip install .[redis])")

NODE = Path(__file__).with_name("history_node.py")


class Client:
    """A PubSubConnection client: what it got, and its last position on each topic."""

    def __init__(self, ws: Any) -> None:
        self.ws = ws
        self.positions: dict[str, dict[str, Any]] = {}

    async def command(self, **command: Any) -> None:
        await self.ws.send(json.dumps(command))

    async def next(self, timeout: float = WAIT) -> dict[str, Any]:
        with trio.fail_after(timeout):
            message: dict[str, Any] = json.loads(await self.ws.recv())
        if "offset" in message:
            self.positions[message["topic"]] = {
                "offset": message["offset"],
                "epoch": message["epoch"],
            }
        return message

    async def subscribe(self, topic: str, since: Any = None) -> dict[str, Any]:
        await self.command(op="subscribe", topic=topic, since=since)
        answer = await self.next()
        assert answer["op"] == "subscribed", answer
        self.positions[topic] = answer["position"]
        return answer

    async def envelopes(self, n: int) -> list[dict[str, Any]]:
        return [await self.next() for _ in range(n)]

    async def nothing_more(self) -> None:
        with trio.move_on_after(0.3):
            extra = await self.ws.recv()
            raise AssertionError(f"unexpected message {extra!r}")

    async def stats(self) -> dict[str, Any]:
        await self.command(op="stats", topic="-")
        while (answer := await self.next())["op"] != "stats":
            pass
        return answer


@asynccontextmanager
async def client(port: int) -> AsyncIterator[Client]:
    async with connect(f"ws://127.0.0.1:{port}/") as ws:
        yield Client(ws)


async def publish(publisher: Client, topic: str, texts: list[str]) -> None:
    for text in texts:
        await publisher.command(op="publish", topic=topic, data=text)


async def test_clients_of_three_processes_recover_across_a_drop(redis: RedisServer) -> None:
    with nodes(redis.url, 3, NODE) as started:
        ports = [port for port, _ in started]
        async with client(ports[0]) as publisher:
            firsts = []
            for port in ports:
                async with client(port) as c:
                    answer = await c.subscribe("room")
                    assert answer["recovered"] is False and answer["position"]["offset"] == 0
                    firsts.append(c.positions["room"])
            epochs = {p["epoch"] for p in firsts}
            assert len(epochs) == 1  # one history for the whole cluster
            # every process's client subscribes, 5 publications reach them all, in order
            async with client(ports[0]) as c0, client(ports[1]) as c1, client(ports[2]) as c2:
                clients = [c0, c1, c2]
                for c in clients:
                    await c.subscribe("room", c.positions.get("room"))
                await publish(publisher, "room", [f"m{i}" for i in range(1, 6)])
                for c in clients:
                    got = await c.envelopes(5)
                    assert [(e["offset"], e["data"]) for e in got] == [
                        (i, f"m{i}") for i in range(1, 6)
                    ]
                last = {i: c.positions["room"] for i, c in enumerate(clients)}
            # all three drop; 20 publications; each comes back to another process
            await publisher.subscribe("room")
            await publish(publisher, "room", [f"m{i}" for i in range(6, 26)])
            while publisher.positions["room"]["offset"] < 25:  # all 20 are numbered
                await publisher.next()
            for i in range(3):
                async with client(ports[(i + 1) % 3]) as back:
                    answer = await back.subscribe("room", last[i])
                    assert answer["recovered"] is True, answer
                    assert answer["position"]["offset"] == 25
                    got = await back.envelopes(20)
                    assert [e["offset"] for e in got] == list(range(6, 26))
                    assert [e["data"] for e in got] == [f"m{i}" for i in range(6, 26)]
                    await back.nothing_more()
            # a position from before the history began, and one from another epoch
            async with client(ports[2]) as late:
                assert (await late.subscribe("room", {"offset": 30, "epoch": firsts[0]["epoch"]}))[
                    "reason"
                ] == "epoch"
                assert (await late.subscribe("room", {"offset": 1, "epoch": "x"}))[
                    "reason"
                ] == "epoch"


async def test_a_redis_restarted_empty_and_a_killed_pubsub_connection(redis: RedisServer) -> None:
    with nodes(redis.url, 3, NODE) as started:
        ports = [port for port, _ in started]
        async with client(ports[0]) as publisher, client(ports[2]) as watcher:
            await watcher.subscribe("room")
            await publish(publisher, "room", ["a", "b"])
            got = await watcher.envelopes(2)
            old = watcher.positions["room"]
            redis.stop()
            redis.start()  # empty
            # the watcher's process finds a new epoch: its subscribers are closed (1013)
            with trio.fail_after(WAIT):
                while True:
                    try:
                        await watcher.ws.recv()
                    except Exception:
                        break
            assert watcher.ws.close_code == 1013
            assert [e["data"] for e in got] == ["a", "b"]
        async with client(ports[0]) as publisher, client(ports[2]) as watcher:
            answer = await watcher.subscribe("room", old)
            assert (answer["recovered"], answer["reason"]) == (False, "epoch")
            assert answer["position"]["epoch"] != old["epoch"]
            # delivery resumes under the new epoch
            with trio.fail_after(WAIT):
                while True:  # the publisher's process may still be reconnecting to Redis
                    await publish(publisher, "room", ["again"])
                    with trio.move_on_after(0.5):
                        envelope = await watcher.next()
                        break
            assert envelope["data"] == "again"
            assert envelope["epoch"] == answer["position"]["epoch"]
            epoch = envelope["epoch"]
            start = envelope["offset"]
            await watcher.nothing_more()
            node = (await watcher.stats())["node"]
            # the watcher's process's pub/sub connection killed, twice, while 200 go out
            async with trio.open_nursery() as nursery:
                nursery.start_soon(publish_paced, publisher, 200)
                for _ in range(2):
                    await trio.sleep(0.3)
                    await kill_pubsub(redis, node)
            got = await watcher.envelopes(200)
            assert [e["data"] for e in got] == [f"p{i}" for i in range(200)]
            assert [e["offset"] for e in got] == list(range(start + 1, start + 201))
            assert {e["epoch"] for e in got} == {epoch}
            await watcher.nothing_more()
            stats = await watcher.stats()
            assert stats["history_gaps_repaired"] >= 1 and stats["history_gaps_closed"] == 1


async def publish_paced(publisher: Client, n: int) -> None:
    for i in range(n):
        await publisher.command(op="publish", topic="room", data=f"p{i}")
        await trio.sleep(0.005)
