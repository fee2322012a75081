"""The application of the workers benchmark (``operations.py``), run by the real command:
``python -m trio_wshandler serve workers_app:make --workers N [--redis URL]``.

The handler is the benchmark's trio_wshandler server (``servers.py``: the same options and
messages), served on every path, plus one plain HTTP endpoint that makes the worker it reaches
broadcast: ``GET /broadcast?count=C&size=S&mode=paced|burst`` answers ``sent`` once the last
message is queued.  With ``--redis`` ``send_all`` also reaches the clients of the other workers.
"""

from __future__ import annotations

import trio
from servers import payload, trio_wshandler_handler

from trio_wshandler import CallContext, Request, Response, WebSocketHandler


class BenchHandler(WebSocketHandler):
    async def handle_request(self, cx: CallContext, hdr: Request, body: bytes) -> Response:
        if hdr.path != "/broadcast":
            return await super().handle_request(cx, hdr, body)
        count, size = int(hdr.query["count"]), int(hdr.query["size"])
        paced, padding = hdr.query.get("mode") == "paced", b"p" * size
        for seq in range(count):
            self.send_all(payload(seq, size, padding))
            if paced:
                await trio.lowlevel.checkpoint()
        return Response(200, "sent")


def make() -> WebSocketHandler:
    template = trio_wshandler_handler()
    return BenchHandler(
        heartbeat=None,
        max_queue=template.max_queue,
        max_queue_bytes=template.max_queue_bytes,
        compression=template.compression,
    )
