"""The handler mounted in an ASGI server: :class:`ASGIMount` is an ASGI application (Hypercorn's
Trio worker, alone or behind a dispatcher with other apps) and a Quart-Trio helper for
``@app.websocket`` routes.

A WebSocket request goes through the same admission as under ``serve()`` (the handler's
``handle_request``: caps, origin, authenticator, ...) on the scope's headers and client
address; an accepted one becomes the handler's connection (``get_connection``), in the same
registry, topics and backplane as the connections of its ``serve()`` listeners, and runs in the
ASGI server's task for it (``_mount.py``).  The mount is one listener (``listener_id``): its
timer sweep runs for the ASGI lifespan (or, in Quart-Trio, in the app's nursery); a connection
that arrives when no lifespan ran gets a sweep of its own.  Quart-Trio cancels a route when its
client leaves, so there a connection runs in the mount's nursery, and its route only waits for
it: what the client sent before it left is still delivered, and no hook is cut short.
"""

from __future__ import annotations

import importlib
from collections.abc import Awaitable, Callable, MutableMapping
from contextlib import asynccontextmanager, suppress
from typing import TYPE_CHECKING, Any, Protocol

import trio

from ._asgi_messages import (
    LastDecoded,
    accept_message,
    refusal,
    refusal_messages,
    scope_request,
)
from ._mount import LAST_WORDS_TIMEOUT, Disconnected, MountTasks, Transport
from ._timers import Timers
from ._types import CallContext, Request, Response
from .codec import CloseCode

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from ._options import ConnectionLimits

__all__ = ["LEFT_DRAIN", "ASGIMount", "Mountable"]

#: How long a Quart connection whose client left waits for a message Quart had read (there is
#: none once this passes with nothing: the client is gone).
LEFT_DRAIN = 0.05

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


class _ASGITransport:
    """A connection's way through an ASGI server: ``receive`` and ``send``."""

    __slots__ = ("_receive", "_send")

    def __init__(self, receive: Receive, send: Send) -> None:
        self._receive = receive
        self._send = send

    async def receive(self) -> str | bytes | Disconnected:
        while True:
            message = await self._receive()
            kind = message["type"]
            if kind == "websocket.receive":
                text = message.get("text")
                return text if text is not None else bytes(message.get("bytes") or b"")
            if kind == "websocket.disconnect":
                return Disconnected(int(message.get("code", 1005)))

    async def send(self, message: str | bytes) -> None:
        key = "text" if isinstance(message, str) else "bytes"
        await self._send({"type": "websocket.send", key: message})

    async def close(self, code: int, reason: str) -> None:
        await self._send({"type": "websocket.close", "code": code, "reason": reason})

    async def accept(self, message: Message) -> None:
        await self._send(message)


class _QuartTransport:
    """A connection's way through a Quart-Trio ``websocket``.  Quart reads the ASGI messages;
    when its client leaves it cancels the route (and, from Quart 0.23, its ``receive`` raises
    ``ClientDisconnectedError`` once what it read is taken), and it cancels the route when the
    server stops: :meth:`stopped` says so, and :meth:`receive` then gives what Quart had read,
    then ``Disconnected``."""

    __slots__ = ("_closed", "_gone", "_left", "_waiting", "_websocket")

    def __init__(self, websocket: Any) -> None:
        self._websocket = websocket
        self._gone = _quart_disconnected()
        self._left = False
        self._closed = False  # our Close went out: Quart would refuse any further send
        self._waiting: trio.CancelScope | None = None

    async def stopped(self) -> None:
        """Quart cancelled the route: the client left, or the server stops (it is told 1001,
        which a client that left never reads)."""
        self._left = True
        if self._waiting is not None:
            self._waiting.cancel()
        with suppress(Exception), trio.move_on_after(LAST_WORDS_TIMEOUT):
            await self.close(CloseCode.GOING_AWAY, "server is stopping")

    async def receive(self) -> str | bytes | Disconnected:
        try:
            if not self._left:
                with trio.CancelScope() as self._waiting:  # (a channel loses nothing)
                    return _message(await self._websocket.receive())
            # what Quart read before the client left: its channel's receive takes an item
            # without a checkpoint, and waits (briefly) only when there is none
            with trio.move_on_after(LEFT_DRAIN):
                return _message(await self._websocket.receive())
        except self._gone:
            pass
        return Disconnected(CloseCode.ABNORMAL_CLOSURE)

    async def send(self, message: str | bytes) -> None:
        if self._closed:
            return
        try:
            await self._websocket.send(message)
        except self._gone:
            raise trio.BrokenResourceError("the client left") from None

    async def close(self, code: int, reason: str) -> None:
        if not self._closed:
            self._closed = True
            with suppress(self._gone):  # (the client left meanwhile)
                await self._websocket.close(code, reason)

    async def accept(self, message: Message) -> None:
        headers = {
            bytes(k).decode("latin-1"): bytes(v).decode("latin-1") for k, v in message["headers"]
        }
        await self._websocket.accept(headers=headers, subprotocol=message["subprotocol"])


class _NeverRaised(Exception):
    pass


def _quart_disconnected() -> type[Exception]:
    """Quart's ``ClientDisconnectedError`` (0.23 and later), else an exception never raised."""
    base = importlib.import_module("quart.wrappers.base")
    gone = getattr(base, "ClientDisconnectedError", _NeverRaised)
    return gone if isinstance(gone, type) and issubclass(gone, Exception) else _NeverRaised


def _message(message: str | bytes | None) -> str | bytes:
    return b"" if message is None else message  # (Quart gives an empty Binary as None)


class _Accepting(Transport, Protocol):
    async def accept(self, message: Message) -> None: ...


class _Backplane(Protocol):
    @property
    def running(self) -> bool: ...

    async def check(self) -> None: ...

    async def run(self, *, task_status: trio.TaskStatus[None] = ...) -> None: ...


class Mountable(Protocol):
    """What the mount needs of a handler (a ``WebSocketHandler``)."""

    @property
    def backplane(self) -> _Backplane | None: ...
    @property
    def close_timeout(self) -> float: ...
    @property
    def heartbeat(self) -> float | None: ...
    @property
    def pong_timeout(self) -> float: ...
    @property
    def limits(self) -> ConnectionLimits: ...

    async def handle_request(self, cx: CallContext, hdr: Request, body: bytes) -> Response: ...

    def response_sent(self, status: int, cid: str = "") -> None: ...

    async def start_mounted(
        self,
        cx: CallContext,
        hdr: Request,
        transport: Transport,
        tasks: MountTasks,
        stopping: str | None = None,
    ) -> None: ...

    def stop_listener(self, listener_id: str, code: int = ...) -> None: ...

    def log_error(self, msg: str, *args: object, **kwargs: Any) -> None: ...


class ASGIMount:
    """The handler's WebSocket endpoint as an ASGI application (``handler.asgi()``).

    Serve it with Hypercorn's Trio worker (``hypercorn.trio.serve(mount, config)``), alone or
    behind a dispatcher with other applications; or, in a Quart-Trio application, call
    :meth:`init_quart` and route WebSocket requests with :meth:`serve_quart`.  Other HTTP
    requests get a 426 (put other apps next to it with Hypercorn's ``DispatcherMiddleware``,
    which also hands each its lifespan).

    ``listener_id`` names the mount as a listener (``connection.listener_id``,
    ``handler.stop_listener``).  What differs from ``serve()``: the ASGI server frames each
    message for each client (no encode-once on the wire; docs/performance.md measures it), it
    negotiates permessage-deflate itself (the handler's ``compression`` does not apply), and
    the heartbeat is the server's (:meth:`configure`): an application sees no Ping or Pong.
    """

    def __init__(
        self,
        handler: Mountable,
        *,
        listener_id: str = "asgi",
    ) -> None:
        self.handler = handler
        self.listener_id = listener_id
        self._closing = False  # aclose() began: upgrades get 503
        self._quart_apps: set[int] = set()  # (init_quart registers the app's hooks once)
        self._tasks_running: MountTasks | None = None
        self._last = LastDecoded()
        self._live = 0
        self._idle: trio.Event | None = None  # made when somebody waits for no connections

    # ---------------------------------------------------------------- ASGI

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "websocket":
            if (await receive())["type"] != "websocket.connect":
                return
            refusal = await self._websocket(scope, _ASGITransport(receive, send))
            if refusal is not None:
                http_response = "websocket.http.response" in (scope.get("extensions") or {})
                for message in refusal_messages(refusal, http_response):
                    await send(message)
        elif kind == "lifespan":
            await self._lifespan(receive, send)
        elif kind == "http":
            body = b"this is a WebSocket endpoint: send Upgrade: websocket"
            headers = [(b"content-type", b"text/plain"), (b"upgrade", b"websocket")]
            await send({"type": "http.response.start", "status": 426, "headers": headers})
            await send({"type": "http.response.body", "body": body})

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        async with trio.open_nursery() as nursery:
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    try:
                        await nursery.start(self.run)
                    except Exception as exc:  # Redis unreachable: the server does not start
                        cause: BaseException = exc
                        while isinstance(cause, BaseExceptionGroup) and len(cause.exceptions) == 1:
                            cause = cause.exceptions[0]  # (the nursery's group: what it holds)
                        failed = {"type": "lifespan.startup.failed", "message": str(cause)}
                        await send(failed)
                        return
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await self.aclose()
                    await send({"type": "lifespan.shutdown.complete"})
                    break
            nursery.cancel_scope.cancel()

    async def _websocket(
        self, scope: Scope, transport: _Accepting, detach: bool = False
    ) -> Response | None:
        """Admit and run one WebSocket request: the refusal, or None once it has ended.  With
        ``detach`` (Quart) the connection runs in the mount's nursery when it runs one."""
        handler = self.handler
        cx, hdr = scope_request(scope, self.listener_id)
        if self._closing:
            response = Response(503, "the server is stopping", {"Retry-After": "5"}, close=True)
        else:
            response = await self._answer(cx, hdr)
        if response.code != 101 or response.close:
            handler.response_sent(response.code if response.code != 101 else 403, cx.id)
            return response
        try:
            await transport.accept(accept_message(response, scope.get("subprotocols") or []))
        except BaseException:  # the server refused our accept: the request's cap slot goes
            handler.response_sent(500, cx.id)
            raise
        handler.response_sent(101, cx.id)
        tasks = self._tasks_running
        if not detach or tasks is None:
            async with self._tasks() as tasks:
                await self._run(cx, hdr, transport, tasks)
            return None
        done = trio.Event()

        async def run() -> None:
            try:
                await self._run(cx, hdr, transport, tasks)
            finally:
                done.set()

        tasks.nursery.start_soon(run)
        try:
            await done.wait()
        finally:
            if not done.is_set() and isinstance(transport, _QuartTransport):
                with trio.CancelScope(shield=True):  # Quart cancelled the route
                    await transport.stopped()
        return None

    async def _run(
        self, cx: CallContext, hdr: Request, transport: Transport, tasks: MountTasks
    ) -> None:
        self._live += 1
        try:
            stopping = "server is stopping" if self._closing else None
            await self.handler.start_mounted(cx, hdr, transport, tasks, stopping)
        finally:
            self._live -= 1
            if not self._live and self._idle is not None:
                self._idle.set()

    async def _answer(self, cx: CallContext, hdr: Request) -> Response:
        try:
            return await self.handler.handle_request(cx, hdr, b"")
        except Exception:
            self.handler.log_error("handle_request failed for %s", cx.peer, exc_info=True)
            return Response(500, "internal server error", close=True)

    # ---------------------------------------------------------------- the listener's tasks

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run the mount's tasks until cancelled: its timer sweep (idle timeouts), the writers
        of its connections, and the handler's backplane unless it runs already (as ``serve()``
        does: when Redis is unreachable this fails before any connection is accepted).  The
        ASGI lifespan runs it; :meth:`init_quart` has Quart-Trio's app nursery run it."""
        backplane = self.handler.backplane
        self._closing = False
        async with trio.open_nursery() as nursery:
            if backplane is not None and not backplane.running:
                await backplane.check()
                await nursery.start(backplane.run)
            timers = Timers()
            await nursery.start(timers.run)
            self._tasks_running = MountTasks(timers, nursery, self._last)
            try:
                task_status.started()
                await trio.sleep_forever()
            finally:
                self._tasks_running = None

    @asynccontextmanager
    async def _tasks(self) -> AsyncIterator[MountTasks]:
        if self._tasks_running is not None:
            yield self._tasks_running
            return
        async with trio.open_nursery() as nursery:  # no lifespan ran: tasks of its own
            timers = Timers()
            await nursery.start(timers.run)
            yield MountTasks(timers, nursery, self._last)
            nursery.cancel_scope.cancel()

    async def aclose(self) -> None:
        """Close the mount's connections (1001) and wait, within the handler's
        ``close_timeout``, until they have ended (the ASGI lifespan's shutdown does this).
        Upgrades are refused (503) from then on, until the mount runs again."""
        self._closing = True
        self.handler.stop_listener(self.listener_id)
        with trio.move_on_after(self.handler.close_timeout * 2):
            while self._live:
                self._idle = trio.Event()
                await self._idle.wait()
        self._idle = None

    def configure(self, config: Any, *, heartbeat: bool = True) -> None:
        """Align a ``hypercorn.Config`` with the handler.  Hypercorn's
        ``websocket_max_message_size`` becomes the handler's ``max_message_size``, so that
        Hypercorn refuses (1009) a larger message before it has buffered it.  With
        ``heartbeat`` (and the handler's ``heartbeat`` set), the heartbeat works as under
        ``serve()`` although the application sees no Ping and no Pong: Hypercorn sends a Ping
        every ``heartbeat`` seconds (``websocket_ping_interval``) and drops a connection from
        which nothing, not even the Pong, arrived for ``heartbeat + pong_timeout`` seconds
        (its ``read_timeout``; the hooks see 1006, not counted in ``heartbeat_timeouts``).
        That ``read_timeout`` bounds every connection of the Hypercorn server, HTTP ones too,
        and Hypercorn's Ping loop keeps a closed connection's socket until its next Ping:
        ``heartbeat=False`` sets neither (docs/guide.md, "Mounting under Hypercorn or
        Quart-Trio")."""
        interval = self.handler.heartbeat if heartbeat else None
        config.websocket_ping_interval = interval
        if interval is not None:
            config.read_timeout = interval + self.handler.pong_timeout
        config.websocket_max_message_size = self.handler.limits.max_message_size

    # ---------------------------------------------------------------- Quart-Trio

    def init_quart(self, app: Any, rule: str | None = None) -> None:
        """Run the mount's tasks in a Quart-Trio ``app``'s nursery while it serves, close the
        mount's connections when it stops, and, with ``rule``, route WebSocket requests to
        ``rule`` to the handler (else, or for more rules, route them yourself with
        :meth:`serve_quart`; calling it again for another rule is fine)."""
        if id(app) not in self._quart_apps:
            self._quart_apps.add(id(app))

            async def start() -> None:
                await app.nursery.start(self.run)

            app.before_serving(start)
            app.after_serving(self.aclose)
        if rule is not None:

            async def route() -> Any:
                from quart import websocket

                return await self.serve_quart(websocket)

            app.websocket(rule, endpoint=f"trio_wshandler:{self.listener_id}:{rule}")(route)

    async def serve_quart(self, websocket: Any) -> Any:
        """Serve a Quart-Trio WebSocket request with the handler: ``return await
        mount.serve_quart(websocket)`` in an ``@app.websocket`` route.  Returns the refusal as
        a Quart response (``(body, status, headers)``, as ``serve()`` would send it) when the
        handler refuses it, else None once the connection has ended."""
        refused = await self._websocket(websocket.scope, _QuartTransport(websocket), detach=True)
        if refused is None:
            return None
        status, headers, body = refusal(refused)
        return body, status, headers
