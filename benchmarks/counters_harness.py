"""The process of the counters benchmark (``operations.py``): the server's fan-out hot path with
and without the stats counters, in one process, timed in CPU seconds, round by round in turns.

    PYTHONPATH=<this checkout>:<DIR> python benchmarks/counters_harness.py N M PAIRS

``DIR`` holds the package as it was before the counters, renamed ``trio_wshandler_base`` (the
package imports itself relatively only, so both load side by side).  Each serves a plain
``WebSocketHandler`` on 127.0.0.1 with N raw TCP clients of its own in this process (a
hand-written handshake, no compression).  A round broadcasts M messages of 64 B (paced: a
checkpoint after each, so the flusher writes every client once per message; burst: no
checkpoint, one coalesced write per client) and waits until every queue is written; the process
CPU time of that window, divided by N x M, is the round's CPU per delivery.  Clients are read
between rounds, outside the window, and the other server is idle meanwhile, so a window holds one
server's work alone: encoding, queueing, the flusher's writes (and the kernel's share of them),
and whatever that version counts on the way.

Rounds of the two versions alternate (which goes first alternates too), so each pair sees the
same moments of a shared machine: separate processes, or rounds seconds apart, differed by
10-30 % here, more than the effect measured.  Then times ``SendQueue.wrote`` of each version
(``timeit``), the per-write code where the counters of writes and bytes live.  Prints one JSON
line: for each mode, the list of (with, without) pairs in us per delivery, total and user-space
CPU, and ``wrote_ns``.
"""

from __future__ import annotations

import base64
import importlib
import json
import os
import resource
import socket
import sys
import time
import timeit
from typing import Any

import trio

MESSAGE = b"m" * 64
FRAME_BYTES = len(MESSAGE) + 2


def raw_clients(port: int, n: int) -> list[socket.socket]:
    """N client sockets that sent an upgrade request (the 101s are read with the first drain)."""
    clients = []
    for _ in range(n):
        sock = socket.create_connection(("127.0.0.1", port))
        key = base64.b64encode(os.urandom(16)).decode()
        sock.sendall(
            (
                "GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
                f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                "Sec-WebSocket-Version: 13\r\n\r\n"
            ).encode()
        )
        clients.append(sock)
    return clients


def drain(clients: list[socket.socket]) -> int:
    """Read whatever the clients have received; the number of bytes."""
    total = 0
    for sock in clients:
        while True:
            try:
                data = sock.recv(1 << 20)
            except BlockingIOError:
                break
            if not data:
                break
            total += len(data)
    return total


class Side:
    """One version of the package: its handler, server and clients."""

    def __init__(self, package: str) -> None:
        self.package = importlib.import_module(package)
        self.handler: Any = self.package.WebSocketHandler(
            heartbeat=None, compression=None, max_queue=1 << 16
        )
        self.clients: list[socket.socket] = []

    async def start(self, nursery: trio.Nursery, n: int) -> None:
        server = await nursery.start(self.package.serve, self.handler, "127.0.0.1", 0)
        self.clients = await trio.to_thread.run_sync(raw_clients, server.port, n)
        while len(self.handler) < n:  # noqa: ASYNC110 (a bounded poll of another package)
            await trio.sleep(0.01)
        for sock in self.clients:
            sock.setblocking(False)
        await trio.sleep(0.2)
        drain(self.clients)

    def written(self) -> bool:
        return all(c.queued_bytes == 0 for c in self.handler.registry)

    async def round(self, m: int, paced: bool) -> tuple[float, float] | None:
        """(total, user) CPU us per delivery of one round; None if a socket backed up."""
        n = len(self.clients)
        await trio.sleep(0.02)
        start, user = time.process_time(), resource.getrusage(resource.RUSAGE_SELF).ru_utime
        for _ in range(m):
            self.handler.send_all(MESSAGE)
            if paced:
                await trio.lowlevel.checkpoint()
        limit, backed_up = time.monotonic() + 5, False
        while not self.written():
            if time.monotonic() > limit:  # a socket backed up: read, and skip the round
                backed_up = True
                drain(self.clients)
            await trio.lowlevel.checkpoint()
        cpu = time.process_time() - start
        user = resource.getrusage(resource.RUSAGE_SELF).ru_utime - user
        received, deadline = drain(self.clients), time.monotonic() + 10
        while received < n * m * FRAME_BYTES and time.monotonic() < deadline:
            await trio.sleep(0.01)
            received += drain(self.clients)
        if backed_up or received != n * m * FRAME_BYTES:
            return None
        return cpu / (n * m) * 1e6, user / (n * m) * 1e6


async def main(n: int, m: int, pairs: int) -> dict[str, Any]:
    sides = {"with": Side("trio_wshandler"), "without": Side("trio_wshandler_base")}
    results: dict[str, Any] = {"paced": [], "burst": [], "skipped": 0}
    async with trio.open_nursery() as nursery:
        for side in sides.values():
            await side.start(nursery, n)
        for mode in ("paced", "burst"):
            await sides["with"].round(m, mode == "paced")  # warm-up rounds, not counted
            await sides["without"].round(m, mode == "paced")
            for pair in range(pairs):
                order = ["with", "without"] if pair % 2 == 0 else ["without", "with"]
                figures = {name: await sides[name].round(m, mode == "paced") for name in order}
                with_, without = figures["with"], figures["without"]
                if with_ is None or without is None:
                    results["skipped"] += 1
                    continue
                results[mode].append({"with": with_, "without": without})
        for side in sides.values():
            for sock in side.clients:
                sock.close()
        nursery.cancel_scope.cancel()
    return results


def wrote_ns() -> dict[str, float]:
    """What ``SendQueue.wrote`` (the per-write accounting, where the counters of writes and
    bytes live) costs in each version: ns per call, the best of 7 runs, alternated."""
    best: dict[str, float] = {}
    for _ in range(3):
        for name, package in (("with", "trio_wshandler"), ("without", "trio_wshandler_base")):
            queue = importlib.import_module(f"{package}._send_queue").SendQueue(10, 1 << 40)
            queue.queued_bytes, queue.written = 1 << 40, 1 << 20  # past the small-int cache
            if hasattr(queue, "writes"):
                queue.writes, queue.bytes_written = 1 << 20, 1 << 30
            frames = [MESSAGE]
            runs = timeit.repeat(lambda q=queue, f=frames: q.wrote(f, 66), number=200_000, repeat=7)
            best[name] = min(best.get(name, 1e9), min(runs) / 200_000 * 1e9)
    return best


if __name__ == "__main__":
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    n, m, pairs = (int(arg) for arg in sys.argv[1:4])
    results = trio.run(main, n, m, pairs)
    results["wrote_ns"] = wrote_ns()
    results["files"] = {
        name: importlib.import_module(package).__file__
        for name, package in (("with", "trio_wshandler"), ("without", "trio_wshandler_base"))
    }
    print(json.dumps(results), flush=True)
