"""Topics in one process: subscribe, unsubscribe, publish to subscribers only, leave on end."""

from __future__ import annotations

from typing import Any

import pytest
import trio
import trio_websocket
from websockets.trio.client import connect

from trio_wshandler import ConnectionClosedError
from trio_wshandler._core import ConnectionCore
from trio_wshandler._topics import MAX_TOPIC_LENGTH

from .conftest import TIMEOUT, RecordingHandler, running, wait_for, ws_url
from .test_deflate import deflate_client, json_text


async def test_publish_reaches_subscribers_only() -> None:
    handler = RecordingHandler()
    async with running(handler) as server:
        async with (
            connect(ws_url(server)) as a,
            connect(ws_url(server)) as b,
            trio_websocket.open_websocket_url(ws_url(server)) as c,
        ):
            ca, cb, cc = await handler.wait_connections(3)
            ca.subscribe("prices")
            cb.subscribe("prices")
            cb.subscribe("news")
            cb.subscribe("news")  # again: no-op
            assert handler.topic_size("prices") == 2 and handler.topic_size("news") == 1
            assert cb.topics == {"prices", "news"} and cc.topics == frozenset()
            assert sorted(handler.topics()) == ["news", "prices"]
            assert handler.publish("prices", "p1") == 2
            assert handler.publish("news", b"n1") == 1
            assert handler.publish("nobody", "x") == 0
            cb.unsubscribe("prices")
            cb.unsubscribe("prices")  # not subscribed: no-op
            assert handler.publish("prices", "p2") == 1
            handler.send_all("all")
            with trio.fail_after(TIMEOUT):
                assert [await a.recv() for _ in range(3)] == ["p1", "p2", "all"]
                assert [await b.recv() for _ in range(3)] == ["p1", b"n1", "all"]
                assert await c.get_message() == "all"


async def test_a_connection_leaves_its_topics_when_it_ends() -> None:
    handler = RecordingHandler()
    async with running(handler) as server:
        async with connect(ws_url(server)) as ws:
            [connection] = await handler.wait_connections(1)
            connection.subscribe("t1")
            connection.subscribe("t2")
            await ws.aclose()
        await connection.wait_closed()
        assert handler.topics() == [] and handler.topic_size("t1") == 0
        assert connection.topics == frozenset()
        with pytest.raises(ConnectionClosedError):
            connection.subscribe("t3")
        assert handler.publish("t1", "x") == 0


async def test_publish_compresses_once_per_window(compressions: list[tuple[int, int]]) -> None:
    """Like send_all: one compression per window size among the topic's subscribers."""
    handler = RecordingHandler()
    text = json_text(30)
    async with running(handler) as server:
        async with (
            deflate_client(server.port, "permessage-deflate") as (c1, e1),
            deflate_client(server.port, "permessage-deflate") as (c2, e2),
            deflate_client(server.port, "permessage-deflate") as (_c3, e3),
        ):
            conns = await handler.wait_connections(3)
            for connection in conns[:2]:
                connection.subscribe("room")
            assert handler.publish("room", text) == 2
            assert [bits for bits, _ in compressions] == [15]
            for client in (c1, c2):
                assert (await client.receive_frame()).payload == text.encode()
            assert e1.compressed == e2.compressed == [True] and e3.compressed == []


async def test_publish_costs_in_proportion_to_subscribers(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A topic of 2 among 300 connections: publish offers the frame to 2, not 300 (fan-out's
    cost is one ``enqueue`` per recipient)."""
    offered = 0
    enqueue = ConnectionCore.enqueue

    def counting(core: ConnectionCore[Any], frame: bytes) -> bool:
        nonlocal offered
        offered += 1
        return enqueue(core, frame)

    monkeypatch.setattr(ConnectionCore, "enqueue", counting)
    handler = RecordingHandler()
    async with running(handler) as server, trio.open_nursery() as nursery:
        done = trio.Event()

        async def client() -> None:
            async with connect(ws_url(server)):
                await done.wait()

        for _ in range(300):
            nursery.start_soon(client)
        connections = await handler.wait_connections(300)
        connections[5].subscribe("small")
        connections[200].subscribe("small")
        offered = 0
        assert handler.publish("small", "hi") == 2
        assert offered == 2
        assert handler.send_all("all") == 300
        assert offered == 302
        done.set()


def test_topic_names_are_checked() -> None:
    handler = RecordingHandler()
    with pytest.raises(TypeError):
        handler.publish(b"bytes", "x")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        handler.publish("", "x")
    with pytest.raises(ValueError):
        handler.publish("x" * (MAX_TOPIC_LENGTH + 1), "x")


async def test_subscribing_before_registration_is_kept() -> None:
    """A connection may subscribe in __init__ (before it runs); the messages published
    meanwhile are delivered after the upgrade, like any queued message."""

    class Early(RecordingHandler):
        def get_connection(self, cx, hdr, cid):  # type: ignore[no-untyped-def]
            connection = super().get_connection(cx, hdr, cid)
            connection.subscribe("early")
            self.publish("early", "welcome")
            return connection

    handler = Early()
    async with running(handler) as server:
        async with connect(ws_url(server)) as ws:
            with trio.fail_after(TIMEOUT):
                assert await ws.recv() == "welcome"
            await wait_for(lambda: handler.topic_size("early") == 1)
