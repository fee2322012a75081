"""What a broadcast costs when the handler is mounted under Hypercorn instead of ``serve()``.

    python benchmarks/asgi_fanout.py [--clients 100,1000] [--sizes 64,4096] [--repeat 2]
                                     [--json reports/asgi_fanout.json]

Under ``serve()`` a ``send_all`` encodes a message once and the listener's flusher writes the
same bytes to every socket, coalesced, with no task switch per client.  Mounted under an ASGI
server (``handler.asgi()``) the server frames every message for every client: each
connection's writer task takes the frame from its queue, turns it back into a message (decoded
once per broadcast, ``_asgi_messages.LastDecoded``) and awaits Hypercorn's ``send``, which has
wsproto frame it and writes it to the socket.  This measures that difference with run.py's
broadcast round (``scenario_broadcast``: the same handler options, the same C client fleet in
another process, binary messages in a burst), the two servers in turns, ``--repeat`` times
each: deliveries per second until every client has every message, the server process's CPU
per delivery (``/proc``), and p50/p99 delivery latency.  The ratios are ASGI over ``serve()``
in the same run (this machine's absolute numbers drift).  Two more servers are references of
what Hypercorn itself costs (``servers.py``): ``hypercorn_floor``, a bare ASGI app whose
broadcast awaits ``send`` for every client in turn (the least any ASGI app can do per delivery,
and what no production app should do: a client that reads nothing would stall all the others),
and ``hypercorn_floor_tasks``, the same with a writer task per client fed by an unbounded
memory channel (the least an app that keeps its clients apart does); the last columns are the
mount's CPU per delivery over theirs.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Any

from run import scenario_broadcast

KINDS = {
    "serve": "trio_wshandler",
    "asgi": "trio_wshandler_asgi",
    "floor": "hypercorn_floor",
    "tasks": "hypercorn_floor_tasks",
}


def row(result: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        {
            "clients": result["clients"],
            "size": r["size"],
            "deliveries_per_s": r["deliveries_per_s"],
            "cpu_us_per_delivery": r["server_cpu_s_per_million"],
            "p50_ms": r["latency_p50_ms"],
            "p99_ms": r["latency_p99_ms"],
            "complete": r["deliveries"] == r["expected"] and not r["timed_out"],
        }
        for r in result["rounds"]
    ]


def ratio(a: float, b: float, digits: int) -> str:
    """``a / b`` as a ratio; "n/a" when ``b`` is 0 (a short round can spend less CPU than the
    process clock's tick, 10 ms on Linux, and reads as 0)."""
    return f"{a / b:.{digits}f}x" if b else "n/a"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", default="100,1000")
    parser.add_argument("--sizes", default="64,4096")
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--total", type=int, default=200_000, help="deliveries per round")
    parser.add_argument("--timeout", type=float, default=120)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    rows: dict[str, list[dict[str, Any]]] = {kind: [] for kind in KINDS}
    for n in (int(c) for c in args.clients.split(",")):
        for turn in range(args.repeat):
            for kind, server in KINDS.items():
                result = scenario_broadcast(server, n, sizes, ["burst"], args.total, args.timeout)
                rows[kind] += row(result)
                print(f"# {kind} N={n} turn {turn + 1}: {row(result)}", file=sys.stderr)
    lines = [
        "| clients | size | serve() deliveries/s | ASGI deliveries/s | ratio | serve() CPU us"
        " | ASGI CPU us | ratio | serve() p99 ms | ASGI p99 ms | floor CPU us | ASGI / floor"
        " | task floor CPU us | ASGI / task floor |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    keys = sorted({(r["clients"], r["size"]) for r in rows["serve"]})
    for clients, size in keys:
        pick = {
            kind: [r for r in rows[kind] if (r["clients"], r["size"]) == (clients, size)]
            for kind in KINDS
        }
        med = {
            kind: {
                key: statistics.median(r[key] for r in pick[kind])
                for key in ("deliveries_per_s", "cpu_us_per_delivery", "p99_ms")
            }
            for kind in KINDS
        }
        complete = all(r["complete"] for kind in KINDS for r in pick[kind])
        s, a, f, t = med["serve"], med["asgi"], med["floor"], med["tasks"]
        lines.append(
            f"| {clients} | {size} | {s['deliveries_per_s']:,.0f} | {a['deliveries_per_s']:,.0f}"
            f" | {ratio(a['deliveries_per_s'], s['deliveries_per_s'], 2)}"
            f" | {s['cpu_us_per_delivery']:.2f} | {a['cpu_us_per_delivery']:.2f}"
            f" | {ratio(a['cpu_us_per_delivery'], s['cpu_us_per_delivery'], 1)}"
            f" | {s['p99_ms']:.1f} | {a['p99_ms']:.1f} | {f['cpu_us_per_delivery']:.2f}"
            f" | {ratio(a['cpu_us_per_delivery'], f['cpu_us_per_delivery'], 2)}"
            f" | {t['cpu_us_per_delivery']:.2f}"
            f" | {ratio(a['cpu_us_per_delivery'], t['cpu_us_per_delivery'], 2)} |"
            + ("" if complete else " incomplete")
        )
    print("\n".join(lines))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(rows, indent=1))
    lost = [r for kind in KINDS for r in rows[kind] if not r["complete"]]
    if lost:
        print(f"{len(lost)} round(s) lost deliveries or timed out", file=sys.stderr)
    return 1 if lost else 0


if __name__ == "__main__":
    sys.exit(main())
