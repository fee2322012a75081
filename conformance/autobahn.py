"""Run the Autobahn|Testsuite fuzzing client against ``python -m trio_wshandler echo``.

Usage::

    python conformance/autobahn.py [--cases "1.*,2.*"] [--outdir reports/autobahn]

The suite (``autobahntestsuite`` on PyPI) runs only on Python 2.7: this script finds a Python
2.7 (``$PYTHON27``, ``python2.7`` on PATH, or pyenv's ``~/.pyenv/versions/2.7*``), makes a
virtualenv for it under ``.autobahn/`` once, and installs the suite there.  Without a Python 2.7
it says so and exits 0 (``--require`` makes that an error).

``wstest`` exits 0 even when cases fail, so the verdict comes from ``index.json``: the script
prints a table of behaviours, lists every case that is not OK, and exits 1 unless every case is
OK (INFORMATIONAL only for the cases in ``DOCUMENTED_INFORMATIONAL``, which docs/conformance.md
explains) with a clean close: NON-STRICT, UNIMPLEMENTED and FAILED all fail the run.

``--cases ci`` runs ``CI_CASES``: all of 1.* to 11.* and a subset of the compression cases
(12.* and 13.*) that covers every data set and every parameter combination; all 517 cases take
about 15 minutes on 2 cores, almost all of it in the suite's own Python 2.7 deflate.
"""

from __future__ import annotations

import argparse
import collections
import glob
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VENV = ROOT / ".autobahn" / "venv"
DEFAULT_CASES = "*"
#: cases whose behaviour the suite reports as INFORMATIONAL (no right answer); each is explained
#: in docs/conformance.md
DOCUMENTED_INFORMATIONAL = {"7.1.6", "7.13.1", "7.13.2"}
#: sizes of the compression cases run by ``--cases ci`` (index into the suite's list of 18:
#: 1 = 16 B, 4 = 1 KiB, 9 = 64 KiB, 10 = 128 KiB, 11 = 8 KiB in 256-byte fragments,
#: 17 = 128 KiB in 4 KiB fragments): small, medium, large, fragmented finely and coarsely
_CI_SIZES = (1, 4, 9, 10, 11, 17)
#: 1.* to 11.*, then for each of the five data sets of 12.* and each of the seven
#: offer/accept parameter combinations of 13.*, the sizes above
CI_CASES = ",".join(
    [f"{n}.*" for n in range(1, 12)]
    + [f"12.{d}.{i}" for d in range(1, 6) for i in _CI_SIZES]
    + [f"13.{p}.{i}" for p in range(1, 8) for i in _CI_SIZES]
)


def find_python27() -> str | None:
    candidates = [os.environ.get("PYTHON27", ""), shutil.which("python2.7") or ""]
    root = os.path.expanduser(os.environ.get("PYENV_ROOT", "~/.pyenv"))
    candidates += sorted(glob.glob(os.path.join(root, "versions", "2.7*", "bin", "python2.7")))
    for candidate in candidates:
        if not candidate:
            continue
        try:
            out = subprocess.run(
                [candidate, "-c", "import sys; print(sys.version_info[:2])"],
                capture_output=True,
                text=True,
                timeout=30,
                check=False,
            )
        except OSError:
            continue
        if out.returncode == 0 and out.stdout.strip() == "(2, 7)":
            return candidate
    return None


def ensure_wstest(python27: str) -> Path:
    wstest = VENV / "bin" / "wstest"
    if wstest.exists():
        return wstest
    print(f"installing autobahntestsuite into {VENV} (Python 2.7: {python27})", flush=True)
    # the last virtualenv release that can still create Python 2.7 environments
    subprocess.run(
        [python27, "-m", "pip", "install", "-q", "--user", "virtualenv<20.22"], check=True
    )
    subprocess.run([python27, "-m", "virtualenv", "-q", str(VENV)], check=True)
    subprocess.run([str(VENV / "bin" / "pip"), "install", "-q", "autobahntestsuite"], check=True)
    return wstest


def start_echo_server(log: Path) -> tuple[subprocess.Popen[str], int]:
    server = subprocess.Popen(
        [sys.executable, "-m", "trio_wshandler", "echo", "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=log.open("w"),
        text=True,
    )
    assert server.stdout is not None
    line = server.stdout.readline()
    match = re.search(r"127\.0\.0\.1:(\d+)", line)
    if not match:
        server.kill()
        raise SystemExit(f"the echo server did not start: {line!r}")
    return server, int(match.group(1))


def case_key(case: str) -> tuple[int, ...]:
    return tuple(int(part) for part in case.split("."))


def summarize(index_file: Path) -> int:
    index = json.loads(index_file.read_text())
    [(agent, cases)] = index.items()
    counts: collections.Counter[str] = collections.Counter()
    problems = []
    for case in sorted(cases, key=case_key):
        result = cases[case]
        behavior, close = result["behavior"], result["behaviorClose"]
        counts[behavior] += 1
        bad = not (
            behavior == "OK" or (behavior == "INFORMATIONAL" and case in DOCUMENTED_INFORMATIONAL)
        ) or close not in ("OK", "INFORMATIONAL")
        if behavior != "OK" or close not in ("OK", "INFORMATIONAL"):
            problems.append((case, behavior, close, bad))
    print(f"\nAutobahn|Testsuite fuzzingclient against {agent}: {sum(counts.values())} cases")
    print("| behaviour | cases |\n|---|---|")
    for behavior, count in sorted(counts.items()):
        print(f"| {behavior} | {count} |")
    if problems:
        print("\ncases not plainly OK (case, behaviour, close behaviour):")
        for case, behavior, close, bad in problems:
            print(f"  {case:10} {behavior:14} {close:14} {'<- FAIL' if bad else ''}")
    failed = [p for p in problems if p[3]]
    print(f"\n{'FAILED' if failed else 'PASSED'}: {len(failed)} unacceptable case(s)")
    return 1 if failed else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--cases",
        default=DEFAULT_CASES,
        help='comma-separated case patterns, default "*" (all); "ci": the CI subset',
    )
    parser.add_argument("--outdir", default=str(ROOT / "reports" / "autobahn"))
    parser.add_argument(
        "--require",
        action="store_true",
        help="fail instead of skipping when no Python 2.7 is found",
    )
    parser.add_argument("--timeout", type=float, default=3600)
    args = parser.parse_args()

    if args.cases == "ci":
        args.cases = CI_CASES
    python27 = find_python27()
    if python27 is None:
        print("SKIPPED: no Python 2.7 found (set $PYTHON27); the Autobahn suite needs one")
        return 1 if args.require else 0
    wstest = ensure_wstest(python27)
    outdir = Path(args.outdir)
    shutil.rmtree(outdir, ignore_errors=True)
    outdir.mkdir(parents=True)
    server, port = start_echo_server(outdir / "server.log")
    try:
        spec = {
            "outdir": str(outdir),
            "servers": [{"agent": "trio_wshandler", "url": f"ws://127.0.0.1:{port}"}],
            "cases": [c.strip() for c in args.cases.split(",") if c.strip()],
            "exclude-cases": [],
            "exclude-agent-cases": {},
        }
        spec_file = outdir / "fuzzingclient.json"
        spec_file.write_text(json.dumps(spec, indent=2))
        started = time.monotonic()
        print(f"wstest -m fuzzingclient, cases {spec['cases']}, server on port {port}", flush=True)
        subprocess.run(
            [str(wstest), "-m", "fuzzingclient", "-s", str(spec_file)],
            cwd=outdir,
            timeout=args.timeout,
            check=False,
            stdout=(outdir / "wstest.log").open("w"),
            stderr=subprocess.STDOUT,
        )
        print(f"wstest finished in {time.monotonic() - started:.0f} s")
    finally:
        server.terminate()
        server.wait(10)
    index_file = outdir / "index.json"
    if not index_file.exists():
        print(f"no {index_file}: see {outdir / 'wstest.log'}")
        return 1
    return summarize(index_file)


if __name__ == "__main__":
    sys.exit(main())
