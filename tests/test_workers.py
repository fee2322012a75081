"""``python -m trio_wshandler serve module:factory``: one process, and workers sharing a port.

The supervisor and its workers are real processes; the clients are websockets.  With two
workers and a real redis-server: clients land on both, a broadcast from one reaches all, a
killed worker is restarted, and SIGTERM gives every client Close 1001.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import AsyncExitStack, contextmanager
from pathlib import Path
from typing import Any

import pytest
import trio
from websockets.exceptions import ConnectionClosed, ConnectionClosedError, InvalidMessage
from websockets.trio.client import connect

from .conftest import scrape_metrics
from .redis_server import RedisServer

ROOT = Path(__file__).resolve().parent.parent
WAIT = 10


@contextmanager
def serve_command(*args: str) -> Iterator[tuple[subprocess.Popen[str], int]]:
    process = subprocess.Popen(
        [sys.executable, "-m", "trio_wshandler", "serve", "tests.workers_app:make", *args],
        cwd=ROOT,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        match = re.search(r"127\.0\.0\.1:(\d+)", line)
        assert match, (line, process.stderr.read() if process.poll() is not None else "")
        yield process, int(match.group(1))
    finally:
        if process.poll() is None:  # SIGTERM first: a supervisor stops its workers
            process.terminate()
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
        process.wait(10)


async def open_client(stack: AsyncExitStack, port: int) -> tuple[Any, int]:
    """A client, and the pid of the worker that took it (retrying while workers start)."""
    deadline = trio.current_time() + WAIT
    while True:  # (no cancel scope around a context the stack exits later)
        try:
            ws = await stack.enter_async_context(connect(f"ws://127.0.0.1:{port}/"))
            break
        except (OSError, EOFError, InvalidMessage, ConnectionClosedError):
            # refused while workers start; reset when the kernel had handed the connection
            # to a worker's socket as that worker was killed (SO_REUSEPORT): retry, bounded
            if trio.current_time() > deadline:
                raise
            await trio.sleep(0.05)
    with trio.fail_after(WAIT):
        hello = await ws.recv()
    assert isinstance(hello, str) and hello.startswith("pid:")
    return ws, int(hello[4:])


async def clients_on_both_workers(stack: AsyncExitStack, port: int) -> list[tuple[Any, int]]:
    """At least 4 clients, connected until both workers hold some (bounded)."""
    clients: list[tuple[Any, int]] = []
    while len({pid for _, pid in clients}) < 2 or len(clients) < 4:
        clients.append(await open_client(stack, port))
        assert len(clients) < 100, "the kernel never spread connections"
        await trio.sleep(0.1)  # (the second worker may still be starting)
    return clients


async def test_one_process() -> None:
    with serve_command("--port", "0") as (process, port):
        async with AsyncExitStack() as stack:
            ws, pid = await open_client(stack, port)
            assert pid == process.pid  # --workers 1 runs in the calling process
            await ws.send("all:hi")
            assert await ws.recv() == "hi"
        process.send_signal(signal.SIGTERM)
        assert process.wait(WAIT) == 0


async def test_two_workers_with_redis(redis: RedisServer) -> None:
    args = ("--port", "0", "--workers", "2", "--redis", redis.url)
    with serve_command(*args) as (supervisor, port):
        async with AsyncExitStack() as stack:
            clients = await clients_on_both_workers(stack, port)
            pids = {pid for _, pid in clients}
            assert supervisor.pid not in pids
            # a broadcast from a client of one worker reaches the clients of both
            await clients[0][0].send("all:everyone")
            for ws, _ in clients:
                with trio.fail_after(WAIT):
                    assert await ws.recv() == "everyone"
            # a worker that dies is restarted
            killed = clients[0][1]
            os.kill(killed, signal.SIGKILL)
            survivors = [(ws, pid) for ws, pid in clients if pid != killed]
            for _ in range(100):  # 10 s: the restart waits 0.5 s, then the worker starts
                ws, pid = await open_client(stack, port)
                survivors.append((ws, pid))
                if pid not in pids:
                    break  # the new worker takes connections
                await trio.sleep(0.1)
            else:
                raise AssertionError("the killed worker was not replaced")
            # SIGTERM: every client gets Close 1001, the supervisor exits 0
            supervisor.send_signal(signal.SIGTERM)
            for ws, _ in survivors:
                with pytest.raises(ConnectionClosed) as closed, trio.fail_after(WAIT):
                    while True:
                        await ws.recv()
                assert closed.value.rcvd is not None and closed.value.rcvd.code == 1001
        assert supervisor.wait(WAIT) == 0
        assert supervisor.stderr is not None
        log = supervisor.stderr.read()
        assert "restarting" in log, log
        assert "Traceback" not in log, log


async def test_one_process_metrics_path() -> None:
    pytest.importorskip("prometheus_client")
    with serve_command("--port", "0", "--metrics-path", "/metrics") as (process, port):
        async with AsyncExitStack() as stack:
            await open_client(stack, port)
            samples, _, _ = await scrape_metrics(port)
            assert samples["trio_wshandler_connections", ()] == 1
            assert samples["trio_wshandler_upgrades_total", ()] == 1
            assert samples["trio_wshandler_messages_sent_total", ()] == 1  # its pid: line
            assert samples["process_cpu_seconds_total", ()] > 0
            # the handler serves every other path
            ws = await stack.enter_async_context(connect(f"ws://127.0.0.1:{port}/any/path"))
            assert (await ws.recv()).startswith("pid:")
        process.send_signal(signal.SIGTERM)
        assert process.wait(WAIT) == 0


async def test_two_workers_metrics_answer_for_both() -> None:
    """Whichever worker a scrape reaches, it answers for both (each series labelled)."""
    pytest.importorskip("prometheus_client")
    args = ("--port", "0", "--workers", "2", "--metrics-path", "/metrics")
    with serve_command(*args) as (supervisor, port):
        async with AsyncExitStack() as stack:
            clients = await clients_on_both_workers(stack, port)
            by_pid = {pid: sum(1 for _, p in clients if p == pid) for _, pid in clients}
            # the other worker's file is at most WRITE_INTERVAL (1 s) old: scrape until the
            # figures add up, then check a few more scrapes (reaching either worker)
            consistent = 0
            with trio.fail_after(WAIT):
                while consistent < 6:
                    samples, _, _ = await scrape_metrics(port)
                    live = {
                        labels: value
                        for (name, labels), value in samples.items()
                        if name == "trio_wshandler_connections"
                    }
                    if sorted(live.values()) == sorted(by_pid.values()):
                        assert set(live) == {(("worker", "0"),), (("worker", "1"),)}
                        consistent += 1
                    elif consistent:
                        raise AssertionError(f"{live} after a consistent scrape ({by_pid})")
                    await trio.sleep(0.1)
            for worker in ("0", "1"):
                assert samples["trio_wshandler_worker_cpu_seconds_total", (("worker", worker),)]
                key = ("trio_wshandler_worker_resident_memory_bytes", (("worker", worker),))
                assert samples[key] > 10e6
            total = sum(
                value
                for (name, _), value in samples.items()
                if name == "trio_wshandler_messages_sent_total"
            )
            assert total == len(clients)  # each got its pid: line
        supervisor.send_signal(signal.SIGTERM)
        assert supervisor.wait(WAIT) == 0
