"""The demo chat room and the echo server behind ``python -m trio_wshandler``."""

from __future__ import annotations

import json
from importlib import resources

from ._connection import WebSocketConnection
from ._handler import WebSocketHandler
from ._types import CallContext, Request, Response

__all__ = ["ChatHandler", "EchoHandler", "PageHandler"]


class PageHandler:
    """Serves one static HTML page for GET / (any other method: 405)."""

    def __init__(self, html: str) -> None:
        self._html = html.encode("utf-8")

    async def handle_request(self, cx: CallContext, hdr: Request, body: bytes) -> Response:
        if hdr.method not in ("GET", "HEAD"):
            return Response(405, "GET only", {"Allow": "GET, HEAD"})
        return Response(200, self._html, {"Content-Type": "text/html; charset=utf-8"})


def chat_page() -> PageHandler:
    html = resources.files("trio_wshandler").joinpath("static/chat.html").read_text("utf-8")
    return PageHandler(html)


class ChatConnection(WebSocketConnection):
    handler: ChatHandler

    @property
    def nick(self) -> str:
        return f"guest-{self.id[-4:].lower()}"

    async def registered(self) -> None:
        count = len(self.handler)
        self.send(
            json.dumps({"type": "system", "text": f"welcome, you are {self.nick} ({count} online)"})
        )
        self.handler.send_all(json.dumps({"type": "system", "text": f"{self.nick} joined"}))

    async def got_message(self, message: str | bytes) -> None:
        text = message if isinstance(message, str) else message.decode("utf-8", "replace")
        self.handler.send_all(json.dumps({"type": "chat", "from": self.nick, "text": text[:2000]}))

    async def connection_closed(self) -> None:
        self.handler.send_all(json.dumps({"type": "system", "text": f"{self.nick} left"}))


class ChatHandler(WebSocketHandler):
    """Every message is broadcast to everybody with ``send_all``."""

    def get_connection(self, cx: CallContext, hdr: Request, cid: str) -> WebSocketConnection:
        return ChatConnection(self, cx, hdr, cid)


class EchoConnection(WebSocketConnection):
    async def got_message(self, message: str | bytes) -> None:
        self.send(message)


class EchoHandler(WebSocketHandler):
    """Sends every message back (for conformance suites such as Autobahn)."""

    def get_connection(self, cx: CallContext, hdr: Request, cid: str) -> WebSocketConnection:
        return EchoConnection(self, cx, hdr, cid)
