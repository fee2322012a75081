"""Check that a benchmark results file parses and has every scenario (used by CI's smoke run).

It judges no timing: only that each server produced each scenario's figures (or the run said why
it skipped one: a server whose package is not installed, a scenario a server does not take part in).
In the compressed scenario it also requires what is correctness, not speed: permessage-deflate
negotiated, every message compressed, and the sample the clients inflated intact and in order.
In the cross-process scenario (``cluster``, trio_wshandler's Redis backplane): each row ran,
every client got every message (through Redis for the second process's clients), no round timed
out, the backplanes lost nothing, and the producer published every message.
"""

from __future__ import annotations

import json
import sys
from typing import Any

#: scenario name (``run.py --scenarios``) -> key of its results
SCENARIOS = {
    "broadcast": "broadcast",
    "echo": "echo",
    "slow": "slow_consumer",
    "compressed": "compressed",
    "cluster": "cluster",
}
#: the scenarios only some servers take part in (the others have no reason to give)
ONLY = {"cluster": {"trio_wshandler"}}
#: the rows of the cross-process scenario (run.py's CLUSTER_ROWS)
CLUSTER_ROWS = ("single", "single_redis", "cluster")


def main(path: str) -> int:
    with open(path, encoding="utf-8") as file:
        results = json.load(file)
    problems = list(results.get("errors", []))
    # results from before --scenarios had the first three
    scenarios = results.get("scenarios", ["broadcast", "echo", "slow"])
    if "broadcast" in scenarios:
        servers = {e["server"] for e in results["broadcast"]}
        if "trio_wshandler" not in servers:
            problems.append("no broadcast result for trio_wshandler")
    for entry in results["broadcast"]:
        for rnd in entry["rounds"]:
            if rnd["deliveries"] <= 0 or rnd["deliveries_per_s"] <= 0:
                problems.append(f"{entry['server']}: no deliveries")
    if ("echo" in scenarios and not results["echo"]) or (
        "slow" in scenarios and not results["slow_consumer"]
    ):
        problems.append("missing echo or slow-consumer results")
    # every server that ran has every scenario's figures, or a reason why not
    skipped = {(s["server"], s["scenario"]) for s in results.get("skipped", [])}
    for server in results.get("servers", []):
        for scenario in scenarios:
            if (server, scenario) in skipped or server not in ONLY.get(scenario, {server}):
                continue
            if not any(e["server"] == server for e in results[SCENARIOS[scenario]]):
                problems.append(f"{server}: no {scenario} result and no reason why")
    for entry in results["echo"]:
        if entry["messages_per_s"] <= 0:
            problems.append(f"{entry['server']}: no echo at {entry['connections']} connections")
    for entry in results["slow_consumer"]:
        if entry["normal_clients_received"] <= 0:
            problems.append(f"{entry['server']}: the normal clients got nothing (slow consumer)")
    for entry in results.get("compressed", []):
        problems += check_compressed(entry)
    if "cluster" in scenarios and ("trio_wshandler", "cluster") not in skipped:
        problems += check_cluster(results.get("cluster", []))
    for problem in problems:
        print("PROBLEM:", problem)
    print(
        f"{path}: {len(results['broadcast'])} broadcast, {len(results['echo'])} echo,"
        f" {len(results['slow_consumer'])} slow-consumer,"
        f" {len(results.get('compressed', []))} compressed,"
        f" {len(results.get('cluster', []))} cross-process results; {len(problems)} problem(s)"
    )
    return 1 if problems else 0


def check_compressed(entry: dict[str, object]) -> list[str]:
    """What is wrong with one server's compressed-broadcast result (no timing is judged)."""
    server = entry["server"]
    problems = []
    agreements = entry.get("agreements")
    if not isinstance(agreements, list) or len(agreements) != 1:
        problems.append(f"{server}: compressed: one permessage-deflate answer wanted: {agreements}")
    if entry.get("exchanged") != entry.get("clients") or entry.get("exchange_errors"):
        problems.append(
            f"{server}: compressed: {entry.get('exchanged')} of {entry.get('clients')} clients"
            f" got their echo, {entry.get('exchange_errors')} errors"
            f" {entry.get('exchange_problems')}"
        )
    for key in ("idle_bytes_per_connection", "idle_bytes_per_connection_after_message"):
        if not isinstance(entry.get(key), int | float):
            problems.append(f"{server}: compressed: no {key}")
    rounds = entry.get("rounds")
    if not isinstance(rounds, list) or not rounds:
        return [*problems, f"{server}: compressed: no rounds"]
    for rnd in rounds:
        where = f"{server}: compressed, {rnd['mode']}"
        if rnd["deliveries"] <= 0 or rnd["deliveries_per_s"] <= 0:
            problems.append(f"{where}: no deliveries")
        if rnd["frame_errors"]:
            problems.append(f"{where}: {rnd['frame_errors']} errors: {rnd['problems']}")
        # all of them once every message arrived (a round that timed out is a matter of time)
        complete = not rnd["timed_out"] and rnd["verified"] == rnd["verified_expected"]
        if rnd["verified"] <= 0 or not (complete or rnd["timed_out"]):
            problems.append(
                f"{where}: {rnd['verified']} of {rnd['verified_expected']} messages checked"
            )
    return problems


def check_cluster(entries: list[dict[str, Any]]) -> list[str]:
    """What is wrong with the cross-process scenario's results (no timing is judged)."""
    problems = []
    rows = [entry.get("row") for entry in entries]
    for row in CLUSTER_ROWS:
        if row not in rows:
            problems.append(f"cluster: no {row} row")
    for entry in entries:
        rounds = entry.get("rounds")
        if not isinstance(rounds, list) or not rounds:
            problems.append(f"cluster {entry.get('row')}: no rounds")
            continue
        for rnd in rounds:
            where = f"cluster {entry['row']}, {rnd['size']} B {rnd['mode']}"
            if rnd["expected"] <= 0 or rnd["deliveries"] != rnd["expected"] or rnd["timed_out"]:
                problems.append(
                    f"{where}: {rnd['deliveries']:,} of {rnd['expected']:,} deliveries"
                    + (" (timed out)" if rnd["timed_out"] else "")
                )
            if rnd["frame_errors"]:
                problems.append(f"{where}: {rnd['frame_errors']} wrong frames")
            if not entry.get("backplane"):
                continue
            if rnd.get("lost") != 0:
                problems.append(f"{where}: the backplanes lost {rnd.get('lost')} messages")
            if rnd.get("published") != rnd["messages"]:
                problems.append(
                    f"{where}: {rnd.get('published')} of {rnd['messages']} messages published"
                )
            if not rnd.get("redis_connected"):
                problems.append(f"{where}: a backplane lost Redis")
            received = rnd.get("received_by_process", [])
            if received[1:] != [rnd["messages"]] * (len(received) - 1):
                problems.append(f"{where}: the other processes received {received[1:]} messages")
    return problems


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
