"""trio_wshandler: WebSocket servers for Trio with a connection registry and fan-out.

A re-imagining of Qore's ``WebSocketHandler`` module: a :class:`WebSocketHandler` accepts HTTP
upgrades (optionally authenticated), keeps a registry of live connections, hands each incoming
message to a per-connection :class:`WebSocketConnection`, and pushes messages to one client
(:meth:`~WebSocketHandler.send_one`) or to all (:meth:`~WebSocketHandler.send_all`).
"""

from __future__ import annotations

from . import codec
from ._asgi import ASGIMount
from ._auth import AbstractAuthenticator, BasicAuthenticator, TokenAuthenticator
from ._backplane import BackplaneError, RedisBackplane
from ._caps import ConnectionCaps
from ._close_codes import CLOSE_CODES, CloseAdvice, should_reconnect
from ._connection import FrameAction, WebSocketConnection
from ._errors import (
    AuthenticationError,
    ConnectionClosedError,
    UnknownConnectionError,
    WebSocketHandlerError,
)
from ._extensions import DeflateAgreement, DeflateOptions
from ._handler import WebSocketHandler
from ._history import HistoryOptions, Position, Recovery, default_envelope
from ._http import HttpHandler, HttpLimits
from ._options import ConnectionLimits, ErrorBudget, RateLimit, RateLimits
from ._prometheus import PrometheusHandler
from ._pubsub import PubSubConnection
from ._registry import ConnectionRegistry
from ._server import Listener, Server, serve
from ._stats import BackplaneStats, HandlerStats
from ._types import CallContext, Request, Response
from .codec import CloseCode, Frame, Opcode

#: The one place the version is written: pyproject.toml reads it from here (setuptools
#: reads this plain assignment without importing the package).
__version__ = "0.1.0"

__all__ = [
    "CLOSE_CODES",
    "ASGIMount",
    "AbstractAuthenticator",
    "AuthenticationError",
    "BackplaneError",
    "BackplaneStats",
    "BasicAuthenticator",
    "CallContext",
    "CloseAdvice",
    "CloseCode",
    "ConnectionCaps",
    "ConnectionClosedError",
    "ConnectionLimits",
    "ConnectionRegistry",
    "DeflateAgreement",
    "DeflateOptions",
    "ErrorBudget",
    "Frame",
    "FrameAction",
    "HandlerStats",
    "HistoryOptions",
    "HttpHandler",
    "HttpLimits",
    "Listener",
    "Opcode",
    "Position",
    "PrometheusHandler",
    "PubSubConnection",
    "RateLimit",
    "RateLimits",
    "Recovery",
    "RedisBackplane",
    "Request",
    "Response",
    "Server",
    "TokenAuthenticator",
    "UnknownConnectionError",
    "WebSocketConnection",
    "WebSocketHandler",
    "WebSocketHandlerError",
    "__version__",
    "codec",
    "default_envelope",
    "serve",
    "should_reconnect",
]
