"""handler.stats(): every counter checked against what independent clients did and saw."""

from __future__ import annotations

from typing import Any

import attrs
import pytest
import trio
import trio.testing
from trio_websocket import open_websocket_url

from trio_wshandler import (
    HandlerStats,
    RedisBackplane,
    WebSocketConnection,
    WebSocketHandler,
)
from trio_wshandler._demo import EchoHandler  # the echo server of `python -m trio_wshandler echo`
from trio_wshandler.codec import Opcode

from .conftest import TIMEOUT, RawClient, raw_http, running, upgrade_request, wait_for, ws_url


class CountingStream(trio.abc.Stream):
    """A client stream that counts the bytes it sends, and those it receives after the end of
    the HTTP head (the WebSocket bytes)."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.sent = 0
        self.received = 0
        self._head = b""
        self._in_head = True

    async def send_all(self, data: Any) -> None:
        self.sent += len(data)
        await self.stream.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self.stream.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        data = await self.stream.receive_some(max_bytes)
        if self._in_head:
            self._head += data
            end = self._head.find(b"\r\n\r\n")
            if end >= 0:
                self._in_head = False
                self.received += len(self._head) - end - 4
        else:
            self.received += len(data)
        return data

    async def aclose(self) -> None:
        await self.stream.aclose()


async def raw_client(port: int) -> tuple[RawClient, CountingStream]:
    stream = CountingStream(await trio.open_tcp_stream("127.0.0.1", port))
    client = RawClient(stream)  # type: ignore[arg-type]
    await client.handshake()
    return client, stream


async def test_bytes_and_messages_match_what_a_client_saw() -> None:
    handler = EchoHandler(compression=None, heartbeat=None)
    async with running(handler) as server:
        client, stream = await raw_client(server.port)
        sent_after_handshake = stream.sent
        for i in range(20):
            await client.send_frame(f"message {i}" * (i + 1))
        for i in range(20):
            assert (await client.receive_frame()).payload == (f"message {i}" * (i + 1)).encode()
        handler.send_all(b"to all")
        assert (await client.receive_frame()).payload == b"to all"
        await client.send_frame(b"\x03\xe8bye", Opcode.CLOSE)
        await client.expect_close(1000)
        await client.receive_eof()
        await wait_for(lambda: len(handler) == 0)
        stats = handler.stats()
    assert stats.messages_received == 20
    assert stats.messages_sent == 21
    assert stats.broadcasts == 1
    # exactly the bytes on the wire, both ways (frames, masks, the Close frames)
    assert stats.bytes_received == stream.sent - sent_after_handshake
    assert stats.bytes_sent == stream.received
    assert stats.close_codes_received == {1000: 1}
    assert stats.close_codes_sent == {1000: 1}
    assert stats.upgrades == 1 and stats.refused == {} and stats.connections == 0
    assert stats.protocol_errors == {}


async def test_upgrades_and_refusals_by_status() -> None:
    handler = WebSocketHandler(origins=["https://app.example"], max_connections=2)
    async with running(handler) as server:
        async with (
            open_websocket_url(ws_url(server)),
            open_websocket_url(ws_url(server)),
        ):
            await wait_for(lambda: len(handler) == 2)
            assert handler.stats().connections == 2
            status, _, _ = await raw_http(server.port, upgrade_request())
            assert status == 503  # full
        status, _, _ = await raw_http(server.port, upgrade_request(origin="https://evil.example"))
        assert status == 403
        status, _, _ = await raw_http(server.port, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert status == 426  # not an upgrade
        status, _, _ = await raw_http(server.port, upgrade_request(**{"sec-websocket-key": "x"}))
        assert status == 400
        await wait_for(lambda: len(handler) == 0)
        stats = handler.stats()
    assert stats.upgrades == 2
    assert stats.refused == {400: 1, 403: 1, 426: 1, 503: 1}
    assert stats.close_codes_sent == {1000: 2} and stats.close_codes_received == {1000: 2}


async def test_coalescing_is_counted() -> None:
    handler = WebSocketHandler(compression=None, heartbeat=None)
    async with running(handler) as server:
        client, stream = await raw_client(server.port)
        await wait_for(lambda: len(handler) == 1)
        connection = handler.connection(handler.connection_ids()[0])
        for i in range(100):  # no checkpoint: one round of the flusher writes them together
            connection.send(f"{i}")
        for i in range(100):
            assert (await client.receive_frame()).payload == f"{i}".encode()
        stats = handler.stats()
        assert stats.messages_sent == 100
        assert stats.frames_written == 100
        assert stats.writes < 10 and stats.frames_per_write > 10
        assert stats.bytes_sent == stream.received


async def test_protocol_errors_by_code() -> None:
    handler = WebSocketHandler(max_message_size=1000, heartbeat=None)
    async with running(handler) as server:
        client, _ = await raw_client(server.port)
        await client.send_frame(b"unmasked", masked=False)
        await client.expect_close(1002)
        client, _ = await raw_client(server.port)
        await client.send_frame(b"x" * 2000)
        await client.expect_close(1009)
        client, _ = await raw_client(server.port)
        await client.send_frame(b"\xff\xfe", Opcode.TEXT)
        await client.expect_close(1007)
        await wait_for(lambda: len(handler) == 0)
        stats = handler.stats()
    assert stats.protocol_errors == {1002: 1, 1007: 1, 1009: 1}
    assert stats.close_codes_sent == {1002: 1, 1007: 1, 1009: 1}
    assert stats.messages_received == 0


async def test_timeouts_are_counted() -> None:
    handler = WebSocketHandler(heartbeat=0.1, pong_timeout=0.2, close_timeout=0.5)
    async with running(handler) as server:
        client, _ = await raw_client(server.port)  # reads the Ping, never answers it
        await client.expect_close(1011, timeout=5)
        await wait_for(lambda: len(handler) == 0)
        assert handler.stats().heartbeat_timeouts == 1
    handler = WebSocketHandler(heartbeat=None, idle_timeout=0.2, close_timeout=0.5)
    async with running(handler) as server:
        client, _ = await raw_client(server.port)
        await client.expect_close(1001, timeout=5)
        await wait_for(lambda: len(handler) == 0)
        stats = handler.stats()
    assert stats.idle_timeouts == 1 and stats.heartbeat_timeouts == 0
    assert stats.close_codes_sent == {1001: 1}


async def test_slow_consumers_dropped_and_closed() -> None:
    message = b"x" * 60_000
    for policy in ("drop", "close"):
        handler = WebSocketHandler(
            compression=None,
            heartbeat=None,
            max_queue_bytes=200_000,
            slow_consumer=policy,  # type: ignore[arg-type]
            close_timeout=0.5,
        )
        async with running(handler) as server:
            client, _ = await raw_client(server.port)  # never reads
            await wait_for(lambda: len(handler) == 1)  # noqa: B023
            sent = 0
            with trio.fail_after(TIMEOUT):
                while handler.stats().dropped_messages + handler.stats().slow_consumer_closes == 0:
                    sent += handler.send_all(message)
                    await trio.sleep(0.001)
            stats = handler.stats()
            assert 0 < stats.queued_bytes <= 200_000 + len(message) + 16
            if policy == "drop":
                assert stats.dropped_messages == 1 and stats.slow_consumer_closes == 0
                assert stats.messages_sent == sent
                assert stats.largest_queue_bytes == stats.queued_bytes
            else:
                assert stats.slow_consumer_closes == 1 and stats.dropped_messages == 0
            await trio.aclose_forcefully(client.stream)
            await wait_for(lambda: len(handler) == 0)  # noqa: B023
            assert handler.stats().queued_bytes == 0


async def test_send_timeout_is_counted() -> None:
    handler = WebSocketHandler(compression=None, heartbeat=None, send_timeout=0.3)
    async with running(handler) as server:
        client, _ = await raw_client(server.port)  # never reads
        await wait_for(lambda: len(handler) == 1)
        with trio.fail_after(TIMEOUT):
            while handler.stats().largest_queue_bytes == 0:  # until the socket backs up
                handler.send_all(b"y" * 65_000)
                await trio.sleep(0.01)  # the flusher has written what the socket takes
        await wait_for(lambda: len(handler) == 0)
        stats = handler.stats()
        del client
    assert stats.send_timeouts == 1 and stats.queued_bytes == 0


async def test_publish_counts() -> None:
    class Subscribing(WebSocketConnection):
        async def registered(self) -> None:
            self.subscribe("news")

    class Handler(WebSocketHandler):
        def get_connection(self, cx: Any, hdr: Any, cid: str) -> WebSocketConnection:
            return Subscribing(self, cx, hdr, cid)

    handler = Handler()
    async with running(handler) as server, open_websocket_url(ws_url(server)) as ws:
        await wait_for(lambda: handler.topic_size("news") == 1)
        assert handler.publish("news", "hello") == 1
        assert handler.publish("nobody", "hello") == 0
        assert await ws.get_message() == "hello"
        stats = handler.stats()
    assert stats.publishes == 2 and stats.broadcasts == 0 and stats.messages_sent == 1


def test_snapshot_is_frozen_and_round_trips() -> None:
    handler = WebSocketHandler(name="chat", backplane=RedisBackplane("redis://127.0.0.1:1"))
    handler._counters.response(403)
    handler._counters.count(handler._counters.close_codes_sent, 1000)
    stats = handler.stats()
    assert stats.name == "chat"
    assert stats.backplane is not None and stats.backplane.published == 0
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        stats.upgrades = 5  # type: ignore[misc]
    with pytest.raises(TypeError):
        stats.refused[404] = 1  # type: ignore[index]
    assert HandlerStats.from_dict(stats.to_dict()) == stats
    assert HandlerStats.from_dict(stats.to_dict()).refused == {403: 1}
    # a snapshot does not change afterwards
    handler._counters.response(403)
    assert stats.refused == {403: 1} and handler.stats().refused == {403: 2}
    with pytest.raises(ValueError):
        WebSocketHandler(name="")
    with pytest.raises(TypeError):
        WebSocketHandler(name=5)  # type: ignore[arg-type]
