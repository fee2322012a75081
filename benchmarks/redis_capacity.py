"""What one Redis carries for the backplane: pub/sub messages per second and Redis CPU per
message, by message size and number of subscribed processes (the figures in docs/scaling.md).

    python benchmarks/redis_capacity.py [--messages 200000] [--subscribers 1,2,4]

Starts a redis-server ($REDIS_SERVER, else ``redis-server`` on PATH) on a free loopback port,
K subscriber processes (each a coredis pub/sub connection on Trio, counting what it receives,
as a backplane process does), and one publisher that sends pipelined batches of 512 PUBLISH,
as the backplane's publisher task does.  For each size and K: messages per second from the
first publish until every subscriber has every message, and Redis's own CPU time per message
(from /proc).  Redis is single-threaded: its CPU share says how close to its limit a run is.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import sys
import time
from pathlib import Path

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from redis_server import RedisServer, redis_binary

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
BATCH = 512


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def subscriber(url: str, channel: str, count: int, ready: object, done: object) -> None:
    async def main() -> None:
        import coredis

        client = coredis.Redis.from_url(url, decode_responses=False)
        async with client, client.pubsub(ignore_subscribe_messages=True) as pubsub:
            await pubsub.subscribe(channel)
            ready.set()  # type: ignore[attr-defined]
            got = 0
            async for _ in pubsub:
                got += 1
                if got == count:
                    break
        done.set()  # type: ignore[attr-defined]

    trio.run(main)


async def publish(url: str, channel: str, count: int, size: int) -> None:
    import coredis

    payload = b"x" * size
    client = coredis.Redis.from_url(url, decode_responses=False)
    async with client:
        sent = 0
        while sent < count:
            n = min(BATCH, count - sent)
            async with client.pipeline(transaction=False) as pipe:
                for _ in range(n):
                    pipe.publish(channel, payload)
            sent += n


def run(redis: RedisServer, size: int, subscribers: int, count: int) -> dict[str, float]:
    channel = f"bench:{size}:{subscribers}"
    ctx = multiprocessing.get_context("spawn")
    ready = [ctx.Event() for _ in range(subscribers)]
    done = [ctx.Event() for _ in range(subscribers)]
    procs = [
        ctx.Process(target=subscriber, args=(redis.url, channel, count, r, d))
        for r, d in zip(ready, done, strict=True)
    ]
    for proc in procs:
        proc.start()
    for event in ready:
        event.wait(30)
    assert redis.process is not None
    cpu0, started = cpu_seconds(redis.process.pid), time.perf_counter()
    trio.run(publish, redis.url, channel, count, size)
    for event in done:
        event.wait(120)
    elapsed = time.perf_counter() - started
    cpu = cpu_seconds(redis.process.pid) - cpu0
    for proc in procs:
        proc.join(10)
    return {
        "messages_per_s": count / elapsed,
        "deliveries_per_s": count * subscribers / elapsed,
        "redis_cpu_us_per_message": cpu / count * 1e6,
        "redis_cpu_share": cpu / elapsed,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=200_000)
    parser.add_argument("--subscribers", default="1,2,4")
    parser.add_argument("--sizes", default="64,1024")
    args = parser.parse_args()
    binary = redis_binary()
    if binary is None:
        raise SystemExit("no redis-server: set $REDIS_SERVER or put redis-server on PATH")
    redis = RedisServer(binary)
    redis.start()
    try:
        print("| message | subscribed processes | messages/s | deliveries to processes/s |"
              " Redis CPU per message | Redis CPU share |")  # fmt: skip
        print("|---|---|---|---|---|---|")
        for size in (int(s) for s in args.sizes.split(",")):
            for k in (int(s) for s in args.subscribers.split(",")):
                r = run(redis, size, k, args.messages)
                print(
                    f"| {size} B | {k} | {r['messages_per_s']:,.0f} |"
                    f" {r['deliveries_per_s']:,.0f} | {r['redis_cpu_us_per_message']:.1f} us |"
                    f" {r['redis_cpu_share']:.0%} |",
                    flush=True,
                )
    finally:
        redis.stop()


if __name__ == "__main__":
    main()
