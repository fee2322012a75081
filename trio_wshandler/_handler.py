"""The handler: upgrade validation, the registry of live connections, and fan-out.

:class:`WebSocketHandler` is the seed's ``WebSocketHandler``: its options, the checks of the
upgrade, and the public API of sending and stopping.  What it shares with its connections and
its backplane (the registry, the topics, fan-out, the counters, the route to other processes)
is its ``_hub.Hub``.  It owns no task of its own: each upgraded connection runs in its
listener's nursery (``_server.py``), inside :meth:`WebSocketHandler.start`
(``_lifecycle.py``).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import trio

from ._admission import Admission
from ._asgi import ASGIMount
from ._auth import AbstractAuthenticator
from ._backplane import RedisBackplane
from ._caps import CapsTable, ConnectionCaps
from ._connection import WebSocketConnection
from ._extensions import DeflateOptions
from ._history import HistoryLike, ProcessHistory
from ._hub import Hub
from ._lifecycle import prepare_connection, refuse_after_101, start_upgraded
from ._listener_tasks import ListenerTasks
from ._mount import MountTasks, Transport, start_in_mount
from ._options import (
    ConnectionLimits,
    HandlerSettings,
    RateLimits,
    SlowConsumerPolicy,
    positive,
)
from ._origin import OriginCheck, OriginsLike
from ._registry import ConnectionRegistry
from ._stats import HandlerStats
from ._topics import check_topic
from ._types import CallContext, Request, Response
from .codec import CloseCode, DataLike, validate_close_code

if TYPE_CHECKING:
    from ._core import ConnectionCore

__all__ = ["WebSocketHandler"]

#: the defaults of the connection limits are :class:`ConnectionLimits`'s
_DEFAULT_LIMITS = ConnectionLimits()


class WebSocketHandler(HandlerSettings):
    """Accepts WebSocket upgrades and keeps the registry of live connections.

    Options (all keyword-only; a bad value raises ``TypeError``/``ValueError`` naming it):

    ``auth``
        an :class:`AbstractAuthenticator`; ``None`` accepts everyone.
    ``heartbeat`` (20.0 s, > 0 or None to disable)
        send a Ping after this many seconds without input from the client.
    ``heartbeat_message`` ("heartbeat", at most 125 bytes)
        the heartbeat Ping's payload.
    ``pong_timeout`` (20.0 s)
        close with 1011 when a heartbeat Ping is not answered within this time.
    ``max_message_size``, ``max_fragments``, ``max_queue``, ``max_queue_bytes``
        the bounds each connection is made with: its largest incoming message (1 MiB; 1009
        beyond), the most frames in one incoming message (4096; 1009 beyond), and its send
        queue's bounds (4096 frames, 1 MiB); see :class:`ConnectionLimits`, where they are
        checked and documented (``handler.limits``).
    ``slow_consumer`` ("close")
        what happens when a message does not fit in a client's send queue: ``"close"`` closes
        that client with 1013 "slow consumer"; ``"drop"`` drops the message for that client
        only and counts it in ``connection.dropped_messages``.  Both log a warning.
    ``send_timeout`` (30.0 s, or None)
        a client whose socket accepts no data for this long is disconnected.
    ``close_timeout`` (5.0 s)
        how long a closing handshake (and the hooks after it) may take.
    ``idle_timeout`` (None: never)
        close (1001 "idle timeout") a connection that has sent no message for this long; Pings
        and Pongs do not count.  Setting it applies to live connections.
    ``max_connections`` (None: unlimited)
        upgrades beyond this many live connections get a 503.
    ``subprotocols`` (none)
        subprotocols this handler speaks, in order of preference.
    ``compression`` (``DeflateOptions()``: on)
        permessage-deflate (RFC 7692) for clients that offer it, as every browser does; the
        settings and their costs are on :class:`DeflateOptions`.  ``None`` declines it.
        ``send_all`` compresses a message once per window size in use, not once per client.
    ``origins`` (None: no check)
        the ``Origin`` values allowed to upgrade (``"https://app.example"``), and/or callables
        given the normalized origin that return True to allow it; or one callable.  A request
        from another origin gets 403 before any authenticator runs.  Requests without an
        ``Origin`` header (non-browser clients) are allowed unless ``require_origin``.
    ``require_origin`` (False)
        with ``origins``: refuse (403) requests that carry no ``Origin`` header.
    ``backplane`` (None)
        a :class:`RedisBackplane`: ``send_all``, ``publish``, ``send_one`` and ``stop_one``
        then reach the clients of every process (docs/scaling.md).
    ``history`` (None)
        the topics that keep a history of their publications, so that a client that comes back
        gets what it missed (:meth:`WebSocketConnection.subscribe_from`): a mapping of topic
        names to :class:`HistoryOptions`, or a function of the name that returns one or None.
        Kept in this process's memory, or with a ``backplane`` in Redis (one history per topic
        for the whole cluster; docs/guide.md, "Topic history with the Redis backplane").
    ``caps`` (None)
        a :class:`ConnectionCaps`: connections and upgrade attempts per client address,
        connections per user; refused with 429 and ``Retry-After`` (docs/guide.md, "Caps").
    ``rate_limits`` (None)
        a :class:`RateLimits`: token buckets on what each client sends (messages, bytes), what
        happens when one is empty ("delay", "drop" or "close" with 1008), and an error budget;
        ``connection.rate_limits`` overrides it for one connection (docs/guide.md, "Rate
        limits").
    ``name`` ("websocket")
        what :meth:`stats` and the ``handler`` label of Prometheus metrics call this handler.
    ``logger``
        a ``logging.Logger``; default ``logging.getLogger("trio_wshandler")``.
    """

    def __init__(
        self,
        auth: AbstractAuthenticator | None = None,
        *,
        heartbeat: float | None = 20.0,
        heartbeat_message: str | bytes = "heartbeat",
        pong_timeout: float = 20.0,
        max_message_size: int = _DEFAULT_LIMITS.max_message_size,
        max_fragments: int = _DEFAULT_LIMITS.max_fragments,
        max_queue: int = _DEFAULT_LIMITS.max_queue,
        max_queue_bytes: int = _DEFAULT_LIMITS.max_queue_bytes,
        slow_consumer: SlowConsumerPolicy = "close",
        send_timeout: float | None = 30.0,
        close_timeout: float = 5.0,
        idle_timeout: float | None = None,
        max_connections: int | None = None,
        subprotocols: Sequence[str] = (),
        compression: DeflateOptions | None = DeflateOptions(),  # noqa: B008 (frozen)
        origins: OriginsLike | None = None,
        require_origin: bool = False,
        backplane: RedisBackplane | None = None,
        history: HistoryLike | None = None,
        caps: ConnectionCaps | None = None,
        rate_limits: RateLimits | None = None,
        name: str = "websocket",
        logger: logging.Logger | None = None,
    ) -> None:
        if auth is not None and not isinstance(auth, AbstractAuthenticator):
            raise TypeError(f"auth must be an AbstractAuthenticator or None, not {auth!r}")
        if logger is not None and not isinstance(logger, logging.Logger):
            raise TypeError(f"logger must be a logging.Logger or None, not {logger!r}")
        if isinstance(subprotocols, str) or not all(isinstance(p, str) for p in subprotocols):
            raise TypeError("subprotocols must be a sequence of str")
        if not isinstance(name, str):
            raise TypeError(f"name must be a str, not {name!r}")
        if not name:
            raise ValueError("name must not be empty")
        super().__init__(
            heartbeat=heartbeat,
            heartbeat_message=heartbeat_message,
            pong_timeout=pong_timeout,
            limits=ConnectionLimits(
                max_message_size=max_message_size,
                max_fragments=max_fragments,
                max_queue=max_queue,
                max_queue_bytes=max_queue_bytes,
            ),
            slow_consumer=slow_consumer,
            send_timeout=send_timeout,
            close_timeout=close_timeout,
            idle_timeout=idle_timeout,
            rate_limits=rate_limits,
        )
        self.auth = auth
        #: what :meth:`stats` and Prometheus (the ``handler`` label) call this handler
        self.name = name
        self.max_connections: int | None = positive(
            "max_connections", max_connections, allow_none=True, integer=True
        )
        self.subprotocols: tuple[str, ...] = tuple(subprotocols)
        if compression is not None and not isinstance(compression, DeflateOptions):
            raise TypeError(f"compression must be a DeflateOptions or None, not {compression!r}")
        self._compression = compression
        if origins is None and require_origin:
            raise ValueError("require_origin needs origins (the origins to allow)")
        if caps is not None and not isinstance(caps, ConnectionCaps):
            raise TypeError(f"caps must be a ConnectionCaps or None, not {caps!r}")
        origin_check = None if origins is None else OriginCheck.build(origins, require_origin)
        self.logger = logger if logger is not None else logging.getLogger("trio_wshandler")
        self._hub = Hub(self, compression)
        self._counters = self._hub.counters
        self._admission = Admission(
            origin_check, None if caps is None else CapsTable(caps), self._counters
        )
        self._registry: ConnectionRegistry[WebSocketConnection] = self._hub.registry
        if history is not None:
            self._hub.keep_history(ProcessHistory(history))
        #: the :class:`RedisBackplane` that connects this handler to other processes, or None
        self.backplane: RedisBackplane | None = None
        if backplane is not None:
            self.use_backplane(backplane)
        self._stopped = False
        #: the Close that stop() gave (and gives a connection whose upgrade raced it)
        self.stopping_with: tuple[int, str] = (CloseCode.GOING_AWAY, "server is stopping")

    def use_backplane(self, backplane: RedisBackplane) -> None:
        """Connect this handler to other processes (as ``backplane=`` does); call it before
        the handler serves, e.g. for a handler made by a factory (``python -m trio_wshandler
        serve --redis``)."""
        if not isinstance(backplane, RedisBackplane):
            raise TypeError(f"backplane must be a RedisBackplane, not {backplane!r}")
        if self.backplane is not None or self._registry:
            raise RuntimeError("a backplane is set before the handler serves, and only once")
        self._hub.connect(backplane)
        self.backplane = backplane

    def use_caps(self, caps: ConnectionCaps) -> None:
        """Cap what one client may open (as ``caps=`` does); before the handler serves (the
        command line's ``serve --max-per-address ...`` sets it on a factory's handler)."""
        if not isinstance(caps, ConnectionCaps):
            raise TypeError(f"caps must be a ConnectionCaps, not {caps!r}")
        if self._registry:
            raise RuntimeError("caps are set before the handler serves")
        self._admission.caps = CapsTable(caps)

    # ---------------------------------------------------------------- settings

    @property
    def compression(self) -> DeflateOptions | None:
        """The permessage-deflate settings (read-only: live connections were negotiated with
        them, and the handler's compressors are built from them)."""
        return self._compression

    def _settings_changed(self) -> None:
        for entry in self._registry.entries():
            entry.settings_changed()

    # ---------------------------------------------------------------- the upgrade

    async def handle_request(self, cx: CallContext, hdr: Request, body: bytes) -> Response:
        """Validate an upgrade request and answer it: 101 accepts it.

        Checks the ``caps`` of the client's address first (429), then the ``Origin`` (403;
        see ``origins``), then runs the authenticator (a crash in either is a 500) and checks
        the cap of its user (429).  Then: 503 once stopped or full; then the checks of the
        opening handshake (``_upgrade.check_upgrade``: 405, 400 or 426).  Subclasses call
        ``await super().handle_request(...)`` and add checks or headers (``with_headers``).
        """
        return await self._admission.answer(self, cx, hdr)

    def response_sent(self, status: int, cid: str = "") -> None:
        """The server sent this handler's answer to request ``cid`` (101: the upgrade went
        out): counted in :meth:`stats` (``upgrades``, ``refused``).  Any other answer frees
        the request's cap slot (a subclass may refuse what ``super()`` accepted)."""
        self._counters.response(status)
        if status != 101 and cid:
            self._admission.ended(cid)

    def select_subprotocol(self, offered: list[str]) -> str | None:
        """The subprotocol to accept among those the client offered (first of ours it offers)."""
        for protocol in self.subprotocols:
            if protocol.lower() in offered:
                return protocol
        return None

    def get_connection(self, cx: CallContext, hdr: Request, cid: str) -> WebSocketConnection:
        """Factory hook: the connection object for a new upgrade (override for a subclass)."""
        return WebSocketConnection(self, cx, hdr, cid)

    async def deregister_connection(self, connection: WebSocketConnection) -> None:
        """Hook: ``connection`` has ended; called once, before its ``connection_closed``."""

    async def start(
        self,
        listener_id: str,
        cx: CallContext,
        hdr: Request,
        stream: trio.abc.Stream,
        *,
        initial_data: bytes = b"",
        stopping: str | None = None,
        tasks: ListenerTasks | None = None,
        extensions: str | None = None,
    ) -> None:
        """Run one upgraded connection until it ends (the seed's ``startImpl``).

        The server calls it after sending the 101; ``initial_data`` is anything the client sent
        after its request head.  Creates the connection with :meth:`get_connection`,
        registers it, calls ``registered()`` and handles it until it closes.  ``stopping`` (a
        reason) says that its listener stopped while the 101 was on its way: the connection
        still runs its hooks, and is closed with 1001 and that reason at once.  ``tasks`` are
        the listener's flusher and timer sweep; without them (a call from outside a listener)
        the connection gets a pair of its own.  ``extensions`` is the 101 response's
        ``Sec-WebSocket-Extensions`` value: the extensions in force (permessage-deflate);
        None (a call from outside a listener) means what :meth:`handle_request` would have
        answered to ``hdr``.
        """
        core = self._connection_for(cx, hdr)
        if core is None:
            await refuse_after_101(stream, self.close_timeout)
            return
        prepare_connection(core, cx, hdr, stopping=stopping, extensions=extensions)
        await start_upgraded(core, self._admission, stream, initial_data, tasks)

    async def start_mounted(
        self,
        cx: CallContext,
        hdr: Request,
        transport: Transport,
        tasks: MountTasks,
        stopping: str | None = None,
    ) -> None:
        """Run one connection accepted through an ASGI server (:class:`ASGIMount` calls it after
        ``websocket.accept``) as :meth:`start` does after a 101 (``stopping``: closed at once)."""
        core = self._connection_for(cx, hdr)
        await start_in_mount(core, cx, hdr, self._admission, transport, tasks, stopping)

    def _connection_for(self, cx: CallContext, hdr: Request) -> ConnectionCore[Any] | None:
        """The state of the connection that :meth:`get_connection` makes (None: it failed)."""
        try:
            connection = self.get_connection(cx, hdr, cx.id)
            if not isinstance(connection, WebSocketConnection):
                raise TypeError(
                    f"get_connection() must return a WebSocketConnection, not {connection!r}"
                )
        except Exception:
            self.log_error("get_connection() failed for %s", cx.peer, exc_info=True)
            self._admission.ended(cx.id)
            return None
        # the one place the handler reaches into a connection: the user's object's state
        return connection._core

    def asgi(self, *, listener_id: str = "asgi") -> ASGIMount:
        """This handler as an ASGI application, for Hypercorn's Trio worker or Quart-Trio
        (:class:`ASGIMount`; docs/guide.md, "Mounting under Hypercorn or Quart-Trio")."""
        return ASGIMount(self, listener_id=listener_id)

    # ---------------------------------------------------------------- sending

    def send_all(self, data: DataLike) -> int:
        """Send a message to every open connection; returns how many it was queued on.

        The message is encoded once and the same frame bytes are queued on every connection
        (with compression: compressed once per window size in use, and the same compressed
        frame queued on every client that negotiated that size); nothing awaits the network.
        A client whose queue is full gets the slow-consumer policy.  No connections is not an
        error.
        With a backplane it also goes to every client of every other process (each process
        encodes it once for its own clients); the count is of this process's clients.
        """
        self._counters.broadcasts += 1
        return self._hub.send_all(data)

    def publish(self, topic: str, data: DataLike) -> int:
        """Send a message to the connections subscribed to ``topic``; returns how many it was
        queued on.  Encoded (and compressed) once, like :meth:`send_all`; costs in proportion
        to the topic's subscribers.  A topic nobody subscribes to is not an error.  With a
        backplane it also goes to the topic's subscribers in every other process; the count
        is of this process's."""
        check_topic(topic)
        self._counters.publishes += 1
        return self._hub.publish(topic, data)

    def topic_size(self, topic: str) -> int:
        """How many connections of this process are subscribed to ``topic``."""
        return self._hub.topics.size(topic)

    def topics(self) -> list[str]:
        """The topics with at least one subscriber in this process."""
        return self._hub.topic_names()

    def send_one(self, cid: str, data: DataLike) -> None:
        """Send a message to the connection with id ``cid``.

        With a backplane, a connection of another process gets it through Redis.

        :raises UnknownConnectionError: no live connection has that id (with a backplane: in
            no process, as far as this one knows: see docs/scaling.md for the window).
        :raises ConnectionClosedError: it is closing, or its queue is full (``"close"`` policy).
        """
        self._hub.send_one(cid, data)

    def connection(self, cid: str) -> WebSocketConnection:
        """The live connection with id ``cid`` (raises :class:`UnknownConnectionError`)."""
        return self._registry.get(cid)

    @property
    def registry(self) -> ConnectionRegistry[WebSocketConnection]:
        """The live connections by id, in registration order (iterate, ``len``, ``in``)."""
        return self._registry

    def connection_ids(self) -> list[str]:
        """Ids of the live connections, oldest first."""
        return self._registry.ids()

    def __len__(self) -> int:
        return len(self._registry)

    def stats(self) -> HandlerStats:
        """A frozen snapshot of this handler's counters and state (:class:`HandlerStats`).

        The counters are plain ints kept as things happen; the queue sizes are summed over the
        live connections here, so a call costs in proportion to them (about a millisecond per
        10,000 connections): call it when asked (a scrape), not per message.
        """
        queues = (entry.queue for entry in self._registry.entries())
        return HandlerStats.take(self.name, self._counters, queues, self.backplane)

    # ---------------------------------------------------------------- stopping

    def stop_one(self, cid: str, code: int = CloseCode.GOING_AWAY, reason: str = "") -> None:
        """Close one connection (Close ``code``, default 1001), in any process with a
        backplane (:raises UnknownConnectionError: as :meth:`send_one`)."""
        validate_close_code(code)
        self._hub.stop_one(cid, code, reason)

    async def cluster_connection_count(self) -> int:
        """Live connections in every process (asks Redis); without a backplane, ``len(self)``."""
        if self.backplane is None:
            return len(self._registry)
        return await self.backplane.cluster_connection_count()

    def stop(self, code: int = CloseCode.GOING_AWAY, reason: str = "server is stopping") -> None:
        """Stop the handler: refuse new upgrades (503, with ``Retry-After`` when ``code`` is
        one to reconnect after: 1 s for 1012, else 5 s) and close every live connection with
        ``code`` (1001).  Returns at once; ``await wait_stopped()`` waits for them to end."""
        validate_close_code(code)
        self._stopped = True
        self.stopping_with = (code, reason)
        for connection in self._registry.snapshot():
            connection.stop(code, reason)

    def stop_listener(self, listener_id: str, code: int = CloseCode.GOING_AWAY) -> None:
        """Close the connections accepted by one listener (used by ``Server.stop_listener``)."""
        for connection in self._registry.snapshot():
            if connection.cx.listener_id == listener_id:
                connection.stop(code, "listener is stopping")

    @property
    def stopped(self) -> bool:
        return self._stopped

    async def wait_stopped(self) -> None:
        """Wait until no connection is left (each within ``close_timeout`` of its stop)."""
        await self._registry.wait_empty()

    async def aclose(self) -> None:
        """``stop()`` and wait until every connection has ended."""
        self.stop()
        await self.wait_stopped()
