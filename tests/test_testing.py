"""``trio_wshandler.testing`` (issue #21): the test client a user tests a handler with, and its
pytest-trio fixture ``ws_client`` (a pytest plugin installed with the package)."""

from __future__ import annotations

import base64
from typing import Any

import pytest
import trio

from trio_wshandler import BasicAuthenticator, WebSocketConnection, WebSocketHandler, serve
from trio_wshandler.testing import TestClient, TestClientClosed, UpgradeRefused, open_test_client


class Commands(WebSocketConnection):
    """Echoes; "bye" closes with 4001; "twice" answers twice; "big" sends 100 KiB."""

    async def got_message(self, message: str | bytes) -> None:
        if message == "bye":
            self.stop(4001, "bye")
        elif message == "twice":
            self.send("one")
            self.send(b"two")
        elif message == "big":
            self.send("x" * 100_000)
        else:
            self.send(message)


class Handler(WebSocketHandler):
    def get_connection(self, cx: Any, hdr: Any, cid: str) -> WebSocketConnection:
        return Commands(self, cx, hdr, cid)


async def test_a_handler_is_served_for_the_block() -> None:
    handler = Handler()
    async with open_test_client(handler) as client:
        await client.send("hello")
        assert await client.receive() == "hello"
        await client.send(b"\x00\x01")
        assert await client.receive() == b"\x00\x01"
        await client.send("twice")
        assert [await client.receive(), await client.receive()] == ["one", b"two"]
        assert len(handler.connection_ids()) == 1
        assert await client.ping(b"are you there") < 5
    with trio.fail_after(5):  # closed (1000) at the end of the block, the handler stopped
        while handler.connection_ids():
            await trio.sleep(0.01)
    assert handler.stats().close_codes_received == {1000: 1}


async def test_the_server_closing() -> None:
    async with open_test_client(Handler()) as client:
        await client.send("bye")
        with pytest.raises(TestClientClosed) as closed:
            await client.receive()
        assert (closed.value.code, closed.value.reason) == (4001, "bye")
        assert await client.receive_close() == (4001, "bye")
        assert client.closed and client.close_code == 4001
    async with open_test_client(Handler()) as client:
        assert await client.close(1000, "done") == (1000, "done")  # the server echoes it


async def test_a_refused_upgrade_has_status_headers_and_body() -> None:
    handler = Handler(origins=["https://app.example"], require_origin=True)
    with pytest.raises(UpgradeRefused) as refused:
        async with open_test_client(handler):
            pass
    assert refused.value.status == 403
    assert refused.value.headers["content-type"].startswith("text/plain")
    assert b"origin" in refused.value.body.lower()
    async with open_test_client(handler, headers={"Origin": "https://app.example"}) as client:
        await client.send("in")
        assert await client.receive() == "in"


async def test_subprotocols_and_compression() -> None:
    handler = Handler(subprotocols=["chat.v2", "chat.v1"])
    async with open_test_client(
        handler, "/room", subprotocols=["chat.v1"], compression=True
    ) as client:
        assert client.subprotocol == "chat.v1" and client.compressed
        await client.send("big")
        assert await client.receive() == "x" * 100_000
    assert handler.stats().bytes_sent < 10_000  # it went compressed


async def test_a_running_server() -> None:
    handler = Handler()
    async with trio.open_nursery() as nursery:
        server = await nursery.start(serve, {"/ws": handler}, "127.0.0.1", 0)
        async with open_test_client(server, "/ws") as client:
            await client.send("via the server")
            assert await client.receive() == "via the server"
        with pytest.raises(UpgradeRefused) as refused:
            async with open_test_client(server, "/elsewhere"):
                pass
        assert refused.value.status == 404
        nursery.cancel_scope.cancel()


async def test_a_receive_that_never_comes_fails_in_time() -> None:
    async with open_test_client(Handler(), timeout=0.2) as client:
        with pytest.raises(trio.TooSlowError):
            await client.receive()


async def test_the_fixture(ws_client: Any, nursery: trio.Nursery) -> None:
    """The pytest plugin's fixture: clients without an ``async with``, closed after the test."""
    handler = Handler()
    server = await nursery.start(serve, handler, "127.0.0.1", 0)
    first: TestClient = await ws_client(server)
    second: TestClient = await ws_client(server)
    await first.send("a")
    await second.send("b")
    assert (await first.receive(), await second.receive()) == ("a", "b")
    assert len(handler.connection_ids()) == 2


async def test_an_authenticator_refuses_with_401() -> None:
    handler = Handler(BasicAuthenticator({"ann": "secret"}))
    with pytest.raises(UpgradeRefused) as refused:
        async with open_test_client(handler):
            pass
    assert refused.value.status == 401 and "www-authenticate" in refused.value.headers
    token = base64.b64encode(b"ann:secret").decode()
    async with open_test_client(handler, headers={"Authorization": f"Basic {token}"}) as client:
        await client.send("in")
        assert await client.receive() == "in"
