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
  ``send_timeout`` bounds each ``send``: the timer sweep ends a connection whose send has been
  under way that long (Hypercorn shields its writes from cancellation: the writer, in the
  mount's nursery, then sends the Close that says why after that send, if it ever ends).
* **Heartbeat**: an ASGI application can send no Ping and sees no Pong, so the handler's
  ``heartbeat`` and ``pong_timeout`` do not apply (the server's own Pings do:
  ``ASGIMount.configure``); ``idle_timeout`` does.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable
from contextlib import suppress
from functools import partial
from typing import TYPE_CHECKING, Any, Protocol

import attrs
import trio

from ._asgi_messages import CloseRequest, LastDecoded, Unframer
from ._flusher import COALESCE_BYTES
from ._lifecycle import call_registered, prepare_connection, retire
from ._reader import FrameAction, hook_failed, raw_action
from ._state import OPEN
from ._stats import Counters
from ._throttle import refused, wait
from ._timers import Timers
from ._writer import TIMED_CHUNK
from .codec import CloseCode, Frame, Opcode, is_sendable_close_code

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


#: How long the Close of a connection ended from outside may take to go to the server (the
#: first thing in the end hooks' ``close_timeout``).
LAST_WORDS_TIMEOUT = 0.25


@attrs.frozen
class Disconnected:
    """The server says the client is gone (``websocket.disconnect``), with the code it gives
    (Hypercorn: 1000 after our Close was answered, else 1006)."""

    code: int


@attrs.frozen
class MountTasks:
    """What a mounted connection needs from its mount: the timer sweep, the mount's nursery
    (where its writer runs, and a Quart-Trio connection: Quart cancels a route whose client
    left) and the broadcast frame decoded last."""

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
    """What the reader, the writer and the end of one mounted connection tell each other."""

    __slots__ = ("close_sent", "done", "ended", "gone", "last_close", "sending", "waiting")

    def __init__(self) -> None:
        self.close_sent = False  # our Close went to the server
        self.gone = False  # the server said the client is gone
        self.ended = False  # the connection has ended: the writer sends no more data
        self.sending = False  # the writer awaits a send
        self.last_close: tuple[int, str] | None = None  # the Close the writer ends with
        self.waiting: trio.CancelScope | None = None  # the writer's wait for frames
        self.done = trio.Event()  # the writer has ended

    def end(self, core: ConnectionCore[Any], transport: Transport) -> Callable[[], Awaitable[None]]:
        """The connection ends: unless the client was told, or is gone, it is told why, at once
        if the writer is idle (what the returned function does, first in the end hooks' time),
        else by the writer once its send is done (the server writes a message whole, or cannot
        be cancelled in it: Hypercorn), so that the Close comes after the whole message."""
        self.ended = True
        if self.waiting is not None:
            self.waiting.cancel()
        if self.close_sent or self.gone:
            return trio.lowlevel.checkpoint
        if core.close_code is None:  # ended from outside: the server is stopping
            core.finish_protocol(CloseCode.GOING_AWAY, "server is stopping", b"")
        code = core.close_code
        if code is None or not is_sendable_close_code(code):
            return trio.lowlevel.checkpoint  # (1006: the server failed us)
        if self.sending:
            self.last_close = (code, core.close_reason)
            return trio.lowlevel.checkpoint
        self.close_sent = True
        return partial(_last_close, transport, code, core.close_reason)


async def _last_close(transport: Transport, code: int, reason: str) -> None:
    with suppress(Exception), trio.move_on_after(LAST_WORDS_TIMEOUT):
        await transport.close(code, reason)


async def start_in_mount(
    core: ConnectionCore[Any] | None,
    cx: CallContext,
    hdr: Request,
    admission: Admission,
    transport: Transport,
    tasks: MountTasks,
    stopping: str | None = None,
) -> None:
    """Run the connection made for an accepted request, holding its cap slot (``admission``)
    while it runs (None: ``get_connection`` failed, and the client is told 1011)."""
    if core is None:
        await transport.close(CloseCode.INTERNAL_SERVER_ERROR, "internal error")
        return
    prepare_connection(core, cx, hdr, stopping=stopping, extensions="")  # (the server's deflate)
    admission.started(core.id)
    try:
        await run_mounted(core, transport, tasks)
    finally:
        admission.ended(core.id)


async def run_mounted(core: ConnectionCore[Any], transport: Transport, tasks: MountTasks) -> None:
    """Run a connection accepted through ``transport`` until it has ended and its hooks ran,
    then, within ``close_timeout``, until its writer has told the client why (its task is the
    server's for this client: when it ends, the server closes with a code of its own,
    Hypercorn 1011).  The writer runs in the mount's nursery: a send that the server holds
    (Hypercorn shields its writes) while its client reads nothing must not hold this task, or
    the server, which closes the socket once it ends, could never stop."""
    core.mounted()
    core.hub.registry.add(core)
    opened = core.open(tasks.timers)
    run = _Run()
    writer = partial(_writer, core, transport, run, Unframer(tasks.last))
    tasks.nursery.start_soon(writer, name="trio_wshandler ASGI writer")
    try:
        with core.cancel_scope() as scope:
            if await call_registered(core):
                tasks.timers.add(core)
            await _read(core, transport, run)
        if scope.cancelled_caught:
            core.timed_out()
    finally:
        closing = run.end(core, transport)
        core.end(None)
        await retire(core, opened, closing)
    with trio.move_on_after(core.settings.close_timeout):
        await run.done.wait()


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
            Counters.count(core.counters.protocol_errors, CloseCode.MESSAGE_TOO_BIG)
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
    """Send the frames queued for the connection as messages, in order, until it ends; then
    the Close that tells the client why, if it was not told.  It is not cancelled when the
    connection ends (its hooks run meanwhile): a server may hold a send for as long as its
    client reads nothing (Hypercorn shields its writes), and the Close must come after.  (The
    mount's nursery cancels it when the mount stops.)"""
    try:
        if not core.queue.finished:  # (not ended before this task first ran)
            await _write_queue(core, transport, run, unframer)
        if run.last_close is not None and not (run.close_sent or run.gone):
            run.close_sent = True
            await transport.close(*run.last_close)
    except Exception as exc:  # the server failed us, or a bug: this connection ends
        if not run.ended:
            core.write_failed(exc, "ASGI writer")
        else:  # (a server that refuses to send to a client that left)
            core.settings.log_debug("connection %s: after its end: %r", core.id, exc)
    finally:
        run.done.set()


async def _write_queue(
    core: ConnectionCore[Any], transport: Transport, run: _Run, unframer: Unframer
) -> None:
    queue = core.queue
    receive = queue.receive_channel
    while not run.ended:
        if queue.in_channel:
            frames, size = queue.take(COALESCE_BYTES)
        else:
            with trio.CancelScope() as run.waiting:
                try:
                    first = await receive.receive()
                except trio.EndOfChannel:
                    return
            run.waiting = None
            if run.ended:
                return
            frames, size = queue.take(COALESCE_BYTES, first)
        await _send_batch(core, transport, run, unframer, frames)
        if not run.ended:  # (after its end, its counts have joined the handler's)
            queue.wrote(frames, size)


async def _send_batch(
    core: ConnectionCore[Any],
    transport: Transport,
    run: _Run,
    unframer: Unframer,
    frames: list[bytes],
) -> None:
    """Send a batch's messages.  Each send is timed by the timer sweep (``queue.sending``):
    a server may shield its write from cancellation (Hypercorn does), so a cancel scope here
    could not cut it short.  A send may take ``send_timeout`` per ``TIMED_CHUNK`` bytes of its
    message, as a TLS write under ``serve()``: a client that reads slowly but steadily is not
    dropped for the size of a message."""
    queue = core.queue
    timeout = core.settings.send_timeout
    for frame in frames:
        late = math.inf
        if timeout is not None:
            late = trio.current_time() + timeout * (1 + (len(frame) - 1) // TIMED_CHUNK)
        for message in unframer.feed(frame):
            if run.close_sent or run.ended:
                return
            queue.sending(late)
            run.sending = True
            if isinstance(message, CloseRequest):
                run.close_sent = True
                await transport.close(message.code, message.reason)
            else:
                await transport.send(message)
            run.sending = False
