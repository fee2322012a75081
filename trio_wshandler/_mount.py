"""The life of a connection under an ASGI server (Hypercorn, Quart-Trio), which parses and
writes the frames itself: registered, read, written and removed as under ``serve()``
(``_lifecycle.py``), through a :class:`Transport`.

What differs, and why:

* **Reading**: the server hands over whole messages.  Each is checked against
  ``max_message_size`` (1009) and the rate limits (per message, after the server read it),
  then given to ``got_message``; while the hook runs nothing more is received, and the
  server's own bounded queue (Hypercorn's ``max_app_queue_size``) stops it reading the
  client: the same backpressure as under ``serve()``.  ``got_raw_message`` sees each message
  as one whole frame.
* **Writing**: the connection's send queue is the same bounded queue of encoded frames, so
  ``send_all`` encodes once and the slow-consumer policy, ``flush()`` and the counters hold.
  One writer task per connection takes them out, turns them back into messages
  (``_asgi_messages.Unframer``) and awaits the server's ``send`` for each: the server frames
  (and compresses, if it negotiated permessage-deflate) each message for each client.
  ``send_timeout`` bounds each ``send``.
* **Heartbeat**: an ASGI application can send no Ping and sees no Pong, so the handler's
  ``heartbeat`` and ``pong_timeout`` do not apply (the server's own Pings do:
  ``ASGIMount.configure``); ``idle_timeout`` does.
"""

from __future__ import annotations

import math
from contextlib import suppress
from functools import partial
from typing import TYPE_CHECKING, Any, Protocol

import attrs
import trio

from ._asgi_messages import CloseRequest, LastDecoded, Unframer
from ._flusher import COALESCE_BYTES, WriteTimeout
from ._lifecycle import call_registered, prepare_connection, retire
from ._reader import FrameAction, hook_failed, raw_action
from ._state import OPEN
from ._throttle import refused, wait
from ._timers import Timers
from .codec import CloseCode, Frame, Opcode

if TYPE_CHECKING:
    from ._admission import Admission
    from ._core import ConnectionCore
    from ._types import CallContext, Request

__all__ = [
    "LAST_WORDS_TIMEOUT",
    "Disconnected",
    "MountTasks",
    "Transport",
    "run_mounted",
    "start_in_mount",
]


#: How long the Close of a connection ended from outside may take to go to the server (it is
#: the first thing in the end hooks' ``close_timeout``: a client that reads nothing must not
#: leave the hooks no time).
LAST_WORDS_TIMEOUT = 0.25


@attrs.frozen
class Disconnected:
    """The server says the client is gone (``websocket.disconnect``), with the code it gives
    (Hypercorn: 1000 after our Close was answered, else 1006)."""

    code: int


@attrs.frozen
class MountTasks:
    """What a mounted connection needs from its mount: the timer sweep, the nursery its writer
    runs in (the mount's, not the connection's: a write that the server shields, to a client
    that reads nothing, must not hold the connection's end), and the broadcast frame decoded
    last."""

    timers: Timers
    nursery: trio.Nursery
    last: LastDecoded


class Transport(Protocol):
    """What a connection needs of the server it is mounted in (an ASGI app's ``receive`` and
    ``send``, or a Quart-Trio ``websocket``)."""

    async def receive(self) -> str | bytes | Disconnected: ...

    async def send(self, message: str | bytes) -> None: ...

    async def close(self, code: int, reason: str) -> None: ...


class _Run:
    """What the writer and the reader of one mounted connection tell each other."""

    __slots__ = ("close_sent", "gone", "sending")

    def __init__(self) -> None:
        self.close_sent = False  # our Close went to the server
        self.gone = False  # the server said the client is gone
        self.sending = False  # a send to the server is under way (or was cut by a cancel)


async def start_in_mount(
    core: ConnectionCore[Any],
    cx: CallContext,
    hdr: Request,
    admission: Admission,
    transport: Transport,
    tasks: MountTasks,
) -> None:
    """Run the connection made for an accepted request, holding its cap slot (``admission``)
    while it runs."""
    prepare_connection(core, cx, hdr, stopping=None, extensions="")  # (the server's deflate)
    admission.started(core.id)
    try:
        await run_mounted(core, transport, tasks)
    finally:
        admission.ended(core.id)


async def run_mounted(core: ConnectionCore[Any], transport: Transport, tasks: MountTasks) -> None:
    """Run a connection accepted through ``transport`` until it has ended and its hooks ran."""
    core.mounted()
    core.hub.registry.add(core)
    opened = core.open(tasks.timers)
    run = _Run()
    try:
        with core.cancel_scope() as scope:
            writer = partial(_writer, core, transport, run, Unframer(tasks.last))
            tasks.nursery.start_soon(writer, name="trio_wshandler ASGI writer")
            if await call_registered(core):
                tasks.timers.add(core)
            await _read(core, transport, run)
        if scope.cancelled_caught:
            core.timed_out()
    finally:
        # ended from outside (the server is stopping, a deadline): the client learns why,
        # unless a message to it was cut by the cancellation (a Close after half a frame
        # would be read as the rest of it) or the server does not take it at once
        told = run.close_sent or run.gone or run.sending
        closing = trio.lowlevel.checkpoint if told else partial(_last_close, transport)
        core.end(None)
        await retire(core, opened, closing)


async def _last_close(transport: Transport) -> None:
    with suppress(Exception), trio.move_on_after(LAST_WORDS_TIMEOUT):
        await transport.close(CloseCode.GOING_AWAY, "server is stopping")


async def _read(core: ConnectionCore[Any], transport: Transport, run: _Run) -> None:
    """Deliver messages until the server says the client is gone (after our Close: when the
    client answered it, within ``close_timeout``)."""
    host = core.settings
    limit = host.limits.max_message_size
    raw = core.protocol.raw_frames
    while True:
        message = await transport.receive()
        if isinstance(message, Disconnected):
            run.gone = True
            core.finish_protocol(message.code, "", b"")
            return
        if core.state is not OPEN:
            continue  # what the client sent before it read our Close
        core.received(trio.current_time())
        if _too_big(message, limit):
            host.log_info("connection %s: message over %d bytes; closing", core.id, limit)
            reason = "message too big"
            core.fail(CloseCode.MESSAGE_TOO_BIG, reason, core.protocol.close(1009, reason))
        elif await _admitted(core, message) and (not raw or _whole(core, message)):
            core.message_received()
            await _deliver(core, message)
            queue = core.queue
            if queue.over_half():  # the client does not read what we send: stop reading it
                core.pause()
                await queue.wait_below_half()
                core.resume(trio.current_time())
        if core.state is not OPEN:  # (fail() sets no deadline: its reader lingers elsewhere)
            core.set_deadline(host.close_timeout)


def _too_big(message: str | bytes, limit: int) -> bool:
    size = len(message)
    if size > limit:
        return True
    if isinstance(message, str) and size * 4 > limit:  # up to 4 bytes a character
        return len(message.encode("utf-8")) > limit
    return False


def _close(core: ConnectionCore[Any], code: int) -> bytes:
    return core.protocol.close(code, "message too big")


async def _admitted(core: ConnectionCore[Any], message: str | bytes) -> bool:
    """The rate limits, charged per whole message (the server read it already)."""
    gate = core.protocol.gate
    if gate is None or not gate.limiting:
        return True
    size = len(message) if isinstance(message, bytes) else len(message.encode("utf-8"))
    while True:
        verdict = gate.admit(size, True)
        if verdict is None:
            return True
        if isinstance(verdict, float):  # "delay": nothing more of this client meanwhile
            await wait(core, verdict)
            if core.state is not OPEN:
                return False
            continue
        refused(core, verdict, 1)  # "drop" (the hook told), or "close" (1008)
        return False


def _whole(core: ConnectionCore[Any], message: str | bytes) -> bool:
    """``got_raw_message`` sees a whole message as one final frame: True to deliver it."""
    opcode = Opcode.TEXT if isinstance(message, str) else Opcode.BINARY
    return raw_action(core, Frame(opcode, message, True)) is FrameAction.PROCESS


async def _deliver(core: ConnectionCore[Any], message: str | bytes) -> None:
    try:
        await core.connection.got_message(message)
    except Exception as exc:
        hook_failed(core, exc)


async def _writer(
    core: ConnectionCore[Any], transport: Transport, run: _Run, unframer: Unframer
) -> None:
    """Take the frames queued for the connection and send them as messages, in order."""
    queue = core.queue
    try:
        with trio.CancelScope() as scope:
            core.writer_started(scope)
            if queue.finished:  # the connection ended before this task first ran
                return
            receive = queue.receive_channel
            while True:
                if queue.in_channel:
                    frames, size = queue.take(COALESCE_BYTES)
                else:
                    try:
                        first = await receive.receive()
                    except trio.EndOfChannel:
                        return
                    frames, size = queue.take(COALESCE_BYTES, first)
                await _send_batch(core, transport, run, unframer, frames)
                queue.wrote(frames, size)
    except Exception as exc:  # the server failed us, or a bug: this connection ends
        core.write_failed(exc, "ASGI writer")
    finally:
        core.writer_stopped()


async def _send_batch(
    core: ConnectionCore[Any],
    transport: Transport,
    run: _Run,
    unframer: Unframer,
    frames: list[bytes],
) -> None:
    """Send a batch's messages, each within ``send_timeout`` (give or take an eighth of it:
    one cancel scope for the batch, whose deadline is moved on only once an eighth of the
    timeout has passed; a scope per message cost 10% of a delivery, a deadline moved at every
    message 7% at 1,000 clients)."""
    timeout = core.settings.send_timeout
    start = math.inf if timeout is None else trio.current_time() + timeout
    with trio.CancelScope(deadline=start) as scope:
        slack = 0.0 if timeout is None else timeout / 8
        for frame in frames:
            for message in unframer.feed(frame):
                if run.close_sent:
                    return
                if timeout is not None:
                    now = trio.current_time()
                    if scope.deadline - now < timeout - slack:
                        scope.deadline = now + timeout
                run.sending = True
                if isinstance(message, CloseRequest):
                    run.close_sent = True
                    await transport.close(message.code, message.reason)
                else:
                    await transport.send(message)
                run.sending = False
    if scope.cancelled_caught:  # (run.sending stays set: nothing more goes out)
        raise WriteTimeout(f"the server took no message in {timeout} s")
