"""The Python client fleet of the receive-side benchmark (``inbound.py``), in one process.

    python benchmarks/inbound_fleet.py --port P --connections N [--timeout T]

The fallback for the C fleet (``cfleet.c``), with the same stdin protocol, so that inbound.py
runs without a compiler.  Plain asyncio protocols, as fleet.py; what the clients send is masked
once, in advance (the padding of every message is masked with the connection's key when the
command starts; only a timestamp is masked per message), so masking costs nothing in the loop.
It prints ``ready`` once connected, then answers each command with one JSON line:

``echo SECONDS SIZE``
    every connection sends a Binary message of SIZE bytes (starting with a sequence number and
    the send time, as fleet.py's), waits for its echo and repeats, for SECONDS: ``{"messages",
    "seconds", "latencies_us", "cpu_s"}`` (as fleet.py; the round trip of every message).
``upload SECONDS SIZE``
    every connection sends masked Binary messages of SIZE bytes back to back for SECONDS, as
    fast as its socket takes them (several small messages are joined into one write of up to
    64 KiB): ``{"messages", "bytes", "seconds", "cpu"}`` (what was handed to the sockets).
``chat SECONDS RATE SIZE``
    every connection sends RATE masked Text messages a second of SIZE bytes (at least 20:
    printable ASCII, starting with the send time in ns as 20 decimal digits), spread evenly
    over time and the connections, and counts the Text messages it receives; a message due on
    a connection with more than ``OUT_LIMIT`` bytes unsent (the server does not read) is
    skipped, not queued.  After SECONDS it waits for the deliveries to stop (none for
    ``QUIET`` seconds, or all sent x connections arrived, or ``--timeout`` passed):
    ``{"sent", "received", "seconds", "latency", "cpu", "connections", "frame_errors",
    "skipped"}``: ``seconds`` from the first send to the last delivery (or the end of sending,
    if later), ``latency`` as fleet.py's ``latencies_us``, ``connections`` still open.  The
    server's frames all have one length (SIZE bytes of Text), so they are counted, not parsed
    (the fleet costs O(1) per read, not per message); the first frame starting in each read is
    checked (0x81) and gives the latency sample (the oldest message of the read, so the
    percentiles err on the high side).
``quit``
    close everything and exit.

Every report's CPU figure is this process's (user + system) during the command.  The C fleet
does the same, with the same constants (``QUIET``, ``OUT_LIMIT``, the stamp).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import resource
import sys
import time

from fleet import HEADER, cpu_seconds, summarize, upgrade_request

#: a chat ends once no delivery came for this long (after the last message was sent)
QUIET = 1.0
#: chat: a connection with more than this unsent skips its messages (as cfleet's OUT_LIMIT)
OUT_LIMIT = 4 << 20
#: the chat sender wakes this often and sends what is due
TICK = 0.005
#: uploads join small messages into writes of about this size
WRITE = 64 << 10
#: the digits of the send time at the start of a chat message
STAMP = 20


def frame_head(opcode: int, n: int, mask: bool) -> bytes:
    """A final frame's header (without the key)."""
    bit = 0x80 if mask else 0
    if n < 126:
        return bytes((0x80 | opcode, bit | n))
    if n < 65536:
        return bytes((0x80 | opcode, bit | 126)) + n.to_bytes(2, "big")
    return bytes((0x80 | opcode, bit | 127)) + n.to_bytes(8, "big")


def xor(data: bytes, key: bytes) -> bytes:
    """``data`` masked with ``key``, from a 4-byte boundary."""
    n = len(data)
    repeated = (key * (n // 4 + 1))[:n]
    return (int.from_bytes(data, "big") ^ int.from_bytes(repeated, "big")).to_bytes(n, "big")


class Client(asyncio.Protocol):
    """One connection: the handshake, then what the command in progress receives."""

    def __init__(self, fleet: Fleet) -> None:
        self.fleet = fleet
        self.key = os.urandom(4)
        self.buffer = bytearray()
        self.handshaken = asyncio.get_running_loop().create_future()
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.writable: asyncio.Future[None] | None = None  # set while writing is paused
        self.paused = False
        self.echoed: asyncio.Future[int] | None = None  # echo: the send time of the echo
        self.offset = 0  # chat: the position inside the current frame

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        transport.write(upgrade_request())

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if not self.handshaken.done():
            self.handshaken.set_exception(ConnectionError("closed during the handshake"))
        self.resume_writing()
        if self.echoed is not None and not self.echoed.done():
            self.echoed.cancel()

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False
        if self.writable is not None and not self.writable.done():
            self.writable.set_result(None)

    def data_received(self, data: bytes) -> None:
        if not self.handshaken.done():
            buf = self.buffer
            buf += data
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                return
            if not buf.startswith(b"HTTP/1.1 101"):
                self.handshaken.set_exception(ConnectionError(bytes(buf[:200]).decode()))
                return
            data = bytes(buf[end + 4 :])
            buf.clear()
            self.handshaken.set_result(None)
        fleet = self.fleet
        if fleet.frame_len:
            self.count(data)
        elif self.echoed is not None:
            self.parse(data)
        # otherwise (uploads, between commands): nothing is expected, nothing is kept

    def count(self, data: bytes) -> None:
        """Chat: count fixed-length Text frames; sample the first frame that starts here."""
        fleet = self.fleet
        frame_len, offset, n = fleet.frame_len, self.offset, len(data)
        first = (frame_len - offset) % frame_len
        stamp = first + fleet.head_len
        if stamp + STAMP <= n:
            if data[first] != 0x81:
                fleet.frame_errors += 1
            else:
                try:
                    fleet.latencies.append(time.time_ns() - int(data[stamp : stamp + STAMP]))
                except ValueError:
                    fleet.frame_errors += 1
        total = offset + n
        if total >= frame_len:
            fleet.received += total // frame_len
            fleet.last_delivery = time.time_ns()
        self.offset = total % frame_len

    def parse(self, data: bytes) -> None:
        """Echo: buffer until the echoed Binary frame is complete; its send time ends the wait."""
        buf = self.buffer
        buf += data
        while len(buf) >= 2:
            b1 = buf[1] & 0x7F
            start = 2 if b1 < 126 else 4 if b1 == 126 else 10
            if len(buf) < start:
                return
            length = b1 if b1 < 126 else int.from_bytes(buf[2:start], "big")
            if len(buf) < start + length:
                return
            if buf[0] & 0x0F == 0x2 and length >= HEADER.size:
                sent = HEADER.unpack_from(buf, start)[1]
                if self.echoed is not None and not self.echoed.done():
                    self.echoed.set_result(sent)
            del buf[: start + length]

    async def wait_writable(self, deadline: float) -> None:
        """Wait (until ``deadline`` at most) while the transport's buffer is over its limit."""
        if not self.paused or self.closed:
            return
        self.writable = asyncio.get_running_loop().create_future()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.writable, max(0.0, deadline - time.monotonic()))
        self.writable = None


class Fleet:
    def __init__(self) -> None:
        self.clients: list[Client] = []
        self.frame_len = 0  # nonzero during a chat: the length of every frame received
        self.head_len = 2
        self.received = 0
        self.last_delivery = 0
        self.frame_errors = 0
        self.latencies: list[int] = []

    async def connect(self, port: int, count: int) -> None:
        loop = asyncio.get_running_loop()
        limit = asyncio.Semaphore(200)

        async def one() -> None:
            async with limit:
                _, client = await asyncio.wait_for(
                    loop.create_connection(lambda: Client(self), "127.0.0.1", port), 30
                )
                await asyncio.wait_for(client.handshaken, 30)
                self.clients.append(client)

        await asyncio.gather(*(one() for _ in range(count)))

    def open_clients(self) -> list[Client]:
        return [c for c in self.clients if not c.closed and c.transport is not None]

    async def echo(self, seconds: float, size: int) -> dict[str, object]:
        """Send, await the echo, repeat: one message in flight per connection."""
        size = max(size, HEADER.size)
        cpu0 = cpu_seconds()
        latencies: list[int] = []
        deadline = time.monotonic() + seconds

        async def run(client: Client) -> int:
            assert client.transport is not None
            head = frame_head(0x2, size, True) + client.key
            padding = xor(b"e" * (size - HEADER.size), client.key)  # from offset 16: aligned
            sent = 0
            while time.monotonic() < deadline and not client.closed:
                client.echoed = asyncio.get_running_loop().create_future()
                stamp = HEADER.pack(sent, time.time_ns())
                client.transport.write(head + xor(stamp, client.key) + padding)
                try:
                    t = await asyncio.wait_for(client.echoed, deadline - time.monotonic() + 5)
                except (TimeoutError, asyncio.CancelledError):
                    break  # no echo in time (or the connection closed): this client stops
                latencies.append(time.time_ns() - t)
                sent += 1
            client.echoed = None
            return sent

        counts = await asyncio.gather(*(run(c) for c in self.open_clients()))
        return {
            "messages": sum(counts),
            "seconds": seconds,
            "latencies_us": summarize(latencies),
            "cpu_s": cpu_seconds() - cpu0,
        }

    async def upload(self, seconds: float, size: int) -> dict[str, object]:
        """Binary messages back to back, each connection as fast as its socket takes them."""
        cpu0 = cpu_seconds()
        started = time.monotonic()
        deadline = started + seconds
        per_write = max(1, WRITE // (size + 14))

        async def run(client: Client) -> int:
            assert client.transport is not None
            frame = frame_head(0x2, size, True) + client.key + xor(b"u" * size, client.key)
            burst = frame * per_write
            client.transport.set_write_buffer_limits(high=max(2 * len(burst), 256 << 10))
            written = 0
            while time.monotonic() < deadline and not client.closed:
                await client.wait_writable(deadline)
                if client.closed or time.monotonic() >= deadline:
                    break
                client.transport.write(burst)
                written += per_write
                await asyncio.sleep(0)  # the other connections' turn
            return written

        counts = await asyncio.gather(*(run(c) for c in self.open_clients()))
        return {
            "messages": sum(counts),
            "bytes": sum(counts) * size,
            "seconds": time.monotonic() - started,
            "cpu": cpu_seconds() - cpu0,
        }

    async def chat(self, seconds: float, rate: float, size: int, limit: float) -> dict[str, object]:
        """RATE Text messages a second per connection, then wait for the deliveries to stop."""
        size = max(size, STAMP)
        clients = self.open_clients()
        n = len(clients)
        frames = [
            (frame_head(0x1, size, True) + c.key, xor(b"x" * (size - STAMP), c.key))
            for c in clients
        ]
        self.head_len = len(frame_head(0x1, size, False))
        self.frame_len = self.head_len + size
        self.received = self.frame_errors = 0
        self.latencies = []
        for c in clients:
            c.offset = 0
        cpu0 = cpu_seconds()
        start_ns = time.time_ns()
        self.last_delivery = start_ns
        t0 = time.monotonic()
        total = int(seconds * rate * n)  # message j: client j % n, at t0 + j / (rate * n)
        sent = skipped = j = 0
        while j < total and time.monotonic() < t0 + seconds + 1:
            due = min(total, int((time.monotonic() - t0) * rate * n) + 1)
            while j < due:
                client, (head, padding) = clients[j % n], frames[j % n]
                j += 1
                if client.closed or client.transport is None:
                    continue
                if client.transport.get_write_buffer_size() > OUT_LIMIT:
                    skipped += 1
                    continue
                stamp = f"{time.time_ns():020d}".encode()
                client.transport.write(head + xor(stamp, client.key) + padding)
                sent += 1
            await asyncio.sleep(TICK)
        ended = time.monotonic()
        while time.monotonic() - ended < limit:  # wait for the deliveries to stop
            if self.received >= sent * n:
                break
            quiet = (time.time_ns() - self.last_delivery) / 1e9
            if quiet > QUIET and time.monotonic() - ended > QUIET:
                break
            await asyncio.sleep(0.05)
        self.frame_len = 0
        return {
            "sent": sent,
            "received": self.received,
            "seconds": max(seconds, (self.last_delivery - start_ns) / 1e9),
            "latency": summarize(self.latencies),
            "cpu": cpu_seconds() - cpu0,
            "connections": sum(not c.closed for c in clients),
            "frame_errors": self.frame_errors,
            "skipped": skipped,
        }


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--connections", type=int, required=True)
    parser.add_argument(
        "--timeout", type=float, default=30, help="chat: the longest wait for deliveries to stop"
    )
    args = parser.parse_args()
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    fleet = Fleet()
    try:
        await fleet.connect(args.port, args.connections)
    except (OSError, ConnectionError, TimeoutError) as exc:  # say why, for inbound.py
        print(f"failed: {exc!r}", flush=True)
        return
    print("ready", flush=True)
    loop = asyncio.get_running_loop()
    while True:  # one command a line, until quit or the end of stdin
        words = (await loop.run_in_executor(None, sys.stdin.readline)).split()
        if not words or words[0] == "quit":
            break
        try:
            if words[0] == "echo":
                report = await fleet.echo(float(words[1]), int(words[2]))
            elif words[0] == "upload":
                report = await fleet.upload(float(words[1]), int(words[2]))
            elif words[0] == "chat":
                rate, size = float(words[2]), int(words[3])
                report = await fleet.chat(float(words[1]), rate, size, args.timeout)
            else:
                report = {"error": f"unknown command {words[0]!r}"}
        except (IndexError, ValueError) as exc:
            report = {"error": f"bad command {' '.join(words)!r}: {exc}"}
        print(json.dumps(report), flush=True)
    for client in fleet.clients:
        if client.transport is not None:
            client.transport.abort()


if __name__ == "__main__":
    asyncio.run(main())
