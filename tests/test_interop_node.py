"""Interop with Node's ``ws`` (npm), an independent client, with and without permessage-deflate.

``tests/node/client.mjs`` round-trips text and binary messages from 0 B to 1 MiB through the
echo server, then waits for a broadcast (``send_all``), and reports on stdout what ws
negotiated and, from a frame parser of its own on the socket, which messages went compressed
(RSV1) each way.  ws compresses what it sends from 1024 bytes (its default threshold), the
server from 128 (``DeflateOptions.threshold``) when that makes it smaller, so the sizes cover
compressed and plain messages both ways.

The ``ws`` package is installed by the ``node_client`` fixture (``npm ci`` from the committed
lock file, once per lock file); without ``node`` and ``npm``, or when the install fails, the
tests are skipped, saying why.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trio

from trio_wshandler import WebSocketConnection
from trio_wshandler._deflate import Deflater, Inflater
from trio_wshandler._extensions import DeflateAgreement

from .conftest import TIMEOUT, RecordingHandler, running, wait_for, ws_url

try:
    import fcntl
except ImportError:  # pragma: no cover (Windows: installs are not serialized)
    fcntl = None  # type: ignore[assignment]

NODE_DIR = Path(__file__).parent / "node"
CLIENT = NODE_DIR / "client.mjs"
#: written into node_modules after a successful ``npm ci``: the digest of the files it
#: installed from (``npm ci`` deletes node_modules first, so a failed install leaves no stamp)
STAMP = NODE_DIR / "node_modules" / ".trio_wshandler-install"
NPM_TIMEOUT = 300

READY = "ready"
#: 2.6 KB of JSON: compressed when deflate is on
BROADCAST = json.dumps(
    [{"id": i, "user": ["alice", "bob", "carol"][i % 3], "price": i * 1.25} for i in range(60)]
)
SIZES = [0, 1, 100, 127, 128, 1023, 1024, 10 * 1024, 64 * 1024, 1024 * 1024]  # as client.mjs
KINDS = ["text", "binary-random", "binary-pattern"]
WS_THRESHOLD = 1024  # ws compresses what it sends from this size (perMessageDeflate.threshold)
SERVER_THRESHOLD = 128  # DeflateOptions().threshold


# ---------------------------------------------------------------- installing ws


def _install_digest() -> str:
    digest = hashlib.sha256()
    for name in ("package.json", "package-lock.json"):
        digest.update(name.encode() + b"\0" + (NODE_DIR / name).read_bytes() + b"\0")
    return digest.hexdigest()


def _installed(digest: str) -> bool:
    try:
        return STAMP.read_text().strip() == digest
    except OSError:
        return False


@contextlib.contextmanager
def _install_lock() -> Iterator[bool]:
    """Serialize installs of concurrent test runs sharing the checkout (a lock on package.json,
    which ``npm ci`` never writes).  Yields False if another run held it for too long."""
    if fcntl is None:
        yield True
        return
    with open(NODE_DIR / "package.json", "rb") as f:
        deadline = time.monotonic() + NPM_TIMEOUT + 30  # the other run's npm ci is bounded
        while True:
            try:
                fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    yield False
                    return
                time.sleep(0.2)
        try:
            yield True
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def _npm_ci(npm: str) -> str | None:
    """Run ``npm ci``; returns None on success, else why it failed."""
    env = {
        **os.environ,
        "CI": "true",
        "npm_config_update_notifier": "false",
        "npm_config_progress": "false",
    }
    try:
        proc = subprocess.run(
            [npm, "ci", "--no-audit", "--no-fund"],
            cwd=NODE_DIR,
            env=env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            errors="replace",
            timeout=NPM_TIMEOUT,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return f"`npm ci` in {NODE_DIR} took more than {NPM_TIMEOUT} s"
    except OSError as exc:
        return f"`npm ci` in {NODE_DIR} could not run: {exc}"
    if proc.returncode != 0:
        lines = (proc.stderr.strip() or proc.stdout.strip()).splitlines()
        output = "\n".join(line for line in lines if not re.match(r"npm error\s+at ", line))
        return f"`npm ci` in {NODE_DIR} failed (exit {proc.returncode}):\n{output[-3000:]}"
    return None


@pytest.fixture(scope="session")
def node_client() -> list[str]:
    """The command that runs ``tests/node/client.mjs`` (``ws`` installed by ``npm ci`` when
    node_modules is missing or was installed from another lock file)."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        missing = " and ".join(name for name, path in (("node", node), ("npm", npm)) if not path)
        pytest.skip(f"Node interop tests need {missing} on PATH")
    digest = _install_digest()
    if not _installed(digest):
        with _install_lock() as locked:
            if not locked:
                pytest.skip(f"another test run has been installing ws in {NODE_DIR} for too long")
            if not _installed(digest):  # another run may have installed it meanwhile
                problem = _npm_ci(npm)
                if problem is not None:
                    pytest.skip(problem)
                STAMP.write_text(digest + "\n")
    return [node, str(CLIENT)]


# ---------------------------------------------------------------- the server side


class EchoThenBroadcast(WebSocketConnection):
    """Echoes every message; "ready" (the client's echoes are done) broadcasts instead."""

    async def got_message(self, message: str | bytes) -> None:
        if message == READY:
            handler = self.handler
            assert isinstance(handler, InteropHandler)
            handler.broadcasts.append(handler.send_all(BROADCAST))
        else:
            self.send(message)


class InteropHandler(RecordingHandler):
    connection_class = EchoThenBroadcast

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.broadcasts: list[int] = []  # send_all()'s counts


@pytest.fixture
def deflate_calls(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    """Counts the server's compressions and inflations (patched on the classes: Deflater has
    __slots__, and the handler and connections create their instances)."""
    calls = {"compressed": 0, "compressed_smaller": 0, "inflated": 0}
    compress, inflate = Deflater.compress, Inflater._inflate

    def counting_compress(self: Deflater, payload: bytes, bits: int) -> bytes:
        out = compress(self, payload, bits)
        calls["compressed"] += 1
        calls["compressed_smaller"] += len(out) < len(payload)
        return out

    def counting_inflate(self: Inflater, data: bytes) -> Any:
        calls["inflated"] += 1
        return inflate(self, data)

    monkeypatch.setattr(Deflater, "compress", counting_compress)
    monkeypatch.setattr(Inflater, "_inflate", counting_inflate)
    return calls


# ---------------------------------------------------------------- the test


@pytest.mark.parametrize("mode", ["default", "no-deflate"])
async def test_node_ws_round_trip_and_broadcast(
    node_client: list[str], deflate_calls: dict[str, int], mode: str
) -> None:
    handler = InteropHandler(max_message_size=2 << 20)
    deflate = mode == "default"
    async with running(handler) as server:
        with trio.fail_after(2 * TIMEOUT):  # the client gives up after 15 s on its own
            proc = await trio.run_process(
                [*node_client, ws_url(server), mode, BROADCAST],
                stdin=subprocess.DEVNULL,
                capture_stdout=True,
                capture_stderr=True,
                check=False,
            )
        await wait_for(lambda: len(handler.deregistered) == 1)
    stdout = proc.stdout.decode(errors="replace")
    stderr = proc.stderr.decode(errors="replace")
    try:
        result = json.loads(stdout.strip().splitlines()[-1])
    except (IndexError, ValueError):
        pytest.fail(
            f"the node client (exit {proc.returncode}) printed no result:\n{stdout}{stderr}"
        )
    assert proc.returncode == 0, (result["errors"], stderr)
    assert result["ok"], result["errors"]
    assert result["ws_version"].startswith("8."), result["ws_version"]

    # every echo and the broadcast arrived intact, then a clean close
    assert [(m["kind"], m["size"]) for m in result["messages"]] == [
        (kind, size) for size in SIZES for kind in KINDS
    ]
    assert all(m["ok"] for m in result["messages"])
    assert result["broadcast"]["ok"]
    assert result["broadcast"]["size"] == len(BROADCAST)
    assert handler.broadcasts == [1]
    assert result["close"]["code"] == 1000

    # what was negotiated, as each side sees it
    [connection] = handler.connections
    if deflate:
        # ws offers "permessage-deflate; client_max_window_bits" (no value: any size)
        assert result["extensions"] == "permessage-deflate"
        answer = [part.strip() for part in result["extensions_header"].split(";")]
        assert answer[0] == "permessage-deflate"
        assert sorted(answer[1:]) == ["client_no_context_takeover", "server_no_context_takeover"]
        assert connection.compression == DeflateAgreement(15, 15, True)
    else:
        assert result["extensions"] == ""
        assert result["extensions_header"] is None
        assert connection.compression is None

    # which messages went compressed, by the client's own reading of the wire (RSV1)
    for m in result["messages"]:
        where = f"{m['kind']} {m['size']} B"
        assert m["sent"]["rsv1"] == (deflate and m["size"] >= WS_THRESHOLD), where
        if m["kind"] == "binary-random":
            # the server sends what deflate cannot shrink as it is
            assert not m["received"]["rsv1"], where
        else:
            assert m["received"]["rsv1"] == (deflate and m["size"] >= SERVER_THRESHOLD), where
            if m["received"]["rsv1"]:
                assert m["received"]["wire_bytes"] < m["size"], where
    assert not result["ready"]["sent"]["rsv1"]
    assert result["broadcast"]["received"]["rsv1"] == deflate
    if deflate:
        assert result["broadcast"]["received"]["wire_bytes"] < len(BROADCAST)

    # ... and by the server's own counts: it deflated and inflated exactly when agreed
    if deflate:
        assert deflate_calls["compressed_smaller"] > 0
        assert deflate_calls["inflated"] > 0
    else:
        assert deflate_calls == {"compressed": 0, "compressed_smaller": 0, "inflated": 0}
