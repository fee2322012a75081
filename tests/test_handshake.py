"""The HTTP side: upgrade validation, limits, routing, and handlers that add headers."""

from __future__ import annotations

import trio
import trio_websocket
import websockets
from websockets.trio.client import connect

from trio_wshandler import HttpLimits, Response, WebSocketHandler
from trio_wshandler._demo import PageHandler
from trio_wshandler.codec import response_key

from .conftest import RawClient, raw_http, read_response, running, upgrade_request, ws_url


async def test_upgrade_returns_101_with_accept_key() -> None:
    async with running(WebSocketHandler()) as server:
        key = "dGhlIHNhbXBsZSBub25jZQ=="
        stream = await trio.open_tcp_stream("127.0.0.1", server.port)
        async with stream:
            await stream.send_all(upgrade_request(Sec_WebSocket_Key=key))
            client = RawClient(stream)
            await client.read_head()
        assert client.status == 101
        assert client.headers["upgrade"].lower() == "websocket"
        assert client.headers["connection"].lower() == "upgrade"
        assert client.headers["sec-websocket-accept"] == response_key(key)


async def test_missing_key_is_400_saying_so() -> None:
    async with running(WebSocketHandler()) as server:
        status, _, body = await raw_http(server.port, upgrade_request(Sec_WebSocket_Key=None))
    assert status == 400
    assert b"Sec-WebSocket-Key" in body


async def test_invalid_key_is_400() -> None:
    async with running(WebSocketHandler()) as server:
        status, _, body = await raw_http(server.port, upgrade_request(Sec_WebSocket_Key="short"))
    assert status == 400 and b"invalid Sec-WebSocket-Key" in body


async def test_wrong_version_is_426_naming_13() -> None:
    async with running(WebSocketHandler()) as server:
        status, headers, _ = await raw_http(server.port, upgrade_request(Sec_WebSocket_Version="8"))
        missing, _, _ = await raw_http(server.port, upgrade_request(Sec_WebSocket_Version=None))
    assert status == 426 and headers["sec-websocket-version"] == "13"
    assert missing == 426


async def test_post_is_405_and_http10_is_400() -> None:
    async with running(WebSocketHandler()) as server:
        post, headers, _ = await raw_http(
            server.port, upgrade_request(method="POST", Content_Length="0")
        )
        old, _, body = await raw_http(server.port, upgrade_request(version="HTTP/1.0"))
    assert post == 405 and headers["allow"] == "GET, HEAD"
    assert old == 400 and b"HTTP/1.1" in body


async def test_plain_get_without_upgrade_is_426() -> None:
    async with running(WebSocketHandler()) as server:
        status, headers, _ = await raw_http(server.port, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        no_conn, _, _ = await raw_http(server.port, upgrade_request(Connection="keep-alive"))
    assert status == 426 and headers["upgrade"] == "websocket"
    assert no_conn == 400


async def test_not_http_is_400_and_closed() -> None:
    async with running(WebSocketHandler()) as server:
        status, _, _ = await raw_http(server.port, b"\x16\x03\x01\x00\xa5 hello there\r\n\r\n")
    assert status == 400


async def test_header_limits_give_431() -> None:
    limits = HttpLimits(max_header_bytes=4096, max_headers=20)
    async with running(WebSocketHandler(), limits=limits) as server:
        big, _, _ = await raw_http(server.port, upgrade_request(X_Big="a" * 8000))
        many = upgrade_request(**{f"X_H{i}": "v" for i in range(30)})
        too_many, _, _ = await raw_http(server.port, many)
        ok_stream = await trio.open_tcp_stream("127.0.0.1", server.port)
        async with ok_stream:
            await ok_stream.send_all(upgrade_request())
            ok, _, _ = await read_response(ok_stream)
    assert big == 431
    assert too_many == 431
    assert ok == 101


async def test_slowloris_times_out_with_408() -> None:
    limits = HttpLimits(handshake_timeout=0.3)
    async with running(WebSocketHandler(), limits=limits) as server:
        stream = await trio.open_tcp_stream("127.0.0.1", server.port)
        async with stream:
            await stream.send_all(b"GET / HTTP/1.1\r\nHost: x\r\n")  # never finishes
            with trio.fail_after(5):
                status, _, _ = await read_response(stream)
                assert await stream.receive_some(10) == b""  # and then closed
    assert status == 408


async def test_routing_by_path_and_404() -> None:
    page = PageHandler("<h1>hi</h1>")
    routes = {"/": page, "/ws": WebSocketHandler()}
    async with running(routes) as server:
        status, headers, body = await raw_http(
            server.port, b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        missing, _, _ = await raw_http(
            server.port, b"GET /nope HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        async with trio_websocket.open_websocket_url(ws_url(server, "/ws")) as ws:
            assert not ws.closed
    assert (
        status == 200 and body == b"<h1>hi</h1>" and headers["content-type"].startswith("text/html")
    )
    assert missing == 404


async def test_keep_alive_serves_several_requests() -> None:
    async with running({"/": PageHandler("x")}) as server:
        stream = await trio.open_tcp_stream("127.0.0.1", server.port)
        async with stream:
            for _ in range(3):
                await stream.send_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
                status, _, body = await read_response(stream)
                assert (status, body) == (200, b"x")


class HeaderHandler(WebSocketHandler):
    """A subclass that adds a check and a header on top of the default validation."""

    async def handle_request(self, cx, hdr, body):  # type: ignore[no-untyped-def]
        if hdr.query.get("room") == "closed":
            return Response(403, "room closed")
        response = await super().handle_request(cx, hdr, body)
        return response.with_headers(X_Room=hdr.query.get("room", "lobby"))


async def test_subclass_adds_header_and_check() -> None:
    async with running(HeaderHandler()) as server:
        async with connect(ws_url(server, "/?room=blue")) as ws:
            assert ws.response.headers["X-Room"] == "blue"
        status, _, body = await raw_http(server.port, upgrade_request("/?room=closed"))
    assert status == 403 and body == b"room closed"


async def test_subprotocol_negotiation() -> None:
    async with running(WebSocketHandler(subprotocols=["chat.v2", "chat.v1"])) as server:
        async with connect(ws_url(server), subprotocols=["chat.v1", "chat.v2"]) as ws:  # type: ignore[list-item]
            assert ws.subprotocol == "chat.v2"
        async with connect(ws_url(server)) as ws:
            assert ws.subprotocol is None


async def test_handler_crash_is_500_not_101() -> None:
    class Broken(WebSocketHandler):
        async def handle_request(self, cx, hdr, body):  # type: ignore[no-untyped-def]
            raise RuntimeError("boom")

    async with running(Broken()) as server:
        status, _, _ = await raw_http(server.port, upgrade_request())
    assert status == 500


async def test_trailing_bytes_after_request_are_not_lost() -> None:
    """A client may pipeline its first frame right behind the request head."""
    from .conftest import RecordingHandler, client_frame

    handler = RecordingHandler()
    async with running(handler) as server:
        stream = await trio.open_tcp_stream("127.0.0.1", server.port)
        async with stream:
            await stream.send_all(upgrade_request() + client_frame(b"early", 1))
            [conn] = await handler.wait_connections(1)
            with trio.fail_after(5):
                while not conn.messages:
                    await conn.got.wait()
    assert conn.messages == ["early"]


async def test_websockets_client_rejects_nothing_unusual() -> None:
    """websockets validates the whole handshake response strictly."""
    async with running(WebSocketHandler()) as server:
        async with connect(ws_url(server)) as ws:
            assert ws.response.status_code == 101
        try:
            async with connect(
                f"ws://127.0.0.1:{server.port}/", additional_headers={"Sec-WebSocket-Version": "8"}
            ):
                pass
        except websockets.exceptions.InvalidHandshake:
            pass


async def test_request_body_over_the_limit_is_413() -> None:
    limits = HttpLimits(max_body_bytes=1000)
    async with running({"/": PageHandler("x")}, limits=limits) as server:
        body = b"b" * 5000
        head = f"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n\r\n".encode()
        status, _, text = await raw_http(server.port, head + body)
        small, _, _ = await raw_http(
            server.port,
            b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nConnection: close\r\n\r\nabc",
        )
    assert status == 413 and b"1000" in text
    assert small == 405  # within the limit, it reaches the handler (which serves GET only)
