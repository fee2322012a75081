"""Topic history in one process, over real sockets: a client that drops and comes back with its
last position gets exactly what it missed, then the live feed; or is told it cannot."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
import trio
from websockets.trio.client import connect

from trio_wshandler import (
    ConnectionClosedError,
    HandlerStats,
    HistoryOptions,
    Opcode,
    Position,
    PrometheusHandler,
    Recovery,
    WebSocketHandler,
    default_envelope,
)
from trio_wshandler._recovery import OVERRUN_CLOSE

from .conftest import (
    TIMEOUT,
    RawClient,
    RecordingHandler,
    running,
    scrape_metrics,
    wait_for,
    ws_url,
)

ROOM = HistoryOptions(size=100, ttl=60)


def history_handler(**options: Any) -> RecordingHandler:
    return RecordingHandler(history={"room": ROOM, **options.pop("topics", {})}, **options)


async def receive(ws: Any, n: int) -> list[dict[str, Any]]:
    with trio.fail_after(TIMEOUT):
        return [json.loads(await ws.recv()) for _ in range(n)]


def position(envelope: dict[str, Any]) -> Position:
    return Position(envelope["offset"], envelope["epoch"])


async def test_a_client_that_drops_gets_exactly_what_it_missed_then_the_live_feed() -> None:
    handler = history_handler()
    async with running(handler) as server:
        async with connect(ws_url(server)) as ws:
            [first] = await handler.wait_connections(1)
            fresh = await first.subscribe_from("room")
            assert not fresh.recovered and fresh.position.offset == 0 and fresh.reason is None
            for i in range(3):
                handler.publish("room", f"m{i}")
            got = await receive(ws, 3)
        assert [e["data"] for e in got] == ["m0", "m1", "m2"]
        assert [e["offset"] for e in got] == [1, 2, 3] and {e["topic"] for e in got} == {"room"}
        last = position(got[-1])
        for i in range(3, 53):  # published while the client is away
            handler.publish("room", f"m{i}")
        async with connect(ws_url(server)) as ws:
            await wait_for(lambda: len(handler.connections) == 2)
            again = handler.connections[1]
            recovery = await again.subscribe_from("room", last)
            assert recovery == Recovery(True, Position(53, last.epoch), 50)
            handler.publish("room", "live")
            got = await receive(ws, 51)
        assert [e["data"] for e in got] == [f"m{i}" for i in range(3, 53)] + ["live"]
        assert [e["offset"] for e in got] == list(range(4, 55))
        stats = handler.stats()
        assert stats.history_publications == 54
        assert (stats.recoveries, stats.recoveries_succeeded) == (1, 1)
        assert dict(stats.recovery_failures) == {}


@pytest.mark.parametrize(
    ("since", "reason"),
    [
        (lambda top: Position(top.offset - 3, "not this epoch"), "epoch"),
        (lambda top: Position(top.offset - 4, top.epoch), "too_old"),  # 3 are kept
        (lambda top: Position(top.offset - 8, top.epoch), "too_many"),  # max_recover is 5
    ],
)
async def test_a_gap_that_cannot_be_replayed_whole_replays_nothing(since: Any, reason: str) -> None:
    handler = RecordingHandler(history={"room": HistoryOptions(size=3, ttl=60, max_recover=5)})
    async with running(handler) as server:
        for i in range(20):
            handler.publish("room", f"m{i}")
        async with connect(ws_url(server)) as ws:
            [connection] = await handler.wait_connections(1)
            top = Position(20, (await connection.subscribe_from("room")).position.epoch)
            recovery = await connection.subscribe_from("room", since(top))
            assert recovery == Recovery(False, top, 0, reason)
            assert connection.topics == {"room"}  # live anyway
            handler.publish("room", "live")
            [envelope] = await receive(ws, 1)  # nothing replayed before the live one
            assert envelope["data"] == "live" and envelope["offset"] == 21
        stats = handler.stats()
        assert stats.recoveries == 1 and stats.recoveries_succeeded == 0
        assert dict(stats.recovery_failures) == {reason: 1}


async def test_bytes_go_base64_and_a_custom_envelope_is_used_as_is() -> None:
    def plain(topic: str, position: Position, data: str | bytes) -> bytes:
        return f"{position.offset}:".encode() + (data if isinstance(data, bytes) else b"?")

    handler = RecordingHandler(
        history={"room": ROOM, "raw": HistoryOptions(size=5, ttl=60, envelope=plain)}
    )
    async with running(handler) as server:
        async with connect(ws_url(server)) as ws:
            [connection] = await handler.wait_connections(1)
            await connection.subscribe_from("room")
            await connection.subscribe_from("raw")
            handler.publish("room", b"\x00\xff")
            handler.publish("raw", b"abc")
            with trio.fail_after(TIMEOUT):
                envelope = json.loads(await ws.recv())
                assert await ws.recv() == b"1:abc"
            assert base64.b64decode(envelope["data_b64"]) == b"\x00\xff" and "data" not in envelope
    assert json.loads(default_envelope("t", Position(7, "e"), "é")) == {
        "topic": "t",
        "offset": 7,
        "epoch": "e",
        "data": "é",
    }


async def test_topics_without_history_are_unchanged_and_cannot_be_recovered() -> None:
    handler = RecordingHandler(history=lambda topic: ROOM if topic.startswith("room:") else None)
    async with running(handler) as server:
        async with connect(ws_url(server)) as ws:
            [connection] = await handler.wait_connections(1)
            connection.subscribe("news")
            await connection.subscribe_from("room:1")
            handler.publish("news", "plain")
            handler.publish("room:1", "kept")
            with trio.fail_after(TIMEOUT):
                assert await ws.recv() == "plain"
                assert json.loads(await ws.recv())["data"] == "kept"
            with pytest.raises(ValueError, match="keeps no history"):
                await connection.subscribe_from("news", None)
            with pytest.raises(TypeError):
                await connection.subscribe_from("room:1", (1, "e"))  # type: ignore[arg-type]


async def test_a_handler_without_history_says_so() -> None:
    handler = RecordingHandler()
    async with running(handler) as server, connect(ws_url(server)):
        [connection] = await handler.wait_connections(1)
        with pytest.raises(ValueError, match="keeps no topic history"):
            await connection.subscribe_from("room")
        assert connection.topics == frozenset()


def small_queue_handler(size: int = 1000) -> RecordingHandler:
    """A history of ``size`` large messages (100 MiB kept) behind 64 KiB send queues: a replay
    must wait for room."""
    return RecordingHandler(
        history={"room": HistoryOptions(size=size, ttl=60, max_bytes=100 << 20)},
        max_queue_bytes=64 * 1024,
    )


async def test_a_replay_larger_than_the_send_queue_waits_for_room_and_misses_nothing() -> None:
    """100 messages of 16 KiB (1.6 MB) replayed through a 64 KiB queue to a client that reads
    nothing at first, while 20 more are published: once it reads, it gets offsets 1 to 120
    once each, in order (the 20 from the history, read again after the replay), then live."""
    handler = small_queue_handler()
    big = "x" * 16384
    async with running(handler) as server, RawClient.connect(server.port) as client:
        [connection] = await handler.wait_connections(1)
        start = (await connection.subscribe_from("room")).position
        connection.unsubscribe("room")  # away: what follows is only in the history
        for i in range(100):
            handler.publish("room", f"{i}:{big}")
        recovered: list[Recovery] = []
        async with trio.open_nursery() as nursery:

            async def recover() -> None:
                recovered.append(await connection.subscribe_from("room", start))

            nursery.start_soon(recover)
            await trio.sleep(0.2)  # the replay waits for room: the client reads nothing
            assert not recovered and connection.topics == frozenset()
            for i in range(100, 120):
                handler.publish("room", f"{i}:{big}")
            got = [json.loads((await client.receive_frame()).payload) for _ in range(120)]
        assert recovered == [Recovery(True, Position(120, start.epoch), 120)]
        handler.publish("room", "live")
        got.append(json.loads((await client.receive_frame()).payload))
        assert [e["offset"] for e in got] == list(range(1, 122))
        assert [e["data"].split(":")[0] for e in got[:120]] == [str(i) for i in range(120)]


async def test_a_replay_overtaken_by_the_topic_closes_with_1013() -> None:
    """The client reads nothing while the topic publishes more than its history keeps: the
    replay cannot be completed, so the connection is closed with 1013 (subscribe again) after
    what was replayed, never with a silent gap."""
    handler = small_queue_handler(size=120)
    big = "y" * 16384
    async with running(handler) as server, RawClient.connect(server.port) as client:
        [connection] = await handler.wait_connections(1)
        start = (await connection.subscribe_from("room")).position
        connection.unsubscribe("room")
        for i in range(100):  # 1.6 MB: more than the queue and the sockets' buffers take
            handler.publish("room", f"{i}:{big}")
        failures: list[BaseException] = []
        async with trio.open_nursery() as nursery:

            async def recover() -> None:
                try:
                    await connection.subscribe_from("room", start)
                except ConnectionClosedError as exc:
                    failures.append(exc)

            nursery.start_soon(recover)
            await trio.sleep(0.2)  # the replay waits for room: the client reads nothing
            assert not failures
            for i in range(100, 300):  # the history now keeps 181 to 300 only
                handler.publish("room", f"{i}:{big}")
            offsets = []
            while (frame := await client.receive_frame()).opcode == Opcode.TEXT:
                offsets.append(json.loads(frame.payload)["offset"])
        assert frame.close_code == OVERRUN_CLOSE
        assert frame.close_reason == "history overrun: subscribe again"
        assert offsets == list(range(1, 101))  # the replay as far as it went, then the close
        assert len(failures) == 1 and "1013" in str(failures[0])
        assert dict(handler.stats().recovery_failures) == {"overrun": 1}


async def test_history_options_are_checked() -> None:
    with pytest.raises(TypeError):
        WebSocketHandler(history={"room": 3})  # type: ignore[dict-item]
    with pytest.raises(TypeError):
        WebSocketHandler(history=3)  # type: ignore[arg-type]


async def test_the_history_counters_reach_prometheus_and_survive_to_dict() -> None:
    handler = RecordingHandler(history={"room": HistoryOptions(size=2, ttl=60)})
    async with running({"/": handler, "/metrics": PrometheusHandler(handler)}) as server:
        async with connect(ws_url(server)):
            [connection] = await handler.wait_connections(1)
            first = (await connection.subscribe_from("room")).position
            for i in range(5):
                handler.publish("room", str(i))
            await connection.subscribe_from("room", first)  # too old: 2 are kept
            await connection.subscribe_from("room", Position(5, "x"))  # another epoch
            await connection.subscribe_from("room", Position(4, first.epoch))  # recovered
            samples, _, _ = await scrape_metrics(server.port)
    assert samples["trio_wshandler_history_publications_total", ()] == 5
    assert samples["trio_wshandler_recoveries_total", ()] == 3
    assert samples["trio_wshandler_recoveries_succeeded_total", ()] == 1
    for reason in ("too_old", "epoch"):
        assert samples["trio_wshandler_recovery_failures_total", (("reason", reason),)] == 1
    stats = handler.stats()
    assert HandlerStats.from_dict(json.loads(json.dumps(stats.to_dict()))) == stats
    assert dict(stats.recovery_failures) == {"epoch": 1, "too_old": 1}


async def test_a_live_subscription_is_replaced_so_the_replay_is_not_doubled() -> None:
    """The connection is subscribed (live) when it asks for a replay that must wait for room;
    small publications made meanwhile would fit its queue: had the live subscription stayed,
    they would arrive live and again in the replay's catch-up.  Each offset arrives once."""
    handler = small_queue_handler()
    big = "z" * 16384
    async with running(handler) as server, RawClient.connect(server.port) as client:
        [connection] = await handler.wait_connections(1)
        for i in range(100):  # before the connection subscribes: kept only
            handler.publish("room", f"{i}:{big}")
        top = (await connection.subscribe_from("room")).position  # live from offset 100
        async with trio.open_nursery() as nursery:
            nursery.start_soon(connection.subscribe_from, "room", Position(0, top.epoch))
            await trio.sleep(0.2)  # the replay waits for room; the client reads nothing
            assert connection.topics == frozenset()  # not live while it replays
            for i in range(100, 105):
                handler.publish("room", f"{i}:small")
            got = [json.loads((await client.receive_frame()).payload) for _ in range(105)]
        assert [e["offset"] for e in got] == list(range(1, 106))
        assert connection.topics == {"room"}


async def test_a_replay_cancelled_half_way_closes_with_1013() -> None:
    """Cancelled while it waits for room, the replay leaves the client with part of the gap and
    no live feed: the connection is closed with 1013 rather than left looking complete."""
    handler = small_queue_handler()
    big = "c" * 16384
    async with running(handler) as server, RawClient.connect(server.port) as client:
        [connection] = await handler.wait_connections(1)
        for i in range(100):
            handler.publish("room", f"{i}:{big}")
        epoch = (await connection.subscribe_from("room")).position.epoch
        with trio.move_on_after(0.2) as scope:
            await connection.subscribe_from("room", Position(0, epoch))
        assert scope.cancelled_caught
        offsets = []
        while (frame := await client.receive_frame()).opcode == Opcode.TEXT:
            offsets.append(json.loads(frame.payload)["offset"])
        assert frame.close_code == OVERRUN_CLOSE
        assert frame.close_reason == "replay interrupted: subscribe again"
        assert offsets == list(range(1, len(offsets) + 1)) and len(offsets) < 100
