"""Sessions: ``nox`` runs tests (every supported Python found), lint, typecheck and conformance.

``nox -s tests`` runs the test suite on 3.11, 3.12 and 3.13, those that are installed: on PATH, or
under pyenv (``~/.pyenv/versions``), whose shims only expose the global version.
"""

from __future__ import annotations

import glob
import os

import nox

PYTHONS = ["3.11", "3.12", "3.13"]

nox.options.sessions = ["tests", "lint", "typecheck", "conformance", "bench_smoke"]
nox.options.error_on_missing_interpreters = False  # "where present"
nox.options.reuse_existing_virtualenvs = True

# Make pyenv's installed versions findable as python3.X.
_pyenv = os.path.expanduser(os.environ.get("PYENV_ROOT", "~/.pyenv"))
for _version in PYTHONS:
    for _bin in sorted(glob.glob(os.path.join(_pyenv, "versions", f"{_version}.*", "bin")))[-1:]:
        os.environ["PATH"] = _bin + os.pathsep + os.environ.get("PATH", "")


@nox.session(python=PYTHONS)
def tests(session: nox.Session) -> None:
    """The test suite, over real loopback sockets."""
    session.install("-e", ".[test]", "trustme")
    session.run("pytest", *session.posargs)


@nox.session(python="3.11")
def lint(session: nox.Session) -> None:
    """ruff check and ruff format --check."""
    session.install("ruff")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")


@nox.session(python="3.11")
def typecheck(session: nox.Session) -> None:
    """mypy --strict on the package."""
    session.install("mypy", "-e", ".")
    session.run("mypy", "--strict", "trio_wshandler")


@nox.session(python="3.11")
def conformance(session: nox.Session) -> None:
    """The Autobahn|Testsuite against the echo server (skipped, saying so, without Python 2.7).

    Extra arguments go to conformance/autobahn.py, e.g. ``nox -s conformance -- --cases "5.*"``.
    """
    session.install("-e", ".")
    session.run("python", "conformance/autobahn.py", *session.posargs)


BENCH_DEPS = ["-e", ".[bench]"]


@nox.session(python="3.11")
def bench(session: nox.Session) -> None:
    """The side-by-side benchmark (about 15 minutes); ``nox -s bench -- --quick``: smoke run."""
    session.install(*BENCH_DEPS)
    session.run("python", "benchmarks/run.py", *session.posargs)


@nox.session(name="bench_smoke", python="3.11")
def bench_smoke(session: nox.Session) -> None:
    """CI: the benchmark in --quick mode completes and its results parse (no timing is judged)."""
    session.install(*BENCH_DEPS)
    out = ".nox/bench-smoke"
    session.run("python", "benchmarks/run.py", "--quick", "--out", out)
    session.run("python", "benchmarks/check_results.py", f"{out}/results.json")
