"""One process of a test cluster with topic history in Redis: ``python tests/history_node.py
URL PREFIX``.

Serves on 127.0.0.1 (any free port, printed as ``port N``) a handler whose connections speak
the PubSubConnection JSON protocol, with history on every topic ``room*`` (100 kept, 60 s) and a
RedisBackplane (heartbeat 0.1 s, presence 1 s, command timeout 0.5 s).  Clients may publish.
``{"op": "stats", "topic": "-"}`` is answered with the handler's ``stats()`` as JSON, with its
backplane's ``node`` id.
"""

from __future__ import annotations

import json
import sys

import trio

from tests.backplane_node import run_node
from trio_wshandler import HistoryOptions, PubSubConnection, WebSocketHandler

ROOM = HistoryOptions(size=100, ttl=60)


class Node(PubSubConnection):
    def may_publish(self, topic: str, data: str) -> bool:
        return True

    async def got_message(self, message: str | bytes) -> None:
        if isinstance(message, str) and '"op":"stats"' in message.replace(" ", ""):
            backplane = self.handler.backplane
            assert backplane is not None
            stats = self.handler.stats().to_dict()
            self.send(json.dumps({"op": "stats", "node": backplane.node_id, **stats}))
            return
        await super().got_message(message)


class NodeHandler(WebSocketHandler):
    def get_connection(self, cx, hdr, cid):  # type: ignore[no-untyped-def]
        return Node(self, cx, hdr, cid)


async def main(url: str, prefix: str) -> None:
    history = {"history": lambda topic: ROOM if topic.startswith("room") else None}
    await run_node(url, prefix, lambda **options: NodeHandler(**options, **history))


if __name__ == "__main__":
    trio.run(main, sys.argv[1], sys.argv[2])
