"""``python -m trio_wshandler demo|echo|serve``: a chat room to try in a browser, an echo
server, and a user's handler on every core (``serve module:factory --workers N``,
``_workers.py``).

Both stop gracefully on Ctrl-C (SIGINT) or SIGTERM: the listener stops accepting, every client
gets Close 1001 and its hooks run, and the process exits 0 within ``close_timeout`` plus a
second; a second signal exits at once (status 130).  SIGHUP restarts: every client gets Close
1012 (service restart: come back), and the process runs itself again on the same port (a
worker of ``serve --workers N`` exits instead: its supervisor restarts the workers in turn).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import ssl
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping

import trio

from . import __version__
from ._backplane import BackplaneError
from ._demo import DEMO_RATE_LIMITS, ChatHandler, EchoHandler, chat_page, pubsub_script
from ._extensions import DeflateOptions
from ._handler import WebSocketHandler
from ._http import HttpHandler
from ._prometheus import PrometheusHandler
from ._server import Server, serve
from ._worker_metrics import WorkerMetrics
from ._workers import caps_of, load_handler, supervise
from .codec import CloseCode

logger = logging.getLogger("trio_wshandler.cli")

#: Seconds granted beyond the handler's ``close_timeout`` for a graceful stop.
STOP_MARGIN = 1.0


class _Interrupted(Exception):
    """A second signal during a graceful stop: exit at once."""


async def _run(
    routes: HttpHandler | Mapping[str, HttpHandler],
    handler: WebSocketHandler,
    args: argparse.Namespace,
    describe: str,
    background: Callable[[], Awaitable[None]] | None = None,
) -> int | None:
    """Serve until a signal; the port to restart on after SIGHUP, None after SIGINT/SIGTERM."""
    context = _ssl_context(args)
    scheme = "https" if context else "http"
    ws_scheme = "wss" if context else "ws"
    restart = None
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM, signal.SIGHUP) as signals:
        async with trio.open_nursery() as nursery:
            if background is not None:
                nursery.start_soon(background)
            server: Server = await nursery.start(
                lambda task_status: serve(
                    routes,
                    args.host,
                    args.port,
                    ssl_context=context,
                    reuse_port=getattr(args, "reuse_port", False),
                    task_status=task_status,
                )
            )
            print(
                describe.format(
                    http=f"{scheme}://{args.host}:{server.port}/",
                    ws=f"{ws_scheme}://{args.host}:{server.port}/",
                ),
                flush=True,
            )
            async for signum in signals:  # the first signal: stop gracefully
                code, reason = CloseCode.GOING_AWAY, "server is stopping"
                if signum == signal.SIGHUP:  # a restart: the clients should come back
                    code, reason = CloseCode.SERVICE_RESTART, "service restart"
                    restart = server.port
                logger.info(
                    "%s: %s (Close %d to %d client(s))",
                    signal.Signals(signum).name,
                    "restarting" if restart is not None else "stopping",
                    code,
                    len(handler),
                )
                handler.stop(code, reason)
                server.stop()
                break
            nursery.start_soon(_second_signal, signals)
            grace = handler.close_timeout + STOP_MARGIN
            with trio.move_on_after(grace) as waited:
                await handler.wait_stopped()
            if waited.cancelled_caught:
                logger.warning("%d client(s) still connected after %s s", len(handler), grace)
            nursery.cancel_scope.cancel()
    logger.info("stopped")
    return restart


def _end_with_parent() -> None:
    """A worker of ``serve --workers N`` ends if its supervisor dies (even by SIGKILL): it gets
    SIGTERM then (Linux's parent-death signal; elsewhere nothing is done)."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() == 1:  # the supervisor died before that: end now
        os.kill(os.getpid(), signal.SIGTERM)


def _restart(args: argparse.Namespace, port: int) -> int:
    """After SIGHUP: a worker of ``serve --workers N`` exits (its supervisor has started its
    replacement already); a process on its own runs itself again, on the same port."""
    if getattr(args, "reuse_port", False):
        return 0
    argv = [sys.executable, "-m", "trio_wshandler", *args.argv, "--port", str(port)]
    logger.info("restarting: %s", " ".join(argv))
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, argv)
    return 1  # (not reached)


async def _second_signal(signals: AsyncIterator[int]) -> None:
    async for signum in signals:
        if signum == signal.SIGHUP:  # a restart is under way already
            logger.info("SIGHUP: stopping already")
            continue
        logger.warning("%s again: exiting at once", signal.Signals(signum).name)
        raise _Interrupted


def _ssl_context(args: argparse.Namespace) -> ssl.SSLContext | None:
    if not args.certfile:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(args.certfile, args.keyfile)
    return context


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m trio_wshandler",
        description="Try trio_wshandler: a chat room in the browser, or an echo server.",
    )
    parser.add_argument("--version", action="version", version=f"trio_wshandler {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="{demo,echo,serve}")
    for name, default_port, text in (
        ("demo", 8080, "a chat room: the page at http://HOST:PORT/, the WebSocket at /ws"),
        ("echo", 9001, "a WebSocket echo server on every path (e.g. for the Autobahn suite)"),
    ):
        p = sub.add_parser(
            name,
            help=text,
            description=text,
            formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        )
        p.add_argument("--host", default="127.0.0.1", help="address to listen on")
        p.add_argument("--port", type=int, default=default_port, help="port (0: any free one)")
        p.add_argument(
            "--certfile", help="PEM certificate (chain): serve https:// and wss:// (TLS)"
        )
        p.add_argument("--keyfile", help="PEM private key, if not in --certfile")
        p.add_argument(
            "--no-compression",
            action="store_true",
            help="decline permessage-deflate (on by default, as browsers expect)",
        )
        if name == "demo":
            p.add_argument(
                "--no-rate-limit",
                action="store_true",
                help="let each member send as fast as it can (a limit of 20 lines/s, burst 50, "
                "by default)",
            )
        level = p.add_mutually_exclusive_group()
        level.add_argument(
            "-v", "--verbose", action="store_true", help="log debug messages (every refusal)"
        )
        level.add_argument(
            "-q", "--quiet", action="store_true", help="log warnings and errors only"
        )
    text = "a handler of yours (module:factory, a class or a callable) on every core"
    p = sub.add_parser(
        "serve",
        help=text,
        description=text,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("app", help="module:factory; the factory returns a WebSocketHandler")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on")
    p.add_argument("--port", type=int, default=8000, help="port (0: any free one)")
    p.add_argument(
        "--workers", type=int, default=1, help="processes sharing the port (SO_REUSEPORT)"
    )
    p.add_argument("--redis", help="Redis URL: the workers form one cluster (a RedisBackplane)")
    p.add_argument("--certfile", help="PEM certificate (chain): serve wss:// (TLS)")
    p.add_argument("--keyfile", help="PEM private key, if not in --certfile")
    caps = p.add_argument_group("caps (per worker; 429 with Retry-After, docs/guide.md)")
    caps.add_argument("--max-per-address", type=int, help="connections per client address")
    caps.add_argument("--max-attempts", type=int, help="upgrade attempts per address ...")
    caps.add_argument("--attempts-per", type=float, default=10.0, help="... per this many s")
    caps.add_argument("--max-per-user", type=int, help="connections per authenticated user")
    caps.add_argument(
        "--trusted-proxy",
        action="append",
        metavar="NETWORK",
        help="a proxy whose X-Forwarded-For is believed (repeatable)",
    )
    p.add_argument(
        "--metrics-path",
        help="serve Prometheus metrics at this path (e.g. /metrics; needs the metrics extra)",
    )
    p.add_argument("--reuse-port", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--metrics-dir", help=argparse.SUPPRESS)  # from the supervisor
    p.add_argument("--worker-number", type=int, default=0, help=argparse.SUPPRESS)
    level = p.add_mutually_exclusive_group()
    level.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    level.add_argument("-q", "--quiet", action="store_true", help="log warnings and errors only")
    return parser


def main(argv: list[str] | None = None) -> int:
    # a SIGHUP before the signal receiver is in place (while starting, or right after a
    # restart's exec) must not end the process: it is taken once serving
    with contextlib.suppress(ValueError):  # (not the main thread: not ours to set)
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
    args = _parser().parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # for a restart (SIGHUP)
    if args.keyfile and not args.certfile:
        _parser().error("--keyfile needs --certfile")
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING if args.quiet else logging.INFO,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
    )
    if args.command == "serve":
        return _serve(args)
    compression = None if args.no_compression else DeflateOptions()
    if args.command == "demo":
        # chat lines are small: let a queue hold as many as fit in max_queue_bytes (1 MiB), so
        # that an observer whose socket lags behind a burst of 10,000 lines is not dropped
        handler: WebSocketHandler = ChatHandler(
            max_queue=1 << 16,
            compression=compression,
            rate_limits=None if args.no_rate_limit else DEMO_RATE_LIMITS,
        )
        routes: HttpHandler | Mapping[str, HttpHandler] = {
            "/": chat_page(),
            "/pubsub.js": pubsub_script(),
            "/ws": handler,
        }
        describe = "chat demo: open {http} in a browser (Ctrl-C to stop)"
    else:
        handler = EchoHandler(
            max_message_size=16 << 20,
            max_fragments=1 << 17,
            max_queue_bytes=32 << 20,
            compression=compression,
        )
        routes = handler
        describe = "echo server on {ws} (Ctrl-C to stop)"
    status = 0
    try:
        restart = trio.run(_run, routes, handler, args, describe)
        if restart is not None:
            return _restart(args, restart)
    except* _Interrupted:
        status = 130
    except* OSError as group:  # e.g. the port is in use
        for exc in group.exceptions:
            logger.error("%s", exc)
        status = 1
    return status


def _serve(args: argparse.Namespace) -> int:
    if args.reuse_port:
        _end_with_parent()
    if args.workers < 1:
        _parser().error("--workers must be at least 1")
    if args.metrics_path is not None:
        if not args.metrics_path.startswith("/"):
            _parser().error("--metrics-path must start with /")
        try:
            import prometheus_client  # noqa: F401
        except ImportError:
            _parser().error(
                "--metrics-path needs prometheus-client: pip install trio_wshandler[metrics]"
            )
    caps = caps_of(args)  # checked here, before any worker starts
    if args.workers > 1:
        try:
            return trio.run(supervise, args)
        except OSError as exc:
            logger.error("%s", exc)
            return 1
    handler = load_handler(args.app, args.redis, caps)
    routes: HttpHandler | Mapping[str, HttpHandler] = handler
    background = None
    if args.metrics_path is not None:
        metrics: PrometheusHandler
        if args.metrics_dir:  # one of several workers: the scrape answers for all
            metrics = WorkerMetrics(handler, args.metrics_dir, args.worker_number)
            background = metrics.run
        else:
            metrics = PrometheusHandler(handler)
        routes = {"*": handler, args.metrics_path: metrics}
    status = 0
    describe = f"serving {args.app} on {{ws}} (Ctrl-C to stop)"
    try:
        restart = trio.run(_run, routes, handler, args, describe, background)
        if restart is not None:
            return _restart(args, restart)
    except* _Interrupted:
        status = 130
    except* (OSError, BackplaneError) as group:
        for error in group.exceptions:
            logger.error("%s", error)
        status = 1
    return status


if __name__ == "__main__":
    sys.exit(main())
