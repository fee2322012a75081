"""What an idle connection costs trio_wshandler: RSS and tracemalloc per connection, and where.

    python benchmarks/idle_memory.py [--clients 1000,10000] [--heartbeat 20] [--top 12] [--deflate]

For each N, starts a server process (``WebSocketHandler()`` with default options, heartbeat on)
and a client process that opens N WebSocket connections and then holds them without a word.
The server's RSS is read before and after (per connection: the difference divided by N), then,
in a second server process with ``tracemalloc`` on, the Python allocations per connection, by
source line (the ``--top`` largest), and the number of live tasks per connection.  The
side-by-side RSS figures against the peers are in ``run.py``'s idle-memory scenario; this script
is for finding what to remove.

``--deflate``: the clients offer permessage-deflate (as browsers do) and each sends one
compressed message of about 1 KiB of JSON after the handshake, so what compression costs an
idle connection once negotiated and used is counted (``run.py``'s compressed scenario has the
side-by-side figures).
"""

from __future__ import annotations

import argparse
import gc
import json
import socket
import subprocess
import sys
import time
import tracemalloc
import zlib
from typing import Any

from fleet import DEFLATE_OFFER, masked_frame
from messages import json_message

REQUEST = (
    b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
)


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096


def serve(trace: bool, heartbeat: float | None) -> None:
    """The server process: prints ``port N``; on ``measure N`` prints a JSON line."""
    import trio

    from trio_wshandler import WebSocketHandler, serve

    async def main() -> None:
        handler = WebSocketHandler(heartbeat=heartbeat)
        async with trio.open_nursery() as nursery:
            server = await nursery.start(serve, handler, "127.0.0.1", 0)
            await trio.sleep(0.2)
            gc.collect()
            if trace:
                tracemalloc.start(1)
            before = tracemalloc.take_snapshot() if trace else None
            rss0 = rss_bytes()
            print(f"port {server.port}", flush=True)
            line = await trio.to_thread.run_sync(sys.stdin.readline)
            n = int(line.split()[1])
            while len(handler) < n:  # noqa: ASYNC110 (a benchmark polls, bounded by N)
                await trio.sleep(0.05)
            await trio.sleep(0.5)
            gc.collect()
            result: dict[str, Any] = {"connections": n, "rss_per_connection": 0}
            result["rss_per_connection"] = (rss_bytes() - rss0) / n
            result["tasks_per_connection"] = count_tasks(trio) / n
            result["gc_objects_per_connection"] = len(gc.get_objects()) / n
            if before is not None:
                stats = tracemalloc.take_snapshot().compare_to(before, "lineno")
                result["traced_per_connection"] = sum(s.size_diff for s in stats) / n
                result["top"] = [
                    {
                        "where": f"{s.traceback[0].filename.split('site-packages/')[-1]}"
                        f":{s.traceback[0].lineno}",
                        "bytes": round(s.size_diff / n),
                        "objects": round(s.count_diff / n, 2),
                    }
                    for s in stats[:40]
                ]
            print(json.dumps(result), flush=True)
            nursery.cancel_scope.cancel()

    trio.run(main)


def count_tasks(trio: Any) -> int:
    stack, count = [trio.lowlevel.current_root_task()], 0
    while stack:
        task = stack.pop()
        count += 1
        for nursery in task.child_nurseries:
            stack.extend(nursery.child_tasks)
    return count


def hold(port: int, n: int, deflate: bool) -> None:
    """The client process: N upgraded connections, held until stdin closes (with ``deflate``:
    permessage-deflate negotiated, and one compressed message sent on each)."""
    import resource

    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    request = REQUEST
    if deflate:
        request = REQUEST[:-2] + f"Sec-WebSocket-Extensions: {DEFLATE_OFFER}\r\n\r\n".encode()
    socks = []
    for _ in range(n):
        s = socket.create_connection(("127.0.0.1", port))
        s.sendall(request)
        socks.append(s)
    for i, s in enumerate(socks):
        head = b""
        while b"\r\n\r\n" not in head:
            head += s.recv(4096)
        if deflate:
            if b"permessage-deflate" not in head.lower():
                sys.exit("permessage-deflate was not negotiated")
            # each message on its own and with a full 15-bit window: what any agreement allows
            # unless it limits client_max_window_bits, which the default DeflateOptions does not
            compressor = zlib.compressobj(6, zlib.DEFLATED, -15)
            text = json_message(i, 1024).encode()
            data = compressor.compress(text) + compressor.flush(zlib.Z_SYNC_FLUSH)
            s.sendall(masked_frame(data[:-4], 0x40 | 0x1))  # RSV1: compressed; Text
    print("holding", flush=True)
    sys.stdin.read()


def measure(n: int, trace: bool, heartbeat: float | None, deflate: bool) -> dict[str, Any]:
    args = [sys.executable, __file__, "serve", "trace" if trace else "rss", str(heartbeat)]
    server = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert server.stdin and server.stdout
    port = int(server.stdout.readline().split()[1])
    clients = subprocess.Popen(
        [sys.executable, __file__, "hold", str(port), str(n), *(["deflate"] if deflate else [])],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert clients.stdout and clients.stdin
    try:
        assert clients.stdout.readline().strip() == "holding"
        server.stdin.write(f"measure {n}\n")
        server.stdin.flush()
        result: dict[str, Any] = json.loads(server.stdout.readline())
        return result
    finally:
        clients.stdin.close()
        clients.wait(timeout=60)
        server.wait(timeout=60)


def main() -> None:
    if sys.argv[1:2] == ["serve"]:
        serve(sys.argv[2] == "trace", None if sys.argv[3] == "None" else float(sys.argv[3]))
        return
    if sys.argv[1:2] == ["hold"]:
        hold(int(sys.argv[2]), int(sys.argv[3]), sys.argv[4:5] == ["deflate"])
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", default="1000,10000")
    parser.add_argument("--heartbeat", type=float, default=20.0)
    parser.add_argument("--top", type=int, default=12)
    parser.add_argument(
        "--deflate", action="store_true", help="negotiate permessage-deflate, one message each"
    )
    args = parser.parse_args()
    for n in map(int, args.clients.split(",")):
        rss = measure(n, False, args.heartbeat, args.deflate)
        traced = measure(n, True, args.heartbeat, args.deflate)
        print(
            f"N={n}: RSS {rss['rss_per_connection'] / 1024:.1f} KiB, traced "
            f"{traced['traced_per_connection'] / 1024:.1f} KiB, "
            f"{rss['tasks_per_connection']:.2f} tasks and "
            f"{rss['gc_objects_per_connection']:.0f} GC-tracked objects per connection"
        )
        for row in traced["top"][: args.top]:
            print(f"  {row['bytes']:6d} B {row['objects']:5.2f} objects  {row['where']}")
        time.sleep(0.5)


if __name__ == "__main__":
    main()
