"""Where received bytes become hook calls: the reader loop of one connection.

The connection's one task (``_lifecycle.run_connection``) runs :func:`read`: it receives bytes,
feeds the sans-I/O protocol (``_protocol.py``) and dispatches its events, one at a time and in
order, to the hooks (``got_message``, ``got_raw_message``), answering Pings and finishing the
closing handshake.  It stops reading a peer that does not read (backpressure) and handles at
most ``EVENTS_PER_STEP`` events per task step (fairness).
"""

from __future__ import annotations

import enum
import os
from typing import TYPE_CHECKING, cast

import trio

from ._errors import ConnectionClosedError
from ._flusher import plain_socket_fd
from ._protocol import (
    SKIPPED,
    CloseCompleted,
    CloseReceived,
    DataFrame,
    MessageAssembler,
    MessageReceived,
    PingReceived,
    PongReceived,
    ProtocolFailed,
)
from .codec import CloseCode, Frame, Opcode

if TYPE_CHECKING:
    from ._connection import WebSocketConnection

__all__ = [
    "EVENTS_PER_STEP",
    "INFLATE_PER_STEP",
    "LINGER_BYTES",
    "LINGER_QUIET",
    "RECEIVE_BYTES",
    "FrameAction",
    "linger",
    "read",
]

#: Bytes asked of the socket per receive.
RECEIVE_BYTES = 64 * 1024

#: Most protocol events (frames, messages) handled in one task step: a 64 KiB read can hold
#: about 10,900 minimal frames, and a Ping flooder must not hold the event loop for all of them.
EVENTS_PER_STEP = 32

#: Most bytes inflated (permessage-deflate) in one task step: a client may send many small
#: frames that each inflate to ``max_message_size``, and one 64 KiB read could then cost
#: dozens of milliseconds of inflating without a yield.
INFLATE_PER_STEP = 1 << 20

#: After failing a connection (a protocol error, a limit), what the peer still sends is read
#: and discarded, up to ``LINGER_BYTES``, until it closes, sends nothing for ``LINGER_QUIET``
#: seconds, or the closing deadline passes.  Closing a socket with unread data makes the kernel
#: send a reset, which can destroy our Close frame in the peer's receive buffer before it is
#: read: the peer would see 1006 instead of why (say 1009 for a message that is too big, which
#: it was still sending).  The quiet period ends the wait for a peer that answered our Close
#: and waits for us to close (on TLS no FIN can tell it we are done).
LINGER_BYTES = 4 << 20
LINGER_QUIET = 0.25

# the connection states of ``_connection.py`` this module looks at
_OPEN_STATE = 1
_CLOSING_STATE = 2


class FrameAction(enum.Enum):
    """What :meth:`WebSocketConnection.got_raw_message` wants done with a frame."""

    #: handle the frame normally
    PROCESS = "process"
    #: skip the frame (its data is not added to the message; a skipped Ping is not answered)
    CONTINUE = "continue"
    #: end the connection (Close 1000)
    BREAK = "break"


async def read(
    conn: WebSocketConnection, stream: trio.abc.ReceiveStream, initial_data: bytes
) -> bool:
    """Receive and dispatch until the connection is done reading; True if it was failed
    (the peer broke the protocol or a limit, and may still be sending: see :func:`linger`).

    On a plain TCP stream the socket is read with a non-blocking ``read(2)`` after exactly
    one yield: a wait for readability when the last read drained the socket, else a plain
    checkpoint, so a flooding client cannot starve other tasks.  Trio's ``receive_some``
    costs a second scheduling round and a second system call per read.  At most
    ``EVENTS_PER_STEP`` events are handled per task step.

    Backpressure: while this connection's own send queue is more than half full (its peer
    does not read what it is sent, e.g. the echoes of what it floods us with), nothing more
    is read from it, so a peer cannot make us queue without bound by sending.
    """
    protocol = conn._protocol
    queue = conn._queue
    data: bytes = initial_data
    fd = plain_socket_fd(stream)
    while True:
        drained = len(data) < RECEIVE_BYTES  # the last read emptied the socket
        if data:
            protocol.receive_data(data)
            data = b""  # an idle connection holds no bytes it has read (nor, as the events
            # are handled in a frame of their own, its last message)
            done = await _handle_events(conn)
            if done is not None:
                return done
        if queue.over_half():
            # the peer is not reading what it is sent: stop reading it until it has.  Its
            # Pongs and messages wait unread meanwhile, so the timers leave it alone
            # (send_timeout drops a peer that reads nothing at all)
            conn._paused = True
            try:
                await queue.wait_below_half()
            finally:
                conn._paused = False
            # the time we did not read it does not count against it (heartbeat, idle)
            conn._last_received = conn._last_message = trio.current_time()
            conn._ping_sent = 0.0
        if fd >= 0:
            # one yield before every read: wait when the last read drained the socket,
            # else just let other tasks run (a flooding client cannot starve them)
            if drained:
                await trio.lowlevel.wait_readable(fd)
            else:
                await trio.lowlevel.checkpoint()
            try:
                data = os.read(fd, RECEIVE_BYTES)
            except BlockingIOError:  # a spurious wake-up: wait again
                data = b""
                continue
            except OSError:  # ECONNRESET and the like: the peer is gone
                data = b""
        else:
            try:
                data = cast(bytes, await stream.receive_some(RECEIVE_BYTES))
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                data = b""
        if not data:  # the peer closed (or half-closed) without a Close frame
            if conn.close_code is None:
                conn.close_code, conn.close_reason = (
                    CloseCode.ABNORMAL_CLOSURE,
                    "connection lost",
                )
            conn._state = max(conn._state, _CLOSING_STATE)
            # a half-closed peer may still read: tell it why (1006 is never sent)
            close = protocol.close(CloseCode.GOING_AWAY, "")
            if close:
                conn._put_control(close)
            return False
        conn._last_received = trio.current_time()


async def _handle_events(conn: WebSocketConnection) -> bool | None:
    """Dispatch the events of the bytes received so far: None to read on, else whether the
    connection was failed.  At most ``EVENTS_PER_STEP`` events and ``INFLATE_PER_STEP``
    inflated bytes per task step."""
    protocol = conn._protocol
    inflater = protocol._inflater
    handled = 0
    inflated = inflater.inflated_total if inflater is not None else 0
    for event in protocol.events():
        if await dispatch(conn, event):
            return isinstance(event, ProtocolFailed)
        handled += 1
        if handled == EVENTS_PER_STEP or (
            inflater is not None and inflater.inflated_total - inflated > INFLATE_PER_STEP
        ):  # let other connections have their turn
            handled = 0
            await trio.lowlevel.checkpoint()
            inflated = inflater.inflated_total if inflater is not None else 0
    return None


async def linger(stream: trio.abc.Stream) -> None:
    """Our Close is written: send FIN (plain TCP), then read and drop what the peer still
    sends (see ``LINGER_BYTES``; the caller's closing deadline bounds the time)."""
    if isinstance(stream, trio.abc.HalfCloseableStream):
        try:
            await stream.send_eof()
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            return
    discarded = 0
    while discarded < LINGER_BYTES:
        with trio.move_on_after(LINGER_QUIET):
            try:
                data = await stream.receive_some(RECEIVE_BYTES)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                return
            if not data:
                return
            discarded += len(data)
            continue
        return  # quiet


async def dispatch(conn: WebSocketConnection, event: object) -> bool:
    """Act on one protocol event; True when the connection is done reading."""
    if event is SKIPPED:
        return False
    if isinstance(event, MessageReceived):
        if conn._state == _OPEN_STATE:
            await deliver(conn, event.data)
        return False
    if isinstance(event, DataFrame):
        await raw_data_frame(conn, event)
        return False
    if isinstance(event, PingReceived):
        if raw(conn, Frame(Opcode.PING, event.payload)) is FrameAction.PROCESS:
            pong = conn._protocol.pong(event.payload)
            if pong:
                conn._put_control(pong, pong=True)  # not beyond MAX_PONGS_OWED unwritten
        return False
    if isinstance(event, PongReceived):
        if raw(conn, Frame(Opcode.PONG, event.payload)) is FrameAction.PROCESS:
            conn._ping_sent = 0.0  # the heartbeat is answered
        return False
    if isinstance(event, CloseReceived):
        raw(conn, Frame(Opcode.CLOSE, b"", close_code=event.code, close_reason=event.reason))
        conn._finish_protocol(event.code, event.reason, event.reply)
        return True
    if isinstance(event, CloseCompleted):
        conn._finish_protocol(event.code, event.reason, b"")
        return True
    assert isinstance(event, ProtocolFailed)
    conn.handler.log_info("connection %s: protocol error %d: %s", conn.id, event.code, event.reason)
    conn.close_code, conn.close_reason = event.code, event.reason
    conn._finish_protocol(event.code, event.reason, event.reply)
    return True


async def deliver(conn: WebSocketConnection, message: str | bytes) -> None:
    conn._last_message = trio.current_time()
    conn.handler._counters.messages_received += 1
    try:
        await conn.got_message(message)
    except Exception as exc:
        if isinstance(exc, ConnectionClosedError) and not conn.is_open:
            # this connection began closing while the hook ran (e.g. a slow consumer), so
            # its send() raised: expected, not a bug in the hook
            conn.handler.log_debug("connection %s: closing; got_message() could not send", conn.id)
            return
        conn.handler.log_error(
            "connection %s: got_message() failed; closing", conn.id, exc_info=True
        )
        conn._start_close(CloseCode.INTERNAL_SERVER_ERROR, "internal error")


async def raw_data_frame(conn: WebSocketConnection, event: DataFrame) -> None:
    if conn._state != _OPEN_STATE:
        return
    if conn._assembler is None:
        conn._assembler = MessageAssembler()
    action = raw(conn, Frame(event.opcode, event.data, event.fin))
    if action is FrameAction.BREAK:
        return
    message = (
        conn._assembler.add(event.data, event.fin)
        if action is FrameAction.PROCESS
        else conn._assembler.skip(event.fin)
    )
    if message is not None:
        await deliver(conn, message)


def raw(conn: WebSocketConnection, frame: Frame) -> FrameAction:
    """Run ``got_raw_message`` (when overridden); BREAK starts a normal close."""
    if not conn._protocol.raw_frames:
        return FrameAction.PROCESS
    try:
        action = conn.got_raw_message(frame)
    except Exception:
        conn.handler.log_error(
            "connection %s: got_raw_message() failed; closing", conn.id, exc_info=True
        )
        conn._start_close(CloseCode.INTERNAL_SERVER_ERROR, "internal error")
        return FrameAction.CONTINUE
    if action is FrameAction.BREAK:
        conn._start_close(CloseCode.NORMAL_CLOSURE, "")
    return action if isinstance(action, FrameAction) else FrameAction.PROCESS
