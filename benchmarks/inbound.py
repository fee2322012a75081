"""Receive-side benchmark: what clients send to the server; every server in its own process.

    python benchmarks/inbound.py [--quick] [--servers a,b] [--scenarios a,b]
                                 [--fleet auto|c|python|PATH] [--out reports/inbound]

run.py measures what servers send; this measures what they take in.  Each server runs in its
own process (``servers.py KIND [count|chat]``), the clients in another: the C fleet
(``cfleet.c``, which run.py's ``build_cfleet`` compiles when there is a C compiler), else the
Python one (``inbound_fleet.py``; ``--fleet`` chooses, see ``fleet_command``):

1. echo (``echo``): 1 and 100 connections, messages of 64 B and 4 KiB, each connection sending
   one message, awaiting its echo, and repeating: messages/s and p50/p99 round trip.
2. uploads (``upload``): 10 clients each send Binary messages of 4 KiB, 64 KiB and 1 MiB back
   to back; the server only counts what it receives.  The figure is the server's own count of
   complete messages' payload, taken between two ``count`` snapshots in the middle of the
   upload (after ``warm`` seconds, until ``warm / 2`` before the end): MB/s received (1 MB =
   10^6 bytes), and the server's CPU seconds per GB received in that window (from /proc).
3. chat room (``chat``): 100 and 1,000 clients, each sending ``RATE`` Text messages a second of
   ``CHAT_SIZE`` bytes; the server broadcasts every message to every client (its idiomatic
   fan-out, see servers.py).  Messages sent (and skipped: due on a client with over 4 MiB
   unsent, the server not reading), deliveries (expected: sent x clients) and lost,
   deliveries/s (from the first send until the last delivery; after the last send the fleet
   waits until no delivery came for a second, at most ``chat_drain``: a server that stalls
   longer loses what it still held), delivery latency p50/p99 (send to arrival, one sample
   per client read: the oldest message in it), the server's CPU share and CPU per delivery,
   and the messages the server took in.  At 1,000 clients the offer (2,000 messages/s in, 2
   million deliveries/s out) is more than these servers carry: the table shows what each
   delivers, and how late.

Servers: trio_wshandler and its peers (websockets' Trio and asyncio flavours, trio-websocket),
picows (a reference: the pick for speed alone) and the plain Trio floor (``floor``; its
unmasking is plain Python, so a C unmasker can beat it on uploads).  ``floor_batched`` and
``raw`` do not take part (their difference from ``floor`` is how they batch broadcast
writes; ``raw`` never reads).  Ratios are to websockets' asyncio flavour and to the floor,
within the run (the machine's absolute numbers drift).  Every row reports the fleet's CPU share
(from /proc); above ``FLEET_WARN`` of a core the fleet, not the server, may be the bottleneck,
and the report says so.  Writes ``results.json`` and ``results.md`` into ``--out``.
``--quick``: a smoke run under a minute (small counts, one size each).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import selectors
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import run
import servers
from run import LABELS, Process, missing, percentiles, start_server

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
#: every server kind that has the receive-side modes, in servers.py's order
SERVERS = [kind for kind in servers.SERVERS if kind in servers.MODE_SERVERS]
#: run.py's servers that do not take part, and why
NOT_HERE = {
    "floor_batched": "differs from floor only in how it batches broadcast writes",
    "raw": "never reads after the handshake",
}
#: the rows every other is divided by: websockets' asyncio flavour, and the plain Trio floor
BASE, FLOOR = "websockets_asyncio", "floor"
SCENARIOS = ["echo", "upload", "chat"]
#: chat: Text messages a second each client sends.  2/s is a busy room of people typing; at
#: 1,000 clients it offers 2,000 messages/s in and 2 million deliveries/s out.
RATE = 2
#: chat: the size of each message (the send time, then printable padding)
CHAT_SIZE = 64
#: a fleet above this share of one core may be the bottleneck: the report warns
FLEET_WARN = 0.7
FULL: dict[str, Any] = {
    "echo_connections": [1, 100],
    "echo_sizes": [64, 4096],
    "echo_seconds": 5.0,
    "upload_clients": 10,
    "upload_sizes": [4096, 65536, 1 << 20],
    "upload_seconds": 6.0,
    "upload_warm": 1.0,  # the snapshots start this late, and end half this before the end
    "chat_clients": [100, 1000],
    "chat_seconds": 10.0,
    "chat_drain": 30.0,  # the longest wait for deliveries to stop after the last send
}
QUICK: dict[str, Any] = {
    **FULL,
    "echo_connections": [10],
    "echo_sizes": [64],
    "echo_seconds": 1.0,
    "upload_sizes": [65536],
    "upload_seconds": 1.5,
    "upload_warm": 0.4,
    "chat_clients": [20],
    "chat_seconds": 1.5,
    "chat_drain": 5.0,
}


# ---------------------------------------------------------------- the fleet


def cfleet_binary() -> tuple[str | None, str]:
    """The C fleet's binary and how it was had, or None and why not: run.py builds it (once per
    run, ``run.build_cfleet()``; None when there is no C compiler or the build fails)."""
    build = getattr(run, "build_cfleet", None)
    if build is None:
        return None, "this run.py does not build cfleet"
    try:
        binary = build()
    except Exception as exc:  # whatever it raises, the Python fleet still measures
        return None, f"run.build_cfleet() failed: {exc!r}"
    fleets = getattr(run, "FLEETS", {})
    if binary is None:
        return None, fleets.get("note", "run.build_cfleet() built nothing")
    return str(binary), fleets.get("compiler", "built by run.build_cfleet()")


def fleet_binary(choice: str) -> tuple[str | None, str]:
    """The fleet to use, by ``--fleet``: a binary (the C fleet) and what it is, or None for the
    Python fleet and why."""
    if choice == "python":
        return None, "Python fleet (--fleet python)"
    if choice not in ("auto", "c"):
        return choice, f"C fleet {choice} (--fleet)"
    binary, how = cfleet_binary()
    if binary is None and choice == "c":
        raise SystemExit(f"--fleet c: no C fleet: {how}")
    return (binary, f"C fleet ({how})") if binary else (None, f"Python fleet: no C fleet ({how})")


def fleet_command(port: int, connections: int, timeout: float, choice: str = "auto") -> list[str]:
    """The argv of the fleet to start: the C fleet when it can be had, else the Python one.
    Both take fleet.py's options (``--timeout``: the longest wait for a chat's stragglers)."""
    binary, _ = fleet_binary(choice)
    options = ["--port", str(port), "--connections", str(connections), "--timeout", str(timeout)]
    if binary:
        return [binary, *options]
    return [sys.executable, str(HERE / "inbound_fleet.py"), *options]


class Fleet(Process):
    """A fleet process; unlike run.py's ``Process`` its argv need not be a Python script."""

    def __init__(self, argv: list[str]) -> None:
        self.proc = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            bufsize=1,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
        self.selector = selectors.DefaultSelector()
        assert self.proc.stdout is not None
        self.selector.register(self.proc.stdout, selectors.EVENT_READ)

    def command(self, line: str, timeout: float) -> dict[str, Any]:
        """Send a command; its JSON answer (an error if none came within ``timeout``)."""
        self.send(line)
        answer = self.readline(timeout)
        if not answer:
            raise RuntimeError(f"the fleet did not answer {line!r} within {timeout:.0f} s")
        report: dict[str, Any] = json.loads(answer)
        if "error" in report:
            raise RuntimeError(f"the fleet: {report['error']}")
        return report


def start_fleet(port: int, connections: int, timeout: float, choice: str) -> Fleet:
    fleet = Fleet(fleet_command(port, connections, timeout, choice))
    line = fleet.readline(300)
    if line != "ready":
        fleet.stop()
        raise RuntimeError(f"fleet did not connect: {line!r}")
    return fleet


def snapshot(server: Process, required: bool = True) -> dict[str, Any]:
    """The server's ``count``, when it was taken (the middle of the exchange, which took
    ``rtt``) and its CPU; not ``required``: None counts if it does not answer in 10 s (a
    server swamped by a chat may not)."""
    asked = time.monotonic()
    server.send("count")
    line = server.readline(10) or ""
    answered = time.monotonic()
    cpu = server.cpu_seconds()
    if line.startswith("count "):
        counts: dict[str, Any] = json.loads(line[len("count ") :])
    elif required:
        raise RuntimeError(f"no count from the server: {line!r}")
    else:
        counts = {"messages": None, "bytes": None}
    return {**counts, "at": (asked + answered) / 2, "rtt": answered - asked, "cpu": cpu}


# ---------------------------------------------------------------- scenarios


def scenario_echo(kind: str, connections: int, cfg: dict[str, Any], choice: str) -> dict[str, Any]:
    seconds = cfg["echo_seconds"]
    server, port = start_server(kind)
    rounds = []
    try:
        fleet = start_fleet(port, connections, 10, choice)
        try:
            for size in cfg["echo_sizes"]:
                cpu0, fleet0, started = server.cpu_seconds(), fleet.cpu_seconds(), time.monotonic()
                report = fleet.command(f"echo {seconds} {size}", seconds + 60)
                wall = time.monotonic() - started
                rtt = percentiles(report.get("latencies_us", {}).get("quantiles", []))
                rounds.append(
                    {
                        "size": size,
                        "messages": report["messages"],
                        "messages_per_s": report["messages"] / report.get("seconds", seconds),
                        "rtt_p50_ms": rtt.get("p50", 0) / 1000,
                        "rtt_p99_ms": rtt.get("p99", 0) / 1000,
                        "server_cpu_share": (server.cpu_seconds() - cpu0) / wall,
                        "fleet_cpu_share": (fleet.cpu_seconds() - fleet0) / wall,
                    }
                )
        finally:
            fleet.stop()
    finally:
        server.stop()
    return {"server": kind, "connections": connections, "rounds": rounds}


def scenario_upload(kind: str, clients: int, cfg: dict[str, Any], choice: str) -> dict[str, Any]:
    seconds, warm = cfg["upload_seconds"], cfg["upload_warm"]
    server, port = start_server(kind, args=("count",))
    rounds = []
    try:
        fleet = start_fleet(port, clients, 10, choice)
        try:
            for size in cfg["upload_sizes"]:
                start = snapshot(server)
                fleet0, started = fleet.cpu_seconds(), time.monotonic()
                fleet.send(f"upload {seconds} {size}")
                time.sleep(warm)
                a = snapshot(server)
                time.sleep(max(0.1, started + seconds - warm / 2 - time.monotonic()))
                b = snapshot(server)
                answer = fleet.readline(seconds + 60)
                if not answer:
                    raise RuntimeError(f"the fleet did not answer upload {seconds} {size}")
                report = json.loads(answer)
                wall = time.monotonic() - started
                fleet_cpu = fleet.cpu_seconds() - fleet0
                # what was sent should all arrive: wait for it (a little) before the next size
                deadline = time.monotonic() + 10
                while True:
                    end = snapshot(server)
                    arrived = end["messages"] - start["messages"]
                    if arrived >= report["messages"] or time.monotonic() > deadline:
                        break
                    time.sleep(0.1)
                received, cpu, window = (
                    b["bytes"] - a["bytes"],
                    b["cpu"] - a["cpu"],
                    b["at"] - a["at"],
                )
                rounds.append(
                    {
                        "size": size,
                        "window_s": window,
                        "bytes": received,
                        "messages": b["messages"] - a["messages"],
                        "mb_per_s": received / window / 1e6,
                        "server_cpu_s_per_gb": cpu / (received / 1e9) if received else None,
                        "server_cpu_share": cpu / window,
                        "snapshot_rtt_ms": max(a["rtt"], b["rtt"]) * 1000,
                        "fleet_cpu_share": fleet_cpu / wall,
                        "fleet_sent_messages": report["messages"],
                        "server_counted_messages": arrived,
                        "fleet_report": report,
                    }
                )
        finally:
            fleet.stop()
    finally:
        server.stop()
    return {"server": kind, "clients": clients, "rounds": rounds}


def scenario_chat(kind: str, clients: int, cfg: dict[str, Any], choice: str) -> dict[str, Any]:
    seconds, drain = cfg["chat_seconds"], cfg["chat_drain"]
    server, port = start_server(kind, args=("chat",))
    try:
        fleet = start_fleet(port, clients, drain, choice)
        try:
            a = snapshot(server)
            fleet0, started = fleet.cpu_seconds(), time.monotonic()
            report = fleet.command(f"chat {seconds} {RATE} {CHAT_SIZE}", seconds + drain + 60)
            wall = time.monotonic() - started
            cpu = server.cpu_seconds() - a["cpu"]  # now: a swamped server may answer late
            fleet_cpu = fleet.cpu_seconds() - fleet0
            b = snapshot(server, required=False)
        finally:
            fleet.stop()
    finally:
        server.stop()
    sent, received = report["sent"], report["received"]
    expected = sent * clients
    # how the wait for deliveries ended: all arrived; still arriving when it gave up; or a
    # pause of a second with none (a stalled server, or one that dropped them)
    ended = "all" if received >= expected else "pause"
    if received < expected and report["seconds"] > seconds + drain - 1:
        ended = "limit"
    lat = percentiles(
        (report.get("latency") or report.get("latencies_us") or {}).get("quantiles", [])
    )
    return {
        "server": kind,
        "clients": clients,
        "rate": RATE,
        "size": CHAT_SIZE,
        "offered_per_s": clients * RATE,
        "sent": sent,
        "expected": expected,
        "deliveries": received,
        "lost": max(0, expected - received),
        "ended": ended,
        "seconds": report["seconds"],
        "deliveries_per_s": received / report["seconds"],
        "latency_p50_ms": lat.get("p50", 0) / 1000,
        "latency_p99_ms": lat.get("p99", 0) / 1000,
        "server_took_in": None if b["messages"] is None else b["messages"] - a["messages"],
        "server_cpu_share": cpu / wall,
        "server_cpu_us_per_delivery": cpu / received * 1e6 if received else None,
        "fleet_cpu_share": fleet_cpu / wall,
        "closed": clients - report.get("connections", clients),
        "skipped": report.get("skipped", 0),
        "frame_errors": report.get("frame_errors", 0),
    }


# ---------------------------------------------------------------- the report


def ratios(value: float | None, rows: dict[str, dict[str, Any]], key: str, server: str) -> str:
    """`` | value / websockets_asyncio's | value / floor's`` (empty where absent)."""
    cells = []
    for ref in (BASE, FLOOR):
        other = rows.get(ref, {}).get(key)
        cells.append(f"{value / other:.2f}" if value and other and ref != server else "")
    return " | ".join(cells)


def share(value: float) -> str:
    return f"{value:.0%}" + (" !" if value > FLEET_WARN else "")


def markdown(results: dict[str, Any]) -> str:
    out = [
        f"Machine: {results['machine']}. Command: `{results['command']}`. "
        f"Clients: {results['fleet']['what']}.\n",
        "Ratios are this row's figure divided by websockets_asyncio's and by the plain Trio "
        f"floor's in the same run. Fleet CPU is the client process's share of one core (from "
        f"/proc); `!` marks a fleet above {FLEET_WARN:.0%}, which may be the bottleneck.\n",
        "| row | what it is |",
        "|---|---|",
        *(f"| {s} | {LABELS[s]} |" for s in results["servers"]),
        "",
        *(f"- skipped: {s['server']}: {s['reason']}" for s in results["skipped"]),
    ]
    if results["echo"]:
        out += [
            "\n### 1. Echo\n",
            "Each connection sends a Binary message, awaits its echo, repeats.\n",
            "| connections | size B | server | messages/s | / websockets_asyncio | / floor "
            "| RTT p50 ms | RTT p99 ms | server CPU | fleet CPU |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        by_key: dict[tuple[int, int], dict[str, dict[str, Any]]] = {}
        for e in results["echo"]:
            for r in e["rounds"]:
                by_key.setdefault((e["connections"], r["size"]), {})[e["server"]] = r
        for (conns, size), rows in sorted(by_key.items()):
            for server, r in rows.items():
                out.append(
                    f"| {conns} | {size} | {server} | {r['messages_per_s']:,.0f} | "
                    f"{ratios(r['messages_per_s'], rows, 'messages_per_s', server)} | "
                    f"{r['rtt_p50_ms']:.2f} | {r['rtt_p99_ms']:.2f} | "
                    f"{r['server_cpu_share']:.0%} | {share(r['fleet_cpu_share'])} |"
                )
    if results["upload"]:
        out += [
            "\n### 2. Uploads\n",
            "10 clients send Binary messages back to back; the server only counts them. MB/s "
            "(10^6 B) of complete messages' payload counted by the server between two "
            "snapshots mid-upload; server CPU seconds per GB received in that window (ratios: "
            "lower is cheaper); the fleet's messages all counted by the server at the end?\n",
            "| size B | server | MB/s | / websockets_asyncio | / floor | CPU s/GB "
            "| / websockets_asyncio | / floor | server CPU | fleet CPU | all arrived |",
            "|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        by_size: dict[int, dict[str, dict[str, Any]]] = {}
        for e in results["upload"]:
            for r in e["rounds"]:
                by_size.setdefault(r["size"], {})[e["server"]] = r
        for size, rows in sorted(by_size.items()):
            for server, r in rows.items():
                cpu = r["server_cpu_s_per_gb"]
                arrived = r["server_counted_messages"] >= r["fleet_sent_messages"]
                out.append(
                    f"| {size} | {server} | {r['mb_per_s']:,.0f} | "
                    f"{ratios(r['mb_per_s'], rows, 'mb_per_s', server)} | "
                    f"{'' if cpu is None else f'{cpu:.2f}'} | "
                    f"{ratios(cpu, rows, 'server_cpu_s_per_gb', server)} | "
                    f"{r['server_cpu_share']:.0%} | {share(r['fleet_cpu_share'])} | "
                    f"{'yes' if arrived else 'no'} |"
                )
    if results["chat"]:
        out += [
            "\n### 3. Chat room\n",
            f"Each client sends {RATE} Text messages/s of {CHAT_SIZE} B; the server broadcasts "
            "each to every client. Offered: messages/s in; sent, and skipped (due on a client "
            "with over 4 MiB unsent: the server was not reading); deliveries (expected: sent x "
            "clients); lost; how the wait for them ended (`all` arrived; `limit`: still "
            f"arriving {results['settings']['chat_drain']:g} s after the last send; `pause`: "
            "none came for a second, the server stalled or dropped them); deliveries/s from the "
            "first send to the last delivery; delivery latency (send to arrival); server CPU "
            "share and CPU per delivery; the messages the server took in (`?`: it did not "
            "answer in 10 s); connections closed.\n",
            "| clients | server | offered msg/s | sent | skipped | deliveries | lost | ended "
            "| deliveries/s | / websockets_asyncio | / floor | p50 ms | p99 ms | server CPU "
            "| CPU us/delivery | fleet CPU | server took in | closed |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        by_n: dict[int, dict[str, dict[str, Any]]] = {}
        for e in results["chat"]:
            by_n.setdefault(e["clients"], {})[e["server"]] = e
        for n, rows in sorted(by_n.items()):
            for server, e in rows.items():
                per, took = e["server_cpu_us_per_delivery"], e["server_took_in"]
                out.append(
                    f"| {n} | {server} | {e['offered_per_s']:,} | {e['sent']:,} | "
                    f"{e['skipped']:,} | "
                    f"{e['deliveries']:,} | {e['lost']:,} | {e['ended']} | "
                    f"{e['deliveries_per_s']:,.0f} | "
                    f"{ratios(e['deliveries_per_s'], rows, 'deliveries_per_s', server)} | "
                    f"{e['latency_p50_ms']:.1f} | {e['latency_p99_ms']:.1f} | "
                    f"{e['server_cpu_share']:.0%} | {'' if per is None else f'{per:.2f}'} | "
                    f"{share(e['fleet_cpu_share'])} | {'?' if took is None else f'{took:,}'} | "
                    f"{e['closed']} |"
                )
    notes = results.get("warnings", []) + [f"ERROR: {e}" for e in results.get("errors", [])]
    if notes:
        out += ["\n### Warnings\n", *(f"- {n}" for n in notes)]
    return "\n".join(out) + "\n"


def warnings(results: dict[str, Any]) -> list[str]:
    """A fleet that may have been the bottleneck, frames the fleet did not expect."""
    found = []
    rows = [
        (f"echo {e['connections']} x {r['size']} B", e["server"], r)
        for e in results["echo"]
        for r in e["rounds"]
    ]
    rows += [
        (f"upload {r['size']} B", e["server"], r) for e in results["upload"] for r in e["rounds"]
    ]
    rows += [(f"chat {e['clients']}", e["server"], e) for e in results["chat"]]
    for what, server, r in rows:
        if r["fleet_cpu_share"] > FLEET_WARN:
            found.append(
                f"{what}, {server}: the fleet used {r['fleet_cpu_share']:.0%} of a core; it, "
                "not the server, may be the bottleneck"
            )
        if r.get("frame_errors"):
            found.append(f"{what}, {server}: {r['frame_errors']} unexpected frames")
    return found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke run, under a minute")
    parser.add_argument("--servers", default=",".join(SERVERS))
    parser.add_argument("--scenarios", default=",".join(SCENARIOS), help=",".join(SCENARIOS))
    parser.add_argument(
        "--fleet", default="auto", help="auto (C if it builds), c, python, or a fleet binary"
    )
    parser.add_argument("--out", default=str(ROOT / "reports" / "inbound"))
    args = parser.parse_args()
    servers = [s for s in args.servers.split(",") if s]
    if set(servers) - set(SERVERS) - set(NOT_HERE):
        parser.error(f"unknown servers {sorted(set(servers) - set(SERVERS))}; known: {SERVERS}")
    scenarios = [s for s in args.scenarios.split(",") if s]
    if set(scenarios) - set(SCENARIOS):
        parser.error(f"unknown scenarios {sorted(set(scenarios) - set(SCENARIOS))}")
    cfg = QUICK if args.quick else FULL
    skipped = [{"server": s, "reason": r} for s in servers if (r := NOT_HERE.get(s, missing(s)))]
    for skip in skipped:
        servers.remove(skip["server"])
        print(f"skipping {skip['server']}: {skip['reason']}", file=sys.stderr)
    binary, what = fleet_binary(args.fleet)
    print(f"clients: {what}", file=sys.stderr)
    steps = [("echo", s, n) for n in cfg["echo_connections"] for s in servers]
    steps += [("upload", s, cfg["upload_clients"]) for s in servers]
    steps += [("chat", s, n) for n in cfg["chat_clients"] for s in servers]
    steps = [step for step in steps if step[0] in scenarios]
    run_scenario = {"echo": scenario_echo, "upload": scenario_upload, "chat": scenario_chat}
    results: dict[str, Any] = {
        "quick": args.quick,
        "command": " ".join(["python benchmarks/inbound.py", *sys.argv[1:]]),
        "machine": f"{platform.node()}: {os.cpu_count()} cores, {platform.machine()}, "
        f"Python {platform.python_version()}, {platform.platform()}",
        "started": time.strftime("%Y-%m-%d %H:%M:%S"),
        "fleet": {"kind": "c" if binary else "python", "binary": binary, "what": what},
        "settings": {**cfg, "chat_rate": RATE, "chat_size": CHAT_SIZE},
        "servers": servers,
        "skipped": skipped,
        **{scenario: [] for scenario in SCENARIOS},
        "errors": [],
    }
    for i, (scenario, server, n) in enumerate(steps, 1):
        print(f"[{i}/{len(steps)}] {scenario} {server} {n}", file=sys.stderr, flush=True)
        try:
            results[scenario].append(run_scenario[scenario](server, n, cfg, args.fleet))
        except Exception as exc:  # report and go on: one broken server must not lose the run
            results["errors"].append(f"{scenario} {server} {n}: {exc!r}")
    results["finished"] = time.strftime("%Y-%m-%d %H:%M:%S")
    results["warnings"] = warnings(results)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=1))
    (out / "results.md").write_text(markdown(results))
    print(markdown(results))
    return 1 if results["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
