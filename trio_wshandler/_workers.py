"""Where a user's handler runs on every core: ``python -m trio_wshandler serve module:factory``.

``--workers 1`` (the default) runs the handler in the calling process.  With more, this process
becomes a supervisor: it starts N worker processes (each ``serve ... --workers 1`` on the same
port with ``SO_REUSEPORT``, so the kernel spreads new connections between them), restarts a
worker that dies (with backoff, logged), and on SIGTERM or SIGINT asks every worker to stop
gracefully (each closes its clients with 1001 and runs their hooks), killing those still
running after ``STOP_GRACE`` seconds.  With ``--redis URL`` every worker gets a
:class:`RedisBackplane` on that URL, so ``send_all``, ``publish`` and ``send_one`` reach every
client whichever worker holds it.  With ``--metrics-path P`` every worker serves Prometheus
metrics at ``P`` for all of them (``_worker_metrics.py``).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import shutil
import signal
import subprocess
import sys
import tempfile
from typing import Any

import trio

from ._backplane import RedisBackplane
from ._caps import ConnectionCaps
from ._handler import WebSocketHandler

__all__ = ["STOP_GRACE", "caps_of", "load_handler", "supervise"]

logger = logging.getLogger("trio_wshandler.cli")

#: Seconds the workers get to stop gracefully after SIGTERM before they are killed.
STOP_GRACE = 15.0
#: Seconds a replacement worker has to listen during a rolling restart (SIGHUP).
STARTUP_TIMEOUT = 30.0
#: Restart backoff for a worker that died: from RESTART_MIN doubling to RESTART_MAX seconds
#: (back to RESTART_MIN after a worker ran for RESTART_RESET seconds).
RESTART_MIN, RESTART_MAX, RESTART_RESET = 0.5, 30.0, 60.0


def load_handler(
    spec: str, redis: str | None, caps: ConnectionCaps | None = None
) -> WebSocketHandler:
    """The handler ``module:factory`` makes (a class or a callable without arguments),
    with a backplane on ``redis`` and ``caps`` if given."""
    module_name, _, attribute = spec.partition(":")
    if not module_name or not attribute:
        raise SystemExit(f"serve: expected module:factory, got {spec!r}")
    sys.path.insert(0, "")  # as python -m does: modules of the current directory
    try:
        factory: Any = getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError) as exc:
        raise SystemExit(f"serve: cannot load {spec}: {exc}") from None
    handler = factory()
    if not isinstance(handler, WebSocketHandler):
        raise SystemExit(f"serve: {spec}() returned {handler!r}, not a WebSocketHandler")
    if redis:
        handler.use_backplane(RedisBackplane(redis))
    if caps is not None:
        handler.use_caps(caps)
    return handler


def caps_of(args: argparse.Namespace) -> ConnectionCaps | None:
    """The caps the command line asks for, or None (``serve --max-per-address`` ...)."""
    asked = (args.max_per_address, args.max_attempts, args.max_per_user)
    if all(value is None for value in asked):
        if args.trusted_proxy:
            raise SystemExit("serve: --trusted-proxy needs a cap (--max-per-address, ...)")
        return None
    try:
        return ConnectionCaps(
            max_per_address=args.max_per_address,
            max_attempts=args.max_attempts,
            per=args.attempts_per,
            max_per_user=args.max_per_user,
            trusted_proxies=tuple(args.trusted_proxy or ()),
        )
    except (TypeError, ValueError) as exc:
        raise SystemExit(f"serve: {exc}") from None


def _worker_argv(args: argparse.Namespace, port: int, number: int) -> list[str]:
    argv = [sys.executable, "-m", "trio_wshandler", "serve", args.app]
    argv += ["--host", args.host, "--port", str(port), "--workers", "1", "--reuse-port"]
    if args.metrics_path:  # each worker answers a scrape for all (_worker_metrics.py)
        argv += ["--metrics-path", args.metrics_path, "--metrics-dir", args.metrics_dir]
        argv += ["--worker-number", str(number)]
    if args.redis:
        argv += ["--redis", args.redis]
    for flag in ("max_per_address", "max_attempts", "max_per_user"):
        if getattr(args, flag) is not None:
            argv += [f"--{flag.replace('_', '-')}", str(getattr(args, flag))]
    argv += ["--attempts-per", str(args.attempts_per)]
    for network in args.trusted_proxy or ():
        argv += ["--trusted-proxy", network]
    if args.certfile:
        argv += ["--certfile", args.certfile]
    if args.keyfile:
        argv += ["--keyfile", args.keyfile]
    if args.verbose:
        argv.append("-v")
    if args.quiet:
        argv.append("-q")
    return argv


async def supervise(args: argparse.Namespace) -> int:
    """Run ``args.workers`` workers until SIGINT/SIGTERM; the exit status."""
    reserve = None
    port = args.port
    if port == 0:  # pick one port for all: hold it (bound, not listening) while we run
        reserve = trio.socket.socket()
        reserve.setsockopt(trio.socket.SOL_SOCKET, trio.socket.SO_REUSEADDR, 1)
        reserve.setsockopt(trio.socket.SOL_SOCKET, trio.socket.SO_REUSEPORT, 1)
        await reserve.bind((args.host, 0))
        port = reserve.getsockname()[1]
    if args.metrics_path:  # where the workers share their numbers, removed when we end
        args.metrics_dir = tempfile.mkdtemp(prefix="trio_wshandler-metrics-")
    stopping = trio.Event()
    ended = trio.Event()  # every worker has exited after ``stopping``
    processes: dict[int, trio.Process] = {}
    # worker number -> its replacement, and the event set once it is adopted (SIGHUP)
    handover: dict[int, tuple[trio.Process, trio.Event]] = {}
    running = [args.workers]

    async def worker(number: int) -> None:
        try:
            await _keep_running(number, args, port, processes, stopping, handover)
        finally:
            running[0] -= 1
            if not running[0]:
                ended.set()

    scheme = "wss" if args.certfile else "ws"
    try:
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM, signal.SIGHUP) as signals:
            async with trio.open_nursery() as nursery:
                for number in range(args.workers):
                    nursery.start_soon(worker, number)
                print(
                    f"serving {args.app} on {scheme}://{args.host}:{port}/ with {args.workers}"
                    " workers (Ctrl-C to stop)",
                    flush=True,
                )
                restarting: list[trio.CancelScope] = []

                async def rolling_restart() -> None:
                    with trio.CancelScope() as scope:
                        restarting.append(scope)
                        try:
                            await _rolling_restart(args, port, processes, handover, nursery)
                        finally:
                            restarting.remove(scope)

                async for signum in signals:
                    if signum == signal.SIGHUP:
                        if restarting:
                            logger.info("SIGHUP: a rolling restart is under way already")
                        else:
                            nursery.start_soon(rolling_restart)
                        continue
                    for scope in restarting:  # a stop does not wait for a restart to end
                        scope.cancel()
                    logger.info(
                        "%s: stopping %d worker(s)", signal.Signals(signum).name, len(processes)
                    )
                    break
                stopping.set()
                for process in list(processes.values()):
                    process.send_signal(signal.SIGTERM)

                async def second_signal() -> None:
                    async for signum in signals:  # a second signal: at once
                        logger.warning("%s again: killing the workers", signal.Signals(signum).name)
                        for process in list(processes.values()):
                            process.kill()

                nursery.start_soon(second_signal)
                with trio.move_on_after(STOP_GRACE) as grace:
                    await ended.wait()
                if grace.cancelled_caught:
                    logger.warning("workers still running after %s s: killed", STOP_GRACE)
                    for process in list(processes.values()):
                        process.kill()
                nursery.cancel_scope.cancel()
    finally:
        if reserve is not None:
            reserve.close()
        if args.metrics_path:
            shutil.rmtree(args.metrics_dir, ignore_errors=True)
    return 0


async def _keep_running(
    number: int,
    args: argparse.Namespace,
    port: int,
    processes: dict[int, trio.Process],
    stopping: trio.Event,
    handover: dict[int, tuple[trio.Process, trio.Event]],
) -> None:
    """Run worker ``number``; restart it, with backoff, whenever it dies unasked; carry on
    with its replacement when a rolling restart made one (``handover``)."""
    delay = RESTART_MIN
    adopted: trio.Process | None = None
    while not stopping.is_set():
        started = trio.current_time()
        if adopted is None:
            process = await trio.lowlevel.open_process(_worker_argv(args, port, number))
        else:
            process, adopted = adopted, None
        processes[number] = process
        try:
            status = await process.wait()
        finally:
            with trio.CancelScope(shield=True):
                if process.returncode is None:
                    process.kill()
                    await process.wait()
            processes.pop(number, None)
        replacement = handover.pop(number, None)
        if replacement is not None:  # restarted on purpose: its replacement serves already
            adopted = replacement[0]
            replacement[1].set()
            continue
        if stopping.is_set():
            if status != 0:
                logger.warning(
                    "worker %d (pid %d) ended with status %d", number, process.pid, status
                )
            return
        if trio.current_time() - started > RESTART_RESET:
            delay = RESTART_MIN
        logger.warning(
            "worker %d (pid %d) exited with status %d; restarting in %.1f s",
            number,
            process.pid,
            status,
            delay,
        )
        with trio.move_on_after(delay):
            await stopping.wait()
        delay = min(delay * 2, RESTART_MAX)


async def _rolling_restart(
    args: argparse.Namespace,
    port: int,
    processes: dict[int, trio.Process],
    handover: dict[int, tuple[trio.Process, trio.Event]],
    nursery: trio.Nursery,
) -> None:
    """SIGHUP: replace the workers one at a time.  Each replacement starts and listens on the
    shared port first; then the old worker gets SIGHUP (its clients get 1012, service restart,
    and reconnect: the kernel hands them to the workers listening).  At most one worker is
    missing at any time, never all; a replacement that does not start leaves the old one."""
    logger.info("SIGHUP: restarting %d worker(s) in turn", len(processes))
    for number in sorted(processes):
        old = processes.get(number)
        if old is None:
            continue
        new = await trio.lowlevel.open_process(
            _worker_argv(args, port, number), stdout=subprocess.PIPE
        )
        try:
            ready = await _listening(new, nursery)
            if not ready or processes.get(number) is not old or old.returncode is not None:
                if not ready:
                    logger.error("worker %d: its replacement did not start; keeping it", number)
                new.kill()  # (or the old one ended meanwhile: it was restarted as usual)
                continue
            adopted = trio.Event()
            handover[number] = (new, adopted)
            old.send_signal(signal.SIGHUP)
            with trio.move_on_after(STOP_GRACE):
                await adopted.wait()  # the old one exited, the new one is its worker now
            if not adopted.is_set():
                logger.warning(
                    "worker %d (pid %d) still running after %s s: killed",
                    number,
                    old.pid,
                    STOP_GRACE,
                )
                old.kill()
        finally:
            if handover.get(number, (None,))[0] is new and processes.get(number) is not new:
                # not adopted (cancelled by a stop, or the old one would not die): keep none
                # of it, and the old worker, if it still runs, stays that worker
                del handover[number]
            if processes.get(number) is not new and new.returncode is None:
                new.kill()
    logger.info("restarted")


async def _listening(process: trio.Process, nursery: trio.Nursery) -> bool:
    """Wait until a new worker says it listens (its "serving ..." line; what it prints before
    is passed on), then pass the rest of its output on to ours; False if it exits or says
    nothing within STARTUP_TIMEOUT."""
    assert process.stdout is not None
    stdout = process.stdout
    buffered = line = b""
    with trio.move_on_after(STARTUP_TIMEOUT):
        while True:
            line, newline, rest = buffered.partition(b"\n")
            if newline:
                _echo(line + newline)
                buffered = rest
                if line.startswith(b"serving "):
                    break
                continue
            chunk = await stdout.receive_some()
            if not chunk:
                return False
            buffered += chunk
    if not line.startswith(b"serving "):
        return False
    _echo(buffered)

    async def forward() -> None:
        while chunk := await stdout.receive_some():
            _echo(chunk)

    nursery.start_soon(forward)
    return True


def _echo(data: bytes | bytearray) -> None:
    """A worker's output, on ours (lost if ours is gone: the worker must not block on it)."""
    if not data:
        return
    try:
        sys.stdout.buffer.write(data)
        sys.stdout.flush()
    except (OSError, ValueError):
        pass
