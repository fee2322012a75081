"""Exceptions raised by trio_wshandler."""

from __future__ import annotations


class WebSocketHandlerError(Exception):
    """Base class of every error this library raises on purpose."""


class UnknownConnectionError(WebSocketHandlerError, KeyError):
    """No live connection has the given id (``send_one``, ``stop_one``).

    A ``KeyError`` so that ``except KeyError`` keeps working; ``cid`` is the id asked for.
    """

    def __init__(self, cid: str) -> None:
        super().__init__(cid)
        self.cid = cid

    def __str__(self) -> str:
        return f"no open WebSocket connection with id {self.cid!r}"


class ConnectionClosedError(WebSocketHandlerError):
    """A message was sent on a connection that is closing or closed.

    Nothing is queued: the caller learns at once that the message will not be delivered.
    """


class AuthenticationError(WebSocketHandlerError):
    """Raised by :meth:`AbstractAuthenticator.authenticate` for bad credentials (a 401).

    Any *other* exception from an authenticator is a bug in it and gives a 500.
    """


def first_error(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The first exception at the bottom of a group (to say what went wrong: coredis and our
    tasks run in nurseries, which raise groups)."""
    exc: BaseException = group
    while isinstance(exc, BaseExceptionGroup):
        exc = exc.exceptions[0]
    return exc
