"""RFC 6455 violations get the right close code; failing hooks get 1011 and a logged traceback."""

from __future__ import annotations

import logging

import pytest
import trio
from websockets.exceptions import ConnectionClosed
from websockets.trio.client import connect

from trio_wshandler import WebSocketHandler
from trio_wshandler._demo import EchoHandler
from trio_wshandler.codec import Opcode

from .conftest import RawClient, Recorder, RecordingHandler, client_frame, running, wait_for, ws_url

#: RFC 6455 violations and the close code each gets: the integration test here sends them over a
#: socket, tests/test_protocol.py feeds them to the sans-I/O protocol.
PROTOCOL_VIOLATIONS = [
    ("unmasked frame", [client_frame(b"hi", Opcode.TEXT, masked=False)], 1002),
    ("RSV1 without extension", [client_frame(b"hi", Opcode.TEXT, rsv=4)], 1002),
    ("RSV3", [client_frame(b"hi", Opcode.BINARY, rsv=1)], 1002),
    ("reserved data opcode", [client_frame(b"hi", 0x3)], 1002),
    ("reserved control opcode", [client_frame(b"", 0xB)], 1002),
    ("continuation without start", [client_frame(b"x", Opcode.CONTINUATION)], 1002),
    (
        "new message inside a fragmented one",
        [client_frame(b"a", Opcode.TEXT, fin=False), client_frame(b"b", Opcode.TEXT)],
        1002,
    ),
    ("fragmented control frame", [client_frame(b"p", Opcode.PING, fin=False)], 1002),
    ("control frame over 125 bytes", [client_frame(b"p" * 126, Opcode.PING)], 1002),
    ("invalid UTF-8", [client_frame(b"\xff\xfe", Opcode.TEXT)], 1007),
    (
        "invalid UTF-8 split across fragments",
        [
            client_frame(b"\xe2\x82", Opcode.TEXT, fin=False),
            client_frame(b"\x28", Opcode.CONTINUATION),
        ],
        1007,
    ),
    ("close with 1-byte payload", [client_frame(b"\x03", Opcode.CLOSE)], 1002),
    ("close with invalid code", [client_frame(b"\x03\xe7", Opcode.CLOSE)], 1002),  # 999
    ("close with reserved code 1005", [client_frame(b"\x03\xed", Opcode.CLOSE)], 1002),
    ("close reason not UTF-8", [client_frame(b"\x03\xe8\xff", Opcode.CLOSE)], 1007),
]


@pytest.mark.parametrize(("name", "frames", "code"), PROTOCOL_VIOLATIONS)
async def test_protocol_violation_closes_with_code(
    name: str, frames: list[bytes], code: int
) -> None:
    handler = RecordingHandler()
    async with running(handler) as server, RawClient.connect(server.port) as raw:
        await raw.send(b"".join(frames))
        await raw.expect_close(code)
        await raw.receive_eof()  # the server then closes the TCP connection
        [conn] = handler.connections
        await conn.closed.wait()
    assert conn.close_code == code, name
    assert conn.messages == []


async def test_message_over_max_size_is_1009_websockets_client() -> None:
    async with running(EchoHandler(max_message_size=1000)) as server:
        async with connect(ws_url(server), max_size=None) as ws:
            await ws.send("x" * 1000)
            assert await ws.recv() == "x" * 1000  # exactly the limit is fine
            await ws.send("x" * 1001)
            with pytest.raises(ConnectionClosed) as info:
                await ws.recv()
    assert info.value.rcvd is not None and info.value.rcvd.code == 1009


async def test_fragmented_message_over_max_size_is_1009() -> None:
    async with running(EchoHandler(max_message_size=1000)) as server:
        async with RawClient.connect(server.port) as raw:
            for _ in range(3):
                await raw.send_frame(
                    b"y" * 400, Opcode.BINARY if _ == 0 else Opcode.CONTINUATION, fin=False
                )
            close = await raw.expect_close(1009)
            assert "max_message_size" in close.close_reason


async def test_huge_declared_length_is_refused_before_the_bytes_come() -> None:
    async with running(EchoHandler(max_message_size=1 << 20)) as server:
        async with RawClient.connect(server.port) as raw:
            # declares 2**62 bytes, sends the header and nothing more
            head = client_frame(b"", Opcode.BINARY, declared_length=1 << 62)
            await raw.send(head)
            await raw.expect_close(1009, timeout=3)


async def test_client_close_is_echoed_with_its_code() -> None:
    handler = RecordingHandler()
    async with running(handler) as server, RawClient.connect(server.port) as raw:
        await raw.send_frame(b"\x0f\xa0goodbye", Opcode.CLOSE)  # 4000
        echo = await raw.expect_close(4000)
        await raw.receive_eof()
        [conn] = handler.connections
        await conn.closed.wait()
    assert echo.close_reason == "goodbye"  # wsproto echoes the reason too
    assert (conn.close_code, conn.close_reason) == (4000, "goodbye")


async def test_empty_close_is_answered_with_empty_close() -> None:
    async with running(WebSocketHandler()) as server, RawClient.connect(server.port) as raw:
        await raw.send_frame(b"", Opcode.CLOSE)
        frame = await raw.receive_until(Opcode.CLOSE)
        assert frame.payload == b""  # not 1005 on the wire (RFC 6455 7.4.1)


async def test_websockets_client_close_code_round_trip() -> None:
    handler = RecordingHandler()
    async with running(handler) as server:
        async with connect(ws_url(server)) as ws:
            await handler.wait_connections(1)
            await ws.aclose(code=4321, reason="done")
            assert ws.close_code == 4321
        [conn] = handler.connections
        await conn.closed.wait()
    assert (conn.close_code, conn.close_reason) == (4321, "done")


class Crashing(Recorder):
    async def got_message(self, message: str | bytes) -> None:
        raise ZeroDivisionError("hook bug")


async def test_exception_in_got_message_is_1011_and_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    handler = RecordingHandler()
    handler.connection_class = Crashing
    async with running(handler) as server, RawClient.connect(server.port) as raw:
        await raw.send_frame("boom")
        await raw.expect_close(1011)
        [conn] = handler.connections
        await conn.closed.wait()
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert any("got_message" in r.getMessage() and r.exc_info for r in errors)
    assert any(r.exc_info and r.exc_info[0] is ZeroDivisionError for r in errors)


async def test_get_connection_raising_is_logged_and_closed_1011(
    caplog: pytest.LogCaptureFixture,
) -> None:
    class Broken(WebSocketHandler):
        def get_connection(self, cx, hdr, cid):  # type: ignore[no-untyped-def]
            raise LookupError("no such room")

    handler = Broken()
    async with running(handler) as server, RawClient.connect(server.port) as raw:
        close = await raw.expect_close(1011)
        await raw.receive_eof()
    assert close.close_reason == "internal error"
    assert handler.connection_ids() == []
    assert any(r.exc_info and r.exc_info[0] is LookupError for r in caplog.records)


class BadRegistration(Recorder):
    async def registered(self) -> None:
        self.send("queued before the failure")
        raise RuntimeError("cannot register")


async def test_registered_raising_is_logged_removed_and_closed_1011(
    caplog: pytest.LogCaptureFixture,
) -> None:
    handler = RecordingHandler()
    handler.connection_class = BadRegistration
    async with running(handler) as server, RawClient.connect(server.port) as raw:
        first = await raw.receive_frame()
        assert first.payload == b"queued before the failure"
        close = await raw.expect_close(1011)
        assert close.close_reason == "registered() failed"
        await raw.send_frame(close.payload[:2], Opcode.CLOSE)
        [conn] = handler.connections
        await conn.closed.wait()
        assert handler.connection_ids() == []
    assert conn.events == ["deregister_connection", "connection_closed"]
    assert any("registered() failed" in r.getMessage() and r.exc_info for r in caplog.records)


async def test_data_after_our_close_is_not_delivered() -> None:
    handler = RecordingHandler(close_timeout=2)
    async with running(handler) as server, RawClient.connect(server.port) as raw:
        [conn] = await handler.wait_connections(1)
        conn.stop(4000, "bye")
        await raw.expect_close(4000)
        await raw.send_frame("late message")
        await raw.send_frame(b"\x0f\xa0", Opcode.CLOSE)
        await raw.receive_eof()
        await conn.closed.wait()
    assert conn.messages == []
    assert conn.close_code == 4000


async def test_vanishing_client_mid_frame_ends_cleanly() -> None:
    handler = RecordingHandler()
    async with running(handler) as server:
        async with RawClient.connect(server.port) as raw:
            [conn] = await handler.wait_connections(1)
            await raw.send(client_frame(b"z" * 1000, Opcode.BINARY)[:300])
        with trio.fail_after(5):
            await conn.closed.wait()
    assert conn.close_code == 1006
    assert conn.events == ["registered", "deregister_connection", "connection_closed"]
    await wait_for(lambda: handler.connection_ids() == [])
