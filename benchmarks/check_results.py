"""Check that a benchmark results file parses and has every scenario (used by CI's smoke run).

It judges no timing: only that each server produced each scenario's figures (or the run said why
it skipped one: a server whose package is not installed, a scenario a server does not take part in).
In the compressed scenario it also requires what is correctness, not speed: permessage-deflate
negotiated, every message compressed, and the sample the clients inflated intact and in order.
"""

from __future__ import annotations

import json
import sys

#: scenario name (``run.py --scenarios``) -> key of its results
SCENARIOS = {
    "broadcast": "broadcast",
    "echo": "echo",
    "slow": "slow_consumer",
    "compressed": "compressed",
}


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
            if (server, scenario) in skipped:
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
    for problem in problems:
        print("PROBLEM:", problem)
    print(
        f"{path}: {len(results['broadcast'])} broadcast, {len(results['echo'])} echo,"
        f" {len(results['slow_consumer'])} slow-consumer,"
        f" {len(results.get('compressed', []))} compressed results; {len(problems)} problem(s)"
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


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
