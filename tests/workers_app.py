"""A user's application for the ``serve`` command tests: ``tests.workers_app:make``.

Each connection first gets ``pid:<its worker's pid>``; ``all:X`` makes its worker send_all X.
"""

from __future__ import annotations

import os

from trio_wshandler import WebSocketConnection, WebSocketHandler


class App(WebSocketConnection):
    async def registered(self) -> None:
        self.send(f"pid:{os.getpid()}")

    async def got_message(self, message: str | bytes) -> None:
        if isinstance(message, str) and message.startswith("all:"):
            self.handler.send_all(message[4:])


class AppHandler(WebSocketHandler):
    def get_connection(self, cx, hdr, cid):  # type: ignore[no-untyped-def]
        return App(self, cx, hdr, cid)


def make() -> WebSocketHandler:
    return AppHandler(close_timeout=2)
