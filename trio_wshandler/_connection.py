"""One WebSocket connection: the object user code subclasses, and the task that runs it.

After the upgrade, ``_lifecycle.run_connection`` runs in the connection's one task, the
**reader** (its loop is ``_reader.py``): it receives bytes, feeds the sans-I/O protocol
(``_protocol.py``) and dispatches its events to the hooks, one at a time, in order.
Everything else a connection needs is shared by its listener (``_listener_tasks.py``): the
**flusher** writes its queued frames, and a **drain** task of its own exists only while its
socket is backed up (``_flusher.py``); the **timer sweep** sends its heartbeat Pings and fires
its Pong and idle timeouts (``_timers.py``).  A TLS connection keeps a **writer** task of its
own instead of the flusher (``_writer.py``).

The reader runs inside the connection's cancel scope.  Closing from our side (``stop()``, a
protocol error, a failing hook, a slow consumer) queues a Close frame and sets a deadline of
``close_timeout`` seconds on that scope: the peer has that long to answer, after which the scope
cancels whatever is still running.  Whatever way the connection ends, the socket is closed and
``deregister_connection`` then ``connection_closed`` run exactly once, shielded and bounded.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import trio

from ._errors import ConnectionClosedError
from ._flusher import WriteTimeout
from ._protocol import (
    MessageAssembler,
    WebSocketProtocol,
)
from ._reader import FrameAction
from ._send_queue import SendQueue
from ._topics import Subscriber
from ._types import CallContext, Request
from .codec import CloseCode, DataLike, Frame, Opcode, encode_message

if TYPE_CHECKING:
    from ._extensions import DeflateAgreement
    from ._flusher import Flusher
    from ._handler import WebSocketHandler
    from ._timers import Timers

__all__ = ["FrameAction", "WebSocketConnection"]

#: ``flush()`` gives up this long before the connection's deadline, so that a hook awaiting it
#: gets ConnectionClosedError rather than the cancellation that ends the connection.
_FLUSH_MARGIN = 0.05

#: Close codes an endpoint may send (RFC 6455 section 7.4), besides 3000-4999.
_SENDABLE_CODES = frozenset(
    {1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014}
)


# Connection states, plain ints: the state is checked for every message of a broadcast, and
# an Enum member lookup costs more than the rest of that check.
_NEW = 0  # created, not yet running: messages may be queued
_OPEN = 1
#: the opcodes whose final frame (fin) ends a data message
_DATA_OPCODES = frozenset({Opcode.TEXT, Opcode.BINARY, Opcode.CONTINUATION})
_CLOSING = 2  # a Close was sent or received, or the connection is being failed
_CLOSED = 3


def _peer(cx: CallContext) -> str:
    host, port = cx.peer
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def validate_close_code(code: int) -> None:
    if code not in _SENDABLE_CODES and not 3000 <= code <= 4999:
        raise ValueError(f"close code {code} cannot be sent; use 1000-1003, 1007-1014 or 3000-4999")


class WebSocketConnection(Subscriber):
    """One client connection (the seed's ``WebSocketConnection``).

    Subclass it, override the hooks, and return instances from
    :meth:`WebSocketHandler.get_connection`.  The sending methods never block and never await
    the network: frames go to the connection's bounded send queue, written by its listener's
    flusher (TLS: by its own writer task).
    Messages sent before the connection is registered (in ``__init__`` or in
    ``get_connection``) are delivered in order right after the upgrade.
    """

    __slots__ = (
        "_assembler",
        "_close_deadline",
        "_closed",
        "_deflate",
        "_deflate_bits",
        "_ended",
        "_flusher",
        "_last_message",
        "_last_received",
        "_paused",
        "_ping_sent",
        "_protocol",
        "_queue",
        "_scope",
        "_sock",
        "_state",
        "_timers",
        "_writer_scope",
        "close_code",
        "close_reason",
        "cx",
        "dropped_messages",
        "handler",
        "hdr",
        "id",
    )

    def __init__(
        self,
        handler: WebSocketHandler,
        cx: CallContext | None = None,
        hdr: Request | None = None,
        cid: str | None = None,
    ) -> None:
        self.handler = handler
        #: the call context of the upgrade request (set by the handler if not given here)
        self.cx: CallContext = cx  # type: ignore[assignment]
        #: the upgrade request
        self.hdr: Request = hdr  # type: ignore[assignment]
        #: the connection id, unique across processes (``cx.id``)
        self.id: str = cid if cid is not None else (cx.id if cx is not None else "")
        #: messages dropped for this client under the ``"drop"`` slow-consumer policy
        self.dropped_messages = 0
        #: the close code and reason the connection ended with (None while open)
        self.close_code: int | None = None
        self.close_reason: str = ""
        self._state = _NEW
        self._closed: trio.Event | None = None  # made only when somebody waits for the end
        self._ended = False  # the end hooks have run
        self._queue = SendQueue(handler.max_queue, handler.max_queue_bytes)
        self._protocol = WebSocketProtocol(
            max_message_size=handler.max_message_size,
            max_fragments=handler.max_fragments,
            raw_frames=type(self).got_raw_message is not WebSocketConnection.got_raw_message,
            counters=handler._counters,
        )
        self._scope: trio.CancelScope | None = None
        self._close_deadline = math.inf
        self._flusher: Flusher | None = None  # set while the listener's flusher writes it
        self._sock: trio.socket.SocketType | None = None  # what the flusher writes to
        self._writer_scope: trio.CancelScope | None = None  # of its drain or TLS writer task
        self._timers: Timers | None = None
        self._last_received = 0.0  # any data (heartbeat)
        self._last_message = 0.0  # a whole message (idle timeout)
        self._ping_sent = 0.0  # when the unanswered heartbeat Ping went out, else 0
        self._paused = False  # the reader waits for its peer to read (backpressure)
        self._assembler: MessageAssembler | None = None
        self._deflate: DeflateAgreement | None = None
        self._deflate_bits = 0  # the server window of compressed messages to it; 0: none
        Subscriber.__init__(self)

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

    # ---------------------------------------------------------------- sending

    @property
    def is_open(self) -> bool:
        """True while messages can be sent (before and after registration, until closing)."""
        return self._state <= _OPEN

    @property
    def listener_id(self) -> str:
        return self.cx.listener_id

    @property
    def compression(self) -> DeflateAgreement | None:
        """The permessage-deflate parameters negotiated with this client, or None."""
        return self._deflate

    @property
    def queued_bytes(self) -> int:
        """Bytes queued and not yet written."""
        return self._queue.queued_bytes

    def send(self, data: DataLike) -> None:
        """Queue a message: ``str`` as Text, bytes-like as Binary.

        When the send queue is full, the handler's ``slow_consumer`` policy applies: under
        ``"drop"`` the message is dropped and counted in :attr:`dropped_messages`; under
        ``"close"`` the client is closed (1008) and this raises.  With permessage-deflate
        negotiated, a message of at least ``DeflateOptions.threshold`` bytes goes compressed.

        :raises ConnectionClosedError: the connection is closing or closed (the message was not
            queued).
        """
        self.send_encoded(self.handler._fanout.frame_for(data, self._deflate_bits))

    def send_frame(self, data: DataLike, opcode: int, fin: bool = True) -> None:
        """Queue one frame of any kind but Close: a fragment (Text or Binary with
        ``fin=False``, then ``Opcode.CONTINUATION`` frames) or a server Ping.  Frames sent
        this way are never compressed (RFC 7692 lets a sender send any message uncompressed)."""
        if opcode == Opcode.CLOSE:
            raise ValueError("use stop(code, reason) to close a connection")
        ends_message = fin and opcode in _DATA_OPCODES  # the last frame of a message
        self._send(encode_message(data, opcode, fin=fin), ends_message)

    def send_encoded(self, frame: bytes) -> None:
        """Queue a frame already encoded with :func:`trio_wshandler.codec.encode_message`
        (counted as a message in :meth:`WebSocketHandler.stats`)."""
        self._send(frame, True)

    def _send(self, frame: bytes, message: bool) -> None:
        if self._enqueue(frame):
            self.handler._counters.messages_sent += message
        elif not self.is_open:
            raise ConnectionClosedError(self._not_sent_reason())

    async def send_wait(self, data: DataLike) -> None:
        """Like :meth:`send`, but wait for room in the send queue instead of applying the
        slow-consumer policy."""
        frame = self.handler._fanout.frame_for(data, self._deflate_bits)
        await self._queue.wait_for_room(len(frame))
        self.send_encoded(frame)

    async def flush(self) -> None:
        """Wait until every frame queued so far has been written to the socket.

        :raises ConnectionClosedError: the connection ended (or reached the end of its closing
            handshake's ``close_timeout``) before they were all written.  A hook that awaits
            ``flush()`` gets this error, not the cancellation that then ends the connection.
        """
        queue = self._queue
        target = queue.enqueued
        while queue.written < target:
            # a moment before the connection's own deadline (read again after every wake-up:
            # stop() sets it), so that this ends first
            deadline = self._close_deadline - _FLUSH_MARGIN
            if queue.finished or trio.current_time() >= deadline:
                raise ConnectionClosedError(
                    f"connection {self.id} ended with {queue.queued_frames} frame(s) unwritten"
                )
            await queue.wait_progress(deadline)

    def stop(self, code: int = CloseCode.GOING_AWAY, reason: str = "") -> None:
        """Close this connection: queue a Close frame after what is already queued, and give
        the peer ``close_timeout`` seconds to answer.  Does not wait (see ``wait_closed``)."""
        validate_close_code(code)
        self._start_close(code, reason)

    async def wait_closed(self) -> None:
        """Wait until the connection has ended and its end hooks have run."""
        if self._ended:
            return
        if self._closed is None:
            self._closed = trio.Event()
        await self._closed.wait()

    def _enqueue(self, frame: bytes) -> bool:
        """Queue a data frame (also the hot path of ``send_all``); False if not queued."""
        if self._state > 1:  # _OPEN
            return False
        queue = self._queue
        if queue.put_data(frame):
            self._schedule()
            return True
        # the queue is full: the slow-consumer policy is for a socket that cannot take the
        # data, so first see whether it takes what is queued now
        if self._flusher is not None and not queue.draining:
            self._flusher.write(self)
            if queue.put_data(frame):
                self._schedule()
                return True
        self._overflow(len(frame))
        return False

    def _schedule(self) -> None:
        """Something was queued: have the flusher write it (TLS: the writer task waits for it)."""
        if not self._queue.listed and self._flusher is not None:
            self._flusher.schedule(self)

    def _put_control(self, frame: bytes, *, pong: bool = False) -> bool:
        """Queue a control frame (Close, Ping, or a Pong within MAX_PONGS_OWED)."""
        queue = self._queue
        if not (queue.put_pong(frame) if pong else queue.put_control(frame)):
            return False
        self._schedule()
        return True

    def _overflow(self, nbytes: int) -> None:
        handler = self.handler
        if handler.slow_consumer == "drop":
            self.dropped_messages += 1
            handler._counters.dropped_messages += 1
            if self.dropped_messages == 1 or self.dropped_messages % 1000 == 0:
                handler.log_warning(
                    "connection %s: send queue full (%d bytes, %d frames); %d message(s) dropped",
                    self.id,
                    self._queue.queued_bytes,
                    self._queue.queued_frames,
                    self.dropped_messages,
                )
            return
        handler.log_warning(
            "connection %s: slow consumer, send queue full (%d bytes, %d frames, +%d refused);"
            " closing",
            self.id,
            self._queue.queued_bytes,
            self._queue.queued_frames,
            nbytes,
        )
        handler._counters.slow_consumer_closes += 1
        self._start_close(CloseCode.POLICY_VIOLATION, "slow consumer")

    def _not_sent_reason(self) -> str:
        return (
            f"connection {self.id} is closed ({self.close_code or 'closing'}: {self.close_reason})"
        )

    # ---------------------------------------------------------------- closing

    def _start_close(self, code: int, reason: str) -> None:
        """Queue our Close and bound the closing handshake by ``close_timeout``."""
        if self._state >= _CLOSING:
            return
        self._state = _CLOSING
        if self.close_code is None:
            self.close_code, self.close_reason = code, reason
        frame = self._protocol.close(code, reason)
        if frame and not self._put_control(frame):
            self._set_deadline(0)  # not even room for a Close: abort now
            return
        self._set_deadline(self.handler.close_timeout)

    def _set_deadline(self, delay: float) -> None:
        try:
            deadline = trio.current_time() + delay
        except RuntimeError:  # not in Trio (stop() before the connection runs, from sync code)
            deadline = -math.inf if delay == 0 else math.inf
        self._close_deadline = min(self._close_deadline, deadline)
        self._queue.wake()  # a flush() waiting looks at the new deadline
        if self._scope is not None:
            self._scope.deadline = min(self._scope.deadline, self._close_deadline)

    def _finish_protocol(self, code: int, reason: str, reply: bytes) -> None:
        """The closing handshake is over (or failed): queue ``reply`` if there is one."""
        self._state = max(self._state, _CLOSING)
        if self.close_code is None:
            self.close_code, self.close_reason = code, reason
        if reply:
            self._put_control(reply)

    # ---------------------------------------------------------------- running

    def _bind(self, cx: CallContext, hdr: Request, cid: str) -> None:
        if self.cx is None:
            self.cx = cx
        if self.hdr is None:
            self.hdr = hdr
        if not self.id:
            self.id = cid

    def _use_deflate(self, agreement: DeflateAgreement, outbound: bool) -> None:
        """permessage-deflate was agreed: inflate what comes in, and (if ``outbound``, when
        the handler has compression on) compress what goes out."""
        self._deflate = agreement
        self._protocol.use_deflate(agreement)
        if outbound:
            self._deflate_bits = agreement.server_max_window_bits

    def _write_timed_out(self, exc: WriteTimeout) -> None:
        """No byte could be written for ``send_timeout`` seconds: drop the peer."""
        self.handler.log_warning("connection %s: %s; closing", self.id, exc)
        self.handler._counters.send_timeouts += 1
        self.close_code = self.close_code or CloseCode.POLICY_VIOLATION
        self.close_reason = self.close_reason or "send timeout"
        self._abort()

    def _abort(self) -> None:
        """The socket is unusable: end the connection at once."""
        if self.close_code is None:
            self.close_code, self.close_reason = CloseCode.ABNORMAL_CLOSURE, "connection lost"
        self._state = max(self._state, _CLOSING)
        self._queue.finish()  # before the cancellation: a flush() waiting raises its error
        if self._scope is not None:
            self._scope.cancel()

    def _settings_changed(self) -> None:
        """Timer settings changed: the listener's sweep applies them at once."""
        if self._timers is not None:
            self._timers.wake()
