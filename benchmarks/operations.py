"""The operations benchmarks of issue #12: what the stats counters cost, and what workers buy.

    python benchmarks/operations.py [--quick] [--parts counters,workers] [--out reports/operations]

``counters``: fan-out with and without the counters behind ``handler.stats()``.  "Without" is
the package as it was just before they were added (the parent of the commit that added
``trio_wshandler/_stats.py``, exported with ``git archive``); "with" is this checkout.
``counters_harness.py`` loads both in one process, serves each to 1,000 raw clients, and times
the server's CPU per delivery in rounds of paced and burst broadcasts of 64 B, the two versions
in turns (see its docstring for why).  The overhead is the median of the pairs' ratios, with a
95 % bootstrap interval; the per-write accounting is also timed alone.  The report names the
commits compared and how many package files differ: the comparison measures the counters only
while nothing else on the hot path changed since (true when they were added).

``workers``: ``python -m trio_wshandler serve workers_app:make`` (the real command) with 1
worker, 1 worker and a Redis backplane, and 2 workers sharing the port through Redis; 2,000
clients (``run.py``'s fleets: one cfleet process, or two fleet.py processes where no C
compiler builds cfleet) connected to the shared port, broadcasts triggered by an HTTP
request that one worker answers; the rows take turns, three times over (each time: a round
per size and producer), since this machine's speed drifts over minutes.  Reported: medians of
deliveries/s, the workers' CPU (summed, and each one's), Redis's CPU, and the fleets' share of
the machine (they run on the same two cores).

Needs the ``bench`` extra; the Redis rows need a redis-server (``$REDIS_SERVER`` or on PATH)
and coredis, and are skipped, saying why, without them.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import queue
import random
import signal
import statistics
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

from run import (
    HERE,
    ROOT,
    broadcast_round,
    cluster_missing,
    cpu_seconds_of,
    start_fleets,
)

sys.path.insert(0, str(ROOT / "tests"))
from redis_server import RedisServer, redis_binary

PARTS = ["counters", "workers"]
#: the rows of the workers part: label, workers, with Redis
WORKER_ROWS = [
    ("1 worker", 1, False),
    ("1 worker + Redis", 1, True),
    ("2 workers + Redis", 2, True),
]


# ---------------------------------------------------------------- counters: with and without


def git(*args: str) -> str:
    return subprocess.run(
        ["git", "-C", str(ROOT), *args], capture_output=True, text=True, check=True
    ).stdout.strip()


def baseline_commit() -> tuple[str, str] | str:
    """(baseline, head): the parent of the commit that added the counters, and HEAD; or why
    there is none (no git history here)."""
    try:
        added = git("log", "--diff-filter=A", "--format=%H", "--", "trio_wshandler/_stats.py")
        head = git("rev-parse", "HEAD")
    except (OSError, subprocess.CalledProcessError) as exc:
        return f"no git history to take the package without counters from ({exc})"
    if not added:
        return "trio_wshandler/_stats.py is not in the git history"
    first = added.splitlines()[-1]
    try:
        return git("rev-parse", f"{first}^"), head
    except subprocess.CalledProcessError as exc:
        return f"the commit that added the counters has no parent ({exc})"


def export_package(commit: str, into: Path) -> None:
    archive = into / "package.tar"
    with archive.open("wb") as out:
        subprocess.run(
            ["git", "-C", str(ROOT), "archive", "--format=tar", commit, "trio_wshandler"],
            stdout=out,
            check=True,
        )
    with tarfile.open(archive) as tar:
        tar.extractall(into, filter="data")


def median_interval(ratios: list[float], draws: int = 2000) -> tuple[float, float]:
    """A 95 % bootstrap interval of the median of ``ratios`` (seeded: the same every run)."""
    rng = random.Random(12)
    medians = sorted(statistics.median(rng.choices(ratios, k=len(ratios))) for _ in range(draws))
    return medians[int(draws * 0.025)], medians[int(draws * 0.975)]


def part_counters(n: int, m: int, pairs: int) -> dict[str, Any]:
    found = baseline_commit()
    if isinstance(found, str):
        return {"skipped": found}
    baseline, head = found
    changed = git("diff", "--name-only", baseline, head, "--", "trio_wshandler").splitlines()
    result: dict[str, Any] = {
        "clients": n,
        "messages_per_round": m,
        "pairs": pairs,
        "size": 64,
        "baseline": baseline,
        "head": head,
        "package_files_changed": changed,
    }
    with tempfile.TemporaryDirectory(prefix="counters-baseline-") as tmp:
        export_package(baseline, Path(tmp))
        (Path(tmp) / "trio_wshandler").rename(Path(tmp) / "trio_wshandler_base")
        out = subprocess.run(
            [sys.executable, str(HERE / "counters_harness.py"), str(n), str(m), str(pairs)],
            capture_output=True,
            text=True,
            cwd=HERE,
            env={**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{tmp}"},
            timeout=3600,
        )
    if out.returncode != 0:
        raise RuntimeError(f"counters_harness.py failed: {out.stderr[-2000:]}")
    raw = json.loads(out.stdout.strip().splitlines()[-1])
    if not raw["files"]["with"].startswith(str(ROOT)):
        raise RuntimeError(f"'with' was imported from {raw['files']['with']}, not {ROOT}")
    result["files"] = raw["files"]
    result["skipped_pairs"] = raw["skipped"]
    result["wrote_ns"] = raw["wrote_ns"]
    summary = {}
    for mode in ("paced", "burst"):
        per: dict[str, Any] = {}
        for i, kind in ((0, "total"), (1, "user")):
            got = raw[mode]
            ratios = [p["with"][i] / p["without"][i] for p in got if p["without"][i]]
            low, high = median_interval(ratios) if ratios else (0.0, 0.0)
            per[kind] = {
                "with_us": statistics.median(p["with"][i] for p in got) if got else 0.0,
                "without_us": statistics.median(p["without"][i] for p in got) if got else 0.0,
                "overhead": statistics.median(ratios) - 1 if ratios else 0.0,
                "interval": (low - 1, high - 1),
                "pairs": len(ratios),
            }
        summary[mode] = per
    result["summary"] = summary
    result["pairs_raw"] = raw
    return result


def counters_markdown(result: dict[str, Any]) -> list[str]:
    out = ["## The counters' cost: fan-out with and without them", ""]
    if "skipped" in result:
        return [*out, f"skipped: {result['skipped']}", ""]
    wrote = result["wrote_ns"]
    out += [
        f"{result['clients']:,} clients per version in one process, {result['pairs']} pairs of "
        f"rounds per mode ({result['messages_per_round']} messages of 64 B per round, the two "
        f"versions in turns); without = {result['baseline'][:10]} (before the counters), with = "
        f"{result['head'][:10]} ({len(result['package_files_changed'])} package files differ). "
        "CPU per delivery: medians of the rounds; overhead: median of the pairs' ratios, with a "
        "95 % bootstrap interval.",
        "",
        "| mode | CPU | us/delivery without | with | overhead | 95 % interval |",
        "|---|---|---|---|---|---|",
    ]
    for mode, per in result["summary"].items():
        for kind, label in (("total", "all"), ("user", "user space")):
            f = per[kind]
            low, high = f["interval"]
            out.append(
                f"| {mode} | {label} | {f['without_us']:.3f} | {f['with_us']:.3f} "
                f"| {f['overhead'] * 100:+.1f} % | {low * 100:+.1f} % .. {high * 100:+.1f} % |"
            )
    paced = result["summary"]["paced"]["total"]["without_us"]
    extra = wrote["with"] - wrote["without"]
    out += [
        "",
        f"Per write (`SendQueue.wrote`, timeit, best of 21 runs): {wrote['without']:.0f} ns "
        f"without, {wrote['with']:.0f} ns with: {extra:+.0f} ns, "
        + (f"{extra / (paced * 1000) * 100:+.1f} % of a paced delivery's CPU" if paced else "")
        + " (a paced broadcast writes once per delivery; a burst once per client).",
        "",
    ]
    return out


# ---------------------------------------------------------------- workers: 1 and 2


def listening_sockets(port: int) -> int:
    """How many sockets listen on ``port`` (one per worker with SO_REUSEPORT)."""
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                count += 1
    return count


class ServeCommand:
    """``python -m trio_wshandler serve workers_app:make`` as ``broadcast_round`` drives a
    benchmark server: ``send("broadcast C S M")`` asks a worker over HTTP, ``readline`` gives
    its answer, ``cpu_seconds`` adds up the workers' CPU."""

    def __init__(self, workers: int, redis: str | None) -> None:
        args = [sys.executable, "-m", "trio_wshandler", "serve", "workers_app:make", "-q"]
        args += ["--port", "0", "--workers", str(workers)]
        if redis:
            args += ["--redis", redis]
        self.workers = workers
        self.proc = subprocess.Popen(
            args,
            cwd=HERE,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            env={**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{HERE}"},
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        self.port = int(line.rsplit(":", 1)[1].split("/")[0])
        deadline = time.monotonic() + 60
        while listening_sockets(self.port) < workers:
            if time.monotonic() > deadline or self.proc.poll() is not None:
                self.stop()
                raise RuntimeError(f"{workers} worker(s) did not all listen on {self.port}")
            time.sleep(0.1)
        self.answers: queue.Queue[str] = queue.Queue()

    def pids(self) -> list[int]:
        """The workers' pids: this process with 1 worker, else the supervisor's children (read
        from every process's parent: Trio starts them from a worker thread, whose own
        ``/proc/.../children`` list is the only one that names them until it exits)."""
        if self.workers == 1:
            return [self.proc.pid]
        children = []
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == self.proc.pid:
                children.append(int(stat.parent.name))
        if len(children) != self.workers:
            raise RuntimeError(f"{len(children)} workers running, not {self.workers}")
        return children

    def cpu_by_worker(self) -> dict[int, float]:
        return {pid: cpu_seconds_of(pid) for pid in self.pids()}

    def cpu_seconds(self) -> float:
        return sum(self.cpu_by_worker().values())

    def send(self, line: str) -> None:
        _, count, size, mode = line.split()
        url = f"http://127.0.0.1:{self.port}/broadcast?count={count}&size={size}&mode={mode}"

        def ask() -> None:
            try:
                with urllib.request.urlopen(url, timeout=300) as response:
                    self.answers.put(response.read().decode())
            except OSError as exc:
                self.answers.put(f"failed {exc}")

        threading.Thread(target=ask, daemon=True).start()

    def readline(self, timeout: float) -> str | None:
        try:
            return self.answers.get(timeout=timeout)
        except queue.Empty:
            return None

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def part_workers(n: int, repeats: int, count: int, timeout: float) -> dict[str, Any]:
    result: dict[str, Any] = {"clients": n, "messages_per_round": count, "rows": []}
    missing = cluster_missing()
    redis = None
    if missing is None:
        binary = redis_binary()
        assert binary is not None
        redis = RedisServer(binary)
        redis.start()
    else:
        result["redis_skipped"] = missing
    rows: dict[str, dict[str, Any]] = {}
    # the rows in turns, ``repeats`` times over: this machine's speed drifts over minutes, by
    # more than the differences measured, so each row gets rounds at several moments
    plan = [(rep, *row) for rep in range(repeats) for row in WORKER_ROWS]
    try:
        for rep, label, workers, with_redis in plan:
            if with_redis and redis is None:
                continue
            serve = ServeCommand(workers, redis.url if with_redis and redis else None)
            try:
                fleets = start_fleets(serve.port, n, timeout=timeout)
                try:
                    time.sleep(1.0)
                    rounds = []
                    for size in (64, 1024):
                        for mode in ("paced", "burst"):
                            redis0 = redis.cpu_seconds() if redis and with_redis else 0.0
                            by_worker = serve.cpu_by_worker()
                            rnd = broadcast_round(serve, fleets, count, size, mode, timeout)  # type: ignore[arg-type]
                            after = serve.cpu_by_worker()
                            rnd["worker_cpu_s"] = sorted(
                                (after[pid] - by_worker.get(pid, 0.0) for pid in after),
                                reverse=True,
                            )
                            redis_cpu = (
                                redis.cpu_seconds() - redis0 if redis and with_redis else 0.0
                            )
                            rnd.update(
                                repeat=rep,
                                redis_cpu_s=redis_cpu,
                                workers_cpu_share=rnd["server_cpu_s"] / rnd["seconds"],
                                fleet_cpu_total_share=sum(
                                    r.get("cpu_s", 0) for r in rnd["fleet_reports"]
                                )
                                / rnd["seconds"],
                            )
                            rounds.append(rnd)
                finally:
                    for fleet in fleets:
                        fleet.stop()
            finally:
                serve.stop()
            row = rows.setdefault(
                label, {"row": label, "workers": workers, "redis": with_redis, "rounds": []}
            )
            row["rounds"] += rounds
        result["rows"] = list(rows.values())
    finally:
        if redis is not None:
            redis.stop()
    return result


def workers_markdown(result: dict[str, Any]) -> list[str]:
    out = [
        "## Workers: one core or two (`serve --workers N`)",
        "",
        f"{result['clients']:,} clients on the shared port, {result['messages_per_round']} "
        "messages per round; medians of the rounds; CPU shares are of one core.",
        "",
    ]
    if "redis_skipped" in result:
        out += [f"Redis rows skipped: {result['redis_skipped']}", ""]
    out += [
        "| row | size | mode | deliveries/s | vs 1 worker | workers CPU us/delivery "
        "| workers CPU share (each) | Redis CPU share | fleets CPU share | all delivered |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    base: dict[tuple[int, str], float] = {}
    for row in result["rows"]:
        for size in (64, 1024):
            for mode in ("paced", "burst"):
                rounds = [r for r in row["rounds"] if r["size"] == size and r["mode"] == mode]
                if not rounds:
                    continue
                rate = statistics.median(r["deliveries_per_s"] for r in rounds)
                if row["row"] == "1 worker":
                    base[size, mode] = rate
                versus = f"{rate / base[size, mode]:.2f}x" if (size, mode) in base else ""
                cpu = statistics.median(r["server_cpu_s_per_million"] for r in rounds)
                share = statistics.median(r["workers_cpu_share"] for r in rounds)
                each = " / ".join(
                    f"{statistics.median(r['worker_cpu_s'][i] / r['seconds'] for r in rounds):.0%}"
                    for i in range(len(rounds[0]["worker_cpu_s"]))
                )
                redis = statistics.median(r["redis_cpu_s"] / r["seconds"] for r in rounds)
                fleets = statistics.median(r["fleet_cpu_total_share"] for r in rounds)
                complete = all(r["deliveries"] == r["expected"] for r in rounds)
                out.append(
                    f"| {row['row']} | {size} B | {mode} | {rate:,.0f} | {versus} | {cpu:.2f} "
                    f"| {share:.0%} ({each}) | {redis:.0%} | {fleets:.0%} "
                    f"| {'yes' if complete else 'NO'} |"
                )
    return [*out, ""]


# ---------------------------------------------------------------- main


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: few clients, 1 round")
    parser.add_argument("--parts", default=",".join(PARTS), help=f"some of {','.join(PARTS)}")
    parser.add_argument("--out", default=str(ROOT / "reports" / "operations"))
    args = parser.parse_args()
    parts = [p for p in args.parts.split(",") if p]
    if set(parts) - set(PARTS):
        parser.error(f"unknown parts {sorted(set(parts) - set(PARTS))}")
    quick = args.quick
    results: dict[str, Any] = {
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count()},
        "command": "python benchmarks/operations.py" + (" --quick" if quick else ""),
    }
    timeout = 60.0
    if "counters" in parts:
        results["counters"] = part_counters(*((50, 20, 3) if quick else (1000, 60, 100)))
    if "workers" in parts:
        n, repeats = (100, 1) if quick else (2000, 3)
        results["workers"] = part_workers(n, repeats, 20 if quick else 200, timeout)
    lines = ["# Operations benchmarks", "", f"`{results['command']}`", ""]
    if "counters" in results:
        lines += counters_markdown(results["counters"])
    if "workers" in results:
        lines += workers_markdown(results["workers"])
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=1))
    (out / "operations.md").write_text("\n".join(lines))
    print("\n".join(lines))
    problems = []
    for row in results.get("workers", {}).get("rows", []):
        problems += [
            f"workers {row['row']}: {r['deliveries']}/{r['expected']} delivered"
            for r in row["rounds"]
            if r["deliveries"] != r["expected"]
        ]
    if results.get("counters", {}).get("skipped_pairs"):
        problems.append(f"counters: {results['counters']['skipped_pairs']} pair(s) incomplete")
    for problem in problems:
        print("PROBLEM:", problem, file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
