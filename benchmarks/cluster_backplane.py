"""Past one Redis: the same cross-process fan-out through one Redis and through a Redis
Cluster of three masters (sharded pub/sub), in one run (the figures in docs/scaling.md).

    python benchmarks/cluster_backplane.py [--rate 2000] [--seconds 5] [--turns 2]
    python benchmarks/cluster_backplane.py --redis-only 200000

Each turn starts, for each setup, ``--processes`` (4) processes of this library, each a
handler with a RedisBackplane (one Redis: ``redis://``; the cluster: ``redis+cluster://``,
12 partitions) following ``--topics`` topics, and publishing ``--rate`` messages per second
of ``--size`` bytes to them in turn for ``--seconds``.  The topics' names are chosen so that
each partition has as many (a benchmark's few topics would land unevenly; an application's
many spread by their number).  Every message reaches the three other processes.  Measured:
messages published and delivered per second, each Redis process's CPU per published message
(from /proc), and the library processes' CPU per message delivered to them.  Targets (issue
#22): the busiest shard's CPU per message at most 0.5x one Redis's, and the processes' cost
at most 1.2x.  ``--redis-only N``: Redis alone instead (coredis subscribers, one publisher
with pipelines of 512 per Redis), for Redis's cost when its clients batch more.  Needs Redis
7 with redis-cli (``tests/redis_cluster.py`` says where it looks).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import trio

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
from redis_cluster import RedisCluster, cluster_binaries  # noqa: E402
from redis_server import RedisServer  # noqa: E402

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


# ------------------------------------------------------------------ one library process


def spread_topics(count: int, partitions: int) -> list[str]:
    """``count`` topic names, as many in each partition as can be (a real application's many
    topics spread so by their number; a benchmark's few would land unevenly)."""
    from trio_wshandler._cluster_slots import partition_of

    per = -(-count // partitions)
    taken: dict[int, int] = {}
    names: list[str] = []
    j = 0
    while len(names) < count:
        name = f"topic-{j}"
        j += 1
        p = partition_of(name, partitions)
        if taken.get(p, 0) < per:
            taken[p] = taken.get(p, 0) + 1
            names.append(name)
    return names


async def node(
    url: str,
    prefix: str,
    topics: int,
    rate: int,
    seconds: float,
    size: int,
    partitions: int,
    tick: float,
) -> None:
    """Follow the topics, say ``ready``, wait for ``go`` on stdin, publish, report JSON."""
    from trio_wshandler import RedisBackplane, WebSocketHandler

    backplane = RedisBackplane(url, prefix=prefix, max_pending=100_000, partitions=partitions)
    handler = WebSocketHandler(backplane=backplane)
    names = spread_topics(topics, partitions)
    payload = "x" * size
    async with trio.open_nursery() as nursery:
        await nursery.start(backplane.run, handler)
        for topic in names:  # what a first local subscriber does
            backplane.topic_added(topic)
        with trio.fail_after(30):
            for topic in names:
                await backplane.wait_following(topic)
        received0 = backplane.received  # before "ready": others may start before this one
        print("ready", flush=True)
        await trio.to_thread.run_sync(sys.stdin.readline)
        cpu0, start = time.process_time(), trio.current_time()
        sent = 0
        while (now := trio.current_time() - start) < seconds:
            due = int(now * rate) + 1
            while sent < due:
                handler.publish(names[sent % topics], payload)
                sent += 1
            await trio.sleep(tick)
        with trio.move_on_after(10):  # what is still on its way arrives: until quiet
            while True:
                seen = backplane.received
                await trio.sleep(0.5)
                if backplane.received == seen:
                    break
        report = {
            "published": sent,
            "received": backplane.received - received0,
            "lost": backplane.lost,
            "cpu": time.process_time() - cpu0,
        }
        print(json.dumps(report), flush=True)
        nursery.cancel_scope.cancel()


# ------------------------------------------------------------------ Redis alone


def channels_of(url: str, topics: int, partitions: int) -> list[str]:
    """The topic channels a backplane on ``url`` would use (tagged on a cluster)."""
    from trio_wshandler._backplane_wire import Names
    from trio_wshandler._cluster_slots import partition_tags

    tags = partition_tags(partitions) if url.startswith("redis+cluster") else ()
    return [Names("raw", tags).topic(t) for t in spread_topics(topics, partitions)]


async def raw_subscriber(url: str, topics: int, partitions: int, count: int) -> None:
    """Subscribe to the channels with coredis alone (sharded on a cluster), say ``ready``,
    count ``count`` messages, say ``done``."""
    import coredis

    channels = channels_of(url, topics, partitions)
    got = 0
    if url.startswith("redis+cluster"):
        from trio_wshandler._cluster_slots import parse_cluster_url

        host, port = parse_cluster_url(url).nodes[0]
        client: Any = coredis.RedisCluster(host, port, decode_responses=False)
        pubsub = client.sharded_pubsub(ignore_subscribe_messages=True)
    else:
        client = coredis.Redis.from_url(url, decode_responses=False)
        pubsub = client.pubsub(ignore_subscribe_messages=True)
    async with client, pubsub:
        for channel in channels:
            await pubsub.subscribe(channel)
        print("ready", flush=True)
        async for _ in pubsub:
            got += 1
            if got == count:
                break
    print("done", flush=True)


async def raw_publisher(url: str, topics: int, partitions: int, count: int, size: int) -> None:
    """``count`` messages round-robin over the channels, in pipelines of 512 per Redis (on a
    cluster: one plain client per master, as the backplane's links)."""
    import coredis

    from trio_wshandler._backplane_run import masters_by_partition
    from trio_wshandler._cluster_slots import parse_cluster_url

    channels = channels_of(url, topics, partitions)
    payload = b"x" * size
    cluster = url.startswith("redis+cluster")
    if cluster:
        host, port = parse_cluster_url(url).nodes[0]
        async with coredis.Redis(host=host, port=port) as probe:
            shards = await probe.cluster_shards()
        # a channel's hash tag is its slot: the master of each channel
        masters = masters_by_partition(shards, channels)
        port_of = {c: m[1] for c, m in zip(channels, masters, strict=True) if m is not None}
        ports = sorted(set(port_of.values()))
    else:
        port_of = dict.fromkeys(channels, 0)
        ports = [0]
    clients = {
        p: (coredis.Redis(host="127.0.0.1", port=p) if cluster else coredis.Redis.from_url(url))
        for p in ports
    }
    async with trio.open_nursery() as nursery:
        for p, client in clients.items():
            mine = [c for c in channels if port_of[c] == p]

            async def send(client: Any = client, mine: list[str] = mine) -> None:
                async with client:
                    # message i goes to channel i % C: how many of them are this Redis's
                    n = sum(
                        count // len(channels) + (i < count % len(channels))
                        for i, c in enumerate(channels)
                        if port_of[c] == port_of[mine[0]]
                    )
                    sent = 0
                    while sent < n:
                        k = min(512, n - sent)
                        async with client.pipeline(transaction=False) as pipe:
                            for j in range(k):
                                channel = mine[(sent + j) % len(mine)]
                                if cluster:
                                    pipe.spublish(channel, payload)
                                else:
                                    pipe.publish(channel, payload)
                        sent += k

            nursery.start_soon(send)


# ------------------------------------------------------------------ the parent


def spawn(count: int, *argv: object) -> list[subprocess.Popen[str]]:
    """``count`` processes of this script with ``argv`` (stdin and stdout piped, text)."""
    return [
        subprocess.Popen(
            [sys.executable, __file__, *map(str, argv)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
        for _ in range(count)
    ]


def run_setup(
    url: str, redis_pids: dict[str, int], args: argparse.Namespace, prefix: str
) -> dict[str, Any]:
    node_args = [url, prefix, args.topics, args.rate, args.seconds, args.size, args.partitions]
    procs = spawn(args.processes, "--node", *node_args, args.tick)
    try:
        for proc in procs:
            assert proc.stdout is not None
            line = proc.stdout.readline()
            if line.strip() != "ready":
                raise RuntimeError(f"a node did not start: {line!r}")
        cpu0 = {name: cpu_seconds(pid) for name, pid in redis_pids.items()}
        for proc in procs:
            assert proc.stdin is not None
            proc.stdin.write("go\n")
            proc.stdin.flush()
        reports = []
        for proc in procs:
            assert proc.stdout is not None
            reports.append(json.loads(proc.stdout.readline()))
        cpu = {name: cpu_seconds(pid) - cpu0[name] for name, pid in redis_pids.items()}
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()
    published = sum(r["published"] for r in reports)
    received = sum(r["received"] for r in reports)
    return {
        "nodes": [(r["published"], r["received"], r["lost"]) for r in reports],
        "published": published,
        "received": received,
        "published_per_s": published / args.seconds,
        "delivered_per_s": received / args.seconds,
        "complete": received == published * (args.processes - 1)
        and not any(r["lost"] for r in reports),
        "redis_us_per_message": {n: c / published * 1e6 for n, c in cpu.items()},
        "process_us_per_delivery": sum(r["cpu"] for r in reports) / max(received, 1) * 1e6,
    }


def run_raw(
    url: str, redis_pids: dict[str, int], args: argparse.Namespace, count: int
) -> dict[str, Any]:
    """Redis alone: ``--processes`` coredis subscribers, one publisher with pipelines of 512."""
    procs = spawn(args.processes, "--raw-sub", url, args.topics, args.partitions, count)
    try:
        for proc in procs:
            assert proc.stdout is not None
            if proc.stdout.readline().strip() != "ready":
                raise RuntimeError("a subscriber did not start")
        cpu0 = {name: cpu_seconds(pid) for name, pid in redis_pids.items()}
        started = time.perf_counter()
        trio.run(raw_publisher, url, args.topics, args.partitions, count, args.size)
        for proc in procs:
            assert proc.stdout is not None
            if proc.stdout.readline().strip() != "done":
                raise RuntimeError("a subscriber did not get every message")
        elapsed = time.perf_counter() - started
        cpu = {name: cpu_seconds(pid) - cpu0[name] for name, pid in redis_pids.items()}
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()
    return {
        "published_per_s": count / elapsed,
        "delivered_per_s": count * args.processes / elapsed,
        "complete": True,
        "redis_us_per_message": {n: c / count * 1e6 for n, c in cpu.items()},
        "process_us_per_delivery": 0.0,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--processes", type=int, default=4)
    parser.add_argument("--topics", type=int, default=24)
    parser.add_argument("--rate", type=int, default=2000, help="messages/s per process")
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--turns", type=int, default=2)
    parser.add_argument("--replicas", type=int, default=1, help="replicas per master")
    parser.add_argument("--json", default=None)
    parser.add_argument(
        "--if-redis7", action="store_true", help="without Redis 7: say why and exit 0 (CI smoke)"
    )
    parser.add_argument("--partitions", type=int, default=12, help="of the cluster's backplane")
    parser.add_argument(
        "--redis-only",
        type=int,
        default=0,
        metavar="N",
        help="instead: N messages through Redis alone (coredis subscribers, pipelines of 512)",
    )
    parser.add_argument(
        "--tick", type=float, default=0.01, help="seconds between a process's bursts (0.01)"
    )
    parser.add_argument("--node", nargs=8, help=argparse.SUPPRESS)
    parser.add_argument("--raw-sub", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.node:
        url, prefix, topics, rate, seconds, size, partitions, tick = args.node
        trio.run(
            node,
            url,
            prefix,
            int(topics),
            int(rate),
            float(seconds),
            int(size),
            int(partitions),
            float(tick),
        )
        return 0
    if args.raw_sub:
        url, topics, partitions, count = args.raw_sub
        trio.run(raw_subscriber, url, int(topics), int(partitions), int(count))
        return 0
    found = cluster_binaries()
    if isinstance(found, str):
        print(f"cannot run: {found}", file=sys.stderr)
        return 0 if args.if_redis7 else 2
    server, cli = found
    single = RedisServer(server)
    single.start()
    cluster = RedisCluster(server, cli, masters=3, replicas=args.replicas)
    cluster.start()
    rows: dict[str, list[dict[str, Any]]] = {"one": [], "cluster": []}
    try:
        assert single.process is not None
        masters = sorted(cluster.slots_of())
        for turn in range(args.turns):
            if args.redis_only:
                one = run_raw(single.url, {"redis": single.process.pid}, args, args.redis_only)
            else:
                one = run_setup(single.url, {"redis": single.process.pid}, args, f"b1t{turn}")
            pids = {f"master {i + 1}": cluster.processes[p].pid for i, p in enumerate(masters)}
            pids.update(
                {f"replica of {i + 1}": cluster.processes[r].pid
                 for i, p in enumerate(masters) for r in cluster.shards().get(p, [])}
            )  # fmt: skip
            if args.redis_only:
                many = run_raw(cluster.url, pids, args, args.redis_only)
            else:
                many = run_setup(cluster.url, pids, args, f"bct{turn}")
            rows["one"].append(one)
            rows["cluster"].append(many)
            print(f"# turn {turn + 1}: one {one}\n#   cluster {many}", file=sys.stderr)
    finally:
        single.stop()
        cluster.stop()
    med = {
        kind: {
            "published_per_s": statistics.median(r["published_per_s"] for r in rs),
            "delivered_per_s": statistics.median(r["delivered_per_s"] for r in rs),
            "process_us": statistics.median(r["process_us_per_delivery"] for r in rs),
            "redis_us": {
                name: statistics.median(r["redis_us_per_message"][name] for r in rs)
                for name in rs[0]["redis_us_per_message"]
            },
            "complete": all(r["complete"] for r in rs),
        }
        for kind, rs in rows.items()
    }
    one, many = med["one"], med["cluster"]
    single_us = one["redis_us"]["redis"]
    shard_us = {n: us for n, us in many["redis_us"].items() if n.startswith("master")}
    busiest = max(shard_us.values())
    print(f"{args.processes} processes, {args.topics} topics, {args.rate} msg/s each of"
          f" {args.size} B, {args.seconds} s, median of {args.turns} turn(s)\n")  # fmt: skip
    print("| setup | published msg/s | delivered msg/s | Redis CPU us per message |"
          " process CPU us per delivery |")  # fmt: skip
    print("|---|---:|---:|---|---:|")
    for kind, label in (("one", "one Redis"), ("cluster", "3-master cluster")):
        m = med[kind]
        redis = ", ".join(f"{n}: {us:.2f}" for n, us in m["redis_us"].items())
        print(
            f"| {label} | {m['published_per_s']:,.0f} | {m['delivered_per_s']:,.0f} | {redis} |"
            f" {m['process_us']:.1f} |" + ("" if m["complete"] else " incomplete")
        )
    print(
        f"\nbusiest shard / one Redis, CPU per message: {busiest / single_us:.2f}x"
        f" (target <= 0.5x); all masters together: {sum(shard_us.values()) / single_us:.2f}x"
        + (
            ""
            if args.redis_only
            else f"; process cost: {many['process_us'] / one['process_us']:.2f}x (target <= 1.2x)"
        )
    )
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return 0 if one["complete"] and many["complete"] else 1


if __name__ == "__main__":
    sys.exit(main())
