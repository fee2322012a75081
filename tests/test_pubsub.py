"""PubSubConnection: the JSON protocol for topics with history, spoken by a real client."""

from __future__ import annotations

import json
from typing import Any

import trio
from websockets.trio.client import connect

from trio_wshandler import HistoryOptions, PubSubConnection

from .conftest import TIMEOUT, RecordingHandler, running, ws_url


class Handler(RecordingHandler):
    connection_class = PubSubConnection


async def ask(ws: Any, command: dict[str, Any] | str | bytes, answers: int = 1) -> list[Any]:
    await ws.send(command if isinstance(command, str | bytes) else json.dumps(command))
    return await receive(ws, answers)


async def receive(ws: Any, n: int) -> list[Any]:
    with trio.fail_after(TIMEOUT):
        return [json.loads(await ws.recv()) for _ in range(n)]


async def test_subscribe_drop_and_come_back_with_the_last_position() -> None:
    handler = Handler(history={"room": HistoryOptions(size=100, ttl=60)})
    async with running(handler) as server:
        async with connect(ws_url(server)) as ws:
            [answer] = await ask(ws, {"op": "subscribe", "topic": "room", "since": None})
            assert answer["op"] == "subscribed" and answer["recovered"] is False
            assert answer["position"]["offset"] == 0 and answer["reason"] is None
            handler.publish("room", "hello")
            [envelope] = await receive(ws, 1)
        last = {"offset": envelope["offset"], "epoch": envelope["epoch"]}
        for i in range(5):
            handler.publish("room", f"missed {i}")
        async with connect(ws_url(server)) as ws:
            got = await ask(ws, {"op": "subscribe", "topic": "room", "since": last}, 6)
            handler.publish("room", "live")
            got += await receive(ws, 1)
        assert got[0] == {
            "op": "subscribed",
            "topic": "room",
            "recovered": True,
            "position": {"offset": 6, "epoch": last["epoch"]},
            "reason": None,
        }
        assert [e["data"] for e in got[1:]] == [f"missed {i}" for i in range(5)] + ["live"]
        assert [e["offset"] for e in got[1:]] == list(range(2, 8))


async def test_a_position_from_another_epoch_is_told_and_replays_nothing() -> None:
    handler = Handler(history={"room": HistoryOptions(size=100, ttl=60)})
    async with running(handler) as server, connect(ws_url(server)) as ws:
        handler.publish("room", "before")
        since = {"offset": 1, "epoch": "from a restarted server"}
        [answer] = await ask(ws, {"op": "subscribe", "topic": "room", "since": since})
        assert (answer["recovered"], answer["reason"]) == (False, "epoch")
        assert answer["position"]["offset"] == 1
        handler.publish("room", "after")
        [envelope] = await receive(ws, 1)
        assert envelope["data"] == "after"


async def test_unsubscribe_and_topics_without_history() -> None:
    handler = Handler()
    async with running(handler) as server, connect(ws_url(server)) as ws:
        [answer] = await ask(ws, {"op": "subscribe", "topic": "news"})
        assert answer == {
            "op": "subscribed",
            "topic": "news",
            "recovered": False,
            "position": None,
            "reason": None,
        }
        handler.publish("news", "plain text")
        with trio.fail_after(TIMEOUT):
            assert await ws.recv() == "plain text"
        [answer] = await ask(ws, {"op": "unsubscribe", "topic": "news"})
        assert answer == {"op": "unsubscribed", "topic": "news"}
        assert handler.publish("news", "gone") == 0
        since = {"offset": 1, "epoch": "e"}
        [error] = await ask(ws, {"op": "subscribe", "topic": "news", "since": since})
        assert error["op"] == "error" and "keeps no history" in error["error"]


async def test_bad_commands_are_answered_and_the_connection_stays() -> None:
    handler = Handler(history={"room": HistoryOptions(size=10, ttl=60)})
    async with running(handler) as server, connect(ws_url(server)) as ws:
        cases: list[tuple[Any, str]] = [
            ("not json", "not JSON"),
            ("[" * 100_000, "not JSON"),  # deeper than Python parses: an answer, not a 1011
            (b"\x00", "JSON text"),
            ("[1, 2]", '"op"'),
            ({"op": "subscribe"}, '"topic"'),
            ({"op": "dance", "topic": "room"}, "unknown op"),
            ({"op": "subscribe", "topic": ""}, "1 to 1024"),
            ({"op": "subscribe", "topic": "room", "since": {"offset": "1"}}, '"since"'),
            ({"op": "subscribe", "topic": "room", "since": {"offset": -1, "epoch": "e"}}, "offset"),
            ({"op": "publish", "topic": "room", "data": "hi"}, "not allowed"),
            ({"op": "publish", "topic": "room", "data": 3}, '"data"'),
        ]
        for command, why in cases:
            [error] = await ask(ws, command)
            assert error["op"] == "error" and why in error["error"], (command, error)
        [answer] = await ask(ws, {"op": "subscribe", "topic": "room", "since": None})
        assert answer["op"] == "subscribed"


async def test_hooks_decide_who_publishes_and_subscribes_and_topics_are_bounded() -> None:
    class Chat(PubSubConnection):
        max_topics = 2

        def may_subscribe(self, topic: str) -> bool:
            return not topic.startswith("admin")

        def may_publish(self, topic: str, data: str) -> bool:
            return topic.startswith("room") and len(data) < 100

    class ChatHandler(RecordingHandler):
        connection_class = Chat

    handler = ChatHandler(history={"room": HistoryOptions(size=10, ttl=60)})
    async with running(handler) as server, connect(ws_url(server)) as ws:
        await ask(ws, {"op": "subscribe", "topic": "room", "since": None})
        [envelope] = await ask(ws, {"op": "publish", "topic": "room", "data": "hi all"})
        assert envelope["data"] == "hi all" and envelope["offset"] == 1
        [error] = await ask(ws, {"op": "subscribe", "topic": "admin"})
        assert "not allowed" in error["error"]
        await ask(ws, {"op": "subscribe", "topic": "other"})
        [error] = await ask(ws, {"op": "subscribe", "topic": "third"})
        assert "at most 2 topics" in error["error"]
        [again] = await ask(ws, {"op": "subscribe", "topic": "room", "since": None})
        assert again["op"] == "subscribed"  # a topic it has: not a new one
