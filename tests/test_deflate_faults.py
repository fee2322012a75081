"""Hostile compressed input, and the server's own bounds around compression.

Each test here pins down a way a client could make the server work or wait without bound:
data after the end of a deflate stream, floods after our Close, a frame header cut before its
masking key, a failed TLS connection, huge outgoing messages.  The event-loop checks count
work done between two wake-ups of another task, not time, so a loaded machine cannot fail them.
"""

from __future__ import annotations

import itertools
import os
import ssl
import time
import zlib
from typing import Any

import pytest
import trio
import trustme
from websockets.exceptions import ConnectionClosedError as WsClosed
from websockets.trio.client import connect

from trio_wshandler import DeflateOptions, WebSocketConnection, WebSocketHandler
from trio_wshandler._reader import INFLATE_PER_STEP

from .conftest import RawClient, RecordingHandler, client_frame, running, wait_for
from .test_deflate import ZEROS_MB, deflate_client, json_text, wait_messages


class Discard(WebSocketConnection):
    async def got_message(self, message: str | bytes) -> None:
        pass


class DiscardHandler(RecordingHandler):
    connection_class = Discard


async def test_inflating_is_done_in_steps() -> None:
    """64 frames of 1 KB that each inflate to 1 MB, in one write: between two wake-ups of
    another task at most about two steps of INFLATE_PER_STEP are inflated, not 32 MB."""
    handler = DiscardHandler(heartbeat=None, max_message_size=1_000_000)
    seen: list[int] = []
    async with running(handler) as server:
        async with deflate_client(server.port, "permessage-deflate") as (client, _):
            [connection] = await handler.wait_connections(1)
            protocol = connection._core.protocol
            stop = trio.Event()

            async def ticker() -> None:
                while not stop.is_set():
                    seen.append(protocol.inflated_total)
                    await trio.lowlevel.checkpoint()

            async with trio.open_nursery() as nursery:
                nursery.start_soon(ticker)
                await client.send(client_frame(ZEROS_MB, 0x2, rsv=4) * 64)
                await wait_for(lambda: protocol.inflated_total == 64_000_000)
                stop.set()
    steps = [b - a for a, b in itertools.pairwise(seen)]
    # one step inflates until it has done more than INFLATE_PER_STEP: two 1 MB messages; all
    # of a read in one step (32 events) would be 32 MB
    assert max(steps) <= 2 * (INFLATE_PER_STEP + 1_000_000), max(steps)


async def test_nothing_is_inflated_after_our_close_and_skipped_frames_yield() -> None:
    """After stop(), what the client still sends is dropped unread: no inflating, and frames
    skipped in their thousands still let other tasks run every EVENTS_PER_STEP frames."""
    handler = DiscardHandler(heartbeat=None, max_message_size=1_000_000, close_timeout=5)
    ticks = 0
    async with running(handler) as server:
        async with deflate_client(server.port, "permessage-deflate") as (client, _):
            [connection] = await handler.wait_connections(1)
            protocol = connection._core.protocol
            connection.stop(1000, "bye")
            await client.receive_until(0x8)
            stop = trio.Event()

            async def ticker() -> None:
                nonlocal ticks
                while not stop.is_set():
                    ticks += 1
                    await trio.lowlevel.checkpoint()

            async with trio.open_nursery() as nursery:
                nursery.start_soon(ticker)
                await client.send(client_frame(ZEROS_MB, 0x2, rsv=4) * 32)
                await client.send(client_frame(b"", 0x2) * 10_000)
                started = ticks
                await client.send(client_frame(b"\x03\xe8", 0x8))  # our Close answered
                await connection.wait_closed()
                stop.set()
            assert protocol.inflated_total == 0
            assert connection.close_code == 1000
    # 10,000 skipped frames took many steps (about one per 32 frames), not one
    assert ticks - started > 100, ticks - started


async def test_data_after_the_final_block_is_refused() -> None:
    """A deflate stream that ends (BFINAL) before the message does: 1007, at once, not a
    short message (zlib would keep the rest unread and copy it again on every call)."""
    final = zlib.compressobj(6, zlib.DEFLATED, -15)
    ended = final.compress(b"hello") + final.flush(zlib.Z_FINISH)
    handler = RecordingHandler()
    async with running(handler) as server:
        async with deflate_client(server.port, "permessage-deflate") as (client, _):
            [connection] = await handler.wait_connections(1)
            # RFC 7692 section 7.2.3.4: a final block then one 0x00 octet is valid
            await client.send(client_frame(ended + b"\x00", 0x1, rsv=4))
            await wait_messages(connection, 1)
            assert connection.messages == ["hello"]
            await client.send(client_frame(ended + bytes(100_000), 0x2, rsv=4))
            close = await client.expect_close(1007)
            assert "after its final block" in close.close_reason


async def test_continuation_header_cut_before_its_mask_counts_once() -> None:
    """wsproto reads a frame header twice when its masking key comes in a later read: the
    size limit must count the frame once (a 400 + 400 byte message under a 1,000 limit)."""
    handler = RecordingHandler(max_message_size=1000)
    async with running(handler) as server:
        async with RawClient.connect(server.port) as client:
            [connection] = await handler.wait_connections(1)
            await client.send(client_frame(b"a" * 400, 0x2, fin=False))
            second = client_frame(b"b" * 400, 0x0)
            await client.send(second[:4])  # FIN/opcode, length 126 and its 2 bytes: no mask
            await trio.sleep(0.05)
            await client.send(second[4:])
            await wait_messages(connection, 1)
            assert connection.messages == [b"a" * 400 + b"b" * 400]


async def test_compressed_with_many_flushed_fragments_is_accepted() -> None:
    """64 KiB in 4,096 fragments, each flushed (as websockets compresses fragments): more
    bytes on the wire than the limit, well within the allowance for deflate's overhead."""
    text = os.urandom(65536)  # incompressible: every flushed piece is larger than its input
    compressor = zlib.compressobj(6, zlib.DEFLATED, -15)
    pieces = [
        compressor.compress(text[i : i + 16]) + compressor.flush(zlib.Z_SYNC_FLUSH)
        for i in range(0, len(text), 16)
    ]
    pieces[-1] = pieces[-1][:-4]
    assert sum(map(len, pieces)) > 65536
    frames = [client_frame(pieces[0], 0x2, rsv=4, fin=False)]
    frames += [client_frame(p, 0x0, fin=False) for p in pieces[1:-1]]
    frames.append(client_frame(pieces[-1], 0x0))
    handler = RecordingHandler(max_message_size=65536)
    async with running(handler) as server:
        async with deflate_client(server.port, "permessage-deflate") as (client, _):
            [connection] = await handler.wait_connections(1)
            await client.send(b"".join(frames))
            await wait_messages(connection, 1)
            assert connection.messages == [text]


@pytest.fixture
def tls() -> tuple[ssl.SSLContext, ssl.SSLContext]:
    ca = trustme.CA()
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server_context)
    client_context = ssl.create_default_context()
    ca.configure_trust(client_context)
    return server_context, client_context


@pytest.mark.parametrize("use_tls", [False, True], ids=["tcp", "tls"])
async def test_failed_connection_ends_promptly(
    use_tls: bool, tls: tuple[ssl.SSLContext, ssl.SSLContext]
) -> None:
    """After a 1009 the server lingers only while the client still sends: a client that
    answers our Close and waits for us to close (on TLS no FIN can tell it) is not kept
    for close_timeout."""
    server_context, client_context = tls
    handler = RecordingHandler(max_message_size=1000, close_timeout=5)
    async with running(handler, ssl_context=server_context if use_tls else None) as server:
        scheme = "wss" if use_tls else "ws"
        url = f"{scheme}://127.0.0.1:{server.port}/"
        kwargs: dict[str, Any] = {"ssl": client_context} if use_tls else {}
        async with connect(url, **kwargs) as ws:
            [connection] = await handler.wait_connections(1)
            started = time.monotonic()
            await ws.send("x" * 5000)
            with pytest.raises(WsClosed) as closed:
                await ws.recv()
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 1009
            with trio.fail_after(3):  # close_timeout is 5 s
                await connection.wait_closed()
            assert time.monotonic() - started < 3


async def test_huge_messages_go_uncompressed(compressions: list[tuple[int, int]]) -> None:
    """Above compress_limit a message is sent as it is: compressing runs inside send()."""
    handler = RecordingHandler(compression=DeflateOptions(compress_limit=10_000))
    async with running(handler) as server:
        async with deflate_client(server.port, "permessage-deflate") as (client, ext):
            [connection] = await handler.wait_connections(1)
            connection.send("y" * 10_000)
            connection.send("z" * 10_001)
            handler.send_all("w" * 10_001)
            for expected in ("y" * 10_000, "z" * 10_001, "w" * 10_001):
                assert (await client.receive_frame()).payload == expected.encode()
            assert ext.compressed == [True, False, False]
            assert [size for _, size in compressions] == [10_000]


async def test_start_without_extensions_negotiates_from_the_request() -> None:
    """A caller of start() that does not pass the 101's header gets what handle_request
    answered (here: compression), so compressed frames from its client are understood."""

    class Manual(WebSocketHandler):
        async def start(self, *args: Any, **kwargs: Any) -> None:
            kwargs.pop("extensions")
            await super().start(*args, **kwargs)

    handler = Manual()
    async with running(handler) as server:
        async with connect(f"ws://127.0.0.1:{server.port}/") as ws:
            await ws.send(json_text(30))  # compressed by websockets
            await ws.ping()
            [connection] = list(handler.registry)
            assert connection.compression is not None
            await ws.send("still open")
            await ws.ping()
