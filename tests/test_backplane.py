"""The Redis backplane, with a real redis-server and real server processes of this library.

Each test starts its own redis-server (``redis_server.py``) and two or three processes of
``backplane_node.py`` (real processes, real sockets), and drives them through their clients
(websockets).  Skipped, saying why, only when no redis-server binary can be found.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import trio
from websockets.exceptions import ConnectionClosed
from websockets.trio.client import connect

from trio_wshandler import BackplaneError, RedisBackplane, WebSocketHandler, serve

from .redis_server import RedisServer

pytest.importorskip("coredis", reason="the backplane needs coredis (pip install .[redis])")

NODE = Path(__file__).with_name("backplane_node.py")
WAIT = 10  # no wait here is longer


@contextmanager
def nodes(
    url: str, count: int, script: Path = NODE, prefix: str | None = None
) -> Iterator[list[tuple[int, subprocess.Popen[str]]]]:
    """``count`` processes of ``script`` (backplane_node.py) on one prefix (a new one unless
    given): [(port, process)]."""
    prefix = prefix or f"test-{uuid.uuid4().hex[:8]}"
    started: list[tuple[int, subprocess.Popen[str]]] = []
    try:
        for _ in range(count):
            process = subprocess.Popen(
                [sys.executable, str(script), url, prefix],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                text=True,
                env={**os.environ, "PYTHONPATH": str(Path(__file__).parent.parent)},
            )
            assert process.stdout is not None
            line = process.stdout.readline()
            assert line.startswith("port "), line
            started.append((int(line.split()[1]), process))
        yield started
    finally:
        for _, process in started:
            if process.poll() is None:
                process.send_signal(signal.SIGINT)
        for _, process in started:
            try:
                process.wait(5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


class Client:
    def __init__(self, ws: Any, cid: str) -> None:
        self.ws = ws
        self.id = cid

    async def recv(self, timeout: float = WAIT) -> str:
        with trio.fail_after(timeout):
            message = await self.ws.recv()
        assert isinstance(message, str)
        return message

    async def nothing_more(self) -> None:
        """Nothing else arrives (within a moment: a duplicate would have by then)."""
        with trio.move_on_after(0.3):
            extra = await self.ws.recv()
            raise AssertionError(f"unexpected message {extra!r}")

    async def ask(self, request: str, prefix: str) -> str:
        await self.ws.send(request)
        while True:
            answer = await self.recv()
            if answer.startswith(prefix):
                return answer[len(prefix) :]


@asynccontextmanager
async def client(port: int) -> AsyncIterator[Client]:
    async with connect(f"ws://127.0.0.1:{port}/") as ws:
        hello = await ws.recv()
        assert isinstance(hello, str) and hello.startswith("id:")
        yield Client(ws, hello[3:])


async def eventually(check: Any, timeout: float = WAIT) -> Any:
    with trio.fail_after(timeout):
        while True:
            result = await check()
            if result:
                return result
            await trio.sleep(0.05)


async def test_send_all_publish_send_one_stop_one_across_processes(redis: RedisServer) -> None:
    with nodes(redis.url, 3) as cluster:
        ports = [port for port, _ in cluster]
        async with (
            client(ports[0]) as a0,
            client(ports[0]) as a1,
            client(ports[1]) as b0,
            client(ports[1]) as b1,
            client(ports[2]) as c0,
            client(ports[2]) as c1,
        ):
            everyone = [a0, a1, b0, b1, c0, c1]
            await eventually(lambda: _count_is(a0, "6"))  # presence goes out asynchronously
            # send_all: every client of every process, once
            await a0.ws.send("all:hello")
            for each in everyone:
                assert await each.recv() == "hello"
            # publish: the topic's subscribers in every process, and nobody else
            for each in (a1, b0, c1):
                await each.ws.send("sub:room")
            for each in (a1, b0, c1):
                await eventually(lambda each=each: _subscribed(each, "room"))
            await b1.ws.send("pub:room:hi")
            for each in (a1, b0, c1):
                assert await each.recv() == "hi"
            # send_one across processes, and to an id nobody holds
            await eventually(lambda: _sent_one(a0, c0, "direct"))
            assert await a0.ask("one:NO-SUCH-ID:x", "one:") == "unknown:NO-SUCH-ID"
            # stop_one across processes
            assert await a0.ask(f"stop:{b1.id}", "stop:") == "ok"
            with pytest.raises(ConnectionClosed) as closed:
                await b1.recv()
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 4000
            await eventually(lambda: _count_is(a0, "5"))
            for each in (a0, a1, b0, c0, c1):
                await each.nothing_more()
    # the published / received counters are checked in the outage test


async def _subscribed(asker: Client, topic: str) -> bool:
    """The topic's Redis subscription of the asker's process is in force."""
    return await asker.ask(f"subscribed:{topic}", "subscribed:") == "True"


async def _count_is(asker: Client, expected: str) -> bool:
    return await asker.ask("count", "count:") == expected


async def test_a_killed_process_vanishes_within_the_presence_bound(redis: RedisServer) -> None:
    with nodes(redis.url, 2) as cluster:
        (port0, _), (port1, process1) = cluster
        async with client(port0) as a:
            async with client(port1) as b:
                await eventually(lambda: _sent_one(a, b, "before"))
                await eventually(lambda: _count_is(a, "2"))
                process1.send_signal(signal.SIGKILL)  # no goodbye
                process1.wait(5)
            started = trio.current_time()
            # presence_ttl 1 s + heartbeat 0.1 s: within about 1.1 s (1 s of slack)
            await eventually(lambda: _unknown(a, b.id), timeout=4)
            await eventually(lambda: _count_is(a, "1"), timeout=4)
            assert trio.current_time() - started < 2.1


async def _sent_one(sender: Client, receiver: Client, text: str) -> bool:
    """send_one reached ``receiver`` (False while the sender's process does not know it yet:
    it learns of a new connection in another process within one round trip to Redis)."""
    if await sender.ask(f"one:{receiver.id}:{text}", "one:") != "ok":
        return False
    return await _received(receiver, text)


async def _unknown(asker: Client, cid: str) -> bool:
    return await asker.ask(f"one:{cid}:x", "one:") == f"unknown:{cid}"


async def test_redis_restart_mid_run(redis: RedisServer) -> None:
    """Local delivery goes on while Redis is down; what could not cross is counted as lost;
    delivery across processes resumes once it is back; nothing crashes."""
    with nodes(redis.url, 2) as cluster:
        (port0, process0), (port1, process1) = cluster
        async with client(port0) as a, client(port1) as b:
            await a.ws.send("all:one")
            assert await a.recv() == "one" and await b.recv() == "one"
            redis.stop()
            await a.ws.send("all:during")
            assert await a.recv() == "during"  # local delivery goes on
            await trio.sleep(0.3)
            redis.start()

            async def crossed() -> bool:
                await a.ws.send("all:after")
                with trio.move_on_after(0.2):
                    return await b.recv() == "after"
                return False

            await eventually(crossed)
            stats = await a.ask("stats", "stats:")
            assert '"lost": 0' not in stats and '"reconnects": 0' not in stats, stats
            await eventually(lambda: _sent_one(a, b, "direct"))  # presence was rewritten
        assert process0.poll() is None and process1.poll() is None


async def _received(receiver: Client, text: str) -> bool:
    with trio.move_on_after(0.2):
        while True:
            if await receiver.recv() == text:
                return True
    return False


async def test_unreachable_redis_fails_serve_at_once_without_the_password() -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens here once closed
    url = f"redis://:s3cret-pass@127.0.0.1:{port}/0"
    handler = WebSocketHandler(backplane=RedisBackplane(url, connect_timeout=2))
    started = trio.current_time()
    with pytest.raises(BackplaneError) as failed:
        await serve(handler, "127.0.0.1", 0)  # raised as it is, before anything runs
    message = str(failed.value)
    assert f"127.0.0.1:{port}" in message and "s3cret" not in message, message
    assert "***" in message
    assert trio.current_time() - started < 3


async def test_a_password_protected_redis(redis: RedisServer) -> None:
    redis.stop()
    secured = RedisServer(redis.binary, password="pw-1234")
    secured.start()
    try:
        handler = WebSocketHandler(backplane=RedisBackplane(secured.url))
        async with trio.open_nursery() as nursery:
            await nursery.start(serve, handler, "127.0.0.1", 0)
            assert await handler.cluster_connection_count() == 0
            nursery.cancel_scope.cancel()
        wrong = secured.url.replace("pw-1234", "wrong-pw")
        other = WebSocketHandler(backplane=RedisBackplane(wrong, connect_timeout=2))
        with pytest.raises(BackplaneError) as failed:
            await serve(other, "127.0.0.1", 0)
        assert "wrong-pw" not in str(failed.value)
    finally:
        secured.stop()


async def test_a_frozen_redis_is_declared_lost_and_found_again(redis: RedisServer) -> None:
    """A Redis that stops answering without closing anything (SIGSTOP: a partition, a frozen
    host) is declared lost after command_timeout, not after TCP gives up minutes later."""
    with nodes(redis.url, 2) as cluster:
        (port0, _), (port1, _) = cluster
        async with client(port0) as a, client(port1) as b:
            await a.ws.send("all:one")
            assert await a.recv() == "one" and await b.recv() == "one"
            assert redis.process is not None
            redis.process.send_signal(signal.SIGSTOP)
            try:
                await trio.sleep(1.5)  # command_timeout is 0.5 s
                await a.ws.send("all:frozen")
                assert await a.recv() == "frozen"  # local delivery goes on
                stats = await a.ask("stats", "stats:")
                assert '"lost": 0' not in stats, stats
            finally:
                redis.process.send_signal(signal.SIGCONT)

            async def crossed() -> bool:
                await a.ws.send("all:after")
                assert await a.recv() == "after"
                return await _received(b, "after")

            await eventually(crossed)


def test_topic_names_must_be_valid_unicode() -> None:
    handler = WebSocketHandler()
    with pytest.raises(ValueError, match="surrogate"):
        handler.publish("\ud800", "x")


def test_passwords_are_redacted_and_options_checked() -> None:
    from trio_wshandler._backplane import redact_url

    assert redact_url("redis://:pw@h:6379/0") == "redis://:***@h:6379/0"
    assert redact_url("rediss://user:pw@h/0?password=pw2&db=1") == (
        "rediss://user:***@h/0?password=***&db=1"
    )
    with pytest.raises(TypeError):
        RedisBackplane(batch=2.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        RedisBackplane(heartbeat=1, presence_ttl=2, command_timeout=1.5)
    with pytest.raises(ValueError):
        RedisBackplane("http://h/0")


async def test_hostile_messages_on_the_channels_are_refused(redis: RedisServer) -> None:
    """Whoever can publish on Redis cannot make a process send a Close frame (only Text and
    Binary cross) nor stop a connection with a code nobody may send."""
    import coredis

    from trio_wshandler._backplane_wire import Envelope, Kind, encode

    handler = WebSocketHandler(backplane=RedisBackplane(redis.url, prefix="hostile"))
    async with trio.open_nursery() as nursery:
        server = await nursery.start(serve, handler, "127.0.0.1", 0)
        async with connect(f"ws://127.0.0.1:{server.port}/") as ws:
            await eventually(lambda: _true(len(handler) == 1))
            [connection] = list(handler.registry)
            other = "0" * 26
            hostile = [
                ("hostile:all", Envelope(Kind.ALL, other, 8, "", b"\x03\xe8injected")),
                ("hostile:all", Envelope(Kind.ALL, other, 9, "", b"ping")),
                (
                    f"hostile:node:{handler.backplane.node_id}",  # type: ignore[union-attr]
                    Envelope(Kind.STOP, other, 1005, connection.id, b"no"),
                ),
                ("hostile:all", Envelope(Kind.ALL, other, 1, "", b"fine")),
            ]
            redis_client = coredis.Redis.from_url(redis.url)
            async with redis_client:
                for channel, envelope in hostile:
                    await redis_client.publish(channel, encode(envelope))
            with trio.fail_after(WAIT):
                assert await ws.recv() == "fine"  # and nothing before it
            assert connection.is_open
        nursery.cancel_scope.cancel()


async def _true(value: bool) -> bool:
    return value


async def test_rediss_with_a_private_ca(redis: RedisServer) -> None:
    """rediss:// through real TLS: a TLS terminator (this test's, with a trustme CA) in front
    of the redis-server, and the backplane's ssl_context trusting that CA."""
    import ssl

    import trustme

    ca = trustme.CA()
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server_context)
    client_context = ssl.create_default_context()
    ca.configure_trust(client_context)

    async def pump(source: trio.abc.Stream, sink: trio.abc.Stream) -> None:
        try:
            while data := await source.receive_some(65536):
                await sink.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass

    async def terminate(stream: trio.SSLStream[trio.SocketStream]) -> None:
        async with stream, await trio.open_tcp_stream("127.0.0.1", redis.port) as plain:
            async with trio.open_nursery() as pumps:
                pumps.start_soon(pump, stream, plain)
                await pump(plain, stream)
                pumps.cancel_scope.cancel()

    async with trio.open_nursery() as nursery:
        [listener] = await nursery.start(
            partial(trio.serve_ssl_over_tcp, terminate, 0, server_context, host="127.0.0.1")
        )
        port = listener.transport_listener.socket.getsockname()[1]
        url = f"rediss://127.0.0.1:{port}/0"
        handler = WebSocketHandler(backplane=RedisBackplane(url, ssl_context=client_context))
        server = await nursery.start(serve, handler, "127.0.0.1", 0)
        async with connect(f"ws://127.0.0.1:{server.port}/"):
            await eventually(lambda: _count(handler, 1))
        untrusted = WebSocketHandler(backplane=RedisBackplane(url, connect_timeout=2))
        with pytest.raises(BackplaneError):  # the system's CAs do not know ours
            await serve(untrusted, "127.0.0.1", 0)
        nursery.cancel_scope.cancel()


async def _count(handler: WebSocketHandler, expected: int) -> bool:
    return await handler.cluster_connection_count() == expected
