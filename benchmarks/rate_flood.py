"""What a rate-limited flooder costs the server, and whether it slows a normal client.

    python benchmarks/rate_flood.py [--seconds 4] [--json results/rate_flood.json]

Starts a server in another process (this file's ``server`` mode: a handler that counts what it
is sent and echoes "ping", limited to 100 messages/s burst 200 per connection), then, phase by
phase, measures a normal client's round trips (one small message every 10 ms, websockets'
sync client) and the server process's CPU time (``/proc/<pid>/stat``):

``idle``
    the normal client alone;
``drop``, ``delay``, ``close``
    while one flooder in a third process sends 16-byte messages as fast as its socket takes
    them, under each policy (``close``: the flooder reconnects after each 1008, as fast as it
    can; a cap of 5 upgrade attempts a second per address answers the rest with 429, so the
    figure is the cost of a closed connection and its refused retries);
``unlimited``
    the same flood on a handler without a limit, each message handed to ``got_message``: the
    reference a refused message's cost is compared with, in the same run.

Prints, per phase: the round trips' p50/p99/max, the server's CPU seconds, the messages the
server took and refused (its ``stats()``, fetched from ``/stats``), the server CPU per refused
(or handled) message in microseconds, and ``p99 / idle p99``.  Issue #20 asks that a limited
flooder not raise the normal client's p99 beyond 2x.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import re
import socket
import struct
import subprocess
import sys
import threading
import time
import urllib.request
from typing import Any

from ping_flood import round_trips  # the same normal client as the Ping flood's

PHASES = ("idle", "drop", "delay", "close", "unlimited")


# ---------------------------------------------------------------- the server process


def serve_forever() -> None:
    import trio

    from trio_wshandler import (
        ConnectionCaps,
        RateLimit,
        RateLimits,
        Response,
        WebSocketConnection,
        WebSocketHandler,
        serve,
    )

    class Echo(WebSocketConnection):
        async def got_message(self, message: str | bytes) -> None:
            if message == "ping" or (isinstance(message, str) and message.startswith("ping ")):
                self.send(message)

    class Handler(WebSocketHandler):
        def get_connection(self, cx: Any, hdr: Any, cid: str) -> WebSocketConnection:
            return Echo(self, cx, hdr, cid)

    class Stats:
        def __init__(self, handlers: dict[str, WebSocketHandler]) -> None:
            self.handlers = handlers

        async def handle_request(self, cx: Any, hdr: Any, body: bytes) -> Response:
            data = {name: h.stats().to_dict() for name, h in self.handlers.items()}
            return Response(200, json.dumps(data), {"Content-Type": "application/json"})

    limit = RateLimit(100, burst=200)
    handlers: dict[str, WebSocketHandler] = {
        policy: Handler(rate_limits=RateLimits(limit, policy=policy), name=policy)  # type: ignore[arg-type]
        for policy in ("drop", "delay")
    }
    # a client closed for its rate comes back at once: the attempts cap is what stops that
    handlers["close"] = Handler(
        rate_limits=RateLimits(limit, policy="close"),
        caps=ConnectionCaps(max_attempts=5, per=1.0),
        name="close",
    )
    handlers["idle"] = handlers["drop"]
    handlers["unlimited"] = Handler(name="unlimited")
    routes: dict[str, Any] = {f"/{name}": h for name, h in handlers.items()}
    routes["/stats"] = Stats(handlers)

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            server = await nursery.start(serve, routes, "127.0.0.1", 0)
            print(f"port {server.port}", flush=True)

    trio.run(main)


# ---------------------------------------------------------------- the flooder process


def frame(payload: bytes) -> bytes:
    key = os.urandom(4)
    body = bytes(b ^ key[i % 4] for i, b in enumerate(payload))
    return struct.pack("!BB", 0x81, 0x80 | len(payload)) + key + body


def connect(port: int, path: str) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port))
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall(
        f"GET {path} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
    )
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = sock.recv(1)
        if not chunk:
            raise ConnectionError("closed during the handshake")
        head += chunk
    if not head.startswith(b"HTTP/1.1 101"):
        raise ConnectionError(head.split(b"\r\n")[0].decode())
    return sock


def flood(port: int, path: str, seconds: float) -> None:
    """Send 16-byte messages as fast as the socket takes them; reconnect when closed."""
    burst = b"".join(frame(b"%016d" % i) for i in range(4096))
    deadline = time.monotonic() + seconds
    sent = connections = 0
    print("flooding", flush=True)
    while time.monotonic() < deadline:
        try:
            sock = connect(port, path)
        except OSError:
            time.sleep(0.01)
            continue
        connections += 1
        sock.settimeout(0.2)
        threading.Thread(target=_drain, args=(sock,), daemon=True).start()
        while time.monotonic() < deadline:
            try:
                sock.sendall(burst)
                sent += 4096
            except TimeoutError:
                continue
            except OSError:
                break
        sock.close()
    print(json.dumps({"sent": sent, "connections": connections}), flush=True)


def _drain(sock: socket.socket) -> None:
    try:
        while sock.recv(65536):
            pass
    except OSError:
        pass


# ---------------------------------------------------------------- the measurement


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def stats(port: int) -> dict[str, Any]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/stats", timeout=10) as response:
        return json.loads(response.read())  # type: ignore[no-any-return]


def measure(port: int, pid: int, phase: str, seconds: float) -> dict[str, Any]:
    before = stats(port)[phase]
    cpu = cpu_seconds(pid)
    flooder = None
    if phase != "idle":
        flooder = subprocess.Popen(
            [sys.executable, __file__, "flood", str(port), f"/{phase}", str(seconds)],
            stdout=subprocess.PIPE,
        )
        assert flooder.stdout is not None
        assert flooder.stdout.readline().startswith(b"flooding")
    rtts = round_trips(port, seconds, f"/{phase}")
    cpu = cpu_seconds(pid) - cpu
    sent: dict[str, int] = {}
    if flooder is not None:
        assert flooder.stdout is not None
        sent = json.loads(flooder.stdout.readline())
        flooder.wait(timeout=30)
    after = stats(port)[phase]
    taken = after["messages_received"] - before["messages_received"] - len(rtts)
    refused = after["rate_dropped"] - before["rate_dropped"]
    closes = sum(after["limit_closes"].values()) - sum(before["limit_closes"].values())
    ordered = sorted(rtts)
    return {
        "round_trips": len(ordered),
        "p50_ms": round(ordered[len(ordered) // 2] * 1000, 3),
        "p99_ms": round(ordered[max(0, int(len(ordered) * 0.99) - 1)] * 1000, 3),
        "max_ms": round(ordered[-1] * 1000, 3),
        "server_cpu_s": round(cpu, 3),
        "flood_taken": taken,
        "flood_refused": refused,
        "limit_closes": closes,
        "delay_s": round(after["rate_delay_seconds"] - before["rate_delay_seconds"], 2),
        **sent,
    }


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "server":
        serve_forever()
        return
    if len(sys.argv) > 1 and sys.argv[1] == "flood":
        flood(int(sys.argv[2]), sys.argv[3], float(sys.argv[4]))
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()
    server = subprocess.Popen(
        [sys.executable, __file__, "server"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL
    )
    try:
        assert server.stdout is not None
        match = re.search(rb"port (\d+)", server.stdout.readline())
        assert match, "the server did not start"
        port = int(match.group(1))
        results = {phase: measure(port, server.pid, phase, args.seconds) for phase in PHASES}
    finally:
        server.terminate()
        server.wait(timeout=10)
    idle = results["idle"]
    for phase in PHASES[1:]:
        result = results[phase]
        result["p99_vs_idle"] = round(result["p99_ms"] / idle["p99_ms"], 2)
        # the flood's share of the server's CPU (the normal client's is the idle phase's)
        per = result["flood_refused"] or result["limit_closes"] or result["flood_taken"]
        flood_cpu = result["server_cpu_s"] - idle["server_cpu_s"]
        result["cpu_us_per_flood_message"] = round(flood_cpu / per * 1e6, 3) if per else None
    unlimited = results["unlimited"]["cpu_us_per_flood_message"]
    drop = results["drop"]["cpu_us_per_flood_message"]
    if unlimited and drop:
        results["drop"]["cpu_vs_a_handled_message"] = round(drop / unlimited, 3)
    text = json.dumps(results, indent=2)
    print(text)
    if args.json:
        with open(args.json, "w") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
