"""The inside of one connection: its state, and the only methods that change it.

A :class:`~trio_wshandler.WebSocketConnection` is the user's object (hooks, sending API); it
holds a :class:`ConnectionCore` and delegates to it, so that a subclass's attributes never
collide with ours.  Each module that works on a connection states what it needs as a Protocol,
which this class provides: ``_reader.Readable``, ``_flusher.Writable``, ``_timers.Timed``,
``_fanout.Recipient``, ``_registry.Entry``.  They read its public attributes; every change is a
method here, named for what happened (``received``, ``lost``, ``idle_timed_out``...).

The state (``_state.ConnectionState``) only moves forward: ``NEW``, ``OPEN``, ``CLOSING``,
``CLOSED``.  Closing from our side queues a Close frame and sets a deadline of ``close_timeout``
seconds on the connection's cancel scope: the peer has that long to answer, after which the
scope cancels whatever still runs.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Generic, TypeVar

import trio

from ._errors import ConnectionClosedError
from ._flusher import WriteTimeout, plain_socket_fd, write_last_words
from ._protocol import WebSocketProtocol
from ._send_queue import SendQueue
from ._state import CLOSED, CLOSING, NEW, OPEN, ConnectionState
from ._topics import check_topic
from .codec import CloseCode, DataLike, Opcode, encode_message, validate_close_code

if TYPE_CHECKING:
    from ._extensions import DeflateAgreement
    from ._flusher import Flusher
    from ._hub import ConnectionHost, Hub
    from ._reader import Hooks
    from ._timers import Timers
    from ._types import CallContext, Request

__all__ = ["ConnectionCore"]

#: ``flush()`` gives up this long before the connection's deadline, so that a hook awaiting it
#: gets ConnectionClosedError rather than the cancellation that ends the connection.
FLUSH_MARGIN = 0.05

H = TypeVar("H", bound="Hooks")


class ConnectionCore(Generic[H]):
    """The state of one connection (``connection`` is the user's object, with the hooks)."""

    # fmt: off
    __slots__ = (
        "_close_deadline", "_closed", "_scope", "_writer_scope", "close_code", "close_reason",
        "connection", "corked", "counters", "cx", "deflate", "deflate_bits", "dropped_messages",
        "ended", "flusher", "hdr", "hub", "id", "last_message", "last_received", "paused",
        "ping_sent", "pings", "protocol", "queue", "settings", "sock", "state", "timers",
        "topics",
    )
    # fmt: on

    def __init__(
        self,
        connection: H,
        hub: Hub,
        cx: CallContext | None,
        hdr: Request | None,
        cid: str | None,
        *,
        raw_frames: bool,
    ) -> None:
        self.connection = connection
        self.hub = hub
        self.settings: ConnectionHost = hub.host
        self.counters = hub.counters
        self.cx: CallContext = cx  # type: ignore[assignment]  # bound at the latest by bind()
        self.hdr: Request = hdr  # type: ignore[assignment]
        self.id: str = cid if cid is not None else (cx.id if cx is not None else "")
        self.state: ConnectionState = NEW
        self.close_code: int | None = None
        self.close_reason = ""
        self.dropped_messages = 0
        limits = self.settings.limits
        self.queue = SendQueue(limits.max_queue, limits.max_queue_bytes)
        self.protocol = WebSocketProtocol(
            max_message_size=limits.max_message_size,
            max_fragments=limits.max_fragments,
            raw_frames=raw_frames,
            counters=self.counters,
        )
        if self.settings.rate_limits is not None:  # (a connection may set its own)
            self.protocol.limit_rate(self.settings.rate_limits, trio.current_time)
        self.deflate: DeflateAgreement | None = None
        self.deflate_bits = 0  # the server window of compressed messages to it; 0: none
        self.flusher: Flusher | None = None  # while the listener's flusher writes it
        self.sock: trio.socket.SocketType | None = None  # what the flusher writes to
        self.timers: Timers | None = None
        self.last_received = 0.0  # any data (heartbeat)
        self.last_message = 0.0  # a whole message (idle timeout)
        self.ping_sent = 0.0  # when the unanswered heartbeat Ping went out, else 0
        self.pings = True  # it can send Pings and see Pongs (not under ASGI: see mounted())
        self.paused = False  # the reader waits for its peer to read (backpressure)
        self.corked = False  # its reader handles a read: it writes what the hooks send
        self.topics: set[str] | None = None  # made on the first subscribe()
        self.ended = False  # the end hooks have run
        self._scope: trio.CancelScope | None = None
        self._close_deadline = math.inf
        self._writer_scope: trio.CancelScope | None = None  # of its drain or TLS writer task
        self._closed: trio.Event | None = None  # made only when somebody waits for the end

    # ---------------------------------------------------------------- sending

    def send(self, data: DataLike) -> None:
        self.send_encoded(self.hub.fanout.frame_for(data, self.deflate_bits))

    def send_encoded(self, frame: bytes, message: bool = True) -> None:
        """Queue ``frame``, counted as a message if it is one's last frame (``message``)."""
        if self.enqueue(frame):
            self.counters.messages_sent += message
        elif self.state > OPEN:
            raise ConnectionClosedError(self.not_sent_reason())

    async def send_wait(self, data: DataLike) -> None:
        frame = self.hub.fanout.frame_for(data, self.deflate_bits)
        await self.queue.wait_for_room(len(frame))
        self.send_encoded(frame)

    async def flush(self) -> None:
        queue = self.queue
        target = queue.enqueued
        while queue.written < target:
            # a moment before the connection's own deadline (read again after every wake-up:
            # stop() sets it), so that this ends first
            deadline = self._close_deadline - FLUSH_MARGIN
            if queue.finished or trio.current_time() >= deadline:
                raise ConnectionClosedError(
                    f"connection {self.id} ended with {queue.queued_frames} frame(s) unwritten"
                )
            await queue.wait_progress(deadline)

    def enqueue(self, frame: bytes) -> bool:
        """Queue a data frame (the hot path of ``send_all``); False if not queued."""
        if self.state > OPEN:
            return False
        queue = self.queue
        if queue.put_data(frame):
            # _schedule(), inlined: this runs for every delivery of a broadcast
            if not queue.listed and not self.corked and self.flusher is not None:
                self.flusher.schedule(self)
            return True
        # the queue is full: the slow-consumer policy is for a socket that cannot take the
        # data, so first see whether it takes what is queued now
        if self.flusher is not None and not queue.draining:
            self.flusher.write(self)
            if queue.put_data(frame):
                self._schedule()
                return True
        self._overflow(len(frame))
        return False

    def _schedule(self) -> None:
        """Something was queued: have the flusher write it (TLS: the writer task waits for it),
        unless its reader writes it when done with the read it handles (``corked``)."""
        if not self.queue.listed and not self.corked and self.flusher is not None:
            self.flusher.schedule(self)

    def cork(self) -> None:
        """Its reader handles what it read: what the hooks send meanwhile waits for
        :meth:`uncork` (request/response: the answer goes out with no task switch)."""
        self.corked = True

    def uncork(self) -> None:
        """Write what is queued now, with one non-blocking write (what the socket refuses is
        the flusher's drain task's, as always)."""
        self.corked = False
        if self.queue.in_channel and self.flusher is not None:
            self.flusher.write(self)

    def put_control(self, frame: bytes, *, pong: bool = False) -> bool:
        """Queue a control frame (Close, Ping, or a Pong within MAX_PONGS_OWED)."""
        queue = self.queue
        if not (queue.put_pong(frame) if pong else queue.put_control(frame)):
            return False
        self._schedule()
        return True

    def _overflow(self, nbytes: int) -> None:
        settings, queue = self.settings, self.queue
        if settings.slow_consumer == "drop":
            self.dropped_messages += 1
            self.counters.dropped_messages += 1
            if self.dropped_messages == 1 or self.dropped_messages % 1000 == 0:
                settings.log_warning(
                    "connection %s: send queue full (%d bytes, %d frames); %d message(s) dropped",
                    self.id,
                    queue.queued_bytes,
                    queue.queued_frames,
                    self.dropped_messages,
                )
            return
        settings.log_warning(
            "connection %s: slow consumer, send queue full (%d bytes, %d frames, +%d refused);"
            " closing",
            self.id,
            queue.queued_bytes,
            queue.queued_frames,
            nbytes,
        )
        self.counters.slow_consumer_closes += 1
        self.start_close(CloseCode.TRY_AGAIN_LATER, "slow consumer")

    def not_sent_reason(self) -> str:
        return (
            f"connection {self.id} is closed ({self.close_code or 'closing'}: {self.close_reason})"
        )

    # ---------------------------------------------------------------- topics

    def subscribe(self, topic: str) -> None:
        check_topic(topic)
        if self.state > OPEN:
            raise ConnectionClosedError(self.not_sent_reason())
        if self.topics is None:
            self.topics = set()
        if topic not in self.topics:
            self.topics.add(topic)
            self.hub.topics.add(topic, self)

    def unsubscribe(self, topic: str) -> None:
        if self.topics is not None and topic in self.topics:
            self.topics.discard(topic)
            self.hub.topics.discard(topic, self)

    # ---------------------------------------------------------------- closing

    def stop(self, code: int, reason: str) -> None:
        validate_close_code(code)
        self.start_close(code, reason)

    def start_close(self, code: int, reason: str) -> None:
        """Queue our Close and bound the closing handshake by ``close_timeout``."""
        if self.state >= CLOSING:
            return
        self.state = CLOSING
        if self.close_code is None:
            self.close_code, self.close_reason = code, reason
        frame = self.protocol.close(code, reason)
        if frame and not self.put_control(frame):
            self.set_deadline(0)  # not even room for a Close: abort now
            return
        self.set_deadline(self.settings.close_timeout)

    def set_deadline(self, delay: float) -> None:
        """The connection ends at the latest ``delay`` seconds from now."""
        try:
            deadline = trio.current_time() + delay
        except RuntimeError:  # not in Trio (stop() before the connection runs, from sync code)
            deadline = -math.inf if delay == 0 else math.inf
        self._close_deadline = min(self._close_deadline, deadline)
        self.queue.wake()  # a flush() waiting looks at the new deadline
        if self._scope is not None:
            self._scope.deadline = min(self._scope.deadline, self._close_deadline)

    def finish_protocol(self, code: int, reason: str, reply: bytes) -> None:
        """The closing handshake is over (or failed): queue ``reply`` if there is one."""
        self.state = max(self.state, CLOSING)
        if self.close_code is None:
            self.close_code, self.close_reason = code, reason
        if reply:
            self.put_control(reply)

    def fail(self, code: int, reason: str, reply: bytes) -> None:
        """The peer broke the protocol or a limit: it is closed with ``code``, whatever the
        connection was closing for before."""
        self.close_code, self.close_reason = code, reason
        self.finish_protocol(code, reason, reply)

    def abort(self) -> None:
        """The socket is unusable: end the connection at once."""
        if self.close_code is None:
            self.close_code, self.close_reason = CloseCode.ABNORMAL_CLOSURE, "connection lost"
        self.state = max(self.state, CLOSING)
        self.queue.finish()  # before the cancellation: a flush() waiting raises its error
        if self._scope is not None:
            self._scope.cancel()

    async def wait_closed(self) -> None:
        if self.ended:
            return
        if self._closed is None:
            self._closed = trio.Event()
        await self._closed.wait()

    # ---------------------------------------------------------------- what the reader saw

    def received(self, now: float) -> None:
        self.last_received = now

    def message_received(self) -> None:
        self.last_message = self.last_received
        self.counters.messages_received += 1

    def pong_received(self) -> None:
        self.ping_sent = 0.0

    def pause(self) -> None:
        self.paused = True

    def resume(self, now: float) -> None:
        """The reader reads again: the time it did not read its peer does not count against
        it (heartbeat, idle timeout)."""
        self.paused = False
        self.last_received = self.last_message = now
        self.ping_sent = 0.0

    def lost(self) -> None:
        """The peer closed (or half-closed) without a Close frame: a half-closed peer may still
        read, so it is told why (1001; 1006 is never sent), while the hooks see 1006."""
        if self.close_code is None:
            self.close_code, self.close_reason = CloseCode.ABNORMAL_CLOSURE, "connection lost"
        self.state = max(self.state, CLOSING)
        close = self.protocol.close(CloseCode.GOING_AWAY, "")
        if close:
            self.put_control(close)

    # ---------------------------------------------------------------- what the timers fired

    def send_heartbeat(self, now: float) -> None:
        self.ping_sent = now
        self.put_control(encode_message(self.settings.heartbeat_message, Opcode.PING))

    def idle_timed_out(self, idle: float) -> None:
        self.settings.log_info("connection %s: no message for %s s; closing", self.id, idle)
        self.counters.idle_timeouts += 1
        self.start_close(CloseCode.GOING_AWAY, "idle timeout")

    def pong_timed_out(self, timeout: float) -> None:
        self.settings.log_warning("connection %s: no Pong within %s s; closing", self.id, timeout)
        self.counters.heartbeat_timeouts += 1
        self.start_close(CloseCode.INTERNAL_SERVER_ERROR, "pong timeout")

    def timer_failed(self) -> None:
        self.settings.log_error("connection %s: timer failed", self.id, exc_info=True)
        self.abort()

    def settings_changed(self) -> None:
        """Timer settings changed: the listener's sweep applies them at once."""
        if self.timers is not None:
            self.timers.wake()

    # ---------------------------------------------------------------- what the writers saw

    def write_failed(self, exc: BaseException, task: str) -> None:
        """Writing failed: the peer stopped reading (``WriteTimeout``), vanished (a stream or
        socket error), or a bug (logged with its traceback); the connection ends."""
        if isinstance(exc, WriteTimeout):
            self.settings.log_warning("connection %s: %s; closing", self.id, exc)
            self.counters.send_timeouts += 1
            self.close_code = self.close_code or CloseCode.TRY_AGAIN_LATER
            self.close_reason = self.close_reason or "send timeout"
        elif not isinstance(exc, OSError | trio.BrokenResourceError | trio.ClosedResourceError):
            self.settings.log_error("connection %s: %s failed", self.id, task, exc_info=exc)
        self.abort()

    def writer_started(self, scope: trio.CancelScope) -> None:
        self._writer_scope = scope

    def writer_stopped(self) -> None:
        self._writer_scope = None

    # ---------------------------------------------------------------- its life (_lifecycle.py)

    def bind(self, cx: CallContext, hdr: Request, cid: str) -> None:
        """The upgrade's context, request and id (unless given when it was made)."""
        if self.cx is None:
            self.cx = cx
        if self.hdr is None:
            self.hdr = hdr
        if not self.id:
            self.id = cid

    def use_deflate(self, agreement: DeflateAgreement, outbound: bool) -> None:
        """permessage-deflate was agreed: inflate what comes in, and (if ``outbound``, when
        the handler has compression on) compress what goes out."""
        self.deflate = agreement
        self.protocol.use_deflate(agreement)
        if outbound:
            self.deflate_bits = agreement.server_max_window_bits

    def open(self, timers: Timers) -> float:
        """It is registered and runs (its timers swept by ``timers``); returns the time."""
        if self.state is NEW:
            self.state = OPEN
        now = trio.current_time()
        self.last_received = self.last_message = now
        self.timers = timers
        return now

    def mounted(self) -> None:  # an ASGI server parses and writes its frames: no Pings
        self.pings = False

    def cancel_scope(self) -> trio.CancelScope:
        """The scope its task runs in: cancelled at its closing deadline, or when aborted."""
        self._scope = trio.CancelScope(deadline=self._close_deadline)
        return self._scope

    def write_with(self, stream: trio.abc.Stream, flusher: Flusher) -> bool:
        """Have ``flusher`` write it, if ``stream`` is a plain TCP socket (False: a TLS stream,
        which needs a writer task of its own)."""
        if plain_socket_fd(stream) < 0:
            return False
        assert isinstance(stream, trio.SocketStream)
        self.sock = stream.socket
        self.flusher = flusher
        if self.queue.in_channel:  # sent before the connection ran
            self._schedule()
        return True

    def timed_out(self) -> None:
        """Its scope was cancelled at the deadline."""
        if self.close_code is None:
            self.close_code, self.close_reason = CloseCode.ABNORMAL_CLOSURE, "timed out"

    def end(self, stream: trio.abc.SendStream | None) -> None:
        """Its task is ending: nothing more will be written but, if the socket takes them at
        once, what is still queued and a Close 1001 (the last words of a connection that ended
        without its queue written: cancelled from outside, a deadline).  It is ``CLOSED``."""
        if self.timers is not None:
            self.timers.discard(self)
        if self._writer_scope is not None:
            self._writer_scope.cancel()
        self.state = CLOSED
        self.queue.finish()
        close = self.protocol.close  # (None: mounted, its writer tells the client why)
        last_close = close(CloseCode.GOING_AWAY, "server is stopping") if stream else b""
        wrote = stream is not None and write_last_words(self.queue, stream, last_close)
        if wrote and last_close and self.close_code is None:
            self.close_code, self.close_reason = CloseCode.GOING_AWAY, "server is stopping"
        if self.close_code is None:
            self.close_code = CloseCode.ABNORMAL_CLOSURE
        self.sock = self.flusher = None

    def leave(self) -> None:
        """Its end hooks have run: it leaves its topics, and whoever waits for its end wakes."""
        topics, self.topics = self.topics, None
        for topic in topics or ():
            self.hub.topics.discard(topic, self)
        self.ended = True
        if self._closed is not None:
            self._closed.set()
