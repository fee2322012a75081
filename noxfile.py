"""Sessions: ``nox`` runs tests (every supported Python found), lint and typecheck.

``nox -s tests`` runs the test suite on 3.11, 3.12 and 3.13, those that are installed: on PATH, or
under pyenv (``~/.pyenv/versions``), whose shims only expose the global version.
"""

from __future__ import annotations

import glob
import os

import nox

PYTHONS = ["3.11", "3.12", "3.13"]

nox.options.sessions = ["tests", "lint", "typecheck"]
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
