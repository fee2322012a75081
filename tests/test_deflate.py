"""permessage-deflate on the wire: compressed both ways, compress-once fan-out, bombs, errors.

Clients: websockets (its default client offers permessage-deflate), trio-websocket (which
cannot offer it: its API passes no extensions to wsproto) and a raw client whose inflater is
wsproto's own ``PerMessageDeflate``, so that the frames on the wire are checked by code that is
not ours.
"""

from __future__ import annotations

import json
import os
import time
import zlib
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import pytest
import trio
import trio.lowlevel
import trio_websocket
from websockets.trio.client import connect
from wsproto.extensions import PerMessageDeflate
from wsproto.frame_protocol import CloseReason, FrameDecoder, Opcode, RsvBits

from trio_wshandler import DeflateOptions, WebSocketConnection
from trio_wshandler._deflate import Inflater
from trio_wshandler._extensions import DeflateAgreement

from .conftest import (
    TIMEOUT,
    RawClient,
    RecordingHandler,
    client_frame,
    running,
    ws_url,
)

#: 1,000,000 zero bytes deflated and ended with a full flush: 989 bytes that stand alone, so
#: that N copies one after the other are a valid deflate stream of N MB
ZEROS_MB = (lambda c: c.compress(bytes(1_000_000)) + c.flush(zlib.Z_FULL_FLUSH))(
    zlib.compressobj(9, zlib.DEFLATED, -15)
)


def deflate(data: bytes, bits: int = 15) -> bytes:
    c = zlib.compressobj(6, zlib.DEFLATED, -bits)
    out = c.compress(data) + c.flush(zlib.Z_SYNC_FLUSH)
    assert out.endswith(b"\x00\x00\xff\xff")
    return out[:-4]


def json_text(n: int = 14, seed: int = 0) -> str:
    rows = [
        {"id": seed * 100 + i, "user": ["alice", "bob", "carol"][i % 3], "price": i * 1.25}
        for i in range(n)
    ]
    return json.dumps(rows)


class Echo(WebSocketConnection):
    async def got_message(self, message: str | bytes) -> None:
        self.send(message)


class EchoHandler(RecordingHandler):
    connection_class = Echo


class _RecordingDeflate(PerMessageDeflate):
    """wsproto's client-side permessage-deflate, noting RSV1 of each message's first frame."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.compressed: list[bool] = []

    def frame_inbound_header(
        self, proto: Any, opcode: Opcode, rsv: RsvBits, payload_length: int
    ) -> CloseReason | RsvBits:
        if opcode in (Opcode.TEXT, Opcode.BINARY):
            self.compressed.append(rsv.rsv1)
        return super().frame_inbound_header(proto, opcode, rsv, payload_length)


@asynccontextmanager
async def deflate_client(port: int, offer: str) -> AsyncIterator[tuple[RawClient, Any]]:
    """A raw client that offers ``offer`` and inflates with wsproto's PerMessageDeflate."""
    async with RawClient.connect(port, headers={"Sec-WebSocket-Extensions": offer}) as client:
        ext = _RecordingDeflate()
        answer = client.headers.get("sec-websocket-extensions", "")
        if answer:
            ext.finalize(answer)
        rest = client.decoder.buffer
        client.decoder = FrameDecoder(client=True, extensions=[ext] if answer else [])
        client.decoder.buffer = rest
        yield client, ext


# ---------------------------------------------------------------- round trips


@pytest.mark.parametrize("compression", ["deflate", None])
async def test_websockets_round_trip(compression: str | None) -> None:
    """0 B to 1 MiB, Text and Binary, compressed and not: every echo arrives intact."""
    handler = EchoHandler(max_message_size=2 << 20)
    sizes = [0, 1, 127, 128, 1000, 65536, 1 << 20]
    async with running(handler) as server:
        async with connect(ws_url(server), compression=compression, max_size=None) as ws:
            for size in sizes:
                text = (json_text(size // 40 + 1) * 2)[:size]
                binary = os.urandom(size // 2) + bytes(size - size // 2)  # half noise
                for message in (text, binary):
                    await ws.send(message)
                    with trio.fail_after(TIMEOUT):
                        assert await ws.recv() == message
            [connection] = handler.connections
            if compression:
                assert connection.compression == DeflateAgreement(15, 15, True)
            else:
                assert connection.compression is None


async def test_fragmented_compressed_message_from_client() -> None:
    handler = EchoHandler()
    async with running(handler) as server:
        async with connect(ws_url(server)) as ws:
            parts = [json_text(20, i) for i in range(5)]
            await ws.send(iter(parts))  # one message of five frames, compressed as one
            with trio.fail_after(TIMEOUT):
                assert await ws.recv() == "".join(parts)


async def test_trio_websocket_beside_compressed_clients() -> None:
    """A client that offers no compression gets plain frames of the same broadcast."""
    handler = RecordingHandler()
    text = json_text(30)
    async with running(handler) as server:
        async with (
            trio_websocket.open_websocket_url(ws_url(server)) as plain,
            connect(ws_url(server)) as compressed,
        ):
            await handler.wait_connections(2)
            assert sorted(c.compression is None for c in handler.connections) == [False, True]
            assert handler.send_all(text) == 2
            with trio.fail_after(TIMEOUT):
                assert await plain.get_message() == text
                assert await compressed.recv() == text
            await plain.send_message(text)
            await compressed.send(text)
            await trio.lowlevel.checkpoint()  # both arrive whole at the server
            with trio.fail_after(TIMEOUT):
                while sum(len(c.messages) for c in handler.connections) < 2:
                    await trio.sleep(0.005)
            assert [c.messages for c in handler.connections] == [[text], [text]]


# ---------------------------------------------------------------- what goes on the wire


async def test_frames_on_the_wire() -> None:
    """At or over the threshold: RSV1 and deflated; under it, or incompressible: plain."""
    handler = RecordingHandler(compression=DeflateOptions(threshold=100))
    async with running(handler) as server:
        async with deflate_client(server.port, "permessage-deflate") as (client, ext):
            [connection] = await handler.wait_connections(1)
            noise = os.urandom(5000)
            text = json_text(40)
            connection.send(text)
            connection.send("x" * 99)
            connection.send("x" * 100)
            connection.send(noise)
            connection.send_frame("frag", 0x1, fin=False)  # send_frame: never compressed
            connection.send_frame("ment", 0x0)
            handler.send_all(text)
            got = [await client.receive_frame() for _ in range(7)]
            assert [f.payload for f in got] == [
                text.encode(),
                b"x" * 99,
                b"x" * 100,
                noise,
                b"frag",
                b"ment",
                text.encode(),
            ]
            assert ext.compressed == [True, False, True, False, False, True]


async def test_compress_once_per_window_size(compressions: list[tuple[int, int]]) -> None:
    """send_all compresses once per server window in use, whatever the number of clients."""
    handler = RecordingHandler()
    text = json_text(25)
    offers = ["permessage-deflate"] * 5 + ["permessage-deflate; server_max_window_bits=10"] * 3
    offers += ["x-none"] * 2
    async with running(handler) as server, AsyncExitStack() as stack:
        clients = [
            await stack.enter_async_context(deflate_client(server.port, offer)) for offer in offers
        ]
        await handler.wait_connections(len(offers))
        assert handler.send_all(text) == len(offers)
        assert sorted(bits for bits, _ in compressions) == [10, 15]
        for client, _ in clients:
            frame = await client.receive_frame()
            assert frame.payload == text.encode()
        assert [ext.compressed for _, ext in clients] == [[True]] * 8 + [[]] * 2  # [] no inflater


async def test_eight_bit_window_is_honoured() -> None:
    """A client may ask for an 8-bit server window, which zlib cannot compress with: it gets
    Huffman-coded messages, which an 8-bit inflater takes."""
    handler = RecordingHandler()
    text = json_text(60) * 3
    async with running(handler) as server:
        offer = {"Sec-WebSocket-Extensions": "permessage-deflate; server_max_window_bits=8"}
        async with RawClient.connect(server.port, headers=offer) as client:  # wsproto: no 8
            [connection] = await handler.wait_connections(1)
            assert connection.compression.server_max_window_bits == 8
            connection.send(text)
            raw = await client.stream.receive_some(1 << 20)
            assert raw[0] == 0xC1  # FIN, RSV1, Text
            length = raw[1] & 0x7F
            payload = raw[4:] if length == 126 else raw[2:]
            inflater = zlib.decompressobj(-8)  # an inflater with a 256-byte window
            assert inflater.decompress(payload + b"\x00\x00\xff\xff") == text.encode()
            assert len(payload) < len(text) * 0.7  # Huffman codes alone: about 54 %


# ---------------------------------------------------------------- incoming limits and errors


def test_inflater_stops_a_gigabyte_bomb() -> None:
    """1 MB that inflates to 1 GB: at most max_size + 1 bytes are ever inflated."""
    bomb = ZEROS_MB * 1000
    inflater = Inflater(DeflateAgreement(), max_size=1 << 20)
    decoder = FrameDecoder(client=False, extensions=[inflater])
    started = time.perf_counter()
    decoder.receive_bytes(client_frame(bomb, 0x2, rsv=4))
    with pytest.raises(Exception) as caught:
        while decoder.process_buffer() is not None:
            pass
    assert getattr(caught.value, "code", None) == CloseReason.MESSAGE_TOO_BIG
    assert inflater._inflated <= (1 << 20) + 1
    assert "once inflated" in inflater.problem
    assert time.perf_counter() - started < 5  # unbounded, this inflates 1 GB


@pytest.mark.parametrize(
    ("payload", "max_size"),
    [(ZEROS_MB, 65536), (ZEROS_MB * 1000, 1 << 20)],
    ids=["1KB-to-1MB", "1MB-to-1GB"],
)
async def test_bomb_closes_1009(payload: bytes, max_size: int) -> None:
    handler = RecordingHandler(max_message_size=max_size)
    async with running(handler) as server:
        async with deflate_client(server.port, "permessage-deflate") as (client, _):
            await client.send(client_frame(payload, 0x2, rsv=4))
            close = await client.expect_close(1009)
            assert "once inflated" in close.close_reason
    assert handler.connections[0].messages == []


async def test_just_under_the_limit_inflated_is_accepted() -> None:
    handler = RecordingHandler(max_message_size=1_000_000)
    async with running(handler) as server:
        async with deflate_client(server.port, "permessage-deflate") as (client, _):
            [connection] = await handler.wait_connections(1)
            await client.send(client_frame(ZEROS_MB, 0x2, rsv=4))
            await wait_messages(connection, 1)
            assert connection.messages == [bytes(1_000_000)]


async def wait_messages(connection: Any, n: int) -> None:
    with trio.fail_after(TIMEOUT):
        while len(connection.messages) < n:
            await trio.sleep(0.005)


@pytest.mark.parametrize(
    ("frames", "code"),
    [
        ([client_frame(b"ping", 0x9, rsv=4)], 1002),  # RSV1 on a control frame
        (  # RSV1 on a continuation
            [
                client_frame(deflate(b"abc"), 0x1, rsv=4, fin=False),
                client_frame(deflate(b"def"), 0x0, rsv=4),
            ],
            1002,
        ),
        ([client_frame(b"\xff\xff\xff\xff not deflate", 0x2, rsv=4)], 1007),
        ([client_frame(deflate(b"\xff\xfe invalid utf-8"), 0x1, rsv=4)], 1007),
        ([client_frame(b"x", 0x1, rsv=2)], 1002),  # RSV2: nobody claimed it
    ],
    ids=["rsv1-ping", "rsv1-continuation", "bad-deflate", "bad-utf8", "rsv2"],
)
async def test_bad_compressed_input(frames: list[bytes], code: int) -> None:
    handler = RecordingHandler()
    async with running(handler) as server:
        async with deflate_client(server.port, "permessage-deflate") as (client, _):
            for frame in frames:
                await client.send(frame)
            await client.expect_close(code)


async def test_rsv1_without_negotiation_is_refused() -> None:
    handler = RecordingHandler()
    async with running(handler) as server:
        async with RawClient.connect(server.port) as client:
            await client.send(client_frame(deflate(b"hello"), 0x1, rsv=4))
            await client.expect_close(1002)


async def test_compressed_fragments_with_control_frames_between() -> None:
    handler = RecordingHandler()
    text = json_text(30).encode()
    compressed = deflate(text)
    a, b, c = compressed[:10], compressed[10:20], compressed[20:]
    async with running(handler) as server:
        async with deflate_client(server.port, "permessage-deflate") as (client, _):
            [connection] = await handler.wait_connections(1)
            await client.send(client_frame(a, 0x1, rsv=4, fin=False))
            await client.send(client_frame(b"p", 0x9))
            await client.send(client_frame(b, 0x0, fin=False))
            await client.send(client_frame(c, 0x0))
            await client.send(client_frame(b"plain", 0x1))
            pong = await client.receive_frame()
            assert (pong.opcode, pong.payload) == (0xA, b"p")
            await wait_messages(connection, 2)
            assert connection.messages == [text.decode(), "plain"]


# ---------------------------------------------------------------- state held per connection


async def test_idle_connection_holds_no_zlib_state() -> None:
    handler = EchoHandler()
    async with running(handler) as server:
        async with connect(ws_url(server)) as ws:
            for i in range(3):
                await ws.send(json_text(20, i))
                with trio.fail_after(TIMEOUT):
                    assert await ws.recv() == json_text(20, i)
            [connection] = handler.connections
            assert connection._core.protocol._inflater._inflater is None


async def test_client_context_takeover_when_allowed() -> None:
    """With client_context_takeover=True the client keeps its context: later messages refer
    to earlier ones, and the connection keeps an inflater."""
    handler = EchoHandler(compression=DeflateOptions(client_context_takeover=True))
    async with running(handler) as server:
        async with connect(ws_url(server)) as ws:
            assert "client_no_context_takeover" not in ws.response.headers.get(
                "Sec-WebSocket-Extensions", ""
            )
            for _ in range(5):
                await ws.send(json_text(20, 0))  # the same text: back-references across
                with trio.fail_after(TIMEOUT):
                    assert await ws.recv() == json_text(20, 0)
            [connection] = handler.connections
            assert connection.compression.client_no_context_takeover is False
            assert connection._core.protocol._inflater._inflater is not None


async def test_one_message_sent_client_by_client_is_compressed_once(
    compressions: list[tuple[int, int]],
) -> None:
    """A loop of send() with the same str (a room of a few clients) compresses it once."""
    handler = RecordingHandler()
    text, other = json_text(20, 1), json_text(20, 2)
    async with running(handler) as server, AsyncExitStack() as stack:
        clients = [
            await stack.enter_async_context(deflate_client(server.port, "permessage-deflate"))
            for _ in range(4)
        ]
        connections = await handler.wait_connections(4)
        for message in (text, other):
            for connection in connections:
                connection.send(message)
        assert [bits for bits, _ in compressions] == [15, 15]
        data = bytearray(text.encode())
        for connection in connections:
            connection.send(data)  # mutable: compressed each time
        assert len(compressions) == 6
        for client, _ in clients:
            got = [(await client.receive_frame()).payload for _ in range(3)]
            assert got == [text.encode(), other.encode(), text.encode()]
