"""Where an upgrade request is admitted or refused, in order: the caps of the client's address
(429), its ``Origin`` (403), the authenticator and the cap of its user (429), the handler's
state (503 stopped or full), the opening handshake's checks (405, 400, 426), then the 101 with
the subprotocol and the extensions agreed.

The checks themselves are sans-I/O (``_caps.py``, ``_origin.py``, ``_upgrade.py``,
``_extensions.py``); this module runs them in that order for a handler (:class:`Admitting`)
and keeps a cap's slot for the connection that an accepted upgrade starts.
"""

from __future__ import annotations

from typing import Any, Protocol

import trio

from ._auth import AbstractAuthenticator
from ._caps import CapRefusal, CapsTable
from ._close_codes import should_reconnect
from ._extensions import DeflateOptions, negotiate_deflate
from ._origin import OriginCheck
from ._stats import Counters
from ._types import CallContext, Request, Response
from ._upgrade import check_upgrade, switching_protocols
from .codec import CloseCode

__all__ = ["Admission", "Admitting"]


class Admitting(Protocol):
    """What admission needs of a handler (a ``WebSocketHandler``)."""

    @property
    def auth(self) -> AbstractAuthenticator | None: ...
    @property
    def max_connections(self) -> int | None: ...
    @property
    def compression(self) -> DeflateOptions | None: ...
    @property
    def stopped(self) -> bool: ...
    @property
    def stopping_with(self) -> tuple[int, str]: ...

    def __len__(self) -> int: ...

    def select_subprotocol(self, offered: list[str]) -> str | None: ...

    def log_debug(self, msg: str, *args: object, **kwargs: Any) -> None: ...

    def log_error(self, msg: str, *args: object, **kwargs: Any) -> None: ...


class Admission:
    """The admission of one handler: its origin check and caps (either may be None)."""

    __slots__ = ("caps", "counters", "origins")

    def __init__(
        self, origins: OriginCheck | None, caps: CapsTable | None, counters: Counters
    ) -> None:
        self.origins = origins
        self.caps = caps
        self.counters = counters

    async def answer(self, handler: Admitting, cx: CallContext, hdr: Request) -> Response:
        """The answer to an upgrade request (101 accepts it)."""
        caps = self.caps
        if caps is None:
            return await self._answer(handler, cx, hdr)
        group = caps.client_group(cx.peer[0], hdr.headers)
        refusal = caps.admit(cx.id, group, trio.current_time())
        if refusal is not None:
            return self._too_many(handler, cx, refusal)
        response: Response | None = None
        try:
            response = await self._answer(handler, cx, hdr)
            return response
        finally:
            if response is None or response.code != 101 or response.close:
                caps.release(cx.id)  # no upgrade: the slot reserved for it goes
            else:
                caps.upgraded(cx.id, trio.current_time())

    def started(self, cid: str) -> None:
        """The connection of an accepted upgrade started: it keeps its slot until it ends."""
        if self.caps is not None:
            self.caps.started(cid)

    def ended(self, cid: str) -> None:
        """The connection ended, or the answer sent was not an upgrade after all (a subclass
        refused what :meth:`answer` accepted): its slot is freed."""
        if self.caps is not None:
            self.caps.release(cid)

    def _too_many(self, handler: Admitting, cx: CallContext, refusal: CapRefusal) -> Response:
        self.counters.count_cap(refusal.reason)
        handler.log_debug("upgrade from %s refused: %s", cx.peer, refusal.text)
        headers = {"Retry-After": str(refusal.retry_after)}
        return Response(429, f"too many requests: {refusal.text}", headers, close=True)

    async def _answer(self, handler: Admitting, cx: CallContext, hdr: Request) -> Response:
        if self.origins is not None:
            try:
                origin_refusal = self.origins.refusal(hdr.headers.get("origin"))
            except Exception:
                handler.log_error("origin check failed for %s", cx.peer, exc_info=True)
                return Response(500, "origin check failed: internal error", close=True)
            if origin_refusal is not None:
                text, detail = origin_refusal
                handler.log_debug("upgrade from %s refused: %s", cx.peer, detail)
                return Response(403, f"forbidden: {text}", close=True)
        auth = handler.auth
        if auth is not None:
            try:
                refusal = await auth.authenticate_request(cx.listener_id, hdr, cx)
            except Exception:
                handler.log_error("authenticator failed for %s", cx.peer, exc_info=True)
                return Response(500, "authentication failed: internal error", close=True)
            if refusal is not None:
                return refusal
        if self.caps is not None:
            too_many = self.caps.admit_user(cx.id, cx.user)
            if too_many is not None:
                return self._too_many(handler, cx, too_many)
        if handler.stopped:  # a stop the client should come back from says when (1012: soon)
            code = handler.stopping_with[0]
            retry = {"Retry-After": "1" if code == CloseCode.SERVICE_RESTART else "5"}
            return Response(
                503,
                "this WebSocket handler has been stopped",
                retry if should_reconnect(code) else {},
                close=True,
            )
        limit = handler.max_connections
        if limit is not None and len(handler) >= limit:
            return Response(
                503,
                f"too many connections (max_connections={limit})",
                {"Retry-After": "5"},
                close=True,
            )
        accept = check_upgrade(hdr)
        if isinstance(accept, Response):
            return accept
        protocol = handler.select_subprotocol(hdr.header_tokens("sec-websocket-protocol"))
        deflate = negotiate_deflate(hdr.header("sec-websocket-extensions"), handler.compression)
        return switching_protocols(accept, protocol, None if deflate is None else deflate[1])
