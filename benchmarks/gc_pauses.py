"""What Python's garbage collector costs a trio_wshandler server with many connections, and what
a user can do about it.

    python benchmarks/gc_pauses.py [--clients 10000] [--rounds 5] [--quick] [--out DIR]

A full collection scans every object the collector tracks; with 10,000 connections (about 70
tracked objects each: tasks, coroutines, queues) one takes 100-200 ms on this machine, and in a
burst of broadcasts (many allocations) one comes now and then: the event loop stalls that long.
No process-wide setting is changed by the library.  What a user can choose, measured here:

``default``
    CPython's defaults.
``freeze at start``
    ``gc.freeze()`` once the server runs, before clients connect: what was created at start-up
    (modules, the handler) is never scanned again.
``freeze connected``
    ``gc.freeze()`` once the clients are connected: their objects are never scanned either.
``threshold``
    ``gc.set_threshold(50_000, 20, 20)``: young collections 70 times rarer, so fewer objects
    survive into the old generation and fewer full collections are started.

For each: trio_wshandler's server (``servers.py trio_wshandler``, in a process of its own), N
clients (the C fleet, as ``run.py``), ``--rounds`` bursts of 2,000 broadcasts of 64 B; per
round the longest collection and the worst stall of the event loop (``servers.py``'s
``Pauses``), and deliveries/s.  Then the price of freezing: every client leaves and as many new
ones connect, ``CHURNS`` times; the server's RSS after each churn, and the objects the collector
tracks.  A frozen object that becomes garbage in a reference cycle (a connection that ended:
its task, its exceptions) is never collected, so a frozen server's memory grows with the churn
of its connections unless it calls ``gc.unfreeze()`` (and ``gc.freeze()`` again) itself.

Writes ``results.json`` and ``results.md`` into ``--out`` (default reports/gc).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from run import ROOT, Process, broadcast_round, start_fleets, start_server

CONFIGS = {
    "default": [],
    "freeze at start": ["gc freeze"],
    "freeze connected": [],  # gc freeze after the clients connect
    "threshold": ["gc threshold 50000 20 20"],
}
#: times every client leaves and as many new ones connect, to show what freezing keeps
CHURNS = 3


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def gc_state(server: Process, command: str = "gc show") -> dict[str, Any]:
    server.send(command)
    line = server.readline(60)
    assert line.startswith("gc "), line
    state: dict[str, Any] = json.loads(line[3:])
    return state


def close_fleets(fleets: list[Process]) -> None:
    for fleet in fleets:
        fleet.send("quit")
    for fleet in fleets:
        fleet.proc.wait(30)


def run_config(name: str, clients: int, rounds: int) -> dict[str, Any]:
    server, port = start_server("trio_wshandler")
    try:
        for command in CONFIGS[name]:
            gc_state(server, command)
        fleets = start_fleets(port, clients)
        if name == "freeze connected":
            gc_state(server, "gc freeze")
        results = [
            broadcast_round(server, fleets, 2000, 64, "burst", timeout=120) for _ in range(rounds)
        ]
        churn = []
        for _ in range(CHURNS):
            close_fleets(fleets)
            time.sleep(1.0)  # the connections end (their close handshakes are done)
            fleets = start_fleets(port, clients)
            state = gc_state(server)
            churn.append({"rss_kib": rss_kib(server.proc.pid), **state})
        close_fleets(fleets)
        return {
            "config": name,
            "clients": clients,
            "rounds": results,
            "churn": churn,
            "gc_ms_max": max(r.get("loop_gc_ms", 0.0) for r in results),
            "lag_ms_max": max(r.get("loop_lag_ms", 0.0) for r in results),
            "deliveries_per_s": statistics.median(r["deliveries_per_s"] for r in results),
        }
    finally:
        server.send("quit")
        server.proc.wait(30)


def markdown(results: list[dict[str, Any]]) -> str:
    out = [
        "| configuration | longest collection, ms | worst loop stall, ms | deliveries/s (median)"
        " | RSS after each churn, MiB | tracked objects after the last churn |",
        "|---|---|---|---|---|---|",
    ]
    for r in results:
        rss = ", ".join(f"{c['rss_kib'] / 1024:.0f}" for c in r["churn"])
        tracked = sum(r["churn"][-1]["tracked"]) if r["churn"] else 0
        out.append(
            f"| {r['config']} | {r['gc_ms_max']:.1f} | {r['lag_ms_max']:.1f} |"
            f" {r['deliveries_per_s']:,.0f} | {rss} | {tracked:,}"
            f" (+{r['churn'][-1]['frozen']:,} frozen) |"
        )
    return "\n".join(out) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="100 clients, 1 round: a smoke run")
    parser.add_argument("--out", default=str(ROOT / "reports" / "gc"))
    args = parser.parse_args()
    clients, rounds = (100, 1) if args.quick else (args.clients, args.rounds)
    results = []
    for name in CONFIGS:
        print(f"{name}: {clients} clients, {rounds} rounds", file=sys.stderr)
        results.append(run_config(name, clients, rounds))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=1))
    text = markdown(results)
    (out / "results.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
