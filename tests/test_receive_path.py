"""The receive path over real sockets: corked answers (what a hook sends while its reader
handles a read is written by the reader, one write, no flusher round), a hook that suspends has
what it sent written at once, and messages of every size and shape through the hot path from
independent clients."""

from __future__ import annotations

import os

import pytest
import trio
import trio_websocket
from websockets.trio.client import connect

from trio_wshandler import CallContext, Request, WebSocketConnection, WebSocketHandler
from trio_wshandler._demo import EchoHandler
from trio_wshandler._flusher import Flusher
from trio_wshandler.codec import Opcode

from .conftest import TIMEOUT, RawClient, client_frame, running, wait_for, ws_url


async def test_an_echo_is_written_by_the_reader_in_one_write(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Request/response: the answer goes out from the reader (corked), not through a round
    of the flusher, one write per request."""
    scheduled = 0
    schedule = Flusher.schedule

    def counting(self: Flusher, connection: object) -> None:
        nonlocal scheduled
        scheduled += 1
        schedule(self, connection)  # type: ignore[arg-type]

    monkeypatch.setattr(Flusher, "schedule", counting)
    handler = EchoHandler(heartbeat=None)
    async with running(handler) as server, connect(ws_url(server)) as ws:
        before = handler.stats().writes
        for i in range(50):
            await ws.send(f"message {i}")
            with trio.fail_after(TIMEOUT):
                assert await ws.recv() == f"message {i}"
        assert handler.stats().writes - before == 50
    assert scheduled == 0


class AckThenWork(WebSocketConnection):
    async def got_message(self, message: str | bytes) -> None:
        self.send("ack")
        await trio.sleep(1.0)  # work of its own: suspends the hook
        self.send("done")


class AckHandler(WebSocketHandler):
    def get_connection(self, cx: CallContext, hdr: Request, cid: str) -> WebSocketConnection:
        return AckThenWork(self, cx, hdr, cid)


async def test_a_hook_that_suspends_has_what_it_sent_written_at_once() -> None:
    async with running(AckHandler(heartbeat=None)) as server, connect(ws_url(server)) as ws:
        await ws.send("go")
        started = trio.current_time()
        with trio.fail_after(TIMEOUT):
            assert await ws.recv() == "ack"
        assert trio.current_time() - started < 0.5  # not held until the hook returns
        with trio.fail_after(TIMEOUT):
            assert await ws.recv() == "done"


class CancelledInHook(WebSocketConnection):
    async def got_message(self, message: str | bytes) -> None:
        self.send("before")
        await trio.sleep_forever()


class StopHandler(WebSocketHandler):
    def get_connection(self, cx: CallContext, hdr: Request, cid: str) -> WebSocketConnection:
        return CancelledInHook(self, cx, hdr, cid)


async def test_a_suspended_hook_is_cancelled_when_the_connection_stops() -> None:
    """Cancellation reaches a hook that the reader resumed by hand (a stop's deadline)."""
    handler = StopHandler(heartbeat=None, close_timeout=0.5)
    async with running(handler) as server, RawClient.connect(server.port) as raw:
        await raw.send_frame("go")
        assert (await raw.receive_frame()).payload == b"before"
        [connection] = [c for c in handler.registry]
        connection.stop(4000, "bye")
        await raw.expect_close(4000)
        with trio.fail_after(TIMEOUT):
            await connection.wait_closed()


@pytest.mark.parametrize("size", [0, 1, 125, 126, 65535, 65536, 1 << 20, 3 << 20])
async def test_messages_of_every_length_encoding_round_trip(size: int) -> None:
    """Lengths at the edges of the 7-, 16- and 64-bit encodings, Text and Binary, from
    websockets and trio-websocket."""
    handler = EchoHandler(heartbeat=None, max_message_size=4 << 20)
    data = os.urandom(size)
    text = "é" * (size // 2)
    async with running(handler) as server:
        async with connect(ws_url(server), max_size=None) as ws:
            for message in (data, text):
                await ws.send(message)
                with trio.fail_after(TIMEOUT):
                    assert await ws.recv() == message
        async with trio_websocket.open_websocket_url(
            ws_url(server), max_message_size=8 << 20
        ) as tws:
            for message in (data, text):
                await tws.send_message(message)
                with trio.fail_after(TIMEOUT):
                    assert await tws.get_message() == message


async def test_fragments_cut_inside_characters_and_reads_cut_anywhere() -> None:
    """A fragmented Text message whose fragments cut characters, sent a few bytes per write,
    with Pings between the fragments: one message, intact; every Ping answered."""
    handler = EchoHandler(heartbeat=None)
    text = "ünïcödé " * 500
    payload = text.encode()
    pieces = [payload[i : i + 777] for i in range(0, len(payload), 777)]
    async with running(handler) as server, RawClient.connect(server.port) as raw:
        wire = b""
        for i, piece in enumerate(pieces):
            last = i == len(pieces) - 1
            wire += client_frame(piece, Opcode.TEXT if i == 0 else Opcode.CONTINUATION, fin=last)
            if not last:
                wire += client_frame(b"p%d" % i, Opcode.PING)
        for i in range(0, len(wire), 13):
            await raw.send(wire[i : i + 13])
        pongs = [await raw.receive_frame() for _ in range(len(pieces) - 1)]
        assert [p.payload for p in pongs] == [b"p%d" % i for i in range(len(pieces) - 1)]
        echo = await raw.receive_frame()
        assert echo.payload.decode() == text


async def test_invalid_utf8_fails_at_once_in_a_fragmented_message() -> None:
    """The bad byte in the second fragment fails the connection (1007) before the message
    ends (RFC 6455 8.1: fail fast)."""
    async with running(EchoHandler(heartbeat=None)) as server:
        async with RawClient.connect(server.port) as raw:
            await raw.send(client_frame(b"valid ", Opcode.TEXT, fin=False))
            await raw.send(client_frame(b"\xff", Opcode.CONTINUATION, fin=False))
            close = await raw.expect_close(1007)
            assert close.close_reason == "invalid UTF-8 in a Text message"


class Chat(WebSocketConnection):
    async def got_message(self, message: str | bytes) -> None:
        self.handler.send_all(message)


class ChatHandler(WebSocketHandler):
    def get_connection(self, cx: CallContext, hdr: Request, cid: str) -> WebSocketConnection:
        return Chat(self, cx, hdr, cid)


async def test_readers_wait_while_the_flusher_is_behind(monkeypatch: pytest.MonkeyPatch) -> None:
    """A chat room: each message a client sends goes to everyone.  Once more connections wait
    to be written than the flusher takes in a step (BACKLOG), readers stop reading until it
    has caught up (so the writes are not starved by readers that each fan out to all), and
    every message still reaches everyone, in order, nobody closed."""
    waits = 0
    wait = Flusher.wait_caught_up

    async def counting(self: Flusher) -> None:
        nonlocal waits
        waits += 1
        await wait(self)

    monkeypatch.setattr(Flusher, "wait_caught_up", counting)
    handler = ChatHandler(heartbeat=None)
    clients = 300
    messages = [f"line {i}" for i in range(40)]
    async with running(handler) as server, trio.open_nursery() as nursery:
        streams = [await trio.open_tcp_stream("127.0.0.1", server.port) for _ in range(clients)]
        raws = [RawClient(stream) for stream in streams]
        for raw in raws:
            await raw.handshake()
        await wait_for(lambda: len(handler) == clients)
        # two clients send their lines at once: many readers fan out to all at the same time
        lines = b"".join(client_frame(m.encode(), Opcode.TEXT) for m in messages)
        for raw in raws[:2]:
            nursery.start_soon(raw.send, lines)
        for raw in raws:
            got = [(await raw.receive_frame()).payload.decode() for _ in range(2 * len(messages))]
            assert [m for m in got if m in messages] == got
            assert sorted(got) == sorted(messages * 2)
        assert all(connection.is_open for connection in handler.registry)
        for stream in streams:
            await stream.aclose()
    assert waits > 0
