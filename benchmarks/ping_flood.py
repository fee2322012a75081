"""Fairness under a Ping flood: a normal client's echo round trip while N clients flood Pings.

    python benchmarks/ping_flood.py [--flooders 5] [--seconds 4]

starts ``python -m trio_wshandler echo`` on a free port, measures a normal client's round trips
(one small message at a time, 10 ms apart) first alone, then while ``--flooders`` clients in
another process send minimal Ping frames as fast as they can and never read their Pongs, and
prints p50 / p99 / max for both.  Target (issue 7): with 5 flooders, p99 under 100 ms and max
under 250 ms.

``python benchmarks/ping_flood.py flood PORT CLIENTS SECONDS`` is the flooding process alone
(the test suite uses it too).
"""

from __future__ import annotations

import argparse
import json
import re
import socket
import subprocess
import sys
import threading
import time

REQUEST = (
    b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
)
MASK = b"\x01\x02\x03\x04"
#: 4096 masked Pings with a 4-byte payload, 10 bytes each
PINGS = (b"\x89\x84" + MASK + bytes(b ^ k for b, k in zip(b"ping", MASK, strict=True))) * 4096


def flood(port: int, clients: int, seconds: float) -> None:
    """Open ``clients`` upgraded connections that never read, and flood Pings on each."""
    socks = []
    for _ in range(clients):
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # Pongs pile up at once
        s.connect(("127.0.0.1", port))
        s.sendall(REQUEST)
        head = b""
        while b"\r\n\r\n" not in head:
            head += s.recv(1)  # read nothing past the 101
        socks.append(s)
    deadline = time.monotonic() + seconds
    sent = [0] * clients

    def run(i: int) -> None:
        s = socks[i]
        s.settimeout(0.5)
        while time.monotonic() < deadline:
            try:
                s.sendall(PINGS)
                sent[i] += 4096
            except TimeoutError:
                pass
            except OSError:
                return

    threads = [threading.Thread(target=run, args=(i,)) for i in range(clients)]
    print("flooding", flush=True)
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    print(f"sent {sum(sent)} pings", flush=True)


def round_trips(port: int, seconds: float, path: str = "/") -> list[float]:
    """A normal client's round trips (one small message every 10 ms) for ``seconds``."""
    from websockets.sync.client import connect

    rtts = []
    with connect(f"ws://127.0.0.1:{port}{path}", compression=None) as ws:
        end = time.monotonic() + seconds
        n = 0
        while time.monotonic() < end:
            start = time.perf_counter()
            ws.send(f"ping {n}")
            assert ws.recv(timeout=10) == f"ping {n}"
            rtts.append(time.perf_counter() - start)
            n += 1
            time.sleep(0.01)
    return rtts


def summary(rtts: list[float]) -> dict[str, float]:
    ordered = sorted(rtts)
    return {
        "round_trips": len(ordered),
        "p50_ms": round(ordered[len(ordered) // 2] * 1000, 2),
        "p99_ms": round(ordered[max(0, int(len(ordered) * 0.99) - 1)] * 1000, 2),
        "max_ms": round(ordered[-1] * 1000, 2),
    }


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "flood":
        flood(int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4]))
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--flooders", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=4.0)
    args = parser.parse_args()
    server = subprocess.Popen(
        [sys.executable, "-m", "trio_wshandler", "echo", "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    try:
        assert server.stdout is not None
        match = re.search(rb"127\.0\.0\.1:(\d+)", server.stdout.readline())
        assert match
        port = int(match.group(1))
        alone = summary(round_trips(port, args.seconds / 2))
        flooder = subprocess.Popen(
            [sys.executable, __file__, "flood", str(port), str(args.flooders), str(args.seconds)],
            stdout=subprocess.PIPE,
        )
        assert flooder.stdout is not None
        assert flooder.stdout.readline().startswith(b"flooding")
        flooded = summary(round_trips(port, args.seconds - 0.5))
        flooder.wait(timeout=30)
    finally:
        server.terminate()
        server.wait(timeout=10)
    print(json.dumps({"alone": alone, f"with {args.flooders} flooders": flooded}, indent=2))


if __name__ == "__main__":
    main()
