"""Restarts that clients come back from (issue #20): SIGHUP gives every client Close 1012
(service restart); one process runs itself again on the same port, ``serve --workers 2``
replaces its workers one at a time (a replacement listens before the old one stops)."""

from __future__ import annotations

import signal
import subprocess
from contextlib import AsyncExitStack
from typing import Any

import pytest
import trio
from websockets.exceptions import ConnectionClosed, InvalidStatus

from trio_wshandler import should_reconnect

from .test_workers import WAIT, clients_on_both_workers, open_client, serve_command


def stop_and_read_log(process: subprocess.Popen[str]) -> str:
    """SIGTERM: it exits 0, and its log (stderr) has no traceback; the log."""
    process.send_signal(signal.SIGTERM)
    assert process.wait(WAIT) == 0
    assert process.stderr is not None
    log = process.stderr.read()
    assert "Traceback" not in log, log
    return log


async def closed_with(ws: Any) -> int | None:
    with pytest.raises(ConnectionClosed) as closed, trio.fail_after(WAIT):
        while True:
            await ws.recv()
    return None if closed.value.rcvd is None else closed.value.rcvd.code


async def test_sighup_restarts_one_process_on_the_same_port() -> None:
    with serve_command("--port", "0") as (process, port):
        async with AsyncExitStack() as stack:
            ws, pid = await open_client(stack, port)
            process.send_signal(signal.SIGHUP)
            assert await closed_with(ws) == 1012
            back, again = await open_client(stack, port)  # retried while it starts again
            assert again == pid  # the same process, run again (exec)
            await back.send("all:still here")
            assert await back.recv() == "still here"
        assert "SIGHUP: restarting (Close 1012" in stop_and_read_log(process)


async def test_a_rolling_restart_of_two_workers() -> None:
    with serve_command("--port", "0", "--workers", "2") as (supervisor, port):
        async with AsyncExitStack() as stack:
            clients = await clients_on_both_workers(stack, port)
            old = {pid for _, pid in clients}
            served = trio.Event()

            async def keep_connecting() -> None:
                """During the restart, new clients are served, or told to come back: 1012
                (an upgrade that raced its worker's stop), 503 with Retry-After (a request
                read after the stop), or a lost connection (one in the accept queue of a
                worker's socket as it closes: the kernel resets it); never a terminal code."""
                while not served.is_set():
                    try:
                        async with AsyncExitStack() as probe:
                            await open_client(probe, port)
                    except ConnectionClosed as exc:
                        assert exc.rcvd is None or should_reconnect(exc.rcvd.code), exc
                    except InvalidStatus as exc:
                        answer = exc.response
                        assert answer.status_code == 503, exc
                        assert answer.headers["Retry-After"] == "1", exc
                    await trio.sleep(0.02)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(keep_connecting)
                supervisor.send_signal(signal.SIGHUP)
                for ws, _ in clients:
                    assert await closed_with(ws) == 1012
                served.set()
            new = set()
            for _ in range(100):
                _, pid = await open_client(stack, port)
                new.add(pid)
                if len(new) == 2:
                    break
                await trio.sleep(0.05)
            assert len(new) == 2 and not new & old, (new, old)  # served by the replacements
            assert supervisor.poll() is None
        assert "SIGHUP: restarting 2 worker(s) in turn" in stop_and_read_log(supervisor)


async def test_a_second_sighup_does_not_stop_one_process() -> None:
    with serve_command("--port", "0") as (process, port):
        async with AsyncExitStack() as stack:
            ws, pid = await open_client(stack, port)
            process.send_signal(signal.SIGHUP)
            process.send_signal(signal.SIGHUP)  # while the first one drains
            assert await closed_with(ws) == 1012
            _, again = await open_client(stack, port)
            assert again == pid and process.poll() is None
        stop_and_read_log(process)


async def test_sigterm_during_a_rolling_restart_stops_at_once() -> None:
    with serve_command("--port", "0", "--workers", "2") as (supervisor, port):
        async with AsyncExitStack() as stack:
            await clients_on_both_workers(stack, port)
            supervisor.send_signal(signal.SIGHUP)
            await trio.sleep(0.1)  # the first replacement is starting
            start = trio.current_time()
            stop_and_read_log(supervisor)
            assert trio.current_time() - start < WAIT
