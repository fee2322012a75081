"""A fleet of WebSocket clients in one process, as light as possible so it is not the bottleneck.

    python benchmarks/fleet.py --port P --connections N [--stuck K]

Plain asyncio protocols with a minimal frame parser (server frames are unmasked and small to
parse) and no per-message objects.  Latency is sampled once per read: the first (oldest) message
of each chunk, which is the largest latency in it, so the percentiles err on the high side.

After connecting it prints ``ready``; then it reads commands on stdin and answers each with one
JSON line:

``expect COUNT SIZE``
    wait until every (non-stuck) connection has received COUNT binary messages of SIZE bytes
    (or ``--timeout`` passed) and report counts, timing and delivery latencies.
``echo SECONDS SIZE``
    every connection sends a message, waits for its echo, and repeats, for SECONDS; report
    messages and round-trip times.
``quit``
    close everything and exit.

``--stuck K`` adds K connections that complete the handshake and then never read (the
slow-consumer scenario).  Every report includes this process's CPU seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import os
import resource
import socket
import struct
import sys
import time

HEADER = struct.Struct("!QQ")


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def masked_frame(payload: bytes, opcode: int = 0x2) -> bytes:
    key = os.urandom(4)
    n = len(payload)
    if n < 126:
        head = struct.pack("!BB", 0x80 | opcode, 0x80 | n)
    elif n < 65536:
        head = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, n)
    else:
        head = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, n)
    repeated = (key * (n // 4 + 1))[:n]
    masked = (int.from_bytes(payload, "big") ^ int.from_bytes(repeated, "big")).to_bytes(n, "big")
    return head + key + masked


class Client(asyncio.Protocol):
    def __init__(self, fleet: Fleet, stuck: bool = False) -> None:
        self.fleet = fleet
        self.stuck = stuck
        self.buffer = bytearray()
        self.handshaken = asyncio.get_running_loop().create_future()
        self.received = 0
        self.echoed: asyncio.Future[int] | None = None
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.offset = 0  # position inside the current frame, when counting fixed-size frames

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        if self.stuck:
            sock = transport.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        key = base64.b64encode(os.urandom(16)).decode()
        transport.write(
            (
                f"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
                f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                f"Sec-WebSocket-Version: 13\r\n\r\n"
            ).encode()
        )

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if not self.handshaken.done():
            self.handshaken.set_exception(ConnectionError("closed during the handshake"))
        self.fleet.progress()

    def data_received(self, data: bytes) -> None:
        fleet = self.fleet
        frame_len = fleet.frame_len
        if frame_len and not self.buffer:
            # Broadcast rounds: every frame is a Binary message of one known length, so the
            # stream is counted, not parsed, and the fleet costs O(1) per read.  The frame at
            # the start of each aligned read is checked and gives the latency sample.
            offset = self.offset
            if offset == 0 and len(data) >= 18:
                if data[0] != 0x82:
                    fleet.errors += 1
                fleet.latencies.append(
                    time.time_ns() - HEADER.unpack_from(data, frame_len - fleet.size)[1]
                )
            total = offset + len(data)
            self.received += total // frame_len
            self.offset = total % frame_len
            fleet.progress()
            return
        buf = self.buffer
        buf += data
        if not self.handshaken.done():
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                return
            if not buf.startswith(b"HTTP/1.1 101"):
                self.handshaken.set_exception(ConnectionError(bytes(buf[:200]).decode()))
                return
            del buf[: end + 4]
            self.handshaken.set_result(None)
            if self.stuck:
                assert self.transport is not None
                self.transport.pause_reading()
                return
        now = time.time_ns()
        pos, n = 0, len(buf)
        fleet = self.fleet
        oldest = 0  # the first message of this read: the largest latency in it
        while n - pos >= 2:
            b0, b1 = buf[pos], buf[pos + 1] & 0x7F
            if b1 < 126:
                start, length = pos + 2, b1
            elif b1 == 126:
                if n - pos < 4:
                    break
                start, length = pos + 4, int.from_bytes(buf[pos + 2 : pos + 4], "big")
            else:
                if n - pos < 10:
                    break
                start, length = pos + 10, int.from_bytes(buf[pos + 2 : pos + 10], "big")
            end = start + length
            if end > n:
                break
            opcode = b0 & 0x0F
            if opcode == 0x2:
                self.received += 1
                if not oldest:
                    oldest = HEADER.unpack_from(buf, start)[1]
                if self.echoed is not None and not self.echoed.done():
                    self.echoed.set_result(now)
            elif opcode == 0x9 and self.transport is not None:  # Ping
                self.transport.write(masked_frame(bytes(buf[start:end]), 0xA))
            elif opcode == 0x8 and self.transport is not None:  # Close: answer, then done
                self.transport.write(masked_frame(bytes(buf[start : start + 2]), 0x8))
                self.transport.close()
            pos = end
        del buf[:pos]
        if oldest:
            fleet.latencies.append(now - oldest)
        fleet.progress()


class Fleet:
    def __init__(self) -> None:
        self.clients: list[Client] = []
        self.latencies: list[int] = []
        self.expected = 0
        self.done = asyncio.Event()
        self.finished_ns = 0
        self.cpu0 = 0.0
        self.frame_len = 0  # nonzero during a broadcast round: the length of every frame
        self.size = 0
        self.errors = 0

    def progress(self) -> None:
        if (
            self.expected
            and not self.done.is_set()
            and all(c.received >= self.expected or c.closed for c in self.clients if not c.stuck)
        ):
            self.finished_ns = time.time_ns()
            self.done.set()

    async def connect(self, port: int, count: int, stuck: int) -> None:
        loop = asyncio.get_running_loop()
        limit = asyncio.Semaphore(200)

        async def one(is_stuck: bool) -> None:
            async with limit:
                _, client = await loop.create_connection(
                    lambda: Client(self, is_stuck), "127.0.0.1", port
                )
                await client.handshaken
                self.clients.append(client)

        await asyncio.gather(*(one(False) for _ in range(count)))
        await asyncio.gather(*(one(True) for _ in range(stuck)))

    def arm(self, count: int, size: int) -> None:
        """Reset the counters before the server starts sending COUNT messages of SIZE bytes."""
        self.size = size
        self.frame_len = size + (2 if size < 126 else 4 if size < 65536 else 10)
        self.errors = 0
        for client in self.clients:
            client.received = 0
            client.offset = 0
            if client.buffer:  # leftovers would misalign the count: fall back to parsing
                self.frame_len = 0
        self.latencies = []
        self.expected = count
        self.done = asyncio.Event()
        self.finished_ns = 0
        self.cpu0 = cpu_seconds()

    async def expect(self, limit: float) -> dict[str, object]:
        count = self.expected
        self.progress()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.done.wait(), limit)
        normal = [c for c in self.clients if not c.stuck]
        report = {
            "received": sum(c.received for c in normal),
            "complete": sum(c.received >= count for c in normal),
            "connections": len(normal),
            "closed": sum(c.closed for c in normal),
            "stuck_closed": sum(c.closed for c in self.clients if c.stuck),
            "last_received_ns": self.finished_ns or time.time_ns(),
            "timed_out": not self.done.is_set(),
            "frame_errors": self.errors,
            "latencies_us": summarize(self.latencies),
            "cpu_s": cpu_seconds() - self.cpu0,
        }
        self.expected = 0
        self.frame_len = 0
        return report

    async def echo(self, seconds: float, size: int) -> dict[str, object]:
        self.latencies = []
        cpu0 = cpu_seconds()
        deadline = time.monotonic() + seconds
        padding = b"e" * size

        async def loop(client: Client) -> int:
            sent = 0
            assert client.transport is not None
            while time.monotonic() < deadline and not client.closed:
                client.echoed = asyncio.get_running_loop().create_future()
                payload = HEADER.pack(sent, time.time_ns()) + padding[: size - HEADER.size]
                client.transport.write(masked_frame(payload))
                await client.echoed
                sent += 1
            return sent

        counts = await asyncio.gather(*(loop(c) for c in self.clients if not c.stuck))
        return {
            "messages": sum(counts),
            "seconds": seconds,
            "latencies_us": summarize(self.latencies),
            "cpu_s": cpu_seconds() - cpu0,
        }


def summarize(latencies_ns: list[int]) -> dict[str, object]:
    """Count, and the 0.0 to 100.0 percentiles in steps of 0.1 (in microseconds), so that the
    orchestrator can merge the reports of several fleet processes."""
    if not latencies_ns:
        return {"count": 0, "quantiles": []}
    ordered = sorted(latencies_ns)
    last = len(ordered) - 1
    quantiles = [ordered[min(last, i * len(ordered) // 1000)] / 1000 for i in range(1001)]
    return {"count": len(ordered), "quantiles": quantiles}


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--connections", type=int, required=True)
    parser.add_argument("--stuck", type=int, default=0)
    parser.add_argument("--timeout", type=float, default=120)
    args = parser.parse_args()
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    fleet = Fleet()
    await fleet.connect(args.port, args.connections, args.stuck)
    print("ready", flush=True)
    loop = asyncio.get_running_loop()
    while True:
        line = await loop.run_in_executor(None, sys.stdin.readline)
        words = line.split()
        if not words or words[0] == "quit":
            break
        if words[0] == "expect":
            fleet.arm(int(words[1]), int(words[2]))
            print("armed", flush=True)
            report = await fleet.expect(args.timeout)
        elif words[0] == "echo":
            report = await fleet.echo(float(words[1]), int(words[2]))
        else:
            report = {"error": f"unknown command {words[0]!r}"}
        print(json.dumps(report), flush=True)
    for client in fleet.clients:
        if client.transport is not None:
            client.transport.abort()


if __name__ == "__main__":
    asyncio.run(main())
