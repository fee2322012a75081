"""One process of a test cluster: ``python tests/backplane_node.py URL PREFIX``.

Serves on 127.0.0.1 (any free port, printed as ``port N``) a handler with a RedisBackplane
(heartbeat 0.1 s, presence 1 s, command timeout 0.5 s).  Its clients drive it with text messages:
``sub:T`` subscribe, ``all:X`` send_all, ``pub:T:X`` publish, ``one:CID:X`` send_one,
``stop:CID`` stop_one (4000 "bye") (each answered ``one:ok`` or ``one:unknown:CID``, or
``stop:...``), ``subscribed:T`` (the topic's Redis subscription is
in force), ``count`` (cluster_connection_count), ``stats`` (the
backplane's counters as JSON).  Each connection first gets ``id:<its id>``.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable

import trio

from trio_wshandler import (
    RedisBackplane,
    UnknownConnectionError,
    WebSocketConnection,
    WebSocketHandler,
    serve,
)


class Node(WebSocketConnection):
    async def registered(self) -> None:
        self.send(f"id:{self.id}")

    async def got_message(self, message: str | bytes) -> None:
        assert isinstance(message, str)
        handler = self.handler
        command, _, rest = message.partition(":")
        if command == "sub":
            self.subscribe(rest)
        elif command == "all":
            handler.send_all(rest)
        elif command == "pub":
            topic, _, text = rest.partition(":")
            handler.publish(topic, text)
        elif command in ("one", "stop"):
            cid, _, text = rest.partition(":")
            try:
                if command == "one":
                    handler.send_one(cid, text)
                else:
                    handler.stop_one(cid, 4000, "bye")
            except UnknownConnectionError as exc:
                self.send(f"{command}:unknown:{exc.cid}")
            else:
                self.send(f"{command}:ok")
        elif command == "subscribed":
            bp = handler.backplane
            assert bp is not None
            self.send(f"subscribed:{bp.subscribed(rest)}")
        elif command == "count":
            self.send(f"count:{await handler.cluster_connection_count()}")
        elif command == "stats":
            bp = handler.backplane
            assert bp is not None
            counters = ("published", "received", "lost", "misses", "reconnects")
            self.send("stats:" + json.dumps({k: getattr(bp, k) for k in counters}))


class NodeHandler(WebSocketHandler):
    def get_connection(self, cx, hdr, cid):  # type: ignore[no-untyped-def]
        return Node(self, cx, hdr, cid)


async def main(url: str, prefix: str) -> None:
    await run_node(url, prefix, NodeHandler)


async def run_node(url: str, prefix: str, make: Callable[..., WebSocketHandler]) -> None:
    """Serve ``make(backplane=...)`` with this cluster's backplane settings; print the port."""
    backplane = RedisBackplane(
        url, prefix=prefix, heartbeat=0.1, presence_ttl=1.0, command_timeout=0.5
    )
    handler = make(backplane=backplane)
    async with trio.open_nursery() as nursery:
        server = await nursery.start(serve, handler, "127.0.0.1", 0)
        print(f"port {server.port} node {backplane.node_id}", flush=True)


if __name__ == "__main__":
    trio.run(main, sys.argv[1], sys.argv[2])
