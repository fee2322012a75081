"""A real Redis Cluster for the sharded backplane's tests and benchmark, started on loopback.

Three masters and three replicas (by default), each a ``redis-server`` with
``cluster-enabled``, joined by ``redis-cli --cluster create``.  It needs Redis 7 (sharded
pub/sub): ``$REDIS_CLUSTER_SERVER``, else ``$REDIS_SERVER``, else ``redis-server`` on PATH, if
it says version 7 or later, with ``redis-cli`` beside it or on PATH (Debian's
``redis-server`` package, which ``.ci/run`` installs when it runs as root).  Otherwise
:func:`cluster_binaries` says why, and the tests skip with that reason.

``cluster-node-timeout`` is 1 s (unless told), so a killed master's replica takes over within a
few seconds;
``cluster-require-full-coverage no``, so a shard that is lost whole (master and replica) does
not stop the others from answering.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time

__all__ = ["RedisCluster", "cluster_binaries"]


def cluster_binaries() -> tuple[str, str] | str:
    """(redis-server, redis-cli) able to run a cluster with sharded pub/sub, or why not: the
    first of ``$REDIS_CLUSTER_SERVER``, ``$REDIS_SERVER`` and ``redis-server`` on PATH that
    is Redis 7 or later and has a ``redis-cli`` beside it (or on PATH)."""
    candidates = [
        os.environ.get("REDIS_CLUSTER_SERVER"),
        os.environ.get("REDIS_SERVER"),
        shutil.which("redis-server"),
    ]
    why = "no redis-server (set REDIS_CLUSTER_SERVER, or install Debian's redis-server)"
    for server in dict.fromkeys(c for c in candidates if c):
        if not os.access(server, os.X_OK):
            continue
        said = subprocess.run([server, "--version"], capture_output=True, text=True).stdout
        found = re.search(r"v=(\d+)\.", said)
        if found is None or int(found.group(1)) < 7:
            why = f"{server} is not Redis 7 or later (sharded pub/sub): {said.strip()!r}"
            continue
        cli = os.path.join(os.path.dirname(server), "redis-cli")
        if not os.access(cli, os.X_OK):
            cli = shutil.which("redis-cli") or ""
        if not cli:
            why = "no redis-cli beside redis-server or on PATH (redis-cli --cluster create)"
            continue
        return server, cli
    return why


def _free_ports(count: int) -> list[int]:
    """Free ports whose cluster bus ports (port + 10000) are free too."""
    ports: list[int] = []
    while len(ports) < count:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if port + 10000 > 65535 or port in ports:
            continue
        with socket.socket() as bus:
            try:
                bus.bind(("127.0.0.1", port + 10000))
            except OSError:
                continue
        ports.append(port)
    return ports


class RedisCluster:
    """``masters`` shards of one master and ``replicas`` replicas each, on loopback."""

    def __init__(
        self, server: str, cli: str, masters: int = 3, replicas: int = 1, node_timeout: int = 1000
    ) -> None:
        self.server, self.cli = server, cli
        self.node_timeout = node_timeout
        self.masters, self.replicas = masters, replicas
        self.ports = _free_ports(masters * (1 + replicas))
        self.dir = tempfile.mkdtemp(prefix="redis-cluster-")
        self.processes: dict[int, subprocess.Popen[bytes]] = {}

    @property
    def url(self) -> str:
        """``redis+cluster://`` with every node as a startup node."""
        return "redis+cluster://" + ",".join(f"127.0.0.1:{p}" for p in self.ports)

    def start(self, timeout: float = 30) -> None:
        for port in self.ports:
            self._start_node(port)
        for port in self.ports:
            self._wait_answers(port, timeout)
        nodes = [f"127.0.0.1:{p}" for p in self.ports]
        replicas = ["--cluster-replicas", str(self.replicas), "--cluster-yes"]
        created = subprocess.run(
            [self.cli, "--cluster", "create", *nodes, *replicas],
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if created.returncode != 0:
            self.stop()
            raise RuntimeError(f"redis-cli --cluster create failed: {created.stdout[-2000:]}")
        self.wait_healthy(timeout)

    def _start_node(self, port: int) -> None:
        args = [self.server, "--port", str(port), "--bind", "127.0.0.1"]
        args += ["--cluster-enabled", "yes", "--cluster-node-timeout", str(self.node_timeout)]
        args += ["--cluster-config-file", os.path.join(self.dir, f"nodes-{port}.conf")]
        args += ["--cluster-require-full-coverage", "no"]
        args += ["--save", "", "--appendonly", "no", "--daemonize", "no", "--dir", self.dir]
        self.processes[port] = subprocess.Popen(
            args,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )

    def _wait_answers(self, port: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.command(port, "PING") == "PONG":
                return
            if self.processes[port].poll() is not None:
                raise RuntimeError(f"redis-server on {port} exited")
            time.sleep(0.02)
        raise RuntimeError(f"redis-server on {port} did not answer")

    def command(self, port: int, *args: str) -> str:
        """What ``redis-cli -p port args...`` prints ("" if it cannot connect)."""
        done = subprocess.run(
            [self.cli, "-p", str(port), *args], capture_output=True, text=True, timeout=10
        )
        return done.stdout.strip() if done.returncode == 0 else ""

    def shards(self, port: int | None = None) -> dict[int, list[int]]:
        """Master port -> its replicas' ports, as a live node sees it (CLUSTER NODES)."""
        for asked in [port] if port is not None else self.alive():
            said = self.command(asked, "CLUSTER", "NODES")
            if not said:
                continue
            ids: dict[str, int] = {}
            roles: list[tuple[int, str, str, bool]] = []
            for line in said.splitlines():
                fields = line.split()
                node_port = int(fields[1].split("@")[0].rsplit(":", 1)[1])
                ids[fields[0]] = node_port
                failed = "fail" in fields[2].split(",")
                roles.append((node_port, fields[2], fields[3], failed))
            masters: dict[int, list[int]] = {}
            for node_port, flags, _, failed in roles:
                if "master" in flags and not failed:
                    masters.setdefault(node_port, [])
            for node_port, flags, master, failed in roles:
                if "slave" in flags and not failed and ids.get(master) in masters:
                    masters[ids[master]].append(node_port)
            return masters
        return {}

    def alive(self) -> list[int]:
        return [p for p, process in self.processes.items() if process.poll() is None]

    def wait_healthy(self, timeout: float = 30) -> None:
        """Until every live node says cluster_state:ok, and each master with slots has its
        replicas in sync (so that a failover can happen)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if all(
                "cluster_state:ok" in self.command(p, "CLUSTER", "INFO") for p in self.alive()
            ) and all(
                "master_link_status:up" in self.command(p, "INFO", "replication")
                for replicas in self.shards().values()
                for p in replicas
            ):
                shards = self.shards()
                if len(shards) >= self.masters and all(
                    len(r) >= self.replicas for r in shards.values()
                ):
                    return
            time.sleep(0.1)
        raise RuntimeError("the cluster did not become healthy")

    def slots_of(self, port: int | None = None) -> dict[int, list[tuple[int, int]]]:
        """Master port -> its slot ranges, as a live node sees it (CLUSTER NODES); masters
        flagged failed are left out."""
        for asked in [port] if port is not None else self.alive():
            said = self.command(asked, "CLUSTER", "NODES")
            if not said:
                continue
            masters: dict[int, list[tuple[int, int]]] = {}
            for line in said.splitlines():
                fields = line.split()
                flags = fields[2].split(",")
                if "master" not in flags or "fail" in flags:
                    continue
                ranges = []
                for part in fields[8:]:
                    if part.startswith("["):
                        continue  # a slot being migrated
                    first, _, last = part.partition("-")
                    ranges.append((int(first), int(last or first)))
                masters[int(fields[1].split("@")[0].rsplit(":", 1)[1])] = ranges
            return masters
        return {}

    def master_of_slot(self, slot: int) -> int:
        """The port of the master that serves ``slot`` now."""
        for port, ranges in self.slots_of().items():
            if any(first <= slot <= last for first, last in ranges):
                return port
        raise RuntimeError(f"no master for slot {slot}")

    def kill(self, port: int) -> None:
        """SIGKILL one node (its replica, if it was a master, takes over)."""
        self.processes[port].send_signal(signal.SIGKILL)
        self.processes[port].wait(10)

    def wait_master_replaced(self, slot: int, dead: int, timeout: float = 30) -> int:
        """Until a node other than ``dead`` serves ``slot`` as master, in the view of every
        live node; the new master's port."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            seen = set()
            for port in self.alive():
                for master, ranges in self.slots_of(port).items():
                    if any(first <= slot <= last for first, last in ranges):
                        seen.add(master)
            if len(seen) == 1 and dead not in seen:
                return seen.pop()
            time.sleep(0.1)
        raise RuntimeError(f"no replica took over slot {slot} from {dead}")

    def cpu_seconds(self, port: int) -> float:
        """User + system CPU seconds of one node (Linux /proc)."""
        with open(f"/proc/{self.processes[port].pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                process.kill()
                process.wait(10)
        shutil.rmtree(self.dir, ignore_errors=True)
