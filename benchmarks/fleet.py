"""A fleet of WebSocket clients in one process, as light as possible so it is not the bottleneck.

    python benchmarks/fleet.py --port P --connections N [--stuck K] [--deflate [--verify-every V]]

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

``--deflate`` (the compressed-broadcast scenario): every connection offers permessage-deflate as
browsers do (``permessage-deflate; client_max_window_bits``) and the fleet stops, saying so, if
a server does not accept it.  The messages are then compressed Text frames of varying length
(about 1 KiB of JSON, see ``messages.py``), so every connection parses every frame header,
counts the data frames and checks that each has RSV1 set (compressed); one connection in
``--verify-every`` (every one with 1) also inflates every message, by the agreement the server
answered (a fresh raw inflater per message after server_no_context_takeover, otherwise one per
connection that keeps its context, which is why such a connection must inflate them all), and
checks that it is intact and in order; the latency samples come from these connections only (the
first message of each read, as above).  Inflating and checking costs the fleet about 12 us per
message, several times what trio_wshandler spends per delivery: with every connection inflating,
the fleet was the bottleneck (1,000 clients: 2.7 s for a round that takes 0.8 s with one in ten).
One more command:

``exchange SIZE``
    every connection sends one compressed Text message of about SIZE bytes of JSON and waits
    for its echo, which must come back compressed and inflate to the same text (so the servers'
    per-connection compression state exists as it does in real use: the idle-memory figure).
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
import zlib

from messages import check_message, json_message

HEADER = struct.Struct("!QQ")
#: what browsers offer
DEFLATE_OFFER = "permessage-deflate; client_max_window_bits"
#: what a sender removes from the end of a compressed message and a receiver puts back
TAIL = b"\x00\x00\xff\xff"
#: FIN, RSV1 (compressed), Text: the first byte of every message of the compressed scenario
COMPRESSED_TEXT = 0xC1


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def masked_frame(payload: bytes, opcode: int = 0x2) -> bytes:
    """A final masked frame; ``opcode`` may carry RSV1 (0x40: a compressed message)."""
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


def upgrade_request(extra_headers: str = "") -> bytes:
    """A client's upgrade request to 127.0.0.1, with a fresh key (``extra_headers``: whole lines,
    each ending in CRLF)."""
    key = base64.b64encode(os.urandom(16)).decode()
    return (
        f"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
        f"Sec-WebSocket-Version: 13\r\n{extra_headers}\r\n"
    ).encode()


class Client(asyncio.Protocol):
    #: more request header lines
    extra_headers = ""

    def __init__(self, fleet: Fleet, stuck: bool = False) -> None:
        self.fleet = fleet
        self.stuck = stuck
        self.buffer = bytearray()
        self.handshaken = asyncio.get_running_loop().create_future()
        self.received = 0
        self.echoed: asyncio.Future[int] | None = None
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.done = False  # counted by Fleet.progress in this round: all messages in, or closed
        self.offset = 0  # position inside the current frame, when counting fixed-size frames

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        if self.stuck:
            sock = transport.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        transport.write(upgrade_request(self.extra_headers))

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if not self.handshaken.done():
            self.handshaken.set_exception(ConnectionError("closed during the handshake"))
        self.fleet.progress(self)

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
            fleet.progress(self)
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
        fleet.progress(self)


class DeflateClient(Client):
    """A client that negotiates permessage-deflate (``--deflate``).

    Every connection parses every frame header without buffering payloads (``count``); a
    verifying one buffers and inflates every message (``parse``), as do all during ``exchange``.
    """

    extra_headers = f"Sec-WebSocket-Extensions: {DEFLATE_OFFER}\r\n"

    def __init__(self, fleet: Fleet, verifier: bool) -> None:
        super().__init__(fleet)
        self.verifier = verifier
        self.agreement = ""  # the server's Sec-WebSocket-Extensions answer
        self.server_bits = 15  # the window of the server's messages
        self.client_bits = 15  # the window our messages may use
        self.keep_context = True  # no server_no_context_takeover: one inflater for all
        self.inflater: zlib._Decompress | None = None
        self.skip = 0  # counting: payload bytes of the current frame still to come
        self.head = b""  # counting: the start of a frame header, split between reads
        self.next_seq = 0
        self.sent: bytes | None = None  # the exchange: the message whose echo is awaited

    def data_received(self, data: bytes) -> None:
        if not self.handshaken.done():
            buf = self.buffer
            buf += data
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(buf[:end]).decode("latin-1")
            data = bytes(buf[end + 4 :])
            buf.clear()
            try:
                self.negotiate(head)
            except ConnectionError as exc:
                self.handshaken.set_exception(exc)
                return
            self.handshaken.set_result(None)
            if not data:
                return
        if self.verifier or self.fleet.exchanging:
            self.parse(data)
        else:
            self.count(data)

    def negotiate(self, head: str) -> None:
        """Take the agreement from the 101 response, or raise ConnectionError."""
        if not head.startswith("HTTP/1.1 101"):
            raise ConnectionError(head[:200])
        for line in head.split("\r\n")[1:]:
            name, _, value = line.partition(":")
            if name.strip().lower() == "sec-websocket-extensions":
                self.agreement = value.strip()
        params = [p.strip() for p in self.agreement.split(";")]
        if params[0] != "permessage-deflate":
            raise ConnectionError(f"permessage-deflate not negotiated: {self.agreement!r}")
        for param in params[1:]:
            name, _, value = param.partition("=")
            if name == "server_no_context_takeover":
                self.keep_context = False
            elif name == "server_max_window_bits":
                self.server_bits = int(value.strip('"'))
            elif name == "client_max_window_bits":
                self.client_bits = int(value.strip('"'))

    def count(self, data: bytes) -> None:
        """Count the data frames in a read, check their first byte, buffer no payload."""
        if self.head:
            data = self.head + data
            self.head = b""
        pos, n = self.skip, len(data)
        if pos > n:  # all of it belongs to the frame in progress
            self.skip = pos - n
            return
        complete = 1 if pos else 0  # the frame in progress ends in this read
        self.skip = 0
        bad, first = 0, 0  # wrong frames, and the first byte of the first one
        while pos < n:
            if n - pos < 2:
                self.head = data[pos:]
                break
            b0, b1 = data[pos], data[pos + 1] & 0x7F
            if b1 < 126:
                end = pos + 2 + b1
            elif b1 == 126:
                if n - pos < 4:
                    self.head = data[pos:]
                    break
                end = pos + 4 + int.from_bytes(data[pos + 2 : pos + 4], "big")
            else:
                if n - pos < 10:
                    self.head = data[pos:]
                    break
                end = pos + 10 + int.from_bytes(data[pos + 2 : pos + 10], "big")
            if b0 != COMPRESSED_TEXT:
                bad, first = bad + 1, first or b0
            if end > n:
                self.skip = end - n
                break
            complete += 1
            pos = end
        self.received += complete
        if bad:
            self.fleet.fault(f"a frame starting {first:#04x}, not a compressed Text message", bad)
        self.fleet.progress(self)

    def parse(self, data: bytes) -> None:
        """Buffer, and inflate and check every message (a verifying client, or the exchange)."""
        now = time.time_ns()
        buf = self.buffer
        buf += data
        fleet = self.fleet
        oldest = 0  # the first message of this read: the largest latency in it
        pos, n = 0, len(buf)
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
            frame = bytes(buf[start:end])
            pos = end
            if self.sent is None:
                self.received += 1
            if b0 != COMPRESSED_TEXT:
                fleet.fault(f"a frame starting {b0:#04x}, not a compressed Text message")
                continue
            try:
                message = self.inflate(frame)
            except zlib.error as exc:
                fleet.fault(f"inflating failed ({self.agreement}): {exc}")
                continue
            if self.sent is not None:  # the exchange's echo
                if message != self.sent:
                    fleet.fault("the echo inflated to other text than was sent")
                self.sent = None
                if self.echoed is not None and not self.echoed.done():
                    self.echoed.set_result(now)
                continue
            try:
                seq, ts = check_message(message)
            except ValueError as exc:
                fleet.fault(f"message {self.next_seq}: {exc}")
                continue
            if seq != self.next_seq:
                fleet.fault(f"message {seq} where {self.next_seq} was expected")
            self.next_seq = seq + 1
            fleet.verified += 1
            fleet.wire_bytes += length
            fleet.inflated_bytes += len(message)
            if not oldest:
                oldest = ts
        del buf[:pos]
        if oldest:
            fleet.latencies.append(now - oldest)
        fleet.progress(self)

    def inflate(self, payload: bytes) -> bytes:
        """A message's text, by the agreement: a fresh inflater per message after
        server_no_context_takeover, else one for the life of the connection."""
        inflater = self.inflater
        if inflater is None:
            inflater = zlib.decompressobj(-self.server_bits)
            if self.keep_context:
                self.inflater = inflater
        return inflater.decompress(payload + TAIL)

    def compress(self, message: bytes) -> bytes:
        """A message of ours compressed within the window the server allowed us (each message
        on its own, which every agreement allows)."""
        compressor = zlib.compressobj(6, zlib.DEFLATED, -self.client_bits)
        return (compressor.compress(message) + compressor.flush(zlib.Z_SYNC_FLUSH))[:-4]


class Fleet:
    def __init__(self, deflate: bool = False, verify_every: int = 1) -> None:
        self.deflate = deflate
        self.verify_every = verify_every
        self.clients: list[Client] = []
        self.latencies: list[int] = []
        self.expected = 0
        self.waiting = 0  # normal clients not yet done in this round (see progress)
        self.done = asyncio.Event()
        self.finished_ns = 0
        self.cpu0 = 0.0
        self.frame_len = 0  # nonzero during a broadcast round: the length of every frame
        self.size = 0
        self.errors = 0
        # the compressed scenario: messages inflated and checked, their bytes on the wire and
        # inflated, what went wrong first
        self.exchanging = False
        self.verified = 0
        self.wire_bytes = 0
        self.inflated_bytes = 0
        self.problem = ""

    def fault(self, problem: str, count: int = 1) -> None:
        """Wrong frames or messages (compressed scenario): counted, the first problem kept."""
        self.errors += count
        self.problem = self.problem or problem

    def progress(self, client: Client | None = None) -> None:
        """Set ``done`` once every normal client has its messages or is closed.

        Called after every read with the client that read: each client is counted once, when
        it is done, against ``waiting``, so a read costs O(1).  (It used to check every client
        with ``all()`` on every read; at 5,000 clients a fleet, when a client's burst arrives in
        one read and the clients finish in order, that was 12.5 million checks per round, about
        0.5 s of the fleet's CPU, more than everything else it did.)  Without a client (the
        start of ``expect``), every client is checked once."""
        if not self.expected or self.done.is_set():
            return
        for c in self.clients if client is None else (client,):
            if not c.done and not c.stuck and (c.received >= self.expected or c.closed):
                c.done = True
                self.waiting -= 1
        if self.waiting <= 0:
            self.finished_ns = time.time_ns()
            self.done.set()

    async def connect(self, port: int, count: int, stuck: int) -> None:
        loop = asyncio.get_running_loop()
        limit = asyncio.Semaphore(200)

        def make(index: int, is_stuck: bool) -> Client:
            if self.deflate:
                return DeflateClient(self, index % self.verify_every == 0)
            return Client(self, is_stuck)

        async def one(index: int, is_stuck: bool) -> None:
            async with limit:
                _, client = await loop.create_connection(
                    lambda: make(index, is_stuck), "127.0.0.1", port
                )
                await client.handshaken
                self.clients.append(client)

        await asyncio.gather(*(one(i, False) for i in range(count)))
        await asyncio.gather(*(one(i, True) for i in range(stuck)))

    def arm(self, count: int, size: int) -> None:
        """Reset the counters before the server starts sending COUNT messages of SIZE bytes."""
        self.size = size
        self.frame_len = size + (2 if size < 126 else 4 if size < 65536 else 10)
        if self.deflate:  # compressed frames vary in length: DeflateClient parses them
            self.frame_len = 0
        self.errors = 0
        self.verified = self.wire_bytes = self.inflated_bytes = 0
        self.problem = ""
        for client in self.clients:
            client.received = 0
            client.done = False
            client.offset = 0
            if isinstance(client, DeflateClient):
                client.next_seq = 0
            if client.buffer:  # leftovers would misalign the count: fall back to parsing
                self.frame_len = 0
        self.latencies = []
        self.expected = count
        self.waiting = sum(not c.stuck for c in self.clients)
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
        if self.deflate:
            report.update(self.deflate_report())
        self.expected = 0
        self.frame_len = 0
        return report

    def deflate_report(self) -> dict[str, object]:
        verifiers = [c for c in self.clients if isinstance(c, DeflateClient) and c.verifier]
        agreements = {c.agreement for c in self.clients if isinstance(c, DeflateClient)}
        return {
            "verifiers": len(verifiers),
            "verified": self.verified,
            "wire_bytes": self.wire_bytes,
            "inflated_bytes": self.inflated_bytes,
            "agreements": sorted(agreements),
            "problem": self.problem,
        }

    async def exchange(self, size: int, limit: float) -> dict[str, object]:
        """Every connection sends one compressed message and awaits its echo (``--deflate``)."""
        loop = asyncio.get_running_loop()
        cpu0 = cpu_seconds()
        self.errors = 0
        self.problem = ""
        self.exchanging = True
        waits = []
        for i, client in enumerate(self.clients):
            assert isinstance(client, DeflateClient) and client.transport is not None
            message = json_message(i, size).encode()
            client.sent = message
            client.echoed = loop.create_future()
            waits.append(client.echoed)
            client.transport.write(masked_frame(client.compress(message), 0x40 | 0x1))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.gather(*waits), limit)
        self.exchanging = False
        for client in self.clients:
            assert isinstance(client, DeflateClient)
            client.echoed = None
            if not client.verifier:
                client.inflater = None  # it no longer inflates
        return {
            "exchanged": sum(w.done() and not w.cancelled() for w in waits),
            "connections": len(self.clients),
            "frame_errors": self.errors,
            "cpu_s": cpu_seconds() - cpu0,
            **self.deflate_report(),
        }

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
    parser.add_argument("--deflate", action="store_true", help="negotiate permessage-deflate")
    parser.add_argument("--verify-every", type=int, default=1, help="with --deflate: see above")
    args = parser.parse_args()
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if args.deflate and args.stuck:
        parser.error("--deflate has no stuck connections")
    fleet = Fleet(args.deflate, args.verify_every)
    try:
        await fleet.connect(args.port, args.connections, args.stuck)
    except (OSError, ConnectionError) as exc:  # say why, for run.py's error message
        print(f"failed: {exc}", flush=True)
        return
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
        elif words[0] == "exchange" and fleet.deflate:
            report = await fleet.exchange(int(words[1]), args.timeout)
        else:
            report = {"error": f"unknown command {words[0]!r}"}
        print(json.dumps(report), flush=True)
    for client in fleet.clients:
        if client.transport is not None:
            client.transport.abort()


if __name__ == "__main__":
    asyncio.run(main())
