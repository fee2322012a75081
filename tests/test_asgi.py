"""The handler mounted under a real Hypercorn (its Trio worker) and a real Quart-Trio app, driven
by independent clients (websockets, trio-websocket, Node's ws, and wsproto's through
``trio_wshandler.testing``), next to ``serve()`` listeners of the same handler in one process.
"""

from __future__ import annotations

import socket
import struct
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from typing import Any

import pytest
import trio
from trio_websocket import open_websocket_url
from websockets.exceptions import ConnectionClosed
from websockets.trio.client import connect

from trio_wshandler import (
    ASGIMount,
    CallContext,
    ConnectionCaps,
    RateLimit,
    RateLimits,
    Request,
    TokenAuthenticator,
    WebSocketConnection,
    WebSocketHandler,
    serve,
)
from trio_wshandler.testing import TestClientClosed, UpgradeRefused, open_test_client

from .test_interop_node import BROADCAST, InteropHandler, node_client  # noqa: F401 (a fixture)

hypercorn_trio = pytest.importorskip("hypercorn.trio", reason="pip install .[asgi]")
Config = pytest.importorskip("hypercorn.config").Config

WAIT = 10  # no wait here is longer


class Echo(WebSocketConnection):
    """Echoes; ``all:X`` broadcasts X, ``pub:T:X`` publishes, ``sub:T`` subscribes, ``one:CID:X``
    sends to one connection, ``boom`` raises, ``stop`` stops the handler."""

    async def registered(self) -> None:
        self.send(f"id:{self.id}:{self.listener_id}")

    async def got_message(self, message: str | bytes) -> None:
        if isinstance(message, bytes):
            self.send(message)
            return
        command, _, rest = message.partition(":")
        handler = self.handler
        if command == "all":
            handler.send_all(rest)
        elif command == "pub":
            topic, _, text = rest.partition(":")
            handler.publish(topic, text)
        elif command == "sub":
            self.subscribe(rest)
            self.send(f"subscribed:{rest}")
        elif command == "one":
            cid, _, text = rest.partition(":")
            handler.send_one(cid, text)
        elif command == "boom":
            raise RuntimeError("a bug in the hook")
        else:
            self.send(message)


class EchoHandler(WebSocketHandler):
    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.closed: list[tuple[str, int | None]] = []
        self.refused: list[int] = []

    def get_connection(self, cx: CallContext, hdr: Request, cid: str) -> WebSocketConnection:
        handler = self

        class Recorded(Echo):
            async def connection_closed(self) -> None:
                handler.closed.append((self.id, self.close_code))

            def message_refused(self, limit: RateLimit, count: int) -> None:
                handler.refused.append(count)

        return Recorded(self, cx, hdr, cid)


@asynccontextmanager
async def hypercorn(
    app: Any, shutdown: trio.Event | None = None, **options: Any
) -> AsyncIterator[int]:
    """Serve ``app`` with Hypercorn's Trio worker on 127.0.0.1 (a free port, yielded), with
    Config ``options``; it stops (gracefully) when the block ends or ``shutdown`` is set."""
    config = Config()
    config.bind = ["127.0.0.1:0"]
    config.graceful_timeout = 2
    config.accesslog = None
    for name, value in options.items():
        setattr(config, name, value)
    shutdown = trio.Event() if shutdown is None else shutdown
    with trio.fail_after(WAIT + 5):
        async with trio.open_nursery() as nursery:
            binds = await nursery.start(
                partial(hypercorn_trio.serve, app, config, shutdown_trigger=shutdown.wait)
            )
            yield int(binds[0].rsplit(":", 1)[1])
            shutdown.set()


async def http_get(address: tuple[str, int], path: str) -> bytes:
    """The response to a plain GET, head and body (read to its Content-Length)."""
    stream = await trio.open_tcp_stream(*address)
    request = f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    await stream.send_all(request.encode())
    data = b""
    with trio.fail_after(WAIT):
        while b"\r\n\r\n" not in data or len(data.partition(b"\r\n\r\n")[2]) < int(
            data.lower().partition(b"content-length: ")[2].partition(b"\r\n")[0] or 0
        ):
            chunk = await stream.receive_some()
            assert chunk, data
            data += chunk
    await stream.aclose()
    return data


async def first(ws: Any) -> str:
    """The ``id:...`` greeting."""
    with trio.fail_after(WAIT):
        greeting = await ws.recv()
    assert greeting.startswith("id:"), greeting
    return str(greeting)


async def test_echo_registry_and_stats_under_hypercorn() -> None:
    handler = EchoHandler()
    async with hypercorn(handler.asgi()) as port:
        async with connect(f"ws://127.0.0.1:{port}/room/7?user=ann") as ws:
            greeting = await first(ws)
            _, cid, listener = greeting.split(":")
            assert listener == "asgi"
            await ws.send("hello")
            assert await ws.recv() == "hello"
            await ws.send(b"\x00\xff" * 1000)
            assert await ws.recv() == b"\x00\xff" * 1000
            assert cid in handler.registry and len(handler) == 1
            connection = handler.connection(cid)
            assert connection.hdr.path == "/room/7"
            assert connection.hdr.query == {"user": "ann"}
            assert connection.cx.peer[0] == "127.0.0.1"
            assert connection.cx.url == f"ws://127.0.0.1:{port}/room/7?user=ann"
            stats = handler.stats()
            assert stats.upgrades == 1 and stats.connections == 1
        with trio.fail_after(WAIT):
            while len(handler):
                await trio.sleep(0.01)
        stats = handler.stats()
        assert stats.messages_received == 2 and stats.messages_sent == 3
        assert handler.closed == [(cid, 1006)]  # Hypercorn reports a client's Close as 1006
        assert dict(stats.close_codes_sent) == {}  # nothing was sent from our side


async def test_a_broadcast_reaches_the_clients_of_both_kinds_of_listener() -> None:
    handler = EchoHandler()
    async with trio.open_nursery() as nursery, hypercorn(handler.asgi()) as asgi_port:
        server = await nursery.start(serve, handler, "127.0.0.1", 0)
        url = f"ws://127.0.0.1:{server.port}/"
        async with (
            connect(url) as native,
            connect(f"ws://127.0.0.1:{asgi_port}/") as mounted,
            open_websocket_url(f"ws://127.0.0.1:{asgi_port}/") as other,
        ):
            native_id = (await first(native)).split(":")[1]
            mounted_id = (await first(mounted)).split(":")[1]
            with trio.fail_after(WAIT):
                assert (await other.get_message()).startswith("id:")
            assert len(handler) == 3
            # send_all from a native connection's hook reaches all three, once each, in order
            await native.send("all:one")
            await mounted.send("all:two")
            for ws in (native, mounted):
                with trio.fail_after(WAIT):
                    assert [await ws.recv(), await ws.recv()] == ["one", "two"]
            with trio.fail_after(WAIT):
                assert [await other.get_message(), await other.get_message()] == ["one", "two"]
            # topics span both kinds
            await mounted.send("sub:news")
            await native.send("sub:news")
            assert await mounted.recv() == "subscribed:news"
            assert await native.recv() == "subscribed:news"
            assert handler.publish("news", "extra") == 2
            assert await mounted.recv() == "extra" and await native.recv() == "extra"
            # send_one across
            await native.send(f"one:{mounted_id}:to-mounted")
            await mounted.send(f"one:{native_id}:to-native")
            assert await mounted.recv() == "to-mounted" and await native.recv() == "to-native"
            # stop_listener closes only the mount's connections
            handler.stop_listener("asgi")
            with pytest.raises(ConnectionClosed):
                with trio.fail_after(WAIT):
                    await mounted.recv()
            assert mounted.close_code == 1001
            await native.send("still")
            assert await native.recv() == "still"
        nursery.cancel_scope.cancel()


async def test_refusals_keep_their_status_headers_and_body() -> None:
    handler = EchoHandler(
        auth=TokenAuthenticator({"t1": "ann"}),
        origins=["https://app.example"],
        caps=ConnectionCaps(max_per_address=1),
    )
    async with hypercorn(handler.asgi()) as port:
        address = ("127.0.0.1", port)
        with pytest.raises(UpgradeRefused) as refused:
            async with open_test_client(address, "/?token=nope"):
                pass
        assert refused.value.status == 401
        assert "www-authenticate" in refused.value.headers
        with pytest.raises(UpgradeRefused) as refused:
            async with open_test_client(
                address, "/?token=t1", headers={"Origin": "https://evil.example"}
            ):
                pass
        assert refused.value.status == 403 and b"origin" in refused.value.body
        async with open_test_client(address, "/?token=t1") as client:
            greeting = await client.receive()
            assert isinstance(greeting, str)
            assert handler.connection(greeting.split(":")[1]).cx.user == "ann"
            with pytest.raises(UpgradeRefused) as refused:
                async with open_test_client(address, "/?token=t1"):
                    pass
            assert refused.value.status == 429 and "retry-after" in refused.value.headers
        stats = handler.stats()
        assert stats.upgrades == 1 and dict(stats.refused) == {401: 1, 403: 1, 429: 1}


async def test_subprotocol_and_extra_headers() -> None:
    class Tagged(EchoHandler):
        async def handle_request(self, cx: CallContext, hdr: Request, body: bytes) -> Any:
            response = await super().handle_request(cx, hdr, body)
            return response.with_headers(X_Room="7")

    handler = Tagged(subprotocols=["chat.v2", "chat.v1"])
    async with hypercorn(handler.asgi()) as port:
        async with connect(f"ws://127.0.0.1:{port}/", subprotocols=["chat.v1", "chat.v2"]) as ws:  # type: ignore[list-item]
            await first(ws)
            assert ws.subprotocol == "chat.v2"
            assert ws.response is not None and ws.response.headers["x-room"] == "7"


async def test_message_size_hook_errors_and_raw_frames() -> None:
    class Raw(EchoHandler):
        def get_connection(self, cx: CallContext, hdr: Request, cid: str) -> WebSocketConnection:
            class Breaking(Echo):
                def got_raw_message(self, frame: Any) -> Any:
                    from trio_wshandler import FrameAction

                    return FrameAction.BREAK if frame.data == "break" else FrameAction.PROCESS

            return Breaking(self, cx, hdr, cid)

    handler = Raw(max_message_size=1000)
    async with hypercorn(handler.asgi()) as port:
        address = ("127.0.0.1", port)
        async with open_test_client(address) as client:
            await client.receive()
            await client.send("x" * 1001)
            assert await client.receive_close() == (1009, "message too big")
            assert dict(handler.stats().protocol_errors) == {1009: 1}
        async with open_test_client(address) as client:
            await client.receive()
            await client.send("é" * 300)  # 600 bytes: within
            assert await client.receive() == "é" * 300
            await client.send("é" * 501)  # 1002 bytes in 501 characters
            assert (await client.receive_close())[0] == 1009
        async with open_test_client(address) as client:
            await client.receive()
            await client.send("boom")
            assert await client.receive_close() == (1011, "internal error")
        async with open_test_client(address) as client:
            await client.receive()
            await client.send("fine")
            assert await client.receive() == "fine"
            await client.send("break")
            assert (await client.receive_close())[0] == 1000


async def test_rate_limits_per_message() -> None:
    drop = RateLimits([RateLimit(5, per=60, burst=5)], policy="drop")
    handler = EchoHandler(rate_limits=drop)
    async with hypercorn(handler.asgi()) as port:
        async with open_test_client(("127.0.0.1", port)) as client:
            await client.receive()
            for n in range(8):
                await client.send(f"m{n}")
            got = [await client.receive() for _ in range(5)]
            assert got == [f"m{n}" for n in range(5)]
            await client.ping()  # everything sent has been read by now
            with trio.fail_after(WAIT):
                while sum(handler.refused) < 3:
                    await trio.sleep(0.01)
            assert handler.stats().rate_dropped == 3
    handler = EchoHandler(rate_limits=RateLimits([RateLimit(2, per=60, burst=2)], policy="close"))
    async with hypercorn(handler.asgi()) as port:
        async with open_test_client(("127.0.0.1", port)) as client:
            await client.receive()
            for n in range(3):
                await client.send(f"m{n}")
            assert [await client.receive() for _ in range(2)] == ["m0", "m1"]
            assert await client.receive_close() == (1008, "rate limit exceeded")


async def test_no_heartbeat_pings_but_idle_timeout() -> None:
    # Pings through ASGI are impossible: a heartbeat would wait for a Pong it never sees and
    # close with 1011 after pong_timeout; under the mount only the idle timeout applies
    handler = EchoHandler(heartbeat=0.1, pong_timeout=0.1, idle_timeout=1.0)
    async with hypercorn(handler.asgi()) as port:
        async with open_test_client(("127.0.0.1", port)) as client:
            await client.receive()
            start = trio.current_time()
            await trio.sleep(0.5)
            await client.send("alive")
            assert await client.receive() == "alive"
            assert await client.receive_close() == (1001, "idle timeout")
            assert 1.0 <= trio.current_time() - start < 3.0
    assert handler.stats().idle_timeouts == 1 and handler.stats().heartbeat_timeouts == 0


async def test_configure_aligns_hypercorn() -> None:
    handler = EchoHandler(heartbeat=7.0, pong_timeout=3.0, max_message_size=4096)
    config = Config()
    handler.asgi().configure(config)
    assert config.websocket_ping_interval == 7.0 and config.read_timeout == 10.0
    assert config.websocket_max_message_size == 4096
    config = Config()
    handler.asgi().configure(config, heartbeat=False)
    assert config.read_timeout is None and config.websocket_ping_interval is None
    mount = handler.asgi()
    async with hypercorn(mount, websocket_max_message_size=4096) as port:
        async with open_test_client(("127.0.0.1", port)) as client:
            await client.receive()
            await client.send(b"x" * 5000)
            assert (await client.receive_close())[0] == 1009  # Hypercorn's own


async def test_the_heartbeat_drops_a_silent_client_and_keeps_a_live_one() -> None:
    handler = EchoHandler(heartbeat=0.2, pong_timeout=0.3)
    mount = handler.asgi()
    config = Config()
    mount.configure(config)
    options = {"read_timeout": config.read_timeout, "websocket_ping_interval": 0.2}
    async with hypercorn(mount, **options) as port:
        # a live client answers Hypercorn's Pings (websockets does, in the background)
        async with connect(f"ws://127.0.0.1:{port}/") as live:
            live_id = (await first(live)).split(":")[1]
            # a silent one: the upgrade, then nothing, not even a Pong
            silent = await trio.open_tcp_stream("127.0.0.1", port)
            await silent.send_all(
                b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
            )
            with trio.fail_after(WAIT):
                while len(handler) < 2:
                    await trio.sleep(0.01)
            start = trio.current_time()
            with trio.fail_after(WAIT):
                while len(handler) > 1:
                    await trio.sleep(0.01)
            assert 0.4 <= trio.current_time() - start < 2.5  # heartbeat + pong_timeout
            await trio.sleep(1.0)  # five heartbeats on: the live one is still here
            assert list(handler.connection_ids()) == [live_id]
            await live.send("still")
            assert await live.recv() == "still"
            await silent.aclose()


async def test_a_slow_client_does_not_stall_the_others() -> None:
    handler = EchoHandler(max_queue_bytes=256 * 1024, send_timeout=None)
    payload = "x" * 16 * 1024
    async with hypercorn(handler.asgi()) as port:
        async with (
            open_test_client(("127.0.0.1", port)) as slow,
            connect(f"ws://127.0.0.1:{port}/", max_queue=None) as fast,
        ):
            await slow.receive()
            await first(fast)
            # the slow client reads nothing more; its socket, Hypercorn and then its queue fill
            received = 0
            with trio.fail_after(WAIT * 2):
                for _ in range(2000):
                    handler.send_all(payload)
                    await trio.lowlevel.checkpoint()
                    while True:
                        try:
                            with trio.move_on_after(0) as nothing:
                                await fast.recv()
                        except ConnectionClosed:
                            raise
                        if nothing.cancelled_caught:
                            break
                        received += 1
                    if handler.stats().slow_consumer_closes:
                        break
            assert handler.stats().slow_consumer_closes == 1
            with trio.fail_after(WAIT):  # the slow one is gone within its close_timeout
                while len(handler) > 1:
                    await trio.sleep(0.05)
            await fast.send("after")
            with trio.fail_after(WAIT):
                while (message := await fast.recv()) != "after":
                    assert message == payload
                    received += 1
            assert received > 0


async def test_hypercorn_shutting_down_closes_the_mounts_connections() -> None:
    handler = EchoHandler()
    shutdown = trio.Event()
    async with hypercorn(handler.asgi(), shutdown, graceful_timeout=0.5) as port:
        async with open_test_client(("127.0.0.1", port)) as client:
            await client.receive()
            # Hypercorn gives its connections graceful_timeout, then cancels them: the
            # client is told 1001, the hooks run
            shutdown.set()
            assert await client.receive_close() == (1001, "server is stopping")
    assert len(handler) == 0 and [code for _, code in handler.closed] == [1001]


async def test_mount_aclose_closes_its_connections_at_once() -> None:
    handler = EchoHandler()
    mount = handler.asgi()
    async with hypercorn(mount) as port:
        async with open_test_client(("127.0.0.1", port)) as client:
            await client.receive()
            async with trio.open_nursery() as nursery:
                nursery.start_soon(mount.aclose)
                assert (await client.receive_close())[0] == 1001
    assert len(handler) == 0 and len(handler.closed) == 1


async def test_http_gets_426_and_a_dispatcher_puts_apps_side_by_side() -> None:
    from hypercorn.middleware.dispatcher import TrioDispatcherMiddleware

    handler = EchoHandler(idle_timeout=0.5)
    mount = handler.asgi()
    async with hypercorn(mount) as port:
        assert b"HTTP/1.1 426" in await http_get(("127.0.0.1", port), "/page")
    lifespan: list[str] = []

    async def other(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while (message := await receive())["type"] != "lifespan.shutdown":
                lifespan.append(message["type"])
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        body = b"page " + scope["path"].encode()
        length = [(b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": 200, "headers": length})
        await send({"type": "http.response.body", "body": body})

    app = TrioDispatcherMiddleware({"/ws": mount, "": other})
    async with hypercorn(app) as port:
        assert (await http_get(("127.0.0.1", port), "/page")).endswith(b"page /page")
        async with open_test_client(("127.0.0.1", port), "/ws") as client:
            assert str(await client.receive()).endswith(":asgi")
            # the mount's lifespan ran through the dispatcher: its sweep fires the idle timeout
            assert await client.receive_close() == (1001, "idle timeout")
    assert lifespan == ["lifespan.startup"]


async def test_aclose_refuses_new_upgrades() -> None:
    handler = EchoHandler()
    mount = handler.asgi()
    async with hypercorn(mount) as port:
        await mount.aclose()
        with pytest.raises(UpgradeRefused) as refused:
            async with open_test_client(("127.0.0.1", port)):
                pass
        assert refused.value.status == 503 and "retry-after" in refused.value.headers


async def test_an_unreachable_backplane_stops_hypercorn_from_starting() -> None:
    pytest.importorskip("coredis", reason="the backplane needs coredis (pip install .[redis])")
    from trio_wshandler import RedisBackplane

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        redis_port = s.getsockname()[1]  # nothing listens here once closed
    backplane = RedisBackplane(f"redis://127.0.0.1:{redis_port}", connect_timeout=1)
    handler = EchoHandler(backplane=backplane)
    config = Config()
    config.bind = ["127.0.0.1:0"]
    with trio.fail_after(WAIT), pytest.raises(BaseException) as failed:
        await hypercorn_trio.serve(handler.asgi(), config, shutdown_trigger=trio.sleep_forever)
    assert "startup" in repr(failed.value).lower() or "redis" in repr(failed.value).lower()


async def test_send_timeout_ends_a_client_that_reads_nothing() -> None:
    # under "drop" its queue never closes it: the writer's send, stuck in Hypercorn's shielded
    # write, is timed by the sweep
    handler = EchoHandler(slow_consumer="drop", send_timeout=1.0, max_queue_bytes=64 * 1024)
    payload = "x" * 64 * 1024
    async with hypercorn(handler.asgi()) as port:
        async with open_test_client(("127.0.0.1", port)) as stuck:
            await stuck.receive()
            with trio.fail_after(WAIT):
                while handler.stats().send_timeouts == 0:
                    handler.send_all(payload)
                    await trio.sleep(0.01)
            with trio.fail_after(WAIT):
                while len(handler):
                    await trio.sleep(0.05)
    assert handler.closed and handler.closed[0][1] == 1013


# ---------------------------------------------------------------- Quart-Trio


def quart_app(handler: WebSocketHandler, mount: ASGIMount) -> Any:
    quart_trio = pytest.importorskip("quart_trio", reason="pip install .[asgi]")
    from quart import websocket

    app = quart_trio.QuartTrio(__name__)

    @app.route("/")
    async def index() -> str:
        return f"{len(handler)} connected"

    mount.init_quart(app, "/ws")

    @app.websocket("/vip")
    async def vip() -> Any:
        if websocket.args.get("pass") != "gold":
            return "members only", 403
        return await mount.serve_quart(websocket)

    return app


async def test_quart_trio_routes_share_the_handler() -> None:
    handler = EchoHandler(auth=TokenAuthenticator({"t1": "ann"}), idle_timeout=30)
    mount = handler.asgi(listener_id="quart")
    app = quart_app(handler, mount)
    async with trio.open_nursery() as nursery, hypercorn(app) as port:
        server = await nursery.start(serve, handler, "127.0.0.1", 0)
        address = ("127.0.0.1", port)
        async with (
            open_test_client(address, "/ws?token=t1") as quart_client,
            connect(f"ws://127.0.0.1:{server.port}/?token=t1") as native,
        ):
            greeting = await quart_client.receive()
            assert isinstance(greeting, str) and greeting.endswith(":quart")
            await first(native)
            await quart_client.send("hi")
            assert await quart_client.receive() == "hi"
            await native.send("all:both")
            assert await quart_client.receive() == "both"
            assert await native.recv() == "both"
            # the app's own HTTP route, in the same app
            assert (await http_get(address, "/")).endswith(b"2 connected")
            # the handler's refusal goes out as Quart's response
            with pytest.raises(UpgradeRefused) as refused:
                async with open_test_client(address, "/ws?token=bad"):
                    pass
            assert refused.value.status == 401
            # a route of the app's own that checks first, then hands over
            with pytest.raises(UpgradeRefused) as refused:
                async with open_test_client(address, "/vip?token=t1"):
                    pass
            assert refused.value.status == 403 and refused.value.body == b"members only"
            async with open_test_client(address, "/vip?token=t1&pass=gold") as vip:
                assert str(await vip.receive()).endswith(":quart")
                assert len(handler) == 3
            # a stop of the handler closes the Quart client like the others
            handler.stop()
            assert (await quart_client.receive_close())[0] == 1001
        nursery.cancel_scope.cancel()


# ---------------------------------------------------------------- the backplane


async def test_the_backplane_reaches_mounted_clients(redis: Any) -> None:
    pytest.importorskip("coredis", reason="the backplane needs coredis (pip install .[redis])")
    from trio_wshandler import RedisBackplane

    from .test_backplane import nodes

    prefix = f"asgi-{uuid.uuid4().hex[:8]}"
    with nodes(redis.url, 1, prefix=prefix) as [(node_port, _)]:
        backplane = RedisBackplane(
            redis.url, prefix=prefix, heartbeat=0.1, presence_ttl=1.0, command_timeout=0.5
        )
        handler = EchoHandler(backplane=backplane)
        # the lifespan starts the backplane: Hypercorn alone, no serve()
        async with hypercorn(handler.asgi()) as port:
            assert backplane.running
            async with (
                connect(f"ws://127.0.0.1:{port}/") as mounted,
                connect(f"ws://127.0.0.1:{node_port}/") as remote,
            ):
                mounted_id = (await first(mounted)).split(":")[1]
                remote_id = (await remote.recv()).split(":")[1]
                await remote.send("all:from-node")
                with trio.fail_after(WAIT):
                    assert await remote.recv() == "from-node"
                    assert await mounted.recv() == "from-node"
                await remote.send(f"one:{mounted_id}:direct")
                with trio.fail_after(WAIT):
                    assert await remote.recv() == "one:ok"
                    assert await mounted.recv() == "direct"
                await mounted.send(f"one:{remote_id}:back")
                with trio.fail_after(WAIT):
                    assert await remote.recv() == "back"
            assert handler.backplane is backplane and backplane.published >= 1
        assert not backplane.running  # stopped with the lifespan


# ---------------------------------------------------------------- Node's ws


async def test_node_ws_through_the_mount(node_client: list[str]) -> None:  # noqa: F811
    handler = InteropHandler()
    async with hypercorn(handler.asgi()) as port:
        result = await trio.run_process(
            [*node_client, f"ws://127.0.0.1:{port}/", "default", BROADCAST],
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )
    assert result.returncode == 0, (result.stdout, result.stderr)
    assert handler.broadcasts == [1]


# ---------------------------------------------------------------- a server that does not shield


class StuckTransport:
    """An ASGI server's side that takes no message (and, unlike Hypercorn, lets a cancellation
    cut a send): what ``send_timeout`` is for."""

    def __init__(self) -> None:
        self.closes: list[tuple[int, str]] = []

    async def receive(self) -> str | bytes:
        await trio.sleep_forever()
        raise AssertionError

    async def send(self, message: str | bytes) -> None:
        await trio.sleep_forever()

    async def close(self, code: int, reason: str) -> None:
        self.closes.append((code, reason))


async def test_send_timeout_ends_a_connection_whose_server_takes_nothing() -> None:
    from trio_wshandler._asgi_messages import LastDecoded, scope_request
    from trio_wshandler._mount import MountTasks
    from trio_wshandler._timers import Timers

    handler = EchoHandler(send_timeout=0.2, close_timeout=1.0)
    transport = StuckTransport()
    cx, hdr = scope_request({"type": "websocket", "path": "/"}, "memory")
    with trio.fail_after(WAIT):
        async with trio.open_nursery() as nursery:
            timers = Timers()
            await nursery.start(timers.run)
            tasks = MountTasks(timers, nursery, LastDecoded())
            await handler.start_mounted(cx, hdr, transport, tasks)  # the greeting never goes
            nursery.cancel_scope.cancel()
    assert handler.stats().send_timeouts == 1
    assert handler.closed == [(cx.id, 1013)]
    assert transport.closes == []  # a send was cut: no Close after half a message


async def test_without_a_lifespan_each_connection_has_its_own_sweep() -> None:
    handler = EchoHandler(idle_timeout=0.5)
    mount = handler.asgi()

    async def no_lifespan(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            raise RuntimeError("no lifespan here")  # Hypercorn goes on without one
        await mount(scope, receive, send)

    async with hypercorn(no_lifespan) as port:
        async with open_test_client(("127.0.0.1", port)) as client:
            await client.receive()
            assert await client.receive_close() == (1001, "idle timeout")


async def test_a_quart_client_that_vanishes() -> None:
    handler = EchoHandler()
    app = quart_app(handler, handler.asgi())
    async with hypercorn(app) as port:
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        await stream.send_all(
            b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
        with trio.fail_after(WAIT):
            while len(handler) == 0:
                await trio.sleep(0.01)
        stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        await stream.aclose()  # a reset, no Close
        with trio.fail_after(WAIT):
            while len(handler):
                await trio.sleep(0.01)
    assert [code for _, code in handler.closed] == [1006]


async def test_a_slow_consumers_close_comes_after_what_it_was_sent() -> None:
    # the client reads nothing for a while: its queue overflows (1013), the connection ends
    # within close_timeout while Hypercorn still holds a send; the Close goes after that send
    handler = EchoHandler(max_queue_bytes=128 * 1024, send_timeout=None, close_timeout=0.5)
    payload = "y" * 32 * 1024
    async with hypercorn(handler.asgi()) as port:
        async with open_test_client(("127.0.0.1", port), timeout=WAIT) as client:
            await client.receive()
            with trio.fail_after(WAIT):
                while handler.stats().slow_consumer_closes == 0:
                    handler.send_all(payload)
                    await trio.sleep(0.005)
                while len(handler):
                    await trio.sleep(0.05)
            assert handler.closed[0][1] == 1013
            received = 0
            with pytest.raises(TestClientClosed) as closed:
                while True:
                    assert await client.receive() == payload
                    received += 1
            assert (closed.value.code, closed.value.reason) == (1013, "slow consumer")
            assert received > 0


# ---------------------------------------------------------------- Quart: a client that leaves


class Slow(Echo):
    """Each message takes a moment to handle, and is recorded when done."""

    handled: list[str | bytes] = []

    async def got_message(self, message: str | bytes) -> None:
        await trio.sleep(0.05)
        Slow.handled.append(message)


async def test_quart_delivers_what_a_leaving_client_sent() -> None:
    class SlowHandler(EchoHandler):
        def get_connection(self, cx: CallContext, hdr: Request, cid: str) -> WebSocketConnection:
            return Slow(self, cx, hdr, cid)

    Slow.handled = []
    handler = SlowHandler()
    app = quart_app(handler, handler.asgi())
    async with hypercorn(app) as port:
        async with open_test_client(("127.0.0.1", port), "/ws") as client:
            await client.receive()
            for n in range(5):
                await client.send(f"m{n}")
            await client.send(b"")  # (Quart hands an empty Binary over as None)
        with trio.fail_after(WAIT):
            while len(handler):
                await trio.sleep(0.01)
    assert Slow.handled == ["m0", "m1", "m2", "m3", "m4", b""]  # none lost, no hook cut short


async def test_init_quart_for_two_rules_and_two_mounts() -> None:
    quart_trio = pytest.importorskip("quart_trio", reason="pip install .[asgi]")
    handler = EchoHandler()
    app = quart_trio.QuartTrio(__name__)
    first_mount, second_mount = handler.asgi(), handler.asgi()  # both "asgi"
    first_mount.init_quart(app, "/a")
    first_mount.init_quart(app, "/b")
    second_mount.init_quart(app, "/c")
    async with hypercorn(app) as port:
        for path in ("/a", "/b", "/c"):
            async with open_test_client(("127.0.0.1", port), path) as client:
                assert str(await client.receive()).endswith(":asgi")
                await client.send(path)
                assert await client.receive() == path


async def test_a_failed_accept_frees_the_cap_slot() -> None:
    class Odd(EchoHandler):
        async def handle_request(self, cx: CallContext, hdr: Request, body: bytes) -> Any:
            response = await super().handle_request(cx, hdr, body)
            if hdr.path == "/bad":  # a header Hypercorn cannot send: the accept fails
                return response.with_headers(**{"X-Bad": "caf\u00e9\u2603"})
            return response

    handler = Odd(caps=ConnectionCaps(max_per_address=1))
    async with hypercorn(handler.asgi()) as port:
        with pytest.raises(UpgradeRefused) as refused:
            async with open_test_client(("127.0.0.1", port), "/bad"):
                pass
        assert refused.value.status == 500
        async with open_test_client(("127.0.0.1", port), "/good") as client:
            assert str(await client.receive()).startswith("id:")


async def test_hypercorn_stops_while_a_client_reads_nothing() -> None:
    # the writer is held in Hypercorn's shielded write: it must not hold the app's task, which
    # Hypercorn's shutdown waits for before it closes the socket that would free the write
    handler = EchoHandler(send_timeout=0.5, close_timeout=0.5, slow_consumer="drop")
    shutdown = trio.Event()
    async with hypercorn(handler.asgi(), shutdown, graceful_timeout=0.5) as port:
        sock = trio.socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        await sock.connect(("127.0.0.1", port))
        await sock.send(
            b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
        with trio.fail_after(WAIT):
            while len(handler) == 0:
                await trio.sleep(0.01)
            while handler.stats().send_timeouts == 0:  # it reads nothing: a send is held
                handler.send_all("z" * 65536)
                await trio.sleep(0.01)
            while len(handler):
                await trio.sleep(0.01)
        stopping = trio.current_time()
        shutdown.set()
    assert trio.current_time() - stopping < 3  # Hypercorn stopped all the same
    sock.close()
    assert [code for _, code in handler.closed] == [1013]
