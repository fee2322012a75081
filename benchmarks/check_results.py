"""Check that a benchmark results file parses and has every scenario (used by CI's smoke run).

It judges no timing: only that each server produced each scenario's figures (or the run said why
it skipped one: a server whose package is not installed, a scenario a server does not take part in).
"""

from __future__ import annotations

import json
import sys


def main(path: str) -> int:
    with open(path, encoding="utf-8") as file:
        results = json.load(file)
    problems = list(results.get("errors", []))
    servers = {e["server"] for e in results["broadcast"]}
    if "trio_wshandler" not in servers:
        problems.append("no broadcast result for trio_wshandler")
    for entry in results["broadcast"]:
        for rnd in entry["rounds"]:
            if rnd["deliveries"] <= 0 or rnd["deliveries_per_s"] <= 0:
                problems.append(f"{entry['server']}: no deliveries")
    if not results["echo"] or not results["slow_consumer"]:
        problems.append("missing echo or slow-consumer results")
    # every server that ran has every scenario's figures, or a reason why not
    skipped = {(s["server"], s["scenario"]) for s in results.get("skipped", [])}
    for server in results.get("servers", []):
        for scenario, key in (
            ("broadcast", "broadcast"),
            ("echo", "echo"),
            ("slow", "slow_consumer"),
        ):
            if (server, scenario) in skipped:
                continue
            if not any(e["server"] == server for e in results[key]):
                problems.append(f"{server}: no {scenario} result and no reason why")
    for entry in results["echo"]:
        if entry["messages_per_s"] <= 0:
            problems.append(f"{entry['server']}: no echo at {entry['connections']} connections")
    for entry in results["slow_consumer"]:
        if entry["normal_clients_received"] <= 0:
            problems.append(f"{entry['server']}: the normal clients got nothing (slow consumer)")
    for problem in problems:
        print("PROBLEM:", problem)
    print(
        f"{path}: {len(results['broadcast'])} broadcast, {len(results['echo'])} echo,"
        f" {len(results['slow_consumer'])} slow-consumer results; {len(problems)} problem(s)"
    )
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
