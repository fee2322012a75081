"""Shared test helpers: a running server on 127.0.0.1:0, and a raw WebSocket client.

The raw client speaks bytes on a real socket: its handshake is hand-written and the frames it
reads are decoded by wsproto's ``FrameDecoder`` (not by our codec), so tests that check frames
on the wire do not trust the code under test.
"""

from __future__ import annotations

import base64
import os
import re
import signal
import struct
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from contextlib import asynccontextmanager
from typing import Any

import attrs
import pytest
import trio
from wsproto.frame_protocol import FrameDecoder

from trio_wshandler import HttpLimits, Server, WebSocketConnection, WebSocketHandler, serve
from trio_wshandler._deflate import Deflater
from trio_wshandler.codec import Opcode, response_key

from .redis_server import RedisServer, redis_binary

TIMEOUT = 10  # no test waits longer than this for anything


@pytest.fixture
def compressions(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, int]]:
    """Every compression the handlers do, as (window bits, payload size), in order."""
    calls: list[tuple[int, int]] = []
    real = Deflater.compress

    def counting(self: Deflater, payload: bytes, bits: int) -> bytes:
        calls.append((bits, len(payload)))
        return real(self, payload, bits)

    monkeypatch.setattr(Deflater, "compress", counting)  # a class with slots: on the class
    return calls


@pytest.fixture
def redis() -> Iterator[RedisServer]:
    """A redis-server of this test's own, on a free loopback port (skipped, saying why,
    without a binary that runs here)."""
    binary = redis_binary()
    if binary is None:
        pytest.skip("no redis-server: set $REDIS_SERVER or install redis-server (nox does)")
    server = RedisServer(binary)
    try:
        server.start()
    except (OSError, RuntimeError) as exc:  # a binary for another architecture, or broken
        pytest.skip(f"redis-server {binary} cannot run here: {exc}")
    try:
        yield server
    finally:
        server.stop()


@asynccontextmanager
async def running(
    handler: Any, *, limits: HttpLimits | None = None, ssl_context: Any = None
) -> AsyncIterator[Server]:
    """Serve ``handler`` on 127.0.0.1:0 for the duration of the block, then shut it down."""
    async with trio.open_nursery() as nursery:
        server: Server = await nursery.start(
            lambda task_status: serve(
                handler,
                "127.0.0.1",
                0,
                limits=limits,
                ssl_context=ssl_context,
                task_status=task_status,
            )
        )
        try:
            yield server
        finally:
            nursery.cancel_scope.cancel()


def ws_url(server: Server, path: str = "/") -> str:
    return f"ws://127.0.0.1:{server.port}{path}"


class Recorder(WebSocketConnection):
    """Records everything that happens to it, for assertions."""

    def __init__(self, handler: WebSocketHandler, *args: Any) -> None:
        super().__init__(handler, *args)
        self.messages: list[str | bytes] = []
        self.events: list[str] = []
        self.got = trio.Event()
        self.closed = trio.Event()

    async def got_message(self, message: str | bytes) -> None:
        self.messages.append(message)
        self.got.set()
        self.got = trio.Event()

    async def registered(self) -> None:
        self.events.append("registered")

    async def connection_closed(self) -> None:
        self.events.append("connection_closed")
        self.closed.set()


class RecordingHandler(WebSocketHandler):
    """A handler whose connections are :class:`Recorder` (or ``connection_class``)."""

    connection_class: type[WebSocketConnection] = Recorder

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.connections: list[Any] = []
        self.deregistered: list[str] = []
        self.new_connection = trio.Event()

    def get_connection(self, cx: Any, hdr: Any, cid: str) -> WebSocketConnection:
        connection = self.connection_class(self, cx, hdr, cid)
        self.connections.append(connection)
        self.new_connection.set()
        self.new_connection = trio.Event()
        return connection

    async def deregister_connection(self, connection: WebSocketConnection) -> None:
        self.deregistered.append(connection.id)
        if isinstance(connection, Recorder):
            connection.events.append("deregister_connection")

    async def wait_connections(self, n: int) -> list[Any]:
        with trio.fail_after(TIMEOUT):
            while len(self.connection_ids()) < n:
                await trio.sleep(0.005)
        return self.connections


async def wait_for(predicate: Any, timeout: float = TIMEOUT) -> None:
    """Wait until ``predicate()`` is true (bounded)."""
    with trio.fail_after(timeout):
        while not predicate():
            await trio.sleep(0.005)


# ---------------------------------------------------------------- raw client


def client_frame(
    payload: bytes,
    opcode: int,
    *,
    fin: bool = True,
    rsv: int = 0,
    masked: bool = True,
    declared_length: int | None = None,
) -> bytes:
    """A client frame built by hand (independent of trio_wshandler.codec)."""
    length = len(payload) if declared_length is None else declared_length
    b0 = (0x80 if fin else 0) | (rsv << 4) | opcode
    mask_bit = 0x80 if masked else 0
    if length < 126:
        head = struct.pack("!BB", b0, mask_bit | length)
    elif length < 65536:
        head = struct.pack("!BBH", b0, mask_bit | 126, length)
    else:
        head = struct.pack("!BBQ", b0, mask_bit | 127, length)
    if not masked:
        return head + payload
    key = os.urandom(4)
    return head + key + bytes(b ^ key[i % 4] for i, b in enumerate(payload))


@attrs.frozen
class WireFrame:
    opcode: int
    payload: bytes
    fin: bool

    @property
    def close_code(self) -> int | None:
        if self.opcode != Opcode.CLOSE:
            return None
        return struct.unpack("!H", self.payload[:2])[0] if len(self.payload) >= 2 else 1005

    @property
    def close_reason(self) -> str:
        return self.payload[2:].decode("utf-8")


class RawClient:
    """A WebSocket client on a raw socket: sends any bytes, reads frames with wsproto."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.decoder = FrameDecoder(client=True, extensions=[])
        self.status: int | None = None
        self.headers: dict[str, str] = {}
        self.body = b""

    @classmethod
    @asynccontextmanager
    async def connect(
        cls, port: int, path: str = "/", headers: Mapping[str, str] | None = None
    ) -> AsyncIterator[RawClient]:
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        client = cls(stream)
        try:
            await client.handshake(path, headers)
            yield client
        finally:
            await trio.aclose_forcefully(stream)

    async def handshake(self, path: str = "/", headers: Mapping[str, str] | None = None) -> None:
        key = base64.b64encode(os.urandom(16)).decode()
        lines = [
            f"GET {path} HTTP/1.1",
            "Host: 127.0.0.1",
            "Upgrade: websocket",
            "Connection: Upgrade",
            f"Sec-WebSocket-Key: {key}",
            "Sec-WebSocket-Version: 13",
        ]
        lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
        await self.stream.send_all(("\r\n".join(lines) + "\r\n\r\n").encode())
        head = await self.read_head()
        assert self.status == 101, (self.status, head)
        assert self.headers["sec-websocket-accept"] == response_key(key)

    async def read_head(self) -> bytes:
        buf = b""
        with trio.fail_after(TIMEOUT):
            while b"\r\n\r\n" not in buf:
                chunk = await self.stream.receive_some(4096)
                assert chunk, f"connection closed during the handshake: {buf!r}"
                buf += chunk
        head, _, rest = buf.partition(b"\r\n\r\n")
        status_line, *header_lines = head.decode("latin-1").split("\r\n")
        self.status = int(status_line.split()[1])
        self.headers = {}
        for line in header_lines:
            name, _, value = line.partition(":")
            self.headers[name.strip().lower()] = value.strip()
        if rest:
            self.decoder.receive_bytes(rest)
        return head

    async def send(self, data: bytes) -> None:
        await self.stream.send_all(data)

    async def send_frame(self, payload: bytes | str, opcode: int = Opcode.TEXT, **kw: Any) -> None:
        if isinstance(payload, str):
            payload = payload.encode()
        await self.stream.send_all(client_frame(payload, opcode, **kw))

    async def receive_frame(self, timeout: float = TIMEOUT) -> WireFrame:
        parts: list[bytes] = []  # a large frame arrives in pieces (the later ones say
        opcode = 0  # CONTINUATION: the first one has the frame's opcode)
        with trio.fail_after(timeout):
            while True:
                frame = self.decoder.process_buffer()
                if frame is not None:
                    opcode = opcode if parts else int(frame.opcode)
                    parts.append(bytes(frame.payload))
                    if not frame.frame_finished:
                        continue
                    return WireFrame(opcode, b"".join(parts), frame.message_finished)
                data = await self.stream.receive_some(65536)
                if not data:
                    raise EOFError("server closed the connection")
                self.decoder.receive_bytes(data)

    async def receive_until(self, opcode: int, timeout: float = TIMEOUT) -> WireFrame:
        """Skip frames until one with ``opcode`` (e.g. the Close) arrives."""
        with trio.fail_after(timeout):
            while True:
                frame = await self.receive_frame()
                if frame.opcode == opcode:
                    return frame

    async def expect_close(self, code: int, timeout: float = TIMEOUT) -> WireFrame:
        frame = await self.receive_until(Opcode.CLOSE, timeout)
        assert frame.close_code == code, (frame.close_code, frame.close_reason)
        return frame

    async def receive_eof(self, timeout: float = TIMEOUT) -> None:
        """Wait until the server closes the TCP connection."""
        with trio.fail_after(timeout):
            while True:
                try:
                    data = await self.stream.receive_some(65536)
                except trio.BrokenResourceError:
                    return
                if not data:
                    return


async def raw_http(
    port: int, data: bytes, *, read_timeout: float = TIMEOUT
) -> tuple[int, dict[str, str], bytes]:
    """Send raw bytes, read the response until the server closes or it is complete."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(data)
        return await read_response(stream, read_timeout)


async def read_response(
    stream: trio.SocketStream, timeout: float = TIMEOUT
) -> tuple[int, dict[str, str], bytes]:
    buf = b""
    with trio.fail_after(timeout):
        while True:
            if b"\r\n\r\n" in buf:
                head, _, body = buf.partition(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                headers = {}
                for line in lines[1:]:
                    name, _, value = line.partition(":")
                    headers[name.strip().lower()] = value.strip()
                length = int(headers.get("content-length", "-1"))
                if lines[0].split()[1] == "101":
                    return 101, headers, b""
                if length >= 0 and len(body) >= length:
                    return int(lines[0].split()[1]), headers, body[:length]
            try:
                chunk = await stream.receive_some(65536)
            except trio.BrokenResourceError:
                chunk = b""
            if not chunk:
                assert buf, "connection closed with no response"
                head, _, body = buf.partition(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                return int(lines[0].split()[1]), {}, body
            buf += chunk


#: a scraped sample's key: (metric name, its labels as a sorted tuple)
SampleKey = tuple[str, tuple[tuple[str, str], ...]]


async def scrape_metrics(
    port: int, path: str = "/metrics"
) -> tuple[dict[SampleKey, float], dict[str, str], dict[str, str]]:
    """GET Prometheus metrics and parse them with prometheus-client's own parser: the samples
    ({(name, labels): value}; a series that appears twice fails), the families' types, and the
    response headers."""
    from prometheus_client.parser import text_string_to_metric_families

    status, headers, body = await raw_http(
        port, f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode()
    )
    assert status == 200, body
    samples: dict[SampleKey, float] = {}
    types: dict[str, str] = {}
    for family in text_string_to_metric_families(body.decode()):
        types[family.name] = family.type
        for sample in family.samples:
            key = (sample.name, tuple(sorted(sample.labels.items())))
            assert key not in samples, f"{key} appears twice"
            samples[key] = sample.value
    return samples, types, headers


def upgrade_request(path: str = "/", **overrides: str | None) -> bytes:
    """An upgrade request; ``overrides`` change (or with None remove) headers by name."""
    headers: dict[str, str | None] = {
        "Host": "127.0.0.1",
        "Upgrade": "websocket",
        "Connection": "Upgrade",
        "Sec-WebSocket-Key": base64.b64encode(os.urandom(16)).decode(),
        "Sec-WebSocket-Version": "13",
    }
    method = overrides.pop("method", None) or "GET"
    version = overrides.pop("version", None) or "HTTP/1.1"
    for name, value in overrides.items():
        headers[name.replace("_", "-")] = value
    lines = [f"{method} {path} {version}"] + [
        f"{k}: {v}" for k, v in headers.items() if v is not None
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


# ---------------------------------------------------------------- the CLI as a process


@asynccontextmanager
async def cli_process(
    *args: str, stderr: Any = None, preexec_fn: Callable[[], None] | None = None
) -> AsyncIterator[tuple[trio.Process, int]]:
    """Run ``python -m trio_wshandler ARGS --port 0`` as a process; yields it and its port.

    ``stderr`` is where its log goes (a file; default: inherited).  Unless it has exited, it is
    stopped with SIGINT at the end (then killed if it does not exit within 5 s).
    """
    process = await trio.lowlevel.open_process(
        [sys.executable, "-m", "trio_wshandler", *args, "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=stderr,
        preexec_fn=preexec_fn,
    )
    try:
        assert process.stdout is not None
        output = b""
        with trio.fail_after(20):
            while b"\n" not in output:
                chunk = await process.stdout.receive_some(1024)
                assert chunk, "the process exited before printing its address"
                output += chunk
        match = re.search(rb"127\.0\.0\.1:(\d+)", output)
        assert match, output
        yield process, int(match.group(1))
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGINT)
        with trio.move_on_after(5):
            await process.wait()
        if process.returncode is None:
            process.kill()
            await process.wait()


@asynccontextmanager
async def cli(
    *args: str, stderr: Any = None, preexec_fn: Callable[[], None] | None = None
) -> AsyncIterator[int]:
    """:func:`cli_process` for tests that need only the port; the server must still be running
    at the end of the block."""
    async with cli_process(*args, stderr=stderr, preexec_fn=preexec_fn) as (process, port):
        yield port
        assert process.returncode is None, f"the server exited with {process.returncode}"
