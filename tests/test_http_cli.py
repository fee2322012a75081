"""What real clients and a new user run into: HEAD, reason phrases, error bodies, TLS mix-ups,
the command line (signals, --help, wss, logging), and documented behaviour checked."""

from __future__ import annotations

import logging
import signal
import ssl
import subprocess
import sys
import threading
from typing import Any

import pytest
import trio
import trustme
from websockets.exceptions import ConnectionClosed
from websockets.trio.client import connect

import trio_wshandler
from trio_wshandler import ConnectionClosedError, WebSocketConnection, WebSocketHandler
from trio_wshandler._demo import EchoHandler, chat_page
from trio_wshandler._ids import new_connection_id

from .conftest import (
    TIMEOUT,
    RawClient,
    RecordingHandler,
    cli,
    cli_process,
    running,
)


async def exchange(port: int, request: bytes, *, tls: ssl.SSLContext | None = None) -> bytes:
    """Send ``request``, read until the server closes (or 2 s pass): everything it sent."""
    stream: trio.abc.Stream = await trio.open_tcp_stream("127.0.0.1", port)
    if tls is not None:
        stream = trio.SSLStream(stream, tls, server_hostname="127.0.0.1")
    received = b""
    async with stream:
        await stream.send_all(request)
        with trio.move_on_after(2):
            while True:
                try:
                    chunk = await stream.receive_some(65536)
                except trio.BrokenResourceError:
                    break
                if not chunk:
                    break
                received += chunk
    return received


def head_and_body(response: bytes) -> tuple[str, dict[str, str], bytes]:
    head, _, body = response.partition(b"\r\n\r\n")
    status, *lines = head.decode("latin-1").split("\r\n")
    return status, dict(line.split(": ", 1) for line in lines), body


def request(method: str, path: str) -> bytes:
    return f"{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode()


# ---------------------------------------------------------------- HTTP answers


async def test_head_gets_the_headers_of_get_and_no_body() -> None:
    routes = {"/": chat_page(), "/ws": WebSocketHandler()}
    async with running(routes) as server:
        for path, status in (
            ("/", "200 OK"),
            ("/ws", "426 Upgrade Required"),
            ("/nope", "404 Not Found"),
        ):
            get_status, get_headers, get_body = head_and_body(
                await exchange(server.port, request("GET", path))
            )
            head = await exchange(server.port, request("HEAD", path))
            head_status, head_headers, head_body = head_and_body(head)
            assert get_status == head_status == f"HTTP/1.1 {status}", path
            assert head_headers == get_headers, path
            assert int(head_headers["Content-Length"]) == len(get_body) > 0
            assert head_body == b"", path


@pytest.mark.parametrize(
    ("raw", "status"),
    [
        (request("GET", "/"), "HTTP/1.1 426 Upgrade Required"),
        (request("POST", "/"), "HTTP/1.1 405 Method Not Allowed"),
        (request("GET", "/missing"), "HTTP/1.1 404 Not Found"),
        (b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n\r\n", "HTTP/1.1 400 Bad Request"),
    ],
)
async def test_every_status_has_its_reason_phrase(raw: bytes, status: str) -> None:
    async with running({"/": WebSocketHandler()}) as server:
        response = await exchange(server.port, raw)
    line, headers, _ = head_and_body(response)
    assert line == status
    assert all(name[0].isupper() for name in headers), headers  # one case for every name


async def test_a_malformed_request_line_is_not_echoed(caplog: Any) -> None:
    caplog.set_level(logging.DEBUG, "trio_wshandler")
    async with running(WebSocketHandler()) as server:
        response = await exchange(server.port, b"hello <script>alert(1)</script>\r\n\r\n")
    line, _, body = head_and_body(response)
    assert line == "HTTP/1.1 400 Bad Request"
    assert body == b"bad request: malformed HTTP/1.1 request\n"
    assert "refused with 400" in caplog.text and "127.0.0.1" in caplog.text


@pytest.fixture
def tls() -> tuple[ssl.SSLContext, ssl.SSLContext, trustme.CA]:
    ca = trustme.CA()
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server_context)
    client_context = ssl.create_default_context()
    ca.configure_trust(client_context)
    return server_context, client_context, ca


async def test_plain_http_to_a_tls_listener_gets_a_plain_400(tls: Any, caplog: Any) -> None:
    caplog.set_level(logging.DEBUG, "trio_wshandler")
    server_context, _, _ = tls
    async with running(WebSocketHandler(), ssl_context=server_context) as server:
        response = await exchange(server.port, request("GET", "/"))
    line, _, body = head_and_body(response)
    assert line == "HTTP/1.1 400 Bad Request"
    assert b"TLS" in body
    assert "plain HTTP on a TLS" in caplog.text


async def test_tls_to_a_plain_listener_is_closed_and_logged(tls: Any, caplog: Any) -> None:
    caplog.set_level(logging.DEBUG, "trio_wshandler")
    _, client_context, _ = tls
    async with running(WebSocketHandler()) as server:
        with pytest.raises(trio.BrokenResourceError):
            await exchange(server.port, request("GET", "/"), tls=client_context)
    assert "a TLS handshake on a plain" in caplog.text


def test_the_chat_page_has_an_icon() -> None:
    assert 'rel="icon"' in chat_page()._html.decode()


# ---------------------------------------------------------------- the command line


async def test_sigint_and_sigterm_stop_gracefully(tmp_path: Any) -> None:
    for signum in (signal.SIGINT, signal.SIGTERM):
        log = tmp_path / f"{signum}.log"
        with log.open("wb") as stderr:
            async with cli_process("demo", stderr=stderr) as (process, port):
                async with connect(f"ws://127.0.0.1:{port}/ws") as ws:
                    await ws.recv()  # welcome
                    start = trio.current_time()
                    process.send_signal(signum)
                    with pytest.raises(ConnectionClosed) as closed:
                        while True:
                            await ws.recv()
                    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1001
                with trio.fail_after(5 + 1 + 1):  # close_timeout + margin
                    assert await process.wait() == 0
                assert trio.current_time() - start < 7
        text = log.read_text()
        assert "Traceback" not in text, text
        assert f"{signal.Signals(signum).name}: stopping" in text
        assert "closed: 1001 server is stopping" in text or "closed: 1000" in text, text


async def test_a_second_sigint_exits_at_once(tmp_path: Any) -> None:
    with (tmp_path / "log").open("wb") as stderr:
        async with cli_process("echo", stderr=stderr) as (process, port):
            async with RawClient.connect(port):  # never answers our Close: stop waits 5 s
                process.send_signal(signal.SIGINT)
                await trio.sleep(0.5)
                assert process.poll() is None
                process.send_signal(signal.SIGINT)
                with trio.fail_after(3):
                    assert await process.wait() == 130
    assert "again: exiting at once" in (tmp_path / "log").read_text()


def test_help_lists_every_option_with_its_default() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "trio_wshandler", "demo", "--help"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    for option in (
        "--host",
        "--port",
        "--certfile",
        "--keyfile",
        "--no-compression",
        "--verbose",
        "--quiet",
    ):
        assert option in out
    assert "(default: 127.0.0.1)" in out and "(default: 8080)" in out


async def test_compression_on_by_default_and_off_with_no_compression() -> None:
    for args, negotiated in ((), True), (("--no-compression",), False):
        async with cli("echo", *args) as port:
            async with connect(f"ws://127.0.0.1:{port}/") as ws:
                extensions = ws.response.headers.get("Sec-WebSocket-Extensions", "")
                assert extensions.startswith("permessage-deflate") is negotiated
                await ws.send("x" * 1000)
                assert await ws.recv() == "x" * 1000


async def test_echo_over_wss_from_the_command_line(tls: Any, tmp_path: Any) -> None:
    _, client_context, ca = tls
    cert = ca.issue_cert("127.0.0.1")
    certfile, keyfile = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert.cert_chain_pems[0].write_to_path(str(certfile))
    for pem in cert.cert_chain_pems[1:]:
        pem.write_to_path(str(certfile), append=True)
    cert.private_key_pem.write_to_path(str(keyfile))
    async with cli("echo", "--certfile", str(certfile), "--keyfile", str(keyfile)) as port:
        async with connect(f"wss://127.0.0.1:{port}/", ssl=client_context) as ws:
            await ws.send("secret")
            assert await ws.recv() == "secret"


async def test_connections_are_logged_at_info_and_not_with_q(tmp_path: Any) -> None:
    for args, expect in ((), True), (("-q",), False):
        log = tmp_path / f"log{len(args)}"
        with log.open("wb") as stderr:
            async with cli("echo", *args, stderr=stderr) as port:
                async with connect(f"ws://127.0.0.1:{port}/path") as ws:
                    await ws.send("x")
                    await ws.recv()
                await trio.sleep(0.3)
                text = log.read_text()
        lines = [line for line in text.splitlines() if " connection " in line]
        if not expect:
            assert lines == [], text
            continue
        opened = [line for line in lines if " opened: /path" in line]
        closed = [line for line in lines if " closed: 1000 after " in line]
        assert len(opened) == 1 and "127.0.0.1:" in opened[0], text
        assert len(closed) == 1 and not closed[0].endswith(" "), text


# ---------------------------------------------------------------- documented behaviour


class FlushInHook(WebSocketConnection):
    error: BaseException | None = None

    async def got_message(self, message: str | bytes) -> None:
        self.send(b"x" * (4 << 20))  # more than the peer's buffers take: it never reads
        try:
            await self.flush()
        except BaseException as exc:
            type(self).error = exc
            raise


async def test_flush_in_a_hook_raises_connection_closed_error_when_the_peer_is_gone() -> None:
    handler = RecordingHandler(max_queue_bytes=8 << 20, heartbeat=None)
    handler.connection_class = FlushInHook
    async with running(handler) as server:
        sock = trio.socket.socket()
        await sock.connect(("127.0.0.1", server.port))
        raw = RawClient(trio.SocketStream(sock))
        await raw.handshake()
        await raw.send_frame("go")
        [conn] = await handler.wait_connections(1)
        await trio.sleep(0.2)  # the hook is waiting in flush()
        sock.setsockopt(trio.socket.SOL_SOCKET, trio.socket.SO_LINGER, b"\x01\0\0\0\0\0\0\0")
        sock.close()  # reset
        with trio.fail_after(TIMEOUT):
            await conn.wait_closed()
    assert isinstance(FlushInHook.error, ConnectionClosedError), FlushInHook.error


async def test_flush_in_a_hook_raises_connection_closed_error_at_the_close_deadline() -> None:
    FlushInHook.error = None
    handler = RecordingHandler(max_queue_bytes=8 << 20, heartbeat=None, close_timeout=0.5)
    handler.connection_class = FlushInHook
    async with running(handler) as server, RawClient.connect(server.port) as raw:
        await raw.send_frame("go")
        [conn] = await handler.wait_connections(1)
        await trio.sleep(0.2)
        conn.stop()  # the peer never reads: the close deadline ends the flush
        with trio.fail_after(TIMEOUT):
            await conn.wait_closed()
    assert isinstance(FlushInHook.error, ConnectionClosedError), FlushInHook.error


async def test_send_all_from_a_thread_trio_did_not_start() -> None:
    handler = RecordingHandler(heartbeat=None)
    async with running(handler) as server, RawClient.connect(server.port) as raw:
        await handler.wait_connections(1)
        token = trio.lowlevel.current_trio_token()
        results: list[int] = []

        def foreign() -> None:
            results.append(trio.from_thread.run_sync(handler.send_all, "hi", trio_token=token))

        thread = threading.Thread(target=foreign)
        thread.start()
        assert (await raw.receive_frame()).payload == b"hi"
        await trio.to_thread.run_sync(thread.join)
        assert results == [1]


def test_ids_increase_within_a_process() -> None:
    ids = [new_connection_id() for _ in range(10_000)]  # many in the same millisecond
    assert ids == sorted(ids) and len(set(ids)) == len(ids)


def test_the_registry_is_importable_from_the_package() -> None:
    assert trio_wshandler.ConnectionRegistry is type(EchoHandler().registry)
