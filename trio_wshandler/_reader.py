"""Where received bytes become hook calls: the reader of one connection.

The connection's one task (``_lifecycle.run_connection``) runs :meth:`Reader.run`: it receives
bytes, feeds the sans-I/O protocol (``_protocol.py``) and dispatches its events, one at a time
and in order, to the hooks (``got_message``, ``got_raw_message``), answering Pings and finishing
the closing handshake.  It stops reading a peer that does not read (backpressure) and handles at
most ``EVENTS_PER_STEP`` events per task step (fairness).

What the reader needs of a connection is :class:`Readable` (the connection's state,
``_core.ConnectionCore``, provides it): the reader reads its state and calls its methods, and
changes none of it itself.  What it needs of the user's object is :class:`Hooks`.
"""

from __future__ import annotations

import enum
import os
import types
from collections.abc import Coroutine, Generator
from typing import Any, Protocol, cast

import trio

from ._errors import ConnectionClosedError
from ._events import (
    SKIPPED,
    CloseCompleted,
    CloseReceived,
    DataFrame,
    MessageAssembler,
    MessageReceived,
    PingReceived,
    PongReceived,
    ProtocolFailed,
    RateRefused,
    Throttled,
)
from ._flusher import Flusher, plain_socket_fd
from ._options import RateLimit
from ._state import OPEN
from ._throttle import Limited, refused, wait
from .codec import CloseCode, Frame, Opcode

__all__ = [
    "EVENTS_PER_STEP",
    "INFLATE_PER_STEP",
    "MAX_RECEIVE_BYTES",
    "RECEIVE_BYTES",
    "FrameAction",
    "Hooks",
    "Readable",
    "Reader",
    "hook_failed",
    "raw_action",
]

#: Bytes asked of the socket per receive; while each read fills what it asked for (a client
#: uploading large messages), the next asks for twice as much, up to ``MAX_RECEIVE_BYTES``:
#: fewer reads (and less Python per byte) for a bulk upload, and no large buffer for the many
#: small reads of everyday traffic.
RECEIVE_BYTES = 64 * 1024
MAX_RECEIVE_BYTES = 1 << 20

#: Most protocol events (frames, messages) handled in one task step: a 64 KiB read can hold
#: about 10,900 minimal frames, and a Ping flooder must not hold the event loop for all of them.
EVENTS_PER_STEP = 32

#: Most bytes inflated (permessage-deflate) in one task step: a client may send many small
#: frames that each inflate to ``max_message_size``, and one 64 KiB read could then cost
#: dozens of milliseconds of inflating without a yield.
INFLATE_PER_STEP = 1 << 20


class FrameAction(enum.Enum):
    """What :meth:`WebSocketConnection.got_raw_message` wants done with a frame."""

    #: handle the frame normally
    PROCESS = "process"
    #: skip the frame (its data is not added to the message; a skipped Ping is not answered)
    CONTINUE = "continue"
    #: end the connection (Close 1000)
    BREAK = "break"


class Hooks(Protocol):
    """What the reader calls on the user's connection object."""

    async def got_message(self, message: str | bytes) -> None: ...

    def got_raw_message(self, frame: Frame) -> FrameAction: ...

    def message_refused(self, limit: RateLimit, count: int) -> None: ...


class _Log(Protocol):
    def log_debug(self, msg: str, *args: object) -> None: ...

    def log_info(self, msg: str, *args: object) -> None: ...

    def log_error(self, msg: str, *args: object, exc_info: bool = ...) -> None: ...


class Readable(Limited, Protocol):
    """What the reader needs of a connection: its state to read, and the methods that change
    it (each one named for what happened); what a rate limit needs of it too (``Limited``:
    ``id``, ``state``, ``protocol``, ``queue``, ``counters``, ``pause``, ``resume``, ``cork``,
    ``uncork``, ``start_close``, ``fail``)."""

    @property
    def connection(self) -> Hooks:
        """The user's object."""

    @property
    def settings(self) -> _Log: ...
    @property
    def flusher(self) -> Flusher | None:
        """The listener's flusher, while it writes this connection (plain TCP)."""

    def received(self, now: float) -> None:
        """Data arrived (the heartbeat counts from here)."""

    def message_received(self) -> None:
        """A whole message arrived, in the data last received (the idle timeout counts from
        then)."""

    def pong_received(self) -> None: ...

    def lost(self) -> None:
        """The peer closed its side without a Close frame."""

    def put_control(self, frame: bytes, *, pong: bool = False) -> bool: ...

    def finish_protocol(self, code: int, reason: str, reply: bytes) -> None: ...


class Reader:
    """Receives and dispatches for one connection; :meth:`run` is its task's loop."""

    __slots__ = ("_assembler", "_core", "_stream")

    def __init__(self, core: Readable, stream: trio.abc.ReceiveStream) -> None:
        self._core = core
        self._stream = stream
        self._assembler: MessageAssembler | None = None  # raw mode only: one frame's pieces

    async def run(self, initial_data: bytes) -> bool:
        """Receive and dispatch until the connection is done reading; True if it was failed
        (the peer broke the protocol or a limit, and may still be sending: see :func:`linger`).

        On a plain TCP stream the socket is read with a non-blocking ``read(2)`` after one
        yield (a plain checkpoint), so a flooding client cannot starve other tasks, and waited
        for only when that read finds nothing.  At most
        ``EVENTS_PER_STEP`` events are handled per task step.

        Backpressure: while this connection's own send queue is more than half full (its peer
        does not read what it is sent, e.g. the echoes of what it floods us with), nothing more
        is read from it, so a peer cannot make us queue without bound by sending.
        """
        core = self._core
        protocol = core.protocol
        queue = core.queue
        stream = self._stream
        data: bytes | memoryview = initial_data
        fd = plain_socket_fd(stream)
        size = RECEIVE_BYTES
        buffer: bytearray | None = None  # for reads larger than RECEIVE_BYTES: reused
        while True:
            drained = len(data) < size  # the last read emptied the socket
            if not drained and size < MAX_RECEIVE_BYTES:
                size *= 2  # the socket has more than was asked: ask for more next time
                buffer = bytearray(size)
            elif drained and size > RECEIVE_BYTES:
                size = RECEIVE_BYTES
                buffer = None
            if data:
                protocol.receive_data(data)
                data = b""  # an idle connection holds no bytes it has read (nor, as the
                # events are handled in a frame of their own, its last message)
                core.cork()  # what the hooks send is written below, in one write
                try:
                    done = await self._handle_events()
                finally:
                    core.uncork()
                if done is not None:
                    return done
            if queue.over_half():
                # the peer is not reading what it is sent: stop reading it until it has.  Its
                # Pongs and messages wait unread meanwhile, so the timers leave it alone
                # (send_timeout drops a peer that reads nothing at all)
                core.pause()
                try:
                    await queue.wait_below_half()
                finally:
                    core.resume(trio.current_time())
            flusher = core.flusher
            if flusher is not None and flusher.behind():
                await self._wait_for_writes(flusher)
            if fd >= 0:
                # one yield before every read (a flooding client cannot starve the others),
                # then the read; only when the socket has nothing yet, a wait for it.  (Trio
                # re-arms a descriptor in epoll at every wait, a system call, where in
                # request/response the next request is mostly there by now: trying first saves
                # that for most requests, at the cost of one read that finds nothing for the
                # rest.)
                await trio.lowlevel.checkpoint()
                while True:
                    try:
                        if buffer is None:
                            data = os.read(fd, size)
                        else:  # large reads into one buffer: no allocation (page faults) each
                            data = memoryview(buffer)[: os.readv(fd, [buffer])]
                    except BlockingIOError:  # nothing yet (or a spurious wake-up): wait
                        await trio.lowlevel.wait_readable(fd)
                        continue
                    except OSError:  # ECONNRESET and the like: the peer is gone
                        data = b""
                    break
            else:
                try:
                    data = cast(bytes, await stream.receive_some(size))
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    data = b""
            if not data:  # the peer closed (or half-closed) without a Close frame
                core.lost()
                return False
            core.received(trio.current_time())

    async def _handle_events(self) -> bool | None:
        """Dispatch the events of the bytes received so far: None to read on, else whether the
        connection was failed.  At most ``EVENTS_PER_STEP`` events and ``INFLATE_PER_STEP``
        inflated bytes per task step."""
        core = self._core
        protocol = core.protocol
        handled = 0
        inflated = protocol.inflated_total
        for event in protocol.events():
            cls = event.__class__
            if cls is MessageReceived:  # the common event first, inline
                if core.state is OPEN:
                    await self._deliver(event.data)  # type: ignore[union-attr]
            elif cls is RateRefused:  # a limited flooder's: inline too
                refusal = cast(RateRefused, event)
                if refused(core, refusal.limit, refusal.count):
                    return True  # failed (1008)
                handled += refusal.count >> 3  # (eight refused messages weigh one event)
            elif await self.dispatch(event):
                return cls is ProtocolFailed or cls is RateRefused  # failed
            handled += 1
            if (
                handled >= EVENTS_PER_STEP or protocol.inflated_total - inflated > INFLATE_PER_STEP
            ):  # let other connections have their turn (what was sent goes out first)
                handled = 0
                core.uncork()
                await trio.lowlevel.checkpoint()
                flusher = core.flusher
                if flusher is not None and flusher.behind():
                    await self._wait_for_writes(flusher)
                core.cork()
                inflated = protocol.inflated_total
        return None

    async def _wait_for_writes(self, flusher: Flusher) -> None:
        """The listener's flusher is behind (``_flusher.BACKLOG``: what the hooks send fans out
        to many): read nothing more until it has caught up; the timers leave the peer alone
        meanwhile."""
        core = self._core
        core.pause()
        try:
            await flusher.wait_caught_up()
        finally:
            core.resume(trio.current_time())

    async def dispatch(self, event: object) -> bool:
        """Act on one protocol event; True when the connection is done reading."""
        core = self._core
        if event is SKIPPED:
            return False
        if isinstance(event, MessageReceived):
            if core.state is OPEN:
                await self._deliver(event.data)
            return False
        if isinstance(event, DataFrame):
            await self._raw_data_frame(event)
            return False
        if isinstance(event, Throttled):  # a rate limit's bucket is empty: wait
            await wait(core, event.seconds)
            return False
        if isinstance(event, RateRefused):  # or the message was refused
            return refused(core, event.limit, event.count)
        if isinstance(event, PingReceived):
            if raw_action(self._core, Frame(Opcode.PING, event.payload)) is FrameAction.PROCESS:
                pong = core.protocol.pong(event.payload)
                if pong:
                    core.put_control(pong, pong=True)  # not beyond MAX_PONGS_OWED unwritten
            return False
        if isinstance(event, PongReceived):
            if raw_action(self._core, Frame(Opcode.PONG, event.payload)) is FrameAction.PROCESS:
                core.pong_received()  # the heartbeat is answered
            return False
        if isinstance(event, CloseReceived):
            raw_action(
                self._core,
                Frame(Opcode.CLOSE, b"", close_code=event.code, close_reason=event.reason),
            )
            core.finish_protocol(event.code, event.reason, event.reply)
            return True
        if isinstance(event, CloseCompleted):
            core.finish_protocol(event.code, event.reason, b"")
            return True
        assert isinstance(event, ProtocolFailed)
        core.settings.log_info(
            "connection %s: protocol error %d: %s", core.id, event.code, event.reason
        )
        core.fail(event.code, event.reason, event.reply)
        return True

    async def _deliver(self, message: str | bytes) -> None:
        core = self._core
        core.message_received()
        try:
            hook = core.connection.got_message(message)
            if type(hook) is not types.CoroutineType:
                await hook  # an awaitable of another kind: awaited as it is
                return
            coro = cast("Coroutine[Any, Any, None]", hook)
            try:
                trap = coro.send(None)  # run the hook until it suspends, if it does
            except StopIteration:
                return  # it did not: what it sent is written with the rest of the read
            # it waits for something (a flush, I/O of its own): what it sent so far goes out
            # now, not when it returns; the rest of the read is corked again after it
            core.uncork()
            try:
                await _go_on(coro, trap)
            finally:
                core.cork()
        except Exception as exc:
            hook_failed(core, exc)

    async def _raw_data_frame(self, event: DataFrame) -> None:
        if self._core.state is not OPEN:
            return
        if self._assembler is None:
            self._assembler = MessageAssembler()
        action = raw_action(self._core, Frame(event.opcode, event.data, event.fin))
        if action is FrameAction.BREAK:
            return
        message = (
            self._assembler.add(event.data, event.fin)
            if action is FrameAction.PROCESS
            else self._assembler.skip(event.fin)
        )
        if message is not None:
            await self._deliver(message)


def raw_action(core: Readable, frame: Frame) -> FrameAction:
    """Run ``got_raw_message`` (when overridden); BREAK starts a normal close."""
    if not core.protocol.raw_frames:
        return FrameAction.PROCESS
    try:
        action = core.connection.got_raw_message(frame)
    except Exception:
        core.settings.log_error(
            "connection %s: got_raw_message() failed; closing", core.id, exc_info=True
        )
        core.start_close(CloseCode.INTERNAL_SERVER_ERROR, "internal error")
        return FrameAction.CONTINUE
    if action is FrameAction.BREAK:
        core.start_close(CloseCode.NORMAL_CLOSURE, "")
    return action if isinstance(action, FrameAction) else FrameAction.PROCESS


def hook_failed(core: Readable, exc: Exception) -> None:
    """``got_message()`` raised ``exc``: closed with 1011 and logged, unless the connection
    began closing while the hook ran (e.g. a slow consumer), so that its ``send()`` raised:
    expected, not a bug in the hook."""
    log = core.settings
    if isinstance(exc, ConnectionClosedError) and core.state > OPEN:
        log.log_debug("connection %s: closing; got_message() could not send", core.id)
        return
    log.log_error("connection %s: got_message() failed; closing", core.id, exc_info=True)
    core.start_close(CloseCode.INTERNAL_SERVER_ERROR, "internal error")


@types.coroutine
def _go_on(coro: Coroutine[Any, Any, None], trap: Any) -> Generator[Any, Any, None]:
    """Await the rest of a coroutine that was run until its first suspension (``trap``, what it
    yielded to Trio): what ``await coro`` would have done from there, passing Trio's answers
    (values, and exceptions such as a cancellation) on to it."""
    value = trap
    while True:
        try:
            answer = yield value
        except BaseException as exc:
            try:
                value = coro.throw(exc)
            except StopIteration:
                return
        else:
            try:
                value = coro.send(answer)
            except StopIteration:
                return
