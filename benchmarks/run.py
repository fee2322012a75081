"""Side-by-side benchmark of trio_wshandler and its peers; every server in its own process.

    python benchmarks/run.py [--quick] [--servers a,b] [--scenarios a,b] [--out reports/bench]

Scenarios (all over loopback, clients in separate processes, see fleet.py):

1. broadcast fan-out to N clients (100, 1,000, 10,000), messages of 64 B and 4 KiB: deliveries
   per second from the moment the broadcast starts until every client has every message, and
   p50/p99 delivery latency (production time to arrival);
2. echo with 1 and 100 connections: messages per second and p50/p99 round trip;
3. idle memory per connection at 1,000 and 10,000 clients: server RSS delta / N;
4. server CPU seconds per million deliveries (from /proc, during the broadcasts);
5. slow consumer: 10 normal clients and 1 that never reads, 2000 broadcasts of 10 KB: what the
   normal clients received, and how long it took;
6. compressed broadcast (permessage-deflate, RFC 7692) to N = 1,000 clients, for the servers
   that support it (trio_wshandler, websockets' Trio and asyncio flavours, each with its default
   compression settings): text messages of about 1 KiB of JSON (``messages.py``, about 3:1 with
   deflate), burst and paced as in 1: deliveries/s, latency, server CPU per delivery; and idle
   memory per connection with compression negotiated, both before any message and after one
   compressed message each way (the state a library allocates on first use, as in real use).
   The clients offer permessage-deflate as browsers do, check that every message arrives
   compressed, and one in ten of them inflates and checks every message (see fleet.py).
7. cross-process fan-out through trio_wshandler's Redis backplane (``RedisBackplane``), against
   a redis-server the scenario starts on a free loopback port (``$REDIS_SERVER``, else
   ``redis-server`` on PATH; without one, or without coredis, the scenario is skipped, saying
   why) and stops after: ``send_all`` to 1,000 clients in one process without a backplane (the
   plain reference) and with one (it also publishes to Redis, as in a cluster), and in two
   processes of 500 clients each sharing a backplane prefix, the producer in process 1 only, the
   other's clients served through Redis (``servers.py trio_wshandler_redis URL PREFIX``, one
   fleet per process).  Burst and paced as in 1, 2,000 messages of 64 B and of 1 KiB:
   deliveries/s over all clients until every one has every message, p50/p99 latency (overall
   and per process), each server process's CPU, Redis's, the fleet's, the Redis round trips
   per message published (the producer's backplane counters ``round_trips / published`` over
   the round, from the server's ``stats`` command) and the messages the backplanes lost.  A
   burst is kept within the backplane's outbox (``max_pending``, 10,000 by default): beyond it
   messages for the other processes are dropped by design.

Besides trio_wshandler and its peers, reference rows (see ``LABELS`` and servers.py): ``floor``,
the plain Trio floor (the producer writes each frame straight to every socket); ``floor_batched``,
the same with one write per socket per round of the loop (what coalescing can reach in a burst);
``raw``, a Trio queue and writer task per connection (the library's design without WebSocket);
``picows``, what a user who only wants speed would pick (asyncio, Cython).  A server that cannot
run (picows not installed) or a scenario a server cannot take part in (raw does not echo) is
skipped, and the reason printed and written into the report.

The clients: ``cfleet.c``, a fleet of clients in one single-threaded epoll loop in C, for every
scenario but the compressed one (6).  The measuring side must never be the bottleneck, and the
Python fleet (``fleet.py``, asyncio) was: at 10,000 clients it used 70 to 87 % of a core in some
broadcast rows, so those rows measured the fleet as much as the servers.  cfleet reads, counts
and samples latency the same way at a fraction of the cost (at most 35 % of a core in every
broadcast and echo row at 10,000 clients on the 2-core machine of docs/performance.md), in one
process where fleet.py needed two from 1,000 clients.  run.py builds it once per run with the
system's C compiler (``$CC``, else ``cc``, ``gcc`` or ``clang``) into ``reports/cfleet/``
(ignored by git); without a compiler, or if the build fails, it says so and uses fleet.py.  The
compressed scenario always uses fleet.py: its clients negotiate permessage-deflate, and some
inflate and check every message (zlib, JSON), which cfleet does not do.  Every row of
``results.json`` says which fleet measured it (``fleet``: ``cfleet`` or ``fleet.py``), and
``fleets`` how the run chose.  The fleet's own CPU use is reported with every broadcast (a fleet
near 100% of a core would be the bottleneck).  Writes ``results.json`` (raw), ``results.md``
(tables with ratios to the best peer in the same run) and ``fanout.png`` into ``--out``.
``--quick`` is a smoke run under two minutes (CI runs it and checks only that it completes and
the results parse; the cross-process scenario then has 100 clients, 2 x 50, and 200 messages of
64 B).  ``--scenarios`` runs some of them only (``broadcast``: 1, 3 and 4; ``echo``; ``slow``;
``compressed``: 6; ``cluster``: 7), e.g. ``--scenarios cluster``; ``--clients`` sets N for both
broadcast scenarios (not for 7).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import selectors
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from tqdm import tqdm

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT / "tests"))  # the tests' redis-server helper
from redis_server import RedisServer, redis_binary, redis_version  # noqa: E402

SERVERS = [
    "trio_wshandler",
    "websockets_trio",
    "trio_websocket",
    "websockets_asyncio",
    "floor",
    "floor_batched",
    "raw",
    "picows",
]
PEERS = ["websockets_trio", "trio_websocket", "websockets_asyncio"]
REFERENCES = ["floor", "floor_batched", "raw", "picows"]
#: what each row is, for the report and the plot
LABELS = {
    "trio_wshandler": "trio_wshandler, send_all()",
    "trio_wshandler_pure": "trio_wshandler, unmasking in pure Python (TRIO_WSHANDLER_NO_SPEEDUPS=1:"
    " what an install without a C compiler gets)",
    "websockets_trio": "websockets (Trio), broadcast()",
    "websockets_trio_pure": "websockets (Trio), without its compiled speedups (its pure-Python"
    " unmask: the like-for-like row for trio_wshandler_pure)",
    "trio_websocket": "trio-websocket, a loop of send_message()",
    "websockets_asyncio": "websockets (asyncio), broadcast()",
    "floor": "plain Trio floor: the producer os.write()s each frame to every socket",
    "floor_batched": "plain Trio floor, batched: a socket's first frame of a round of the loop"
    " os.write()n at once, the rest of the round joined into one os.write()",
    "raw": "Trio queue+writer task per connection, no WebSocket layer",
    "picows": "picows (asyncio, Cython): the pick for speed alone",
}
#: the plot's legend: short names
SHORT_LABELS = {
    "floor": "floor (plain Trio)",
    "floor_batched": "floor, batched (plain Trio)",
    "raw": "raw (Trio queue+writer task)",
    "picows": "picows (asyncio, Cython)",
}
#: the modules a server needs beyond the bench extra: it is skipped, saying so, without them
NEEDS = {"picows": "picows"}
#: scenarios a server does not take part in, and why
SCENARIO_SKIPS = {
    ("echo", "raw"): "raw never reads after the handshake (a fan-out reference only)",
    **{
        ("compressed", server): "no permessage-deflate"
        for server in ("trio_websocket", "floor", "floor_batched", "raw", "picows")
    },
}
SCENARIOS = ["broadcast", "echo", "slow", "compressed", "cluster"]
#: the peers of the compressed scenario (the others have no permessage-deflate)
DEFLATE_PEERS = ["websockets_asyncio", "websockets_trio"]
#: the compressed scenario's message size (about; JSON text) and share of verifying clients
DEFLATE_SIZE, VERIFY_EVERY = 1024, 10
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
#: the rows of the cross-process scenario (7): processes, and whether they have a backplane
CLUSTER_ROWS = {"single": (1, False), "single_redis": (1, True), "cluster": (2, True)}
CLUSTER_LABELS = {
    "single": "1 process x N clients, no backplane (the plain reference)",
    "single_redis": "1 process x N clients with the backplane: send_all also publishes to Redis",
    "cluster": "2 processes x N/2 clients, one backplane prefix; the producer in process 1",
}


def cpu_seconds_of(pid: int) -> float:
    """User + system CPU seconds of a child process, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


class Process:
    """A child process we talk to in lines over stdin/stdout: a Python script (``args`` after
    the interpreter), or with ``python=False`` a program (``args[0]``, e.g. cfleet).  ``label``
    names it in the results (which fleet measured a row)."""

    label = ""  # also for subclasses with their own __init__

    def __init__(
        self, args: list[str], pythonpath: Path = ROOT, python: bool = True, label: str = ""
    ) -> None:
        env = {**os.environ, "PYTHONPATH": str(pythonpath)}
        self.label = label
        self.proc = subprocess.Popen(
            [sys.executable, *args] if python else args,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            bufsize=1,
            env=env,
        )
        self.selector = selectors.DefaultSelector()
        assert self.proc.stdout is not None
        self.selector.register(self.proc.stdout, selectors.EVENT_READ)

    def send(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def readline(self, timeout: float) -> str | None:
        assert self.proc.stdout is not None
        if not self.selector.select(timeout):
            return None
        line = self.proc.stdout.readline()
        return line.strip() if line else None

    def rss_bytes(self) -> int:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        return 0

    def cpu_seconds(self) -> float:
        return cpu_seconds_of(self.proc.pid)

    def stop(self) -> None:
        try:
            self.send("quit")
            self.proc.wait(5)
        except (OSError, subprocess.TimeoutExpired, ValueError):
            self.proc.kill()
            self.proc.wait()


def start_server(
    kind: str, deflate: bool = False, args: tuple[str, ...] = (), pythonpath: Path = ROOT
) -> tuple[Process, int]:
    server = Process(
        [str(HERE / "servers.py"), kind, *(["deflate"] if deflate else []), *args], pythonpath
    )
    line = server.readline(30)
    if not line or not line.startswith("port "):
        server.stop()
        raise RuntimeError(f"{kind} did not start: {line!r}")
    return server, int(line.split()[1])


#: the C fleet (see the module docstring): its source, and where each run builds it
CFLEET_SOURCE = HERE / "cfleet.c"
CFLEET_BINARY = ROOT / "reports" / "cfleet" / "cfleet"
#: cfleet.c is C11 and warning-free with these
CFLEET_FLAGS = ["-O2", "-std=c11", "-Wall", "-Wextra"]
#: how this run got its plain fleet (``build_cfleet``), also written into results.json
FLEETS: dict[str, str] = {}


def build_cfleet() -> Path | None:
    """cfleet, compiled once per run (the first call; later ones answer from ``FLEETS``), or
    None, having said why, when there is no C compiler or the build fails: then the plain
    scenarios use fleet.py, which can be the bottleneck at 10,000 clients."""
    if FLEETS:
        return CFLEET_BINARY if FLEETS["plain"] == "cfleet" else None
    found = shlex.split(os.environ.get("CC", ""))
    if not found or not shutil.which(found[0]):
        found = next(([c] for c in ("cc", "gcc", "clang") if shutil.which(c)), [])
    problem = ""
    if not found:
        problem = "no C compiler ($CC, cc, gcc or clang)"
    else:
        CFLEET_BINARY.parent.mkdir(parents=True, exist_ok=True)
        building = CFLEET_BINARY.with_suffix(".building")
        command = [*found, *CFLEET_FLAGS, "-o", str(building), str(CFLEET_SOURCE)]
        try:
            built = subprocess.run(command, capture_output=True, text=True, timeout=120)
        except (OSError, subprocess.TimeoutExpired) as exc:
            problem = f"{' '.join(found)} failed: {exc}"
        else:
            if built.returncode:
                problem = f"{' '.join(found)} failed:\n{built.stderr.strip()}"
            else:
                building.replace(CFLEET_BINARY)  # whole, or not at all
                FLEETS.update(
                    plain="cfleet",
                    binary=str(CFLEET_BINARY),
                    compiler=shlex.join([*found, *CFLEET_FLAGS, "benchmarks/cfleet.c"]),
                )
                return CFLEET_BINARY
    print(
        "notice: the fleet is fleet.py (Python), not cfleet, and it can be the bottleneck at "
        f"10,000 clients (see its CPU share in the results); {problem}",
        file=sys.stderr,
    )
    FLEETS.update(plain="fleet.py", note=problem)
    return None


def start_fleets(
    port: int, connections: int, stuck: int = 0, timeout: float = 120, deflate: bool = False
) -> list[Process]:
    """Client processes, connected (``ready``): cfleet for the plain scenarios, in one process,
    else fleet.py (always for ``deflate``), in two processes from 1,000 connections (one
    Python process could not keep up with 10,000 clients)."""
    binary = None if deflate else build_cfleet()
    parts = 1 if binary is not None or connections < 1000 else 2
    fleets = []
    for i in range(parts):
        share = connections // parts + (1 if i < connections % parts else 0)
        args = [
            "--port",
            str(port),
            "--connections",
            str(share),
            "--stuck",
            str(stuck if i == 0 else 0),
            "--timeout",
            str(timeout),
        ]
        if binary is not None:
            fleets.append(Process([str(binary), *args], python=False, label="cfleet"))
            continue
        if deflate:
            args += ["--deflate", "--verify-every", str(VERIFY_EVERY)]
        fleets.append(Process([str(HERE / "fleet.py"), *args], label="fleet.py"))
    for fleet in fleets:
        line = fleet.readline(300)
        if line != "ready":
            for f in fleets:
                f.stop()
            raise RuntimeError(f"fleet did not connect: {line!r}")
    return fleets


def fmt_ms(value: float | None) -> str:
    return "" if value is None else f"{value:.1f}"


def percentiles(samples: list[float]) -> dict[str, float]:
    if not samples:
        return {}
    ordered = sorted(samples)
    pick = lambda q: ordered[min(len(ordered) - 1, int(q * len(ordered)))]  # noqa: E731
    return {"p50": pick(0.5), "p99": pick(0.99)}


def broadcast_round(
    server: Process, fleets: list[Process], count: int, size: int, mode: str, timeout: float
) -> dict[str, Any]:
    for fleet in fleets:
        fleet.send(f"expect {count} {size}")
        assert fleet.readline(30) == "armed"
    cpu0 = server.cpu_seconds()
    started = time.time_ns()
    server.send(f"broadcast {count} {size} {mode}")
    reports = []
    for fleet in fleets:
        line = fleet.readline(timeout + 30)
        reports.append(json.loads(line) if line else {"received": 0, "timed_out": True})
    server_cpu = server.cpu_seconds() - cpu0
    sent = server.readline(1 if any(r.get("timed_out") for r in reports) else timeout)
    received = sum(r["received"] for r in reports)
    last = max(r.get("last_received_ns", time.time_ns()) for r in reports)
    seconds = max(1e-9, (last - started) / 1e9)
    quantiles: list[float] = []
    for r in reports:
        quantiles += r.get("latencies_us", {}).get("quantiles", [])
    lat = percentiles(quantiles)
    return {
        "messages": count,
        "size": size,
        "mode": mode,
        "deliveries": received,
        "expected": count * sum(r.get("connections", 0) for r in reports),
        "seconds": seconds,
        "deliveries_per_s": received / seconds,
        "latency_p50_ms": lat.get("p50", 0) / 1000,
        "latency_p99_ms": lat.get("p99", 0) / 1000,
        "server_cpu_s": server_cpu,
        "server_cpu_s_per_million": server_cpu / max(received, 1) * 1e6,
        "fleet_cpu_share": max(r.get("cpu_s", 0) / seconds for r in reports),
        "fleet": fleets[0].label,  # which fleet measured this row: cfleet or fleet.py
        "timed_out": any(r.get("timed_out") for r in reports),
        "frame_errors": sum(r.get("frame_errors", 0) for r in reports),
        "server_finished_sending": (sent or "").split()[:1] == ["sent"],
        # the server's event loop: worst stall and longest garbage collection, in ms
        **{
            f"loop_{key}": float(value)
            for key, _, value in (word.partition("=") for word in (sent or "").split()[1:])
        },
        "fleet_reports": [
            {
                **{k: v for k, v in r.items() if k != "latencies_us"},
                # this fleet's own latency (the cross-process scenario tells processes apart),
                # and its number of samples: about its reads (one sample per aligned read)
                "latency_samples": r.get("latencies_us", {}).get("count", 0),
                **{
                    f"latency_{q}_ms": v / 1000
                    for q, v in percentiles(r.get("latencies_us", {}).get("quantiles", [])).items()
                },
            }
            for r in reports
        ],
    }


def scenario_broadcast(
    kind: str, n: int, sizes: list[int], modes: list[str], total: int, timeout: float
) -> dict[str, Any]:
    server, port = start_server(kind)
    try:
        time.sleep(0.5)
        rss0 = server.rss_bytes()
        fleets = start_fleets(port, n, timeout=timeout)
        try:
            time.sleep(1.0)
            rss1 = server.rss_bytes()
            rounds = []
            for size in sizes:
                # the same number of deliveries for every N; a quarter of it for big messages
                count = max(10, (total if size <= 1024 else total // 4) // n)
                for mode in modes:
                    rounds.append(broadcast_round(server, fleets, count, size, mode, timeout))
        finally:
            for fleet in fleets:
                fleet.stop()
    finally:
        server.stop()
    return {
        "server": kind,
        "clients": n,
        "idle_bytes_per_connection": (rss1 - rss0) / n,
        "rounds": rounds,
    }


def scenario_compressed(
    kind: str, n: int, modes: list[str], total: int, timeout: float
) -> dict[str, Any]:
    """The compressed broadcast (6): idle memory with compression negotiated, before and after
    one compressed message each way, then the broadcast rounds with JSON text messages."""
    server, port = start_server(kind, deflate=True)
    try:
        time.sleep(0.5)
        rss0 = server.rss_bytes()
        fleets = start_fleets(port, n, timeout=timeout, deflate=True)
        try:
            time.sleep(1.0)
            rss1 = server.rss_bytes()
            exchanges = []
            for fleet in fleets:
                fleet.send(f"exchange {DEFLATE_SIZE}")
            for fleet in fleets:
                line = fleet.readline(timeout + 30)
                exchanges.append(json.loads(line) if line else {"exchanged": 0})
            time.sleep(1.0)
            rss2 = server.rss_bytes()
            count = max(10, total // n)
            rounds = []
            for mode in modes:
                rnd = broadcast_round(server, fleets, count, DEFLATE_SIZE, mode, timeout)
                reports = rnd["fleet_reports"]
                verifiers = sum(r.get("verifiers", 0) for r in reports)
                verified = sum(r.get("verified", 0) for r in reports)
                rnd.update(
                    verifiers=verifiers,
                    verified=verified,
                    verified_expected=verifiers * count,
                    wire_bytes_per_message=sum(r.get("wire_bytes", 0) for r in reports)
                    / max(verified, 1),
                    text_bytes_per_message=sum(r.get("inflated_bytes", 0) for r in reports)
                    / max(verified, 1),
                    problems=[r["problem"] for r in reports if r.get("problem")],
                )
                rounds.append(rnd)
        finally:
            for fleet in fleets:
                fleet.stop()
    finally:
        server.stop()
    agreements = sorted({a for r in exchanges for a in r.get("agreements", [])})
    return {
        "server": kind,
        "clients": n,
        "agreements": agreements,
        "exchanged": sum(r.get("exchanged", 0) for r in exchanges),
        "exchange_errors": sum(r.get("frame_errors", 0) for r in exchanges),
        "exchange_problems": [r["problem"] for r in exchanges if r.get("problem")],
        "idle_bytes_per_connection": (rss1 - rss0) / n,
        "idle_bytes_per_connection_after_message": (rss2 - rss0) / n,
        "rounds": rounds,
    }


def scenario_echo(kind: str, connections: int, seconds: float) -> dict[str, Any]:
    server, port = start_server(kind)
    try:
        [fleet] = start_fleets(port, connections)
        try:
            cpu0 = server.cpu_seconds()
            fleet.send(f"echo {seconds} 64")
            line = fleet.readline(seconds + 60)
            report = json.loads(line) if line else {"messages": 0, "latencies_us": {}}
            cpu = server.cpu_seconds() - cpu0
        finally:
            fleet.stop()
    finally:
        server.stop()
    lat = percentiles(report["latencies_us"].get("quantiles", []))
    return {
        "server": kind,
        "connections": connections,
        "messages_per_s": report["messages"] / seconds,
        "rtt_p50_ms": lat.get("p50", 0) / 1000,
        "rtt_p99_ms": lat.get("p99", 0) / 1000,
        "server_cpu_share": cpu / seconds,
        "fleet_cpu_share": report.get("cpu_s", 0) / seconds,
        "fleet": fleet.label,
    }


def scenario_slow(kind: str, count: int, timeout: float) -> dict[str, Any]:
    server, port = start_server(kind)
    try:
        fleets = start_fleets(port, 10, stuck=1, timeout=timeout)
        try:
            result = broadcast_round(server, fleets, count, 10_000, "paced", timeout)
        finally:
            for fleet in fleets:
                fleet.stop()
    finally:
        server.stop()
    report = result["fleet_reports"][0]
    return {
        "server": kind,
        "messages": count,
        "normal_clients_received": result["deliveries"],
        "expected": result["expected"],
        "normal_clients_complete": report.get("complete", 0),
        "seconds": result["seconds"],
        "timed_out": result["timed_out"],
        "fleet": result["fleet"],
    }


# ---------------------------------------------------------------- cross-process fan-out (7)


def cluster_missing() -> str | None:
    """Why the cross-process scenario cannot run here, or None."""
    if importlib.util.find_spec("coredis") is None:
        return "coredis is not installed (pip install trio_wshandler[redis])"
    if redis_binary() is None:
        if os.environ.get("REDIS_SERVER"):
            return f"REDIS_SERVER={os.environ['REDIS_SERVER']} is not an executable"
        return "no redis-server: set REDIS_SERVER to one, or put redis-server on PATH"
    return None


def backplane_stats(server: Process) -> dict[str, Any]:
    """The backplane's counters in a ``trio_wshandler_redis`` server (its ``stats`` command)."""
    server.send("stats")
    line = server.readline(10) or ""
    if not line.startswith("stats "):
        raise RuntimeError(f"no backplane stats: {line!r}")
    stats: dict[str, Any] = json.loads(line[len("stats ") :])
    return stats


def cluster_round(
    servers: list[Process],
    fleets: list[list[Process]],
    redis: RedisServer,
    count: int,
    size: int,
    mode: str,
    timeout: float,
    backplane: bool,
) -> dict[str, Any]:
    """A broadcast round of the cross-process scenario: ``servers[0]`` produces; ``fleets[i]``
    are the clients of ``servers[i]``.  Adds every process's CPU, Redis's, and the backplanes'
    counters (deltas over the round) to what ``broadcast_round`` measures."""
    before = [backplane_stats(s) for s in servers] if backplane else []
    cpu0 = [s.cpu_seconds() for s in servers[1:]]
    redis0 = redis.cpu_seconds()
    every_fleet = [f for group in fleets for f in group]
    rnd = broadcast_round(servers[0], every_fleet, count, size, mode, timeout)
    cpu = [rnd["server_cpu_s"]] + [
        s.cpu_seconds() - c for s, c in zip(servers[1:], cpu0, strict=True)
    ]
    redis_cpu = redis.cpu_seconds() - redis0
    seconds = rnd["seconds"]
    # the latency of each process's clients (the merged figures are broadcast_round's)
    reports = rnd["fleet_reports"]
    by_process, at = [], 0
    for group in fleets:
        mine = reports[at : at + len(group)]
        at += len(group)
        by_process.append(
            {
                "clients": sum(r.get("connections", 0) for r in mine),
                "deliveries": sum(r.get("received", 0) for r in mine),
                "latency_p50_ms": max((r.get("latency_p50_ms", 0) for r in mine), default=0),
                "latency_p99_ms": max((r.get("latency_p99_ms", 0) for r in mine), default=0),
                "fleet_cpu_s": sum(r.get("cpu_s", 0) for r in mine),
                "messages_per_read": sum(r.get("received", 0) for r in mine)
                / max(1, sum(r.get("latency_samples", 0) for r in mine)),
            }
        )
    rnd.update(
        server_cpu_s_each=cpu,
        server_cpu_share_each=[c / seconds for c in cpu],
        server_cpu_us_per_delivery=sum(cpu) / max(rnd["deliveries"], 1) * 1e6,
        redis_cpu_s=redis_cpu,
        redis_cpu_share=redis_cpu / seconds,
        fleet_cpu_total_share=sum(r.get("cpu_s", 0) for r in reports) / seconds,
        by_process=by_process,
    )
    if not backplane:
        return rnd
    # the producer's publisher may still be sending the last messages (its own clients can be
    # served before Redis is): wait, a little, until every message was published or lost
    deadline = time.monotonic() + 5
    while True:
        after = [backplane_stats(s) for s in servers]
        done = after[0]["published"] - before[0]["published"]
        done += after[0]["lost"] - before[0]["lost"]
        if done >= count or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    delta = [
        {k: a[k] - b[k] for k in a if k != "connected"} for a, b in zip(after, before, strict=True)
    ]
    published, round_trips = delta[0]["published"], delta[0]["round_trips"]
    rnd.update(
        published=published,
        round_trips=round_trips,
        round_trips_per_message=round_trips / published if published else None,
        messages_per_round_trip=published / round_trips if round_trips else None,
        lost=sum(d["lost"] for d in delta),
        misses=sum(d["misses"] for d in delta),
        reconnects=sum(d["reconnects"] for d in delta),
        received_by_process=[d["received"] for d in delta],
        redis_connected=all(a["connected"] for a in after),
        backplane_deltas=delta,
    )
    return rnd


def cluster_row(
    row: str,
    redis: RedisServer,
    n: int,
    rounds: list[tuple[int, int]],
    modes: list[str],
    timeout: float,
) -> dict[str, Any]:
    """One row of the cross-process scenario (see ``CLUSTER_ROWS``): its server processes, a
    fleet (or two) per process, a short warm-up round, then a round per (size, count) and
    producer."""
    processes, backplane = CLUSTER_ROWS[row]
    prefix = f"bench-{os.getpid()}-{row}"
    kind, args = (
        ("trio_wshandler_redis", (redis.url, prefix)) if backplane else ("trio_wshandler", ())
    )
    servers: list[Process] = []
    fleets: list[list[Process]] = []
    try:
        ports = []
        for _ in range(processes):
            server, port = start_server(kind, args=args)
            servers.append(server)
            ports.append(port)
        for port in ports:
            fleets.append(start_fleets(port, n // processes, timeout=timeout))
        time.sleep(0.5)
        cluster_round(servers, fleets, redis, 20, 64, "paced", timeout, backplane)  # warm-up
        results = []
        for size, count in rounds:
            for mode in modes:
                results.append(
                    cluster_round(servers, fleets, redis, count, size, mode, timeout, backplane)
                )
    finally:
        for group in fleets:
            for fleet in group:
                fleet.stop()
        for server in servers:
            server.stop()
    return {
        "server": "trio_wshandler",
        "row": row,
        "label": CLUSTER_LABELS[row],
        "processes": processes,
        "clients": n,
        "backplane": backplane,
        "rounds": results,
    }


def scenario_cluster(
    n: int,
    rounds: list[tuple[int, int]],
    modes: list[str],
    timeout: float,
    results: dict[str, Any],
) -> None:
    """The cross-process fan-out (7): one redis-server for the scenario, then each row of
    ``CLUSTER_ROWS`` in turn (a row that fails is reported in ``errors``, the others still run)."""
    binary = redis_binary()
    assert binary is not None
    redis = RedisServer(binary)
    redis.start()
    results["cluster_redis"] = {"binary": binary, "version": redis_version(binary)}
    try:
        for row in CLUSTER_ROWS:
            try:
                results["cluster"].append(cluster_row(row, redis, n, rounds, modes, timeout))
            except Exception as exc:
                results.setdefault("errors", []).append(f"cluster {row}: {exc!r}")
    finally:
        redis.stop()


# ---------------------------------------------------------------- reports


def missing(server: str) -> str | None:
    """Why ``server`` cannot run here, or None."""
    module = NEEDS.get(server)
    if module and importlib.util.find_spec(module) is None:
        return f"{module} is not installed (pip install {module})"
    return None


def ratio(value: float, best: float, higher_is_better: bool = True) -> str:
    if not best or not value:
        return ""
    r = value / best if higher_is_better else best / value
    return f" ({r:.2f}x)"


def broadcast_markdown(results: dict[str, Any], out: list[str]) -> None:
    """Sections 1 and 4: the broadcast fan-out, and the targets of the performance issue."""
    out.append("### 1 and 4. Broadcast fan-out\n")
    out.append(
        "Deliveries/s (ratio to the best peer at the same N and size), p50/p99 delivery "
        "latency, server CPU seconds per million deliveries, fleet CPU share, and the server's "
        "worst event-loop stall and longest garbage collection during the round.\n"
    )
    out.append(
        "| N | size | producer | server | deliveries/s | p50 ms | p99 ms | CPU s/M | fleet CPU "
        "| loop stall ms | GC ms |"
    )
    out.append("|---|---|---|---|---|---|---|---|---|---|---|")
    by_key: dict[tuple[int, int, str], list[tuple[str, dict[str, Any]]]] = {}
    for entry in results["broadcast"]:
        for rnd in entry["rounds"]:
            key = (entry["clients"], rnd["size"], rnd["mode"])
            by_key.setdefault(key, []).append((entry["server"], rnd))
    for (n, size, mode), rows in sorted(by_key.items()):
        best_peer = max((r["deliveries_per_s"] for s, r in rows if s in PEERS), default=0)
        for server, rnd in rows:
            note = " (timed out)" if rnd["timed_out"] else ""
            rel = ratio(rnd["deliveries_per_s"], best_peer) if server not in PEERS else ""
            out.append(
                f"| {n} | {size} | {mode} | {server} | {rnd['deliveries_per_s']:,.0f}{rel}{note} | "
                f"{rnd['latency_p50_ms']:.1f} | {rnd['latency_p99_ms']:.1f} | "
                f"{rnd['server_cpu_s_per_million']:.1f} | {rnd['fleet_cpu_share']:.0%} | "
                f"{fmt_ms(rnd.get('loop_lag_ms'))} | {fmt_ms(rnd.get('loop_gc_ms'))} |"
            )
    out.append("\n### The targets of the performance issue, from the rows above\n")
    out.append("trio_wshandler's deliveries/s divided by each peer's (>= 8 wanted against the trio")
    out.append("peers, > 1 against websockets' asyncio broadcast, >= 0.7 against the plain Trio")
    out.append("floor; the other references for comparison).\n")
    versus = PEERS + REFERENCES
    out.append("| N | size | producer | " + " | ".join(f"/ {p}" for p in versus) + " |")
    out.append("|---|---|---|" + "---|" * len(versus))
    for (n, size, mode), rows in sorted(by_key.items()):
        rates = {server: rnd["deliveries_per_s"] for server, rnd in rows}
        ours = rates.get("trio_wshandler")
        if not ours or n < 1000:
            continue
        cells = [f"{ours / rates[p]:.2f}" if rates.get(p) else "" for p in versus]
        out.append(f"| {n} | {size} | {mode} | " + " | ".join(cells) + " |")


def markdown(results: dict[str, Any]) -> str:
    out = [f"Machine: {results['machine']}. Command: `{results['command']}`.\n"]
    labels = results.get("labels", {})
    if labels:
        out.append(
            "What each row is. Ratios are to the best peer; the references (a floor, and the"
            " fastest libraries) do not count as peers.\n"
        )
        out.append("| row | what it is |")
        out.append("|---|---|")
        for server, label in labels.items():
            kind = "peer" if server in PEERS else "reference" if server in REFERENCES else ""
            out.append(f"| {server} | {label}{f' ({kind})' if kind else ''} |")
        out.append("")
    for skip in results.get("skipped", []):
        out.append(f"- skipped: {skip['server']}, {skip['scenario']}: {skip['reason']}")
    if results.get("skipped"):
        out.append("")
    if results.get("broadcast"):
        broadcast_markdown(results, out)
    if results.get("echo"):
        out.append("\n### 2. Echo\n")
        out.append("| connections | server | messages/s | RTT p50 ms | RTT p99 ms | server CPU |")
        out.append("|---|---|---|---|---|---|")
        for c in sorted({e["connections"] for e in results["echo"]}):
            rows = [e for e in results["echo"] if e["connections"] == c]
            best = max((e["messages_per_s"] for e in rows if e["server"] in PEERS), default=0)
            for e in rows:
                rel = ratio(e["messages_per_s"], best) if e["server"] not in PEERS else ""
                out.append(
                    f"| {c} | {e['server']} | {e['messages_per_s']:,.0f}{rel} | "
                    f"{e['rtt_p50_ms']:.2f} | {e['rtt_p99_ms']:.2f} | "
                    f"{e['server_cpu_share']:.0%} |"
                )
    if results.get("broadcast"):
        out.append("\n### 3. Idle memory per connection\n")
        out.append("| N | server | KiB per connection |")
        out.append("|---|---|---|")
        for entry in sorted(results["broadcast"], key=lambda e: (e["clients"], e["server"])):
            if entry["clients"] >= 1000 or results["quick"]:
                out.append(
                    f"| {entry['clients']} | {entry['server']} | "
                    f"{entry['idle_bytes_per_connection'] / 1024:.1f} |"
                )
    if results.get("slow_consumer"):
        out.append("\n### 5. Slow consumer (10 normal clients, 1 that never reads)\n")
        out.append("| server | messages | normal clients received | complete clients | seconds |")
        out.append("|---|---|---|---|---|")
        for e in results["slow_consumer"]:
            out.append(
                f"| {e['server']} | {e['messages']} | {e['normal_clients_received']:,} of "
                f"{e['expected']:,} | {e['normal_clients_complete']} of 10 | "
                f"{e['seconds']:.1f}{' (gave up)' if e['timed_out'] else ''} |"
            )
    if results.get("compressed"):
        compressed_markdown(results, out)
    if results.get("cluster"):
        cluster_markdown(results, out)
    return "\n".join(out) + "\n"


def compressed_markdown(results: dict[str, Any], out: list[str]) -> None:
    """Section 6: the compressed broadcast, its idle memory, and the compression targets."""
    entries = results["compressed"]
    out.append("\n### 6. Compressed broadcast (permessage-deflate)\n")
    out.append(
        "The clients offer `permessage-deflate; client_max_window_bits` (as browsers do); each "
        "server runs with its default compression settings and answers as below. Text "
        "messages of about 1 KiB of JSON. Deliveries/s, divided by each websockets flavour's "
        "at the same N and producer, p50/p99 delivery latency (sampled by the "
        "verifying clients, which inflate every message), server CPU per delivery, fleet CPU "
        "share, the average message on the wire (compressed payload) and inflated, the messages "
        "inflated and checked (intact, in order) by the verifying clients, and the server's "
        "worst event-loop stall and longest garbage collection.\n"
    )
    out.append("| server | answer (Sec-WebSocket-Extensions) | one message each way |")
    out.append("|---|---|---|")
    for e in entries:
        echoed = f"{e['exchanged']:,} of {e['clients']:,} echoed"
        if e["exchange_errors"]:
            echoed += f", {e['exchange_errors']} errors: {'; '.join(e['exchange_problems'])}"
        answer = ", ".join(e["agreements"]) or "not negotiated"
        out.append(f"| {e['server']} | {answer} | {echoed} |")
    out.append("")
    out.append(
        "| N | producer | server | deliveries/s | / websockets_asyncio | / websockets_trio "
        "| p50 ms | p99 ms | CPU us/delivery | fleet CPU | wire B/msg | text B/msg | checked "
        "| loop stall ms | GC ms |"
    )
    out.append("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    by_key: dict[tuple[int, str], dict[str, dict[str, Any]]] = {}
    for entry in entries:
        for rnd in entry["rounds"]:
            by_key.setdefault((entry["clients"], rnd["mode"]), {})[entry["server"]] = rnd
    for (n, mode), rows in sorted(by_key.items()):
        for server, rnd in rows.items():
            rate = rnd["deliveries_per_s"]
            cells = [
                f"{rate / rows[p]['deliveries_per_s']:.2f}"
                if p in rows and p != server and rows[p]["deliveries_per_s"]
                else ""
                for p in DEFLATE_PEERS
            ]
            note = " (timed out)" if rnd["timed_out"] else ""
            checked = f"{rnd['verified']:,} of {rnd['verified_expected']:,}"
            if rnd["frame_errors"]:
                checked += f", {rnd['frame_errors']:,} errors: {'; '.join(rnd['problems'])}"
            out.append(
                f"| {n} | {mode} | {server} | {rate:,.0f}{note} | {cells[0]} | {cells[1]} | "
                f"{rnd['latency_p50_ms']:.1f} | {rnd['latency_p99_ms']:.1f} | "
                f"{rnd['server_cpu_s_per_million']:.1f} | {rnd['fleet_cpu_share']:.0%} | "
                f"{rnd['wire_bytes_per_message']:.0f} | {rnd['text_bytes_per_message']:.0f} | "
                f"{checked} | {fmt_ms(rnd.get('loop_lag_ms'))} | {fmt_ms(rnd.get('loop_gc_ms'))} |"
            )
    out.append(
        "\nIdle memory per connection with compression negotiated: server RSS delta / N after "
        "the handshakes, and again after each client sent one compressed message and got its "
        "compressed echo (what a library allocates on first use, as in real use).\n"
    )
    out.append(
        "| N | server | KiB per connection, negotiated | / websockets_trio "
        "| after one message each way | / websockets_trio |"
    )
    out.append("|---|---|---|---|---|---|")
    idle = {(e["clients"], e["server"]): e for e in entries}
    for (n, server), e in sorted(idle.items()):
        base = idle.get((n, "websockets_trio"))
        cells = []
        for key in ("idle_bytes_per_connection", "idle_bytes_per_connection_after_message"):
            rel = (
                f"{e[key] / base[key]:.2f}"
                if base and base[key] and server != base["server"]
                else ""
            )
            cells += [f"{e[key] / 1024:.1f}", rel]
        out.append(f"| {n} | {server} | " + " | ".join(cells) + " |")
    out.append("\n### The targets of the compression issue, from the rows above\n")
    out.append("| target | N | producer | trio_wshandler's ratio | met |")
    out.append("|---|---|---|---|---|")
    for (n, mode), rows in sorted(by_key.items()):
        ours = rows.get("trio_wshandler")
        for peer, wanted in (("websockets_asyncio", 3.0), ("websockets_trio", 10.0)):
            if ours and rows.get(peer, {}).get("deliveries_per_s"):
                r = ours["deliveries_per_s"] / rows[peer]["deliveries_per_s"]
                out.append(
                    f"| deliveries/s >= {wanted:g}x {peer} | {n} | {mode} | {r:.2f} | "
                    f"{'yes' if r >= wanted else '**no**'} |"
                )
    for n in sorted({n for n, _ in idle}):
        ours, base = idle.get((n, "trio_wshandler")), idle.get((n, "websockets_trio"))
        for key, when in (
            ("idle_bytes_per_connection", "negotiated"),
            ("idle_bytes_per_connection_after_message", "after one message each way"),
        ):
            if ours and base and base[key] > 0:
                r = ours[key] / base[key]
                out.append(
                    f"| idle memory, {when}, <= 0.5x websockets_trio | {n} | | {r:.2f} | "
                    f"{'yes' if r <= 0.5 else '**no**'} |"
                )


def cluster_markdown(results: dict[str, Any], out: list[str]) -> None:
    """Section 7: the cross-process fan-out through the Redis backplane, and its targets."""
    entries = results["cluster"]
    redis = results.get("cluster_redis", {})
    out.append("\n### 7. Cross-process fan-out (Redis backplane)\n")
    out.append(
        "trio_wshandler's `send_all` to N clients: in one process without a backplane (the "
        "plain reference) and with one (`send_all` also publishes to Redis, as in a cluster), "
        "and in two processes of N/2 clients each sharing a backplane, the producer in process "
        "1 (the other's clients get every message through Redis). Deliveries/s over all N "
        "clients until every one has every message, divided by each one-process row's at the "
        "same size and producer; p50/p99 latency from production (in process 1) to arrival, "
        "over all clients and then per process (1 / 2; the larger of its fleets' figures); "
        "each server process's CPU share and "
        "their CPU per delivery; redis-server's CPU time (ms, counted in clock ticks of "
        f"{1000 // CLOCK_TICKS} ms); the "
        "busiest fleet process's CPU share; the messages a client gets per read, by process "
        "(about: the fleet samples latency once per aligned read; more means the server joined "
        "more messages into one write); Redis round trips per message published (the "
        "producer's pipelines / messages, from its backplane's counters); messages lost by the "
        "backplanes. Redis: "
        f"{redis.get('version', '?')}.\n"
    )
    for entry in entries:
        out.append(f"- `{entry['row']}`: {entry['label']} (N = {entry['clients']:,})")
    out.append("")
    out.append(
        "| size | producer | row | deliveries/s | / single_redis | / single | p50 ms | p99 ms "
        "| p50 / p99 ms by process | server CPU by process | CPU us/delivery | Redis CPU ms "
        "| fleet CPU | messages per read by process | Redis round trips/msg | lost | delivered |"
    )
    out.append("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    by_key: dict[tuple[int, str], dict[str, dict[str, Any]]] = {}
    for entry in entries:
        for rnd in entry["rounds"]:
            by_key.setdefault((rnd["size"], rnd["mode"]), {})[entry["row"]] = rnd
    for (size, mode), rows in sorted(by_key.items()):
        for row, rnd in rows.items():
            rate = rnd["deliveries_per_s"]
            cells = [
                f"{rate / rows[r]['deliveries_per_s']:.2f}"
                if r in rows and r != row and rows[r]["deliveries_per_s"]
                else ""
                for r in ("single_redis", "single")
            ]
            note = " (timed out)" if rnd["timed_out"] else ""
            per_process = " / ".join(
                f"{p['latency_p50_ms']:.1f}, {p['latency_p99_ms']:.1f}" for p in rnd["by_process"]
            )
            cpu = " / ".join(f"{c:.0%}" for c in rnd["server_cpu_share_each"])
            per_read = " / ".join(f"{p['messages_per_read']:.1f}" for p in rnd["by_process"])
            per_message = rnd.get("round_trips_per_message")
            trips = (
                f"{per_message:.4f} ({rnd['published']:,} in {rnd['round_trips']:,})"
                if per_message is not None
                else ""
            )
            lost = str(rnd["lost"]) if "lost" in rnd else ""
            out.append(
                f"| {size} | {mode} | {row} | {rate:,.0f}{note} | {cells[0]} | {cells[1]} | "
                f"{rnd['latency_p50_ms']:.1f} | {rnd['latency_p99_ms']:.1f} | {per_process} | "
                f"{cpu} | {rnd['server_cpu_us_per_delivery']:.2f} | "
                f"{rnd['redis_cpu_s'] * 1000:.0f} | {rnd['fleet_cpu_share']:.0%} | {per_read} | "
                f"{trips} | "
                f"{lost} | {rnd['deliveries']:,} of {rnd['expected']:,} |"
            )
    out.append("\n### The targets of the backplane issue, from the rows above\n")
    out.append(
        "| target | size | producer | cluster / single_redis | cluster / single "
        "| messages per round trip | met |"
    )
    out.append("|---|---|---|---|---|---|---|")
    for (size, mode), rows in sorted(by_key.items()):
        ours = rows.get("cluster")
        if not ours:
            continue
        ratios = [
            ours["deliveries_per_s"] / rows[r]["deliveries_per_s"]
            if rows.get(r, {}).get("deliveries_per_s")
            else None
            for r in ("single_redis", "single")
        ]
        cells = [f"{r:.2f}" if r is not None else "" for r in ratios]
        batching = ours.get("messages_per_round_trip")
        per_trip = f"{batching:.1f}" if batching else ""
        if mode == "paced":
            known = [r for r in ratios if r is not None]
            met = "yes" if known and min(known) >= 0.5 else "**no**"
            target = "cross-process deliveries/s >= 0.5x one process"
        else:
            met = "yes" if batching and batching > 1 else "**no**"
            target = "publishing pipelined under bursts (> 1 message per round trip)"
        if ours["timed_out"] or ours.get("lost"):
            met = "**no** (timed out or lost messages)"
        out.append(f"| {target} | {size} | {mode} | {cells[0]} | {cells[1]} | {per_trip} | {met} |")


def plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = sorted({r["size"] for e in results["broadcast"] for r in e["rounds"]})
    modes = sorted({r["mode"] for e in results["broadcast"] for r in e["rounds"]})
    fig, axes = plt.subplots(
        len(modes), len(sizes), figsize=(6 * len(sizes), 4.2 * len(modes)), squeeze=False
    )
    for row, mode in enumerate(modes):
        for ax, size in zip(axes[row], sizes, strict=True):
            for server in SERVERS:
                points = sorted(
                    (e["clients"], r["deliveries_per_s"])
                    for e in results["broadcast"]
                    if e["server"] == server
                    for r in e["rounds"]
                    if r["size"] == size and r["mode"] == mode
                )
                if points:
                    xs, ys = zip(*points, strict=True)
                    style = "--" if server in REFERENCES else "-"
                    ax.plot(xs, ys, style, marker="o", label=SHORT_LABELS.get(server, server))
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.set_xlabel("clients (N)")
            ax.set_ylabel("deliveries per second")
            ax.set_title(f"{mode} broadcast, {size} B messages")
            ax.grid(True, which="both", alpha=0.3)
            ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke run, under two minutes")
    parser.add_argument("--servers", default=",".join(SERVERS))
    parser.add_argument(
        "--scenarios", default=",".join(SCENARIOS), help=f"some of {','.join(SCENARIOS)}"
    )
    parser.add_argument("--clients", default=None, help="comma-separated N, e.g. 100,1000")
    parser.add_argument("--out", default=str(ROOT / "reports" / "bench"))
    parser.add_argument(
        "--report",
        metavar="RESULTS_JSON",
        help="only redo results.md and fanout.png from an earlier results.json",
    )
    args = parser.parse_args()
    if args.report:
        earlier = json.loads(Path(args.report).read_text())
        folder = Path(args.report).parent
        (folder / "results.md").write_text(markdown(earlier))
        if earlier.get("broadcast"):
            plot(earlier, folder / "fanout.png")
        print(markdown(earlier))
        return 0

    servers = [s for s in args.servers.split(",") if s]
    unknown = set(servers) - set(SERVERS)
    if unknown:
        parser.error(f"unknown servers {sorted(unknown)}; known: {SERVERS}")
    scenarios = [s for s in args.scenarios.split(",") if s]
    if set(scenarios) - set(SCENARIOS):
        parser.error(f"unknown scenarios {sorted(set(scenarios) - set(SCENARIOS))}")
    modes = ["burst", "paced"]
    # the compressed scenario: N, deliveries per round (as the broadcast's small messages), and
    # a longer timeout (websockets.trio compresses per client: about 10,000 deliveries/s)
    deflate_clients, deflate_total, deflate_timeout = [1000], 200_000, 120
    # the cross-process scenario: N (split between the processes of its "cluster" row), the
    # rounds as (size, messages) -- a burst round must fit in the backplane's outbox (10,000
    # messages by default), or what does not fit is dropped for the other processes, by design
    cluster_n, cluster_rounds, cluster_timeout = 1000, [(64, 2000), (1024, 2000)], 30
    if args.quick:
        cluster_n, cluster_rounds, cluster_timeout = 100, [(64, 200)], 10
        clients, sizes, total = [100], [64], 20_000
        echo_conns, echo_s, slow_n, timeout = [1], 1.0, 500, 10
        deflate_clients, deflate_total, deflate_timeout = [100], 5_000, 20
    else:
        clients, sizes, total, echo_conns, echo_s, slow_n, timeout = (
            [100, 1000, 10_000],
            [64, 4096],
            200_000,
            [1, 100],
            5.0,
            2000,
            60,
        )
    if args.clients:
        clients = deflate_clients = [int(n) for n in args.clients.split(",")]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    skipped = []
    for server in list(servers):
        reason = missing(server)
        if reason:
            servers.remove(server)
            skipped.append({"server": server, "scenario": "all", "reason": reason})
    for (scenario, server), reason in SCENARIO_SKIPS.items():
        if server in servers and scenario in scenarios:
            skipped.append({"server": server, "scenario": scenario, "reason": reason})
    if "cluster" in scenarios:  # trio_wshandler's backplane only: the other servers have none
        reason = cluster_missing()
        if "trio_wshandler" not in servers:
            reason = "trio_wshandler is not among --servers"
        if reason:
            skipped.append({"server": "trio_wshandler", "scenario": "cluster", "reason": reason})
    for skip in skipped:
        print(f"skipping {skip['server']} ({skip['scenario']}): {skip['reason']}", file=sys.stderr)

    steps = [("broadcast", s, n) for n in clients for s in servers]
    steps += [
        ("echo", s, c) for c in echo_conns for s in servers if ("echo", s) not in SCENARIO_SKIPS
    ]
    steps += [("slow", s, 0) for s in servers]
    steps += [
        ("compressed", s, n)
        for n in deflate_clients
        for s in servers
        if ("compressed", s) not in SCENARIO_SKIPS
    ]
    if not any(skip["scenario"] == "cluster" for skip in skipped):
        steps += [("cluster", "trio_wshandler", cluster_n)]
    steps = [step for step in steps if step[0] in scenarios]
    results: dict[str, Any] = {
        "quick": args.quick,
        "command": "python benchmarks/run.py"
        + (" --quick" if args.quick else "")
        + (f" --scenarios {','.join(scenarios)}" if scenarios != SCENARIOS else ""),
        "scenarios": scenarios,
        "machine": f"{platform.node()}: {os.cpu_count()} cores, {platform.machine()}, "
        f"Python {platform.python_version()}, {platform.platform()}",
        "started": time.strftime("%Y-%m-%d %H:%M:%S"),
        "servers": servers,
        "labels": {s: LABELS[s] for s in servers},
        "skipped": skipped,
        "broadcast": [],
        "echo": [],
        "slow_consumer": [],
        "compressed": [],
        "cluster": [],
    }
    bar = tqdm(steps, unit="run", file=sys.stderr)
    for scenario, server, n in bar:
        bar.set_description(f"{scenario} {server} {n or ''}".strip())
        try:
            if scenario == "broadcast":
                results["broadcast"].append(
                    scenario_broadcast(server, n, sizes, modes, total, timeout)
                )
            elif scenario == "echo":
                results["echo"].append(scenario_echo(server, n, echo_s))
            elif scenario == "compressed":
                results["compressed"].append(
                    scenario_compressed(server, n, modes, deflate_total, deflate_timeout)
                )
            elif scenario == "cluster":
                scenario_cluster(n, cluster_rounds, modes, cluster_timeout, results)
            else:
                results["slow_consumer"].append(scenario_slow(server, slow_n, timeout / 2))
        except Exception as exc:  # report and go on: one broken peer must not lose the run
            results.setdefault("errors", []).append(f"{scenario} {server} {n}: {exc!r}")
    results["fleets"] = {**FLEETS, "compressed": "fleet.py"}
    results["finished"] = time.strftime("%Y-%m-%d %H:%M:%S")
    (out / "results.json").write_text(json.dumps(results, indent=1))
    (out / "results.md").write_text(markdown(results))
    if results["broadcast"]:
        plot(results, out / "fanout.png")
    print(markdown(results))
    for skip in skipped:
        print(f"SKIPPED: {skip['server']} ({skip['scenario']}): {skip['reason']}")
    for error in results.get("errors", []):
        print("ERROR:", error)
    return 1 if results.get("errors") else 0


if __name__ == "__main__":
    sys.exit(main())
