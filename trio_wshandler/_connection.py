"""One WebSocket connection: the object user code subclasses, with its hooks and sending API.

Its state is kept apart, in a ``_core.ConnectionCore`` that this object holds and delegates to,
so that a subclass's attributes never meet ours.  The connection runs in one task, its reader
(``_reader.py``), started by ``_lifecycle.run_connection`` after the 101; everything else it
needs is shared by its listener (``_listener_tasks.py``): the **flusher** writes its queued
frames, a **drain** task of its own exists only while its socket is backed up (``_flusher.py``),
the **timer sweep** sends its heartbeat Pings and fires its Pong and idle timeouts
(``_timers.py``).  A TLS connection keeps a **writer** task of its own (``_writer.py``).

Closing from our side (``stop()``, a protocol error, a failing hook, a slow consumer) queues a
Close frame and gives the peer ``close_timeout`` seconds to answer.  Whatever way the connection
ends, the socket is closed and ``deregister_connection`` then ``connection_closed`` run exactly
once, shielded and bounded.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import trio

from ._core import ConnectionCore
from ._history import Position, Recovery
from ._options import RateLimit, RateLimits
from ._reader import FrameAction
from ._recovery import subscribe_from
from ._state import OPEN
from ._throttle import spend_budget
from ._types import CallContext, Request
from .codec import CloseCode, DataLike, Frame, Opcode, encode_message

if TYPE_CHECKING:
    from ._extensions import DeflateAgreement
    from ._handler import WebSocketHandler

__all__ = ["FrameAction", "WebSocketConnection"]

#: the opcodes whose final frame (fin) ends a data message
_DATA_OPCODES = frozenset({Opcode.TEXT, Opcode.BINARY, Opcode.CONTINUATION})


class WebSocketConnection:
    """One client connection (the seed's ``WebSocketConnection``).

    Subclass it, override the hooks, and return instances from
    :meth:`WebSocketHandler.get_connection`.  The sending methods never block and never await
    the network: frames go to the connection's bounded send queue, written by its listener's
    flusher (TLS: by its own writer task).
    Messages sent before the connection is registered (in ``__init__`` or in
    ``get_connection``) are delivered in order right after the upgrade.
    """

    __slots__ = ("_core", "handler")

    def __init__(
        self,
        handler: WebSocketHandler,
        cx: CallContext | None = None,
        hdr: Request | None = None,
        cid: str | None = None,
    ) -> None:
        self.handler = handler
        raw_frames = type(self).got_raw_message is not WebSocketConnection.got_raw_message
        # the one place a connection reaches into its handler: the public constructor takes
        # the handler, and the connection's state needs the handler's shared parts
        self._core: ConnectionCore[WebSocketConnection] = ConnectionCore(
            self, handler._hub, cx, hdr, cid, raw_frames=raw_frames
        )

    # ---------------------------------------------------------------- hooks

    async def got_message(self, message: str | bytes) -> None:
        """A whole message arrived: ``str`` for Text, ``bytes`` for Binary.  Default: nothing.

        Messages are delivered one at a time; while this runs, no further input is read (that
        is the backpressure on a client that sends faster than the application handles).  An
        exception closes the connection with 1011 and is logged with its traceback.
        """

    async def registered(self) -> None:
        """The connection is in the registry and may send (e.g. a welcome message).

        An exception is logged and closes the connection with 1011.
        """

    async def connection_closed(self) -> None:
        """The connection has ended (any way); called once, after
        :meth:`WebSocketHandler.deregister_connection`.  Exceptions are logged."""

    def got_raw_message(self, frame: Frame) -> FrameAction:
        """Called for every frame before normal processing; only when overridden (frames are
        then delivered whole, and a subclass that does not override it pays nothing).

        Return :attr:`FrameAction.PROCESS`, ``CONTINUE`` (skip this frame) or ``BREAK`` (end
        the connection).  For a Close frame ``CONTINUE`` acts as ``PROCESS``: the closing
        handshake cannot be skipped.
        """
        return FrameAction.PROCESS

    def message_refused(self, limit: RateLimit, count: int) -> None:
        """``count`` messages from the client were refused unread by a rate limit
        (``RateLimits`` with ``policy="drop"``; ``limit`` is the bucket that was empty): one,
        or a flooder's run of whole messages read together.  Default: nothing.  It may send
        (say, a "slow down" message); an exception closes the connection with 1011."""

    def report_error(self) -> None:
        """Count a bad command of the client against its error budget
        (``RateLimits(error_budget=...)``): past the budget, the connection is closed with
        1008 "too many errors".  Counted in ``stats().errors_reported`` either way."""
        core = self._core
        core.counters.errors_reported += 1
        spend_budget(core)

    # ---------------------------------------------------------------- what it is

    @property
    def cx(self) -> CallContext:
        """The call context of the upgrade request (set by the handler if not given here)."""
        return self._core.cx

    @cx.setter
    def cx(self, value: CallContext) -> None:
        self._core.cx = value

    @property
    def hdr(self) -> Request:
        """The upgrade request."""
        return self._core.hdr

    @hdr.setter
    def hdr(self, value: Request) -> None:
        self._core.hdr = value

    @property
    def id(self) -> str:
        """The connection id, unique across processes (``cx.id``)."""
        return self._core.id

    @property
    def close_code(self) -> int | None:
        """The close code the connection ended with (None while open)."""
        return self._core.close_code

    @property
    def close_reason(self) -> str:
        """The reason that went with :attr:`close_code`."""
        return self._core.close_reason

    @property
    def dropped_messages(self) -> int:
        """Messages dropped for this client under the ``"drop"`` slow-consumer policy."""
        return self._core.dropped_messages

    @property
    def is_open(self) -> bool:
        """True while messages can be sent (before and after registration, until closing)."""
        return self._core.state <= OPEN

    @property
    def listener_id(self) -> str:
        return self._core.cx.listener_id

    @property
    def compression(self) -> DeflateAgreement | None:
        """The permessage-deflate parameters negotiated with this client, or None."""
        return self._core.deflate

    @property
    def rate_limits(self) -> RateLimits | None:
        """What this client may send (the handler's ``rate_limits`` when made); set it to give
        one connection its own, e.g. more for a premium user once authenticated.  Setting it
        starts from full buckets and a new error budget."""
        gate = self._core.protocol.gate
        return None if gate is None else gate.limits

    @rate_limits.setter
    def rate_limits(self, value: RateLimits | None) -> None:
        if value is not None and not isinstance(value, RateLimits):
            raise TypeError(f"rate_limits must be a RateLimits or None, not {value!r}")
        self._core.protocol.limit_rate(value, trio.current_time)

    @property
    def queued_bytes(self) -> int:
        """Bytes queued and not yet written."""
        return self._core.queue.queued_bytes

    # ---------------------------------------------------------------- sending

    def send(self, data: DataLike) -> None:
        """Queue a message: ``str`` as Text, bytes-like as Binary.

        When the send queue is full, the handler's ``slow_consumer`` policy applies: under
        ``"drop"`` the message is dropped and counted in :attr:`dropped_messages`; under
        ``"close"`` the client is closed (1013) and this raises.  With permessage-deflate
        negotiated, a message of at least ``DeflateOptions.threshold`` bytes goes compressed.

        :raises ConnectionClosedError: the connection is closing or closed (the message was not
            queued).
        """
        self._core.send(data)

    def send_frame(self, data: DataLike, opcode: int, fin: bool = True) -> None:
        """Queue one frame of any kind but Close: a fragment (Text or Binary with
        ``fin=False``, then ``Opcode.CONTINUATION`` frames) or a server Ping.  Frames sent
        this way are never compressed (RFC 7692 lets a sender send any message uncompressed)."""
        if opcode == Opcode.CLOSE:
            raise ValueError("use stop(code, reason) to close a connection")
        ends_message = fin and opcode in _DATA_OPCODES  # the last frame of a message
        self._core.send_encoded(encode_message(data, opcode, fin=fin), ends_message)

    def send_encoded(self, frame: bytes) -> None:
        """Queue a frame already encoded with :func:`trio_wshandler.codec.encode_message`
        (counted as a message in :meth:`WebSocketHandler.stats`)."""
        self._core.send_encoded(frame)

    async def send_wait(self, data: DataLike) -> None:
        """Like :meth:`send`, but wait for room in the send queue instead of applying the
        slow-consumer policy."""
        await self._core.send_wait(data)

    async def flush(self) -> None:
        """Wait until every frame queued so far has been written to the socket.

        :raises ConnectionClosedError: the connection ended (or reached the end of its closing
            handshake's ``close_timeout``) before they were all written.  A hook that awaits
            ``flush()`` gets this error, not the cancellation that then ends the connection.
        """
        await self._core.flush()

    def stop(self, code: int = CloseCode.GOING_AWAY, reason: str = "") -> None:
        """Close this connection: queue a Close frame after what is already queued, and give
        the peer ``close_timeout`` seconds to answer.  Does not wait (see ``wait_closed``)."""
        self._core.stop(code, reason)

    async def wait_closed(self) -> None:
        """Wait until the connection has ended and its end hooks have run."""
        await self._core.wait_closed()

    # ---------------------------------------------------------------- topics

    @property
    def topics(self) -> frozenset[str]:
        """The topics this connection is subscribed to."""
        return frozenset(self._core.topics or ())

    def subscribe(self, topic: str) -> None:
        """Receive what :meth:`WebSocketHandler.publish` sends to ``topic`` (again: no-op).

        :raises ConnectionClosedError: the connection is closing or closed.
        """
        self._core.subscribe(topic)

    def unsubscribe(self, topic: str) -> None:
        """Stop receiving ``topic`` (not subscribed: no-op)."""
        self._core.unsubscribe(topic)

    async def subscribe_from(self, topic: str, since: Position | None = None) -> Recovery:
        """Subscribe to ``topic``, a topic with history, first replaying what this connection's
        client missed after ``since``, its last position (None: a first subscription).

        The replay is all or nothing: ``recovered`` is true only if the epoch matches and every
        publication of the gap was still kept (and the gap is within ``max_recover``); then the
        client gets exactly those, in order, then the live ones, none twice.  Otherwise nothing
        is replayed (the client reloads from its own source) and ``reason`` says why.  Either
        way the subscription is live and ``position`` is the topic's position now.  A
        subscription to the topic that the connection already has is replaced (the replay
        starts from ``since`` whatever it was sent before).

        :raises ValueError: the topic keeps no history (the handler's ``history=``).
        :raises ConnectionClosedError: the connection is closing or closed; also when the
            topic's publications outran the replay (closed with 1013: subscribe again).
        """
        core = self._core
        return await subscribe_from(core, core.hub.source, core.counters, topic, since)
