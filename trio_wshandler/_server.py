"""The server: listeners, each with its own nursery, and routing of requests to handlers.

Task tree::

    serve()                      the server's nursery
    └── Listener.run             one per listener: its own cancel scope and nursery
        ├── flusher, timers      shared by its connections (``_listener_tasks.py``), drain
        │                        tasks for backed-up sockets, TLS connections' writer tasks
        ├── accept loops         one per socket, in the accept scope
        └── _handle_stream       one per accepted TCP/TLS stream (nothing it raises escapes)
            ├── HTTP phase       (_http.serve_http, in a per-stream handshake scope)
            └── handler.start    after a 101: the connection's reader

``stop_listener`` cancels the accept scope first (no new connections), cancels streams still in
the HTTP phase, sends Close 1001 to the listener's WebSocket connections and puts a deadline on
the listener's scope as a backstop; the listener's nursery ends once they are all gone.  A
stream whose 101 went out as the listener stopped is still handed to its handler, to be closed
with 1001 at once.
"""

from __future__ import annotations

import errno
import itertools
import logging
import math
import ssl
from collections.abc import Callable, Mapping

import trio

from ._http import HttpHandler, HttpLimits, Upgrade, UpgradeHandler, serve_http
from ._ids import new_connection_id
from ._listener_tasks import ListenerTasks, open_listener_tasks
from ._types import CallContext, Request

__all__ = ["Listener", "Server", "serve"]

logger = logging.getLogger("trio_wshandler.server")

#: Seconds between two attempts to accept while the process is out of descriptors or memory.
ACCEPT_RETRY_DELAY = 0.1
#: Seconds between two warnings about failing ``accept`` calls (each with a count).
ACCEPT_ERROR_LOG_INTERVAL = 10.0
_ACCEPT_CAPACITY_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS})

_listener_numbers = itertools.count(1)


def _address(sockaddr: object) -> tuple[str, int]:
    if isinstance(sockaddr, tuple) and len(sockaddr) >= 2:
        return str(sockaddr[0]), int(sockaddr[1])
    return str(sockaddr), 0


def _sock_address(sock: trio.socket.SocketType | None, which: str) -> tuple[str, int]:
    """The socket's local or peer address, or ("", 0) when it has none (a peer that reset at
    once leaves the socket unconnected: ``getpeername`` fails with ENOTCONN)."""
    if sock is None:
        return "", 0
    try:
        return _address(getattr(sock, which)())
    except OSError:
        return "", 0


def _socket_of(stream: trio.abc.Stream) -> trio.socket.SocketType | None:
    while isinstance(stream, trio.SSLStream):
        stream = stream.transport_stream
    return stream.socket if isinstance(stream, trio.SocketStream) else None


class Listener:
    """One listening address of a :class:`Server`, with its own nursery of connections."""

    def __init__(
        self,
        server: Server,
        listener_id: str,
        listeners: list[trio.SocketListener],
        ssl_context: ssl.SSLContext | None,
        *,
        on_closed: Callable[[str], None] = lambda listener_id: None,
    ) -> None:
        self.server = server
        self._on_closed = on_closed  # told this listener's id once it has closed
        self.id = listener_id
        self.ssl = ssl_context is not None
        self._ssl_context = ssl_context
        self._sockets = listeners
        host, port = _address(listeners[0].socket.getsockname())
        self.host = host
        self.port = port
        self._scope = trio.CancelScope()
        self._accept_scope = trio.CancelScope()
        self._handshakes: set[trio.CancelScope] = set()
        self._stopped = False
        self._tasks: ListenerTasks | None = None
        self.closed = trio.Event()

    def __repr__(self) -> str:
        return f"<Listener {self.id} {'wss' if self.ssl else 'ws'}://{self.host}:{self.port}>"

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Accept and serve until stopped (:meth:`Server.add_listener` runs it)."""
        try:
            with self._scope:
                # the flusher and timers outlive the connections, which need them to the end
                async with open_listener_tasks() as self._tasks, trio.open_nursery() as nursery:
                    listeners: list[trio.abc.Listener[trio.abc.Stream]] = list(self._sockets)
                    if self._ssl_context is not None:
                        listeners = [
                            trio.SSLListener(s, self._ssl_context, https_compatible=True)
                            for s in self._sockets
                        ]
                    nursery.start_soon(self._accept, listeners, nursery)
                    task_status.started()
        finally:
            for sock in self._sockets:
                await trio.aclose_forcefully(sock)
            self._on_closed(self.id)
            self.closed.set()

    async def _accept(
        self, listeners: list[trio.abc.Listener[trio.abc.Stream]], nursery: trio.Nursery
    ) -> None:
        with self._accept_scope:
            async with trio.open_nursery() as accept_nursery:
                for listener in listeners:
                    accept_nursery.start_soon(self._accept_loop, listener, nursery)
        for sock in self._sockets:  # stop accepting at once, before connections finish closing
            await trio.aclose_forcefully(sock)

    async def _accept_loop(
        self, listener: trio.abc.Listener[trio.abc.Stream], nursery: trio.Nursery
    ) -> None:
        """Accept streams and start a task for each, in the listener's nursery.

        Trio's ``serve_listeners`` logs a traceback for every failed ``accept`` while the process
        is out of file descriptors (ten a second); here that condition is logged as one warning
        per ``ACCEPT_ERROR_LOG_INTERVAL`` with a count, and accepting is retried every
        ``ACCEPT_RETRY_DELAY`` seconds until descriptors are free again.
        """
        failures = 0
        next_report = -math.inf
        while True:
            try:
                stream = await listener.accept()
            except OSError as exc:
                if exc.errno not in _ACCEPT_CAPACITY_ERRNOS:
                    raise
                failures += 1
                now = trio.current_time()
                if now >= next_report:
                    logger.warning(
                        "%r: accept failed %d time(s) since the last report: %s (out of file"
                        " descriptors or memory?); retrying every %s s",
                        self,
                        failures,
                        exc,
                        ACCEPT_RETRY_DELAY,
                    )
                    failures = 0
                    next_report = now + ACCEPT_ERROR_LOG_INTERVAL
                await trio.sleep(ACCEPT_RETRY_DELAY)
                continue
            if failures:
                logger.warning("%r: accepting again (%d more failure(s))", self, failures)
                failures, next_report = 0, -math.inf
            nursery.start_soon(self._handle_stream, stream)

    async def _handle_stream(self, stream: trio.abc.Stream) -> None:
        """Serve one accepted stream; nothing it does (or fails to do) may end the listener.

        Every exception is logged here and the stream closed: a peer can reset before its
        address is read (``getpeername`` fails with ENOTCONN), during the handshake, or at any
        time after.
        """
        cid = new_connection_id()
        sock = _socket_of(stream)
        peer = _sock_address(sock, "getpeername")
        try:
            upgrade = await self._http_phase(stream, cid, _sock_address(sock, "getsockname"), peer)
            if upgrade is not None:
                # the client has its 101: from here on it is a WebSocket connection, closed
                # with a Close frame (1001 if this listener stopped meanwhile), never dropped
                await upgrade.handler.start(
                    self.id,
                    upgrade.cx,
                    upgrade.request,
                    stream,
                    initial_data=upgrade.trailing,
                    stopping="listener is stopping" if self._stopped else None,
                    tasks=self._tasks,
                    extensions=upgrade.extensions,
                )
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        except Exception:
            logger.error("connection %s from %s failed", cid, peer, exc_info=True)
        finally:
            with trio.CancelScope(shield=True):
                await trio.aclose_forcefully(stream)

    async def _http_phase(
        self, stream: trio.abc.Stream, cid: str, local: tuple[str, int], peer: tuple[str, int]
    ) -> Upgrade | None:
        """Answer requests until one is upgraded (returned; its 101 was sent) or the stream ends.

        A function of its own so that its frame, and what it holds, is gone once the connection
        runs."""
        server = self.server
        scheme = "https" if self.ssl else "http"

        def make_cx(request: Request) -> CallContext:
            host = request.header("host") or f"{local[0]}:{local[1]}"
            return CallContext(
                id=cid,
                listener_id=self.id,
                local=local,
                peer=peer,
                url=f"{scheme}://{host}{request.raw_target}",
                ssl=self.ssl,
            )

        with trio.CancelScope() as handshake:
            self._handshakes.add(handshake)
            try:
                return await serve_http(
                    stream,
                    route=server.route,
                    make_cx=make_cx,
                    limits=server.limits,
                    on_error=lambda message: logger.error("%s: %s", cid, message, exc_info=True),
                    on_debug=lambda message: logger.debug("%s from %s: %s", cid, peer, message),
                )
            finally:
                self._handshakes.discard(handshake)
        return None  # the handshake scope was cancelled (the listener is stopping)

    def stop(self) -> None:
        """Stop accepting, close this listener's connections (1001), bounded in time."""
        if self._stopped:
            return
        self._stopped = True
        self._accept_scope.cancel()
        for handshake in list(self._handshakes):
            handshake.cancel()
        grace = 1.0
        for handler in self.server.handlers():
            if isinstance(handler, UpgradeHandler):
                handler.stop_listener(self.id)
                grace = max(grace, handler.close_timeout * 2 + 1)
        self._scope.deadline = trio.current_time() + grace


class Server:
    """Routes requests by path to handlers and owns the listeners.

    ``handlers`` is one handler (serving every path) or a mapping ``{path: handler}``; the key
    ``"*"`` is the fallback for other paths, and a path nobody serves gets a 404.  A handler is a
    :class:`WebSocketHandler` or any object with ``async handle_request(cx, hdr, body)``.
    """

    def __init__(
        self,
        handlers: HttpHandler | Mapping[str, HttpHandler],
        *,
        limits: HttpLimits | None = None,
    ) -> None:
        if isinstance(handlers, Mapping):
            self._routes: dict[str, HttpHandler] = dict(handlers)
        else:
            self._routes = {"*": handlers}
        for path, handler in self._routes.items():
            if not hasattr(handler, "handle_request"):
                raise TypeError(f"handler for {path!r} has no handle_request(): {handler!r}")
        self.limits = limits or HttpLimits()
        self._listeners: dict[str, Listener] = {}
        self._nursery: trio.Nursery | None = None

    def route(self, path: str) -> HttpHandler | None:
        handler = self._routes.get(path)
        return self._routes.get("*") if handler is None else handler

    def handlers(self) -> list[HttpHandler]:
        return list({id(h): h for h in self._routes.values()}.values())

    @property
    def listeners(self) -> dict[str, Listener]:
        """The running listeners by id."""
        return dict(self._listeners)

    @property
    def port(self) -> int:
        """The port of the first listener (handy with port 0)."""
        return next(iter(self._listeners.values())).port

    async def add_listener(
        self,
        host: str | None = "127.0.0.1",
        port: int = 0,
        *,
        ssl_context: ssl.SSLContext | None = None,
        listener_id: str | None = None,
        reuse_port: bool = False,
    ) -> Listener:
        """Bind ``host:port`` and start accepting; returns the running :class:`Listener`.

        ``reuse_port`` sets ``SO_REUSEPORT``: several processes then listen on the same port
        and the kernel spreads the connections between them (Linux, the BSDs, macOS).
        """
        if self._nursery is None:
            raise RuntimeError("the server is not running (use serve() or Server.run())")
        lid = listener_id or f"L{next(_listener_numbers)}"
        if lid in self._listeners:
            raise ValueError(f"listener id {lid!r} is already in use")
        if reuse_port:
            sockets = await _reuse_port_listeners(host, port)
        else:
            sockets = await trio.open_tcp_listeners(port, host=host)
        listener = Listener(self, lid, sockets, ssl_context, on_closed=self._forget)
        self._listeners[lid] = listener
        await self._nursery.start(listener.run)
        return listener

    def _forget(self, listener_id: str) -> None:
        self._listeners.pop(listener_id, None)

    def stop_listener(self, listener_id: str) -> None:
        """Stop one listener and close the WebSocket connections it accepted (1001)."""
        try:
            listener = self._listeners[listener_id]
        except KeyError:
            raise KeyError(f"no listener {listener_id!r}; have {sorted(self._listeners)}") from None
        listener.stop()

    def stop(self) -> None:
        """Stop every listener; ``serve()`` returns when they have all closed."""
        for listener in list(self._listeners.values()):
            listener.stop()

    async def run(
        self,
        host: str | None = "127.0.0.1",
        port: int = 0,
        *,
        ssl_context: ssl.SSLContext | None = None,
        reuse_port: bool = False,
        task_status: trio.TaskStatus[Server] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Run with one listener until every listener has stopped.

        A handler's backplane (``handler.backplane``) is started first, unless it runs
        already: when Redis is unreachable this fails before any connection is accepted.
        """
        to_start = [
            backplane
            for handler in self.handlers()
            if isinstance(handler, UpgradeHandler)
            and (backplane := handler.backplane) is not None
            and not backplane.running
        ]
        for backplane in to_start:  # outside any nursery: its error is raised as it is
            await backplane.check()
        async with trio.open_nursery() as backplanes:
            for backplane in to_start:
                await backplanes.start(backplane.run)
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                await self.add_listener(host, port, ssl_context=ssl_context, reuse_port=reuse_port)
                task_status.started(self)
            self._nursery = None
            backplanes.cancel_scope.cancel()  # every listener has stopped


async def serve(
    handler: HttpHandler | Mapping[str, HttpHandler],
    host: str | None = "127.0.0.1",
    port: int = 0,
    *,
    ssl_context: ssl.SSLContext | None = None,
    limits: HttpLimits | None = None,
    reuse_port: bool = False,
    task_status: trio.TaskStatus[Server] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``handler`` (or ``{path: handler}``) on ``host:port``.

    Use as ``server = await nursery.start(serve, handler, "127.0.0.1", 0)``: ``server.port`` is
    the bound port.  Returns when every listener has been stopped (``server.stop()``), or
    runs until cancelled.  ``reuse_port``: see :meth:`Server.add_listener`.
    """
    await Server(handler, limits=limits).run(
        host, port, ssl_context=ssl_context, reuse_port=reuse_port, task_status=task_status
    )


async def _reuse_port_listeners(host: str | None, port: int) -> list[trio.SocketListener]:
    """Listening sockets with SO_REUSEPORT on every address of ``host`` (as
    ``trio.open_tcp_listeners`` binds them, which cannot set that option)."""
    if not hasattr(trio.socket, "SO_REUSEPORT"):
        raise OSError(errno.ENOPROTOOPT, "SO_REUSEPORT is not available on this system")
    infos = await trio.socket.getaddrinfo(
        host, port, type=trio.socket.SOCK_STREAM, flags=trio.socket.AI_PASSIVE
    )
    listeners = []
    try:
        for family, kind, proto, _, address in infos:
            sock = trio.socket.socket(family, kind, proto)
            try:
                sock.setsockopt(trio.socket.SOL_SOCKET, trio.socket.SO_REUSEADDR, 1)
                sock.setsockopt(trio.socket.SOL_SOCKET, trio.socket.SO_REUSEPORT, 1)
                if family == trio.socket.AF_INET6:
                    sock.setsockopt(trio.socket.IPPROTO_IPV6, trio.socket.IPV6_V6ONLY, 1)
                await sock.bind(address)
                sock.listen(4096)
            except OSError:
                sock.close()
                raise
            listeners.append(trio.SocketListener(sock))
    except OSError:
        for listener in listeners:
            await listener.aclose()
        raise
    return listeners
