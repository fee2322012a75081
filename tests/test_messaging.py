"""Messages both ways, with trio-websocket and websockets as independent clients."""

from __future__ import annotations

from typing import Any

import pytest
import trio
import trio_websocket
from websockets.trio.client import connect

from trio_wshandler import (
    ConnectionClosedError,
    Frame,
    FrameAction,
    Opcode,
    UnknownConnectionError,
    WebSocketConnection,
    WebSocketHandler,
)
from trio_wshandler._demo import EchoHandler
from trio_wshandler.codec import encode_message

from .conftest import TIMEOUT, RawClient, Recorder, RecordingHandler, running, wait_for, ws_url


async def test_echo_text_and_binary_trio_websocket() -> None:
    async with running(EchoHandler()) as server:
        async with trio_websocket.open_websocket_url(ws_url(server)) as ws:
            await ws.send_message("héllo")
            assert await ws.get_message() == "héllo"
            await ws.send_message(b"\x00\x01bin")
            assert await ws.get_message() == b"\x00\x01bin"
            big = "x" * 200_000
            await ws.send_message(big)
            assert await ws.get_message() == big


async def test_echo_text_and_binary_websockets() -> None:
    async with running(EchoHandler()) as server:
        async with connect(ws_url(server), compression=None) as ws:
            await ws.send("ünïcode ✓")
            assert await ws.recv() == "ünïcode ✓"
            await ws.send(b"\xff" * 70_000)
            assert await ws.recv() == b"\xff" * 70_000


async def test_send_all_reaches_every_client_of_both_libraries() -> None:
    handler = RecordingHandler()
    async with running(handler) as server:
        assert handler.send_all("nobody listens") == 0  # no connections: not an error
        async with (
            trio_websocket.open_websocket_url(ws_url(server)) as a,
            connect(ws_url(server)) as b,
            trio_websocket.open_websocket_url(ws_url(server)) as c,
        ):
            await handler.wait_connections(3)
            assert handler.send_all("to all") == 3
            assert handler.send_all(b"bytes to all") == 3
            for _ in range(2):
                pass
            assert [await a.get_message(), await a.get_message()] == ["to all", b"bytes to all"]
            assert [await b.recv(), await b.recv()] == ["to all", b"bytes to all"]
            assert [await c.get_message(), await c.get_message()] == ["to all", b"bytes to all"]


async def test_send_one_and_connection_ids() -> None:
    handler = RecordingHandler()
    async with (
        running(handler) as server,
        trio_websocket.open_websocket_url(ws_url(server)) as a,
        connect(ws_url(server)) as b,
    ):
        first, second = await handler.wait_connections(2)
        assert handler.connection_ids() == [first.id, second.id]
        handler.send_one(second.id, "only b")
        handler.send_one(first.id, b"only a")
        assert await b.recv() == "only b"
        assert await a.get_message() == b"only a"
        with pytest.raises(UnknownConnectionError, match="no-such-id") as info:
            handler.send_one("no-such-id", "x")
        assert isinstance(info.value, KeyError) and info.value.cid == "no-such-id"


class EarlyBird(Recorder):
    """Queues messages in its constructor, before it is registered."""

    def __init__(self, handler: WebSocketHandler, *args: Any) -> None:
        super().__init__(handler, *args)
        self.send("first (constructor)")
        self.send(b"second (constructor, binary)")


class EarlyHandler(RecordingHandler):
    connection_class = EarlyBird

    def get_connection(self, cx: Any, hdr: Any, cid: str) -> WebSocketConnection:
        connection = super().get_connection(cx, hdr, cid)
        connection.send("third (get_connection)")
        return connection


class WelcomeOnRegister(EarlyBird):
    async def registered(self) -> None:
        self.send("fourth (registered)")


async def test_messages_queued_before_registration_arrive_in_order_with_types() -> None:
    handler = EarlyHandler()
    handler.connection_class = WelcomeOnRegister
    async with running(handler) as server, connect(ws_url(server)) as ws:
        got = [await ws.recv() for _ in range(4)]
    assert got == [
        "first (constructor)",
        b"second (constructor, binary)",
        "third (get_connection)",
        "fourth (registered)",
    ]


async def test_client_fragments_are_reassembled() -> None:
    handler = RecordingHandler()
    async with running(handler) as server, connect(ws_url(server)) as ws:
        await ws.send(iter(["frag", "ment", "ed ✓"]))  # websockets sends fragments
        await ws.send(iter([b"a", b"b", b"c"]))
        [conn] = await handler.wait_connections(1)
        await wait_for(lambda: len(conn.messages) == 2)
    assert conn.messages == ["fragmented ✓", b"abc"]


async def test_fragments_split_inside_a_utf8_character() -> None:
    handler = RecordingHandler()
    async with running(handler) as server, RawClient.connect(server.port) as raw:
        data = "é€".encode()
        await raw.send_frame(data[:1], Opcode.TEXT, fin=False)
        await raw.send_frame(data[1:3], Opcode.CONTINUATION, fin=False)
        await raw.send_frame(data[3:], Opcode.CONTINUATION)
        [conn] = await handler.wait_connections(1)
        await wait_for(lambda: conn.messages)
    assert conn.messages == ["é€"]


async def test_server_sent_fragments() -> None:
    handler = RecordingHandler()
    async with running(handler) as server:
        async with RawClient.connect(server.port) as raw, connect(ws_url(server)) as ws:
            conns = await handler.wait_connections(2)
            for conn in conns:
                conn.send_frame("Hel", Opcode.TEXT, fin=False)
                conn.send_frame("lo ", Opcode.CONTINUATION, fin=False)
                conn.send_frame("world", Opcode.CONTINUATION, fin=True)
            frames = [await raw.receive_frame() for _ in range(3)]
            assert [(f.opcode, f.payload, f.fin) for f in frames] == [
                (Opcode.TEXT, b"Hel", False),
                (Opcode.CONTINUATION, b"lo ", False),
                (Opcode.CONTINUATION, b"world", True),
            ]
            assert await ws.recv() == "Hello world"


async def test_send_encoded_and_send_frame_rules() -> None:
    handler = RecordingHandler()
    async with running(handler) as server, connect(ws_url(server)) as ws:
        [conn] = await handler.wait_connections(1)
        conn.send_encoded(encode_message(b"pre-encoded"))
        assert await ws.recv() == b"pre-encoded"
        with pytest.raises(ValueError, match="stop"):
            conn.send_frame(b"", Opcode.CLOSE)


class Flusher(Recorder):
    async def got_message(self, message: str | bytes) -> None:
        for i in range(50):
            self.send(f"{i}:" + "y" * 10_000)
        await self.flush()  # from inside a callback
        self.flushed_with = self.queued_bytes
        await super().got_message(message)


async def test_flush_waits_until_written() -> None:
    handler = RecordingHandler()
    handler.connection_class = Flusher
    async with running(handler) as server:
        async with trio_websocket.open_websocket_url(ws_url(server)) as ws:
            await ws.send_message("go")
            received = [await ws.get_message() for _ in range(50)]
            [conn] = handler.connections
            await wait_for(lambda: conn.messages)
            assert conn.flushed_with == 0
            assert received[-1].startswith("49:")
            # flush with nothing queued returns at once
            with trio.fail_after(1):
                await conn.flush()


async def test_flush_on_a_closed_connection_raises() -> None:
    handler = RecordingHandler()
    async with running(handler) as server:
        async with trio_websocket.open_websocket_url(ws_url(server)):
            [conn] = await handler.wait_connections(1)
        await conn.closed.wait()
        with pytest.raises(ConnectionClosedError):
            conn.send("too late")


class PongWatcher(Recorder):
    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.frames: list[Frame] = []

    def got_raw_message(self, frame: Frame) -> FrameAction:
        self.frames.append(frame)
        return FrameAction.PROCESS


async def test_server_ping_is_answered_by_the_client() -> None:
    handler = RecordingHandler(heartbeat=None)
    handler.connection_class = PongWatcher
    async with running(handler) as server:
        async with trio_websocket.open_websocket_url(ws_url(server)) as ws:
            [conn] = await handler.wait_connections(1)
            conn.send_frame(b"are you there", Opcode.PING)
            await wait_for(lambda: any(f.opcode == Opcode.PONG for f in conn.frames))
            assert not ws.closed
    [pong] = [f for f in conn.frames if f.opcode == Opcode.PONG]
    assert pong.data == b"are you there"


async def test_client_ping_gets_pong_with_same_payload() -> None:
    async with running(WebSocketHandler()) as server:
        async with RawClient.connect(server.port) as raw:
            await raw.send_frame(b"ping-payload", Opcode.PING)
            frame = await raw.receive_frame()
            assert (frame.opcode, frame.payload) == (Opcode.PONG, b"ping-payload")
        async with connect(ws_url(server)) as ws:
            waiter = await ws.ping(b"abc")
            with trio.fail_after(TIMEOUT):
                await waiter.wait()


async def test_unsolicited_pong_is_ignored() -> None:
    async with running(EchoHandler()) as server, RawClient.connect(server.port) as raw:
        await raw.send_frame(b"unsolicited", Opcode.PONG)
        await raw.send_frame("still here")
        frame = await raw.receive_frame()
        assert (frame.opcode, frame.payload) == (Opcode.TEXT, b"still here")


class Skipper(Recorder):
    """CONTINUE skips frames whose text is "skip"; BREAK on "quit"."""

    def got_raw_message(self, frame: Frame) -> FrameAction:
        if frame.data == "skip":
            return FrameAction.CONTINUE
        if frame.data == "quit":
            return FrameAction.BREAK
        return FrameAction.PROCESS


async def test_got_raw_message_continue_and_break() -> None:
    handler = RecordingHandler()
    handler.connection_class = Skipper
    async with running(handler) as server, RawClient.connect(server.port) as raw:
        await raw.send_frame("skip")
        await raw.send_frame("a", Opcode.TEXT, fin=False)
        await raw.send_frame("skip", Opcode.CONTINUATION, fin=False)
        await raw.send_frame("b", Opcode.CONTINUATION)
        await raw.send_frame("kept")
        [conn] = await handler.wait_connections(1)
        await wait_for(lambda: len(conn.messages) == 2)
        await raw.send_frame("quit")
        await raw.expect_close(1000)
    assert conn.messages == ["ab", "kept"]


async def test_heartbeat_ping_carries_the_configured_payload() -> None:
    handler = WebSocketHandler(heartbeat=0.2, heartbeat_message="hb-payload", pong_timeout=5)
    async with running(handler) as server, RawClient.connect(server.port) as raw:
        frame = await raw.receive_frame(timeout=5)
        assert (frame.opcode, frame.payload) == (Opcode.PING, b"hb-payload")
        handler.heartbeat_message = b"changed"
        await raw.send_frame(frame.payload, Opcode.PONG)
        frame = await raw.receive_frame(timeout=5)
        assert (frame.opcode, frame.payload) == (Opcode.PING, b"changed")


async def test_missing_pong_closes_with_1011() -> None:
    handler = RecordingHandler(heartbeat=0.2, pong_timeout=0.3, close_timeout=1)
    async with running(handler) as server, RawClient.connect(server.port) as raw:
        ping = await raw.receive_frame()
        assert ping.opcode == Opcode.PING  # and we never answer it
        close = await raw.expect_close(1011)
        assert close.close_reason == "pong timeout"
        [conn] = handler.connections
        await conn.closed.wait()
    assert conn.close_code == 1011


async def test_setting_heartbeat_applies_to_live_connections() -> None:
    handler = WebSocketHandler(heartbeat=60)
    async with running(handler) as server, RawClient.connect(server.port) as raw:
        await wait_for(lambda: len(handler) == 1)
        handler.heartbeat = 0.1
        frame = await raw.receive_frame(timeout=3)
        assert frame.opcode == Opcode.PING


async def test_enabling_the_heartbeat_later_starts_it_on_live_connections() -> None:
    handler = WebSocketHandler(heartbeat=None)
    async with running(handler) as server, RawClient.connect(server.port) as raw:
        await wait_for(lambda: len(handler) == 1)
        handler.heartbeat = 0.1
        frame = await raw.receive_frame(timeout=3)
        assert frame.opcode == Opcode.PING
        await raw.send_frame(frame.payload, Opcode.PONG)
        handler.heartbeat = None  # and disabling it stops the Pings
        await trio.sleep(0.3)
        with pytest.raises(trio.TooSlowError):
            await raw.receive_frame(timeout=0.3)


async def test_input_keeps_the_heartbeat_quiet() -> None:
    async with running(EchoHandler(heartbeat=0.3)) as server:
        async with RawClient.connect(server.port) as raw:
            for i in range(8):  # 0.8 s of traffic, each gap under the heartbeat
                await raw.send_frame(str(i))
                frame = await raw.receive_frame()
                assert frame.opcode == Opcode.TEXT
                await trio.sleep(0.1)
