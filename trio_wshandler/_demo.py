"""The demo chat room and the echo server behind ``python -m trio_wshandler``.

The chat room is a :class:`PubSubConnection` with one topic that keeps history: a page that
loses its connection (``static/chat.html`` with ``static/pubsub.js``) comes back, subscribes
from its last position and shows what it missed, or says that it could not."""

from __future__ import annotations

import json
from importlib import resources
from typing import Any

from ._connection import WebSocketConnection
from ._handler import WebSocketHandler
from ._history import HistoryOptions, Position
from ._options import RateLimit, RateLimits
from ._pubsub import PubSubConnection
from ._types import CallContext, Request, Response

__all__ = ["CHAT", "ChatHandler", "EchoHandler", "PageHandler", "chat_page", "pubsub_script"]


class PageHandler:
    """Serves one static file (an HTML page by default) for GET (any other method: 405)."""

    def __init__(self, html: str, content_type: str = "text/html; charset=utf-8") -> None:
        self._html = html.encode("utf-8")
        self._type = content_type

    async def handle_request(self, cx: CallContext, hdr: Request, body: bytes) -> Response:
        if hdr.method not in ("GET", "HEAD"):
            return Response(405, "GET only", {"Allow": "GET, HEAD"})
        return Response(200, self._html, {"Content-Type": self._type})


def _static(name: str) -> str:
    return resources.files("trio_wshandler").joinpath(f"static/{name}").read_text("utf-8")


def chat_page() -> PageHandler:
    return PageHandler(_static("chat.html"))


def pubsub_script() -> PageHandler:
    """``static/pubsub.js``, the browser client of :class:`PubSubConnection`."""
    return PageHandler(_static("pubsub.js"), "text/javascript; charset=utf-8")


#: the demo's one topic: every chat line, kept so that a page that reconnects gets what it missed
CHAT = "chat"


def chat_envelope(topic: str, position: Position, data: str | bytes) -> str:
    """A chat line (JSON text) with its position added: ``{"type": "chat", "from": ...,
    "text": ..., "topic": ..., "offset": ..., "epoch": ...}``, so that clients that do not
    speak the protocol (they get every line too) see the same objects as before."""
    line = json.loads(data)
    line.update(topic=topic, offset=position.offset, epoch=position.epoch)
    return json.dumps(line)


class ChatConnection(PubSubConnection):
    """A chat client: subscribed to :data:`CHAT` on arrival (a plain client gets every line);
    a page that speaks the protocol subscribes again from its last position when it comes back.
    Plain text, or ``{"op": "say", "text": ...}``, is a chat line."""

    handler: ChatHandler
    max_topics = 1

    @property
    def nick(self) -> str:
        return f"guest-{self.id[-4:].lower()}"

    def may_subscribe(self, topic: str) -> bool:
        return topic == CHAT

    def say(self, kind: str, text: str, **extra: str) -> None:
        self.handler.publish(CHAT, json.dumps({"type": kind, "text": text[:2000], **extra}))

    async def registered(self) -> None:
        count = len(self.handler)
        self.send(
            json.dumps({"type": "system", "text": f"welcome, you are {self.nick} ({count} online)"})
        )
        self.subscribe(CHAT)
        self.say("system", f"{self.nick} joined")

    async def got_message(self, message: str | bytes) -> None:
        text = message if isinstance(message, str) else message.decode("utf-8", "replace")
        try:
            command = json.loads(text)
        except (ValueError, RecursionError):
            command = None
        if not isinstance(command, dict) or "op" not in command:
            self.say("chat", text, **{"from": self.nick})
        elif command["op"] == "say" and isinstance(command.get("text"), str):
            self.say("chat", command["text"], **{"from": self.nick})
        else:
            await super().got_message(message)

    async def connection_closed(self) -> None:
        self.say("system", f"{self.nick} left")


#: What one chat member may send in the demo (``python -m trio_wshandler demo``): 20 lines a
#: second after a burst of 50, and 256 KiB a second; a member who sends faster is read more
#: slowly ("delay"), so one flooder cannot make the room broadcast 50,000 lines a second.
DEMO_RATE_LIMITS = RateLimits((RateLimit(20, burst=50), RateLimit(256 * 1024, unit="bytes")))


class ChatHandler(WebSocketHandler):
    """Every chat line is published to :data:`CHAT`, which keeps the last 500 for an hour."""

    def __init__(self, **options: Any) -> None:
        history = HistoryOptions(size=500, ttl=3600, envelope=chat_envelope)
        options.setdefault("history", {CHAT: history})
        super().__init__(**options)

    def get_connection(self, cx: CallContext, hdr: Request, cid: str) -> WebSocketConnection:
        return ChatConnection(self, cx, hdr, cid)


class EchoConnection(WebSocketConnection):
    async def got_message(self, message: str | bytes) -> None:
        self.send(message)


class EchoHandler(WebSocketHandler):
    """Sends every message back (for conformance suites such as Autobahn)."""

    def get_connection(self, cx: CallContext, hdr: Request, cid: str) -> WebSocketConnection:
        return EchoConnection(self, cx, hdr, cid)
