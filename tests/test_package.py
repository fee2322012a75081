"""The package as a user gets it: ``python -m build`` makes an sdist and a wheel, the sdist holds
everything a build from it needs (the C extension's source, the static files, the type
information), and the wheel, installed into a fresh virtualenv with no source tree in sight,
runs: ``--version``, the chat demo's page over HTTP, an echo round trip over a WebSocket.

The build runs with ``--no-isolation`` when this environment has the build backend (the test
extra brings ``build`` and ``setuptools``), so it needs no network; installing the wheel fetches
its dependencies (trio, wsproto, h11, attrs) from the package index, and the tests that need
the installed wheel are skipped, saying why, when that index cannot be reached.
"""

from __future__ import annotations

import contextlib
import email
import importlib.metadata
import importlib.util
import json
import os
import selectors
import signal
import subprocess
import sys
import tarfile
import time
import zipfile
from collections.abc import Iterator
from http.client import HTTPConnection
from pathlib import Path

import attrs
import pytest
from websockets.sync.client import connect

import trio_wshandler

ROOT = Path(__file__).resolve().parent.parent
VERSION = trio_wshandler.__version__
NAME = f"trio_wshandler-{VERSION}"

BUILD_TIMEOUT = 180
INSTALL_TIMEOUT = 180
START_TIMEOUT = 20  # a server prints its address within this
STOP_TIMEOUT = 10  # and exits within this of SIGINT (close_timeout 5 s + 1 s, and margin)

#: what pip says when it cannot reach the package index (then the install is skipped)
OFFLINE = (
    "Could not find a version",
    "No matching distribution",
    "Failed to establish a new connection",
    "Temporary failure in name resolution",
    "Name or service not known",
    "Network is unreachable",
    "Max retries exceeded",
    "ConnectTimeout",
    "ReadTimeout",
)

#: files the sdist must hold (besides every module): the C extension's source, the static
#: files the demo serves, the type information, and what a build from it reads
SDIST_FILES = {
    "PKG-INFO",
    "README.md",
    "pyproject.toml",
    "setup.py",
    "trio_wshandler/__init__.py",
    "trio_wshandler/__main__.py",
    "trio_wshandler/_speedups.c",
    "trio_wshandler/_speedups.pyi",
    "trio_wshandler/_unmask.py",
    "trio_wshandler/py.typed",
    "trio_wshandler/static/chat.html",
    "trio_wshandler/static/pubsub.js",
}

#: files the wheel must hold (the extension's binary is optional: no compiler, no binary)
WHEEL_FILES = {
    "trio_wshandler/__init__.py",
    "trio_wshandler/__main__.py",
    "trio_wshandler/_unmask.py",
    "trio_wshandler/_speedups.pyi",
    "trio_wshandler/py.typed",
    "trio_wshandler/static/chat.html",
    "trio_wshandler/static/pubsub.js",
}


@attrs.frozen
class Dists:
    sdist: Path
    wheel: Path


@attrs.frozen
class Installed:
    python: Path  # the fresh virtualenv's interpreter
    cwd: Path  # an empty directory to run it in (no source tree on sys.path)
    env: dict[str, str]  # this environment's variables less PYTHON* and VIRTUAL_ENV
    compiled: bool  # the wheel has the compiled unmask


def _offline(output: str) -> bool:
    return any(marker in output for marker in OFFLINE)


def _build_backend_here() -> bool:
    """Whether this environment can build without fetching anything (``--no-isolation``):
    ``build`` and a setuptools as recent as pyproject.toml's ``[build-system]`` asks."""
    if importlib.util.find_spec("build") is None:
        return False
    try:
        major = int(importlib.metadata.version("setuptools").split(".")[0])
    except (importlib.metadata.PackageNotFoundError, ValueError):
        return False
    return major >= 77


@pytest.fixture(scope="module")
def dists(tmp_path_factory: pytest.TempPathFactory) -> Dists:
    """``python -m build`` of the source tree: the sdist, then the wheel built from the sdist
    (so a file missing from the sdist fails the wheel's build or the tests below)."""
    assert importlib.util.find_spec("build") is not None, (
        "the build package is missing: pip install -e '.[test]'"
    )
    out = tmp_path_factory.mktemp("dist")
    # without the backend here, an isolated build: pip fetches setuptools from the index
    isolation = ["--no-isolation"] if _build_backend_here() else []
    built = subprocess.run(
        [sys.executable, "-m", "build", *isolation, "--outdir", str(out), str(ROOT)],
        capture_output=True,
        text=True,
        timeout=BUILD_TIMEOUT,
    )
    output = built.stdout + built.stderr
    if built.returncode != 0 and not isolation and _offline(output):
        pytest.skip(f"cannot fetch the build backend from the package index: {output[-300:]}")
    assert built.returncode == 0, output[-3000:]
    [sdist] = out.glob("*.tar.gz")
    [wheel] = out.glob("*.whl")
    assert sdist.name == f"{NAME}.tar.gz"
    assert wheel.name.startswith(f"{NAME}-"), wheel.name
    return Dists(sdist, wheel)


@pytest.fixture(scope="module")
def installed(dists: Dists, tmp_path_factory: pytest.TempPathFactory) -> Installed:
    """The wheel installed by pip into a fresh virtualenv (its dependencies from the index)."""
    base = tmp_path_factory.mktemp("installed")
    venv, cwd = base / "venv", base / "cwd"
    cwd.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    env.pop("VIRTUAL_ENV", None)
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    subprocess.run(
        [sys.executable, "-m", "venv", str(venv)],
        cwd=cwd,
        env=env,
        check=True,
        capture_output=True,
        timeout=120,
    )
    python = venv / "bin" / "python"
    pip = subprocess.run(
        [str(python), "-m", "pip", "install", "-q", "--no-input", str(dists.wheel)],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=INSTALL_TIMEOUT,
    )
    output = pip.stdout + pip.stderr
    if pip.returncode != 0 and _offline(output):
        pytest.skip(f"cannot install the wheel's dependencies from the index: {output[-300:]}")
    assert pip.returncode == 0, output[-3000:]
    with zipfile.ZipFile(dists.wheel) as archive:
        compiled = any(n.endswith((".so", ".pyd")) for n in archive.namelist())
    return Installed(python, cwd, env, compiled)


def _run(installed: Installed, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(installed.python), *args],
        cwd=installed.cwd,
        env=installed.env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def _first_line(process: subprocess.Popen[bytes], timeout: float) -> str:
    """The first line the process prints, waited for at most ``timeout`` seconds."""
    assert process.stdout is not None
    deadline = time.monotonic() + timeout
    output = b""
    with selectors.DefaultSelector() as selector:
        selector.register(process.stdout, selectors.EVENT_READ)
        while b"\n" not in output:
            left = deadline - time.monotonic()
            assert left > 0, f"nothing printed within {timeout} s: {output!r}"
            if selector.select(left):
                chunk = os.read(process.stdout.fileno(), 4096)
                assert chunk, f"the process exited ({process.wait()}) before printing its address"
                output += chunk
    return output.split(b"\n")[0].decode()


@contextlib.contextmanager
def _serving(installed: Installed, command: str, log: Path) -> Iterator[tuple[str, int]]:
    """``python -m trio_wshandler COMMAND --port 0`` from the virtualenv: yields its first line
    and its port; SIGINT at the end, which it must answer by exiting 0 (a graceful stop)."""
    with log.open("wb") as stderr:
        process = subprocess.Popen(
            [str(installed.python), "-m", "trio_wshandler", command, "--port", "0"],
            cwd=installed.cwd,
            env=installed.env,
            stdout=subprocess.PIPE,
            stderr=stderr,
        )
    try:
        line = _first_line(process, START_TIMEOUT)
        port = int(line.split("127.0.0.1:")[1].split("/")[0])
        yield line, port
        assert process.poll() is None, f"{command} exited early: {log.read_text()[-2000:]}"
        process.send_signal(signal.SIGINT)
        assert process.wait(STOP_TIMEOUT) == 0, log.read_text()[-2000:]
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(STOP_TIMEOUT)
        assert process.stdout is not None
        process.stdout.close()


def test_the_sdist_holds_the_extension_source_static_files_and_types(dists: Dists) -> None:
    with tarfile.open(dists.sdist) as archive:
        names = {name.removeprefix(f"{NAME}/") for name in archive.getnames()}
        info = archive.extractfile(f"{NAME}/PKG-INFO")
        assert info is not None
        metadata = email.message_from_bytes(info.read())
    assert names >= SDIST_FILES, sorted(SDIST_FILES - names)
    modules = {p.relative_to(ROOT).as_posix() for p in (ROOT / "trio_wshandler").glob("*.py")}
    assert names >= modules, sorted(modules - names)
    assert not [n for n in names if n.endswith((".so", ".pyd", ".o"))], sorted(names)
    assert metadata["Version"] == VERSION


def test_the_wheel_holds_the_static_files_and_types_and_its_metadata(dists: Dists) -> None:
    with zipfile.ZipFile(dists.wheel) as archive:
        names = set(archive.namelist())
        metadata = email.message_from_bytes(archive.read(f"{NAME}.dist-info/METADATA"))
    assert names >= WHEEL_FILES, sorted(WHEEL_FILES - names)
    assert metadata["Name"] == "trio_wshandler"
    assert metadata["Version"] == VERSION  # read from trio_wshandler/__init__.py
    assert metadata["Requires-Python"] == ">=3.11"
    assert metadata["License-Expression"] == "MIT"
    classifiers = set(metadata.get_all("Classifier") or [])
    for classifier in (
        "Framework :: Trio",
        "Typing :: Typed",
        "Topic :: Internet :: WWW/HTTP",
        "Development Status :: 4 - Beta",
        "Programming Language :: Python :: 3.11",
        "Programming Language :: Python :: 3.12",
        "Programming Language :: Python :: 3.13",
    ):
        assert classifier in classifiers, classifier
    urls = {url.split(",")[0] for url in metadata.get_all("Project-URL") or []}
    assert {"Homepage", "Documentation", "Changelog"} <= urls
    requires = " ".join(metadata.get_all("Requires-Dist") or [])
    for dependency in ("trio", "wsproto", "h11", "attrs"):
        assert dependency in requires


def test_the_installed_package_has_its_version_and_data_files(installed: Installed) -> None:
    version = _run(installed, "-m", "trio_wshandler", "--version")
    assert version.returncode == 0, version.stderr
    assert version.stdout == f"trio_wshandler {VERSION}\n"
    probe = _run(
        installed,
        "-c",
        "import importlib.metadata, json, sys, trio_wshandler as t;"
        "from importlib import resources;"
        "files = resources.files('trio_wshandler');"
        "print(json.dumps({'file': t.__file__, 'version': t.__version__, 'path': sys.path,"
        " 'metadata': importlib.metadata.version('trio_wshandler'),"
        " 'data': {n: files.joinpath(n).is_file() for n in"
        " ('py.typed', '_speedups.pyi', 'static/chat.html', 'static/pubsub.js')}}))",
    )
    assert probe.returncode == 0, probe.stderr
    found = json.loads(probe.stdout)
    package = Path(found["file"]).resolve()
    assert package.is_relative_to(installed.python.parent.parent), found["file"]  # the venv's
    assert not package.is_relative_to(ROOT), found["file"]
    assert not [p for p in found["path"] if p and Path(p).resolve() == ROOT], found["path"]
    assert found["version"] == found["metadata"] == VERSION
    assert found["data"] == dict.fromkeys(found["data"], True), found["data"]
    if installed.compiled:  # the optional extension, when this machine could build it
        speedups = _run(installed, "-c", "import trio_wshandler._speedups")
        assert speedups.returncode == 0, speedups.stderr


def test_the_installed_demo_serves_its_page(installed: Installed, tmp_path: Path) -> None:
    with _serving(installed, "demo", tmp_path / "demo.log") as (line, port):
        assert line.startswith("chat demo: open http://127.0.0.1:"), line
        for path, static in (("/", "chat.html"), ("/pubsub.js", "pubsub.js")):
            http = HTTPConnection("127.0.0.1", port, timeout=10)
            try:
                http.request("GET", path)
                response = http.getresponse()
                body = response.read()
            finally:
                http.close()
            assert response.status == 200, (path, response.status, body[:200])
            # the file the wheel installed, served as it is
            assert body == (ROOT / "trio_wshandler" / "static" / static).read_bytes(), path


def test_the_installed_echo_server_echoes(installed: Installed, tmp_path: Path) -> None:
    with _serving(installed, "echo", tmp_path / "echo.log") as (line, port):
        assert line.startswith("echo server on ws://127.0.0.1:"), line
        with connect(f"ws://127.0.0.1:{port}/", open_timeout=10, close_timeout=10) as ws:
            ws.send("hello from a fresh virtualenv")
            assert ws.recv(timeout=10) == "hello from a fresh virtualenv"
            ws.send(b"\x00\x01\x02" * 1000)
            assert ws.recv(timeout=10) == b"\x00\x01\x02" * 1000
