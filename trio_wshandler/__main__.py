"""``python -m trio_wshandler demo|echo``: a chat room to try in a browser, and an echo server."""

from __future__ import annotations

import argparse
import logging
import sys

import trio

from ._demo import ChatHandler, EchoHandler, chat_page
from ._server import Server, serve


async def _run_demo(host: str, port: int) -> None:
    handler = ChatHandler()
    async with trio.open_nursery() as nursery:
        server: Server = await nursery.start(serve, {"/": chat_page(), "/ws": handler}, host, port)
        print(
            f"chat demo: open http://{host}:{server.port}/ in a browser (Ctrl-C to stop)",
            flush=True,
        )


async def _run_echo(host: str, port: int) -> None:
    handler = EchoHandler(
        max_message_size=16 << 20, max_fragments=1 << 17, max_queue_bytes=32 << 20
    )
    async with trio.open_nursery() as nursery:
        server: Server = await nursery.start(serve, handler, host, port)
        print(f"echo server on ws://{host}:{server.port}/", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m trio_wshandler")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, default_port, text in (
        ("demo", 8080, "a chat room served at http://HOST:PORT/"),
        ("echo", 9001, "a WebSocket echo server (e.g. for the Autobahn suite)"),
    ):
        p = sub.add_parser(name, help=text)
        p.add_argument("--host", default="127.0.0.1")
        p.add_argument("--port", type=int, default=default_port)
        p.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
    )
    runner = _run_demo if args.command == "demo" else _run_echo
    try:
        trio.run(runner, args.host, args.port)
    except KeyboardInterrupt:
        return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
