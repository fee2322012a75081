"""What topic history costs in one process (issue #19): a history publish against a plain one,
and a recovery storm against the same deliveries made live.

    python benchmarks/history.py [--clients 1000] [--pairs 30] [--quick] [--out DIR]

One process, one ``WebSocketHandler(history={"h": ...})`` served on 127.0.0.1, and N raw TCP
clients of this process (a hand-written handshake; they read only between timed windows, so a
window holds the server's work alone), every one subscribed to ``h`` (history) and ``p``
(plain).

``publish``: rounds of M paced publishes of a 64-character text to ``h`` and to ``p``, in turns
(which goes first alternates), each timed in process CPU seconds until every queue is written;
reported: CPU per delivery of each, and the median of the pairs' ratios (history / plain) with a
95 % bootstrap interval.  A history publish also builds its envelope (JSON, about 110 bytes
instead of 64) and keeps it; both happen once per publication, not per subscriber.

``storm``: every client leaves ``h`` and records its position, 100 publications are made, then
all N subscribe again from their positions at once (``subscribe_from`` in N tasks) and every
one is replayed its 100; timed from the first call until every queue is written, against the
same N x 100 deliveries made live (all subscribed, 100 paced publishes) in the same run.
Each is repeated ``--storms`` times, in turns; medians.  The clients' bytes are counted after
each window (a window whose bytes do not all arrive fails the run).
"""

from __future__ import annotations

import argparse
import json
import resource
import socket
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import trio
from counters_harness import drain, raw_clients
from operations import median_interval

from trio_wshandler import (
    HistoryOptions,
    Position,
    WebSocketConnection,
    WebSocketHandler,
    default_envelope,
    serve,
)

TEXT = "m" * 64
GAP = 100


def frame_size(payload: int) -> int:
    return payload + (2 if payload < 126 else 4)


def envelope_frame(offset: int) -> int:
    """The frame size of publication ``offset`` of ``h`` (an epoch is 16 characters)."""
    return frame_size(len(default_envelope("h", Position(offset, "0" * 16), TEXT).encode()))


class Bench:
    def __init__(self, n: int) -> None:
        self.n = n
        self.handler = WebSocketHandler(
            heartbeat=None,
            compression=None,
            max_queue=1 << 16,
            max_queue_bytes=64 << 20,
            history={"h": HistoryOptions(size=10_000, ttl=3600, max_bytes=64 << 20)},
        )
        self.clients: list[socket.socket] = []
        self.offset = 0  # of h: this script makes every publication

    async def start(self, nursery: trio.Nursery) -> None:
        server = await nursery.start(serve, self.handler, "127.0.0.1", 0)
        self.clients = await trio.to_thread.run_sync(raw_clients, server.port, self.n)
        while len(self.handler) < self.n:  # noqa: ASYNC110 (a bounded wait for the upgrades)
            await trio.sleep(0.01)
        for sock in self.clients:
            sock.setblocking(False)
        for connection in self.connections():
            connection.subscribe("p")
            await connection.subscribe_from("h")
        await trio.sleep(0.2)
        drain(self.clients)

    def connections(self) -> list[WebSocketConnection]:
        return list(self.handler.registry)

    def written(self) -> bool:
        return all(c.queued_bytes == 0 for c in self.handler.registry)

    async def settle(self) -> None:
        """Wait until every queue is written."""
        limit = time.monotonic() + 30
        while not self.written():
            if time.monotonic() > limit:
                raise RuntimeError("the queues were not written in 30 s")
            await trio.lowlevel.checkpoint()

    async def received(self, expected: int) -> None:
        got, deadline = drain(self.clients), time.monotonic() + 30
        while got < expected and time.monotonic() < deadline:
            await trio.sleep(0.01)
            got += drain(self.clients)
        if got != expected:
            raise RuntimeError(f"the clients got {got} bytes, not {expected}")

    async def publish_round(self, topic: str, m: int) -> float:
        """CPU us per delivery of m paced publishes to ``topic``."""
        expected = 0
        await trio.sleep(0.02)
        start = time.process_time()
        for _ in range(m):
            self.handler.publish(topic, TEXT)
            if topic == "h":
                self.offset += 1
                expected += envelope_frame(self.offset)
            else:
                expected += frame_size(len(TEXT))
            await trio.lowlevel.checkpoint()
        await self.settle()
        cpu = time.process_time() - start
        await self.received(expected * self.n)
        return cpu / (self.n * m) * 1e6

    async def live_round(self) -> tuple[float, float]:
        """(wall s, CPU s) of GAP paced publishes to h, every client subscribed."""
        expected = sum(envelope_frame(self.offset + i) for i in range(1, GAP + 1))
        await trio.sleep(0.02)
        wall, cpu = time.monotonic(), time.process_time()
        for _ in range(GAP):
            self.handler.publish("h", TEXT)
            await trio.lowlevel.checkpoint()
        self.offset += GAP
        await self.settle()
        wall, cpu = time.monotonic() - wall, time.process_time() - cpu
        await self.received(expected * self.n)
        return wall, cpu

    async def storm_round(self) -> tuple[float, float]:
        """(wall s, CPU s) of every client subscribing again from GAP publications ago."""
        connections = self.connections()
        since = Position(self.offset, (await connections[0].subscribe_from("h")).position.epoch)
        for connection in connections:
            connection.unsubscribe("h")
        for _ in range(GAP):
            self.handler.publish("h", TEXT)
        expected = sum(envelope_frame(self.offset + i) for i in range(1, GAP + 1))
        self.offset += GAP
        drain(self.clients)
        await trio.sleep(0.02)
        recovered = 0
        wall, cpu = time.monotonic(), time.process_time()
        async with trio.open_nursery() as nursery:

            async def recover(connection: WebSocketConnection) -> None:
                nonlocal recovered
                got = await connection.subscribe_from("h", since)  # (not ``recovered +=
                recovered += got.recovered  # await ...``: that reads it before the await)

            for connection in connections:
                nursery.start_soon(recover, connection)
        await self.settle()
        wall, cpu = time.monotonic() - wall, time.process_time() - cpu
        if recovered != self.n:
            raise RuntimeError(f"{self.n - recovered} subscriptions did not recover")
        await self.received(expected * self.n)
        return wall, cpu


async def main(n: int, m: int, pairs: int, storms: int) -> dict[str, Any]:
    bench = Bench(n)
    result: dict[str, Any] = {"clients": n, "messages_per_round": m, "pairs": [], "storms": []}
    async with trio.open_nursery() as nursery:
        await bench.start(nursery)
        await bench.publish_round("h", m)  # warm-up
        await bench.publish_round("p", m)
        for pair in range(pairs):
            order = ["h", "p"] if pair % 2 == 0 else ["p", "h"]
            figures = {topic: await bench.publish_round(topic, m) for topic in order}
            result["pairs"].append({"history": figures["h"], "plain": figures["p"]})
        for _ in range(storms):
            live = await bench.live_round()
            storm = await bench.storm_round()
            result["storms"].append({"live": live, "storm": storm})
        for sock in bench.clients:
            sock.close()
        nursery.cancel_scope.cancel()
    return result


def report(result: dict[str, Any]) -> str:
    pairs = result["pairs"]
    ratios = [p["history"] / p["plain"] for p in pairs]
    low, high = median_interval(ratios)
    storms = result["storms"]
    live_wall = statistics.median(s["live"][0] for s in storms)
    storm_wall = statistics.median(s["storm"][0] for s in storms)
    live_cpu = statistics.median(s["live"][1] for s in storms)
    storm_cpu = statistics.median(s["storm"][1] for s in storms)
    n = result["clients"]
    lines = [
        "# Topic history in one process",
        "",
        f"`python benchmarks/history.py` ({result['command']}); {n:,} clients in this process.",
        "",
        f"Publishing: {len(pairs)} pairs of rounds of {result['messages_per_round']} paced"
        " publishes of a 64-character text, to a topic with history and to a plain one, in turns.",
        "",
        "| topic | CPU us per delivery (median of rounds) |",
        "|---|---|",
        f"| with history | {statistics.median(p['history'] for p in pairs):.3f} |",
        f"| plain | {statistics.median(p['plain'] for p in pairs):.3f} |",
        "",
        f"History / plain, median of the pairs: **{statistics.median(ratios):.3f}x**"
        f" (95 % interval {low:.3f}-{high:.3f}).",
        "",
        f"Recovery storm: {n:,} clients each {GAP} publications behind subscribe again at once,"
        f" against the same {n * GAP:,} deliveries live (medians of {len(storms)} of each, in"
        " turns).",
        "",
        "| | wall ms until every queue is written | CPU ms |",
        "|---|---|---|",
        f"| live: {GAP} paced publishes | {live_wall * 1e3:.1f} | {live_cpu * 1e3:.1f} |",
        f"| storm: {n:,} x subscribe_from | {storm_wall * 1e3:.1f} | {storm_cpu * 1e3:.1f} |",
        "",
        f"Storm / live, wall time: **{storm_wall / live_wall:.2f}x**.",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=1000)
    parser.add_argument("--messages", type=int, default=50)
    parser.add_argument("--pairs", type=int, default=30)
    parser.add_argument("--storms", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="100 clients, 3 pairs, 1 storm")
    parser.add_argument("--out", default="reports/history")
    args = parser.parse_args()
    if args.quick:
        args.clients, args.pairs, args.storms = 100, 3, 1
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    found = trio.run(main, args.clients, args.messages, args.pairs, args.storms)
    found["command"] = " ".join(sys.argv[1:]) or "defaults"
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "history.json").write_text(json.dumps(found, indent=1))
    text = report(found)
    (out / "history.md").write_text(text)
    print(text)
