"""Registration, the end hooks, stop() at every level, ids, options, logging, TLS."""

from __future__ import annotations

import logging
import re
import ssl

import pytest
import trio
import trio_websocket
import trustme
from websockets.exceptions import ConnectionClosed
from websockets.trio.client import connect

from trio_wshandler import (
    CloseCode,
    UnknownConnectionError,
    WebSocketHandler,
    serve,
)
from trio_wshandler._demo import EchoHandler
from trio_wshandler._ids import new_connection_id
from trio_wshandler.codec import Opcode
from trio_wshandler.testing import TestClientClosed, open_test_client

from .conftest import (
    RawClient,
    RecordingHandler,
    raw_http,
    running,
    upgrade_request,
    wait_for,
    ws_url,
)

END_HOOKS = ["registered", "deregister_connection", "connection_closed"]


async def test_hooks_run_once_when_the_client_closes() -> None:
    handler = RecordingHandler()
    async with open_test_client(handler):  # (trio_wshandler.testing; it closes with 1000)
        [conn] = await handler.wait_connections(1)
        assert conn.is_open and conn.id in handler.connection_ids()
    with trio.fail_after(5):
        await conn.closed.wait()
    await wait_for(lambda: handler.connection_ids() == [])
    assert conn.events == END_HOOKS
    assert handler.deregistered == [conn.id]
    assert not conn.is_open and conn.close_code == 1000


async def test_hooks_run_once_on_network_drop() -> None:
    handler = RecordingHandler()
    async with running(handler) as server:
        async with RawClient.connect(server.port):
            [conn] = await handler.wait_connections(1)
        # the raw client closed its socket with no Close frame
        with trio.fail_after(5):
            await conn.closed.wait()
    assert conn.events == END_HOOKS
    assert conn.close_code == CloseCode.ABNORMAL_CLOSURE


async def test_stop_one_sends_1001_and_unknown_id_raises() -> None:
    handler = RecordingHandler()
    async with (
        running(handler) as server,
        connect(ws_url(server)) as ws,
        trio_websocket.open_websocket_url(ws_url(server)) as other,
    ):
        first, second = await handler.wait_connections(2)
        handler.stop_one(first.id)
        with pytest.raises(ConnectionClosed) as info:
            await ws.recv()
        assert info.value.rcvd is not None and info.value.rcvd.code == 1001
        await first.closed.wait()
        with pytest.raises(UnknownConnectionError):
            handler.stop_one(first.id)
        handler.send_one(second.id, "still here")
        assert await other.get_message() == "still here"
    assert first.events == END_HOOKS


async def test_queued_messages_are_delivered_before_the_close() -> None:
    handler = RecordingHandler()
    async with open_test_client(handler) as client:
        [conn] = await handler.wait_connections(1)
        for i in range(100):
            conn.send(f"m{i}")
        conn.stop()
        got = [await client.receive() for _ in range(100)]
        with pytest.raises(TestClientClosed) as closed:
            await client.receive()
        assert closed.value.code == 1001
    assert got == [f"m{i}" for i in range(100)]


async def test_handler_stop_closes_all_with_1001_and_refuses_new_upgrades() -> None:
    handler = RecordingHandler()
    async with (
        running(handler) as server,
        connect(ws_url(server)) as a,
        trio_websocket.open_websocket_url(ws_url(server)) as b,
    ):
        conns = await handler.wait_connections(2)
        handler.stop()
        with pytest.raises(ConnectionClosed) as info:
            await a.recv()
        assert info.value.rcvd is not None and info.value.rcvd.code == 1001
        with pytest.raises(trio_websocket.ConnectionClosed) as closed:
            await b.get_message()
        assert closed.value.reason.code == 1001
        with trio.fail_after(5):
            await handler.wait_stopped()
        status, headers, body = await raw_http(server.port, upgrade_request())
    assert status == 503 and b"stopped" in body
    assert headers.get("retry-after") == "5"  # 1001: come back, not at once
    assert all(c.events == END_HOOKS for c in conns)
    assert handler.stopped


@pytest.mark.parametrize(("code", "retry"), [(1012, "1"), (1013, "5"), (1000, None)])
async def test_a_stopped_handler_says_when_to_come_back(code: int, retry: str | None) -> None:
    """An upgrade read after stop(code) cannot be told the code (no Close before the 101):
    its 503 says Retry-After when the code is one to reconnect after (a restart: 1 s)."""
    handler = RecordingHandler()
    async with running(handler) as server:
        handler.stop(code, "going")
        status, headers, _ = await raw_http(server.port, upgrade_request())
    assert status == 503 and headers.get("retry-after") == retry


async def test_wait_closed_returns_after_the_end_hooks() -> None:
    handler = RecordingHandler()
    async with open_test_client(handler):
        [conn] = await handler.wait_connections(1)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(conn.wait_closed)
            await trio.sleep(0.05)
            assert conn.is_open  # still waiting
            conn.stop()
        assert conn.events == END_HOOKS
        with trio.fail_after(1):
            await conn.wait_closed()  # and returns at once afterwards


async def test_close_handshake_is_bounded_by_close_timeout() -> None:
    handler = RecordingHandler(close_timeout=0.3)
    async with running(handler) as server, RawClient.connect(server.port) as raw:
        [conn] = await handler.wait_connections(1)
        conn.stop()
        await raw.expect_close(1001)
        # we never answer the Close
        start = trio.current_time()
        await raw.receive_eof(timeout=3)
        waited = trio.current_time() - start
        await conn.closed.wait()
    assert waited < 2
    assert conn.events == END_HOOKS


async def test_cancellation_runs_the_end_hooks() -> None:
    handler = RecordingHandler()
    async with trio.open_nursery() as nursery:
        server = await nursery.start(serve, handler, "127.0.0.1", 0)
        async with RawClient.connect(server.port):
            [conn] = await handler.wait_connections(1)
            nursery.cancel_scope.cancel()  # the whole server is cancelled
            await trio.lowlevel.checkpoint()
    assert conn.events == END_HOOKS
    assert handler.connection_ids() == []


async def test_stop_listener_closes_only_its_connections() -> None:
    handler = RecordingHandler()
    async with running(handler) as server:
        second = await server.add_listener("127.0.0.1", 0, listener_id="second")
        assert set(server.listeners) == {next(iter(server.listeners)), "second"}
        async with (
            connect(f"ws://127.0.0.1:{server.port}/") as on_first,
            connect(f"ws://127.0.0.1:{second.port}/") as on_second,
        ):
            conns = await handler.wait_connections(2)
            assert {c.listener_id for c in conns} == {conns[0].listener_id, "second"}
            server.stop_listener("second")
            with pytest.raises(ConnectionClosed) as info:
                await on_second.recv()
            assert info.value.rcvd is not None and info.value.rcvd.code == 1001
            with trio.fail_after(5):
                await second.closed.wait()
            assert "second" not in server.listeners
            with pytest.raises(OSError):
                await trio.open_tcp_stream("127.0.0.1", second.port)
            handler.send_all("first listener still works")
            assert await on_first.recv() == "first listener still works"
        with pytest.raises(KeyError, match="no listener"):
            server.stop_listener("second")


async def test_server_stop_returns_from_serve() -> None:
    handler = RecordingHandler()
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            server = await nursery.start(serve, handler, "127.0.0.1", 0)
            async with connect(f"ws://127.0.0.1:{server.port}/") as ws:
                await handler.wait_connections(1)
                server.stop()
                with pytest.raises(ConnectionClosed):
                    await ws.recv()
    # the nursery exited: serve() returned by itself


def test_connection_ids_are_unique_and_time_ordered() -> None:
    ids = [new_connection_id() for _ in range(10_000)]
    assert len(set(ids)) == len(ids)
    assert all(re.fullmatch(r"[0-9A-HJKMNP-TV-Z]{26}", i) for i in ids)
    assert ids[0][:10] <= ids[-1][:10]


async def test_connection_id_is_the_call_context_id() -> None:
    handler = RecordingHandler()
    async with running(handler) as server, connect(ws_url(server, "/x?y=1")):
        [conn] = await handler.wait_connections(1)
        assert conn.id == conn.cx.id
        assert conn.cx.peer[0] == "127.0.0.1" and conn.cx.local[1] == server.port
        assert conn.cx.url == f"http://127.0.0.1:{server.port}/x?y=1"
        assert conn.hdr.path == "/x" and conn.hdr.query == {"y": "1"}
        assert conn.hdr.headers["upgrade"] == "websocket"


@pytest.mark.parametrize(
    ("option", "value", "error", "text"),
    [
        ("heartbeat", 0, ValueError, "heartbeat must be a number > 0"),
        ("heartbeat", -1.5, ValueError, "heartbeat"),
        ("heartbeat", "20", TypeError, "heartbeat"),
        ("pong_timeout", 0, ValueError, "pong_timeout must be a number > 0"),
        ("pong_timeout", None, TypeError, "pong_timeout"),
        ("max_message_size", 0, ValueError, "max_message_size must be an int > 0"),
        ("max_message_size", 1.5, TypeError, "max_message_size"),
        ("heartbeat_message", "x" * 126, ValueError, "at most 125 bytes"),
        ("heartbeat_message", 5, TypeError, "heartbeat_message"),
        ("slow_consumer", "ignore", ValueError, "'close' or 'drop'"),
        ("max_queue_bytes", -1, ValueError, "max_queue_bytes"),
        ("close_timeout", float("inf"), ValueError, "close_timeout"),
        ("logger", "root", TypeError, "logger"),
    ],
)
def test_bad_options_name_the_option_and_range(
    option: str, value: object, error: type, text: str
) -> None:
    with pytest.raises(error, match=re.escape(text)):
        WebSocketHandler(**{option: value})  # type: ignore[arg-type]


def test_unknown_option_is_an_error() -> None:
    with pytest.raises(TypeError, match="heartbeet"):
        WebSocketHandler(heartbeet=5)  # type: ignore[call-arg]


def test_settable_properties_validate() -> None:
    handler = WebSocketHandler()
    handler.heartbeat = 3
    handler.heartbeat_message = "hi"
    assert (handler.heartbeat, handler.heartbeat_message) == (3, b"hi")
    with pytest.raises(ValueError, match="heartbeat"):
        handler.heartbeat = 0
    with pytest.raises(ValueError, match="125"):
        handler.heartbeat_message = b"x" * 200
    with pytest.raises(ValueError, match="close code"):
        handler.stop(1005)


def test_logging_goes_to_the_given_logger(caplog: pytest.LogCaptureFixture) -> None:
    logger = logging.getLogger("my.app.ws")
    handler = WebSocketHandler(logger=logger)
    with caplog.at_level(logging.DEBUG, logger="my.app.ws"):
        handler.log_debug("d %s", 1)
        handler.log_info("i %s", 2)
        handler.log_warning("w %s", 3)
        handler.log_error("e %s", 4)
    assert [(r.name, r.levelname, r.getMessage()) for r in caplog.records] == [
        ("my.app.ws", "DEBUG", "d 1"),
        ("my.app.ws", "INFO", "i 2"),
        ("my.app.ws", "WARNING", "w 3"),
        ("my.app.ws", "ERROR", "e 4"),
    ]
    assert WebSocketHandler().logger.name == "trio_wshandler"


async def test_tls_listener() -> None:
    ca = trustme.CA()
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server_context)
    client_context = ssl.create_default_context()
    ca.configure_trust(client_context)
    handler = EchoHandler()
    async with running(handler, ssl_context=server_context) as server:
        async with connect(f"wss://127.0.0.1:{server.port}/", ssl=client_context) as ws:
            await ws.send("over TLS")
            assert await ws.recv() == "over TLS"
        async with trio_websocket.open_websocket_url(
            f"wss://127.0.0.1:{server.port}/", ssl_context=client_context
        ) as ws2:
            await ws2.send_message(b"tls bytes")
            assert await ws2.get_message() == b"tls bytes"


async def test_max_connections_gives_503() -> None:
    handler = RecordingHandler(max_connections=2)
    async with running(handler) as server:
        async with RawClient.connect(server.port), RawClient.connect(server.port):
            await handler.wait_connections(2)
            status, headers, body = await raw_http(server.port, upgrade_request())
    assert status == 503 and b"max_connections=2" in body and headers["retry-after"]


async def test_stop_before_running_closes_right_after_upgrade() -> None:
    class StopsAtOnce(RecordingHandler):
        def get_connection(self, cx, hdr, cid):  # type: ignore[no-untyped-def]
            connection = super().get_connection(cx, hdr, cid)
            connection.send("last words")
            connection.stop(4001, "not today")
            return connection

    handler = StopsAtOnce()
    async with running(handler) as server, RawClient.connect(server.port) as raw:
        frame = await raw.receive_frame()
        assert frame.payload == b"last words"
        await raw.expect_close(4001)
        await raw.send_frame(b"\x0f\xa1", Opcode.CLOSE)
        [conn] = handler.connections
        await conn.closed.wait()
    assert conn.events == END_HOOKS
