"""Where queued frames are flushed: a flusher task per listener, a drain task per backed-up socket.

A producer (``send``, ``send_all``, a Pong, a heartbeat Ping, a Close) puts frames on the
connection's queue (``_send_queue.py``); when that queue goes from empty to non-empty the
connection is put on its listener's :class:`Flusher` list and the flusher is woken, once per
scheduling round however many connections and messages were queued.  The flusher then writes
each listed connection's queued frames with one non-blocking ``write(2)`` (coalesced up to
``COALESCE_BYTES``), without a task step per connection: a paced broadcast (a producer that
yields between messages) costs one task step per message, not one per client, and a burst still
becomes one write per client.

A socket whose kernel buffer is full (the write is partial or would block) is *backed up*: the
rest is written by a drain task of its own, which waits for writability within ``send_timeout``
of *no progress*, then keeps writing what is queued until the queue is empty and hands the
connection back to the flusher.  Drain tasks run in the listener's nursery and are cancelled when
their connection ends.  Only plain TCP sockets on POSIX are written this way; other streams (TLS)
keep a writer task of their own (``_writer.py``) so that one slow TLS client never holds the
flusher.

Never write to a closed socket's number: the kernel reuses descriptor numbers at once, so the
flusher holds the socket object, checks that the connection's queue is not finished (it is
finished when the connection ends) and reads ``fileno()`` at write time, with no checkpoint
between that and the write.

What the flusher needs of a connection is :class:`Writable`: its queue and socket to read, and
the methods that tell it a write failed and that a task of its own writes it.
"""

from __future__ import annotations

import math
import os
from typing import Any, Protocol

import trio

from ._send_queue import SendQueue

__all__ = [
    "BACKLOG",
    "COALESCE_BYTES",
    "WRITES_PER_STEP",
    "Flusher",
    "Writable",
    "WriteTimeout",
    "WriterSettings",
    "plain_socket_fd",
    "write_last_words",
]

#: Most bytes joined into one write (a single larger frame is written alone).
COALESCE_BYTES = 256 * 1024

#: Most connections the flusher writes in one task step (about a millisecond of writes): a
#: broadcast to 10,000 clients must not hold the event loop for all of them at once.
WRITES_PER_STEP = 256

#: Connections waiting for the flusher beyond which the listener's readers stop reading until it
#: has caught up.  When clients' messages make the server send to many (a chat room: each
#: message to everyone), every reader step queues frames for hundreds of connections, and each
#: round of Trio runs every reader before the flusher's next turn: without this, the readers
#: could take all the time and the writes wait seconds.  Holding the readers back instead lets
#: the frames they queue join in one write per client, and slows the senders to the pace at
#: which their messages can be delivered (their own TCP buffers fill).
BACKLOG = WRITES_PER_STEP


class WriteTimeout(Exception):
    """The socket accepted no byte for ``send_timeout`` seconds (the peer stopped reading)."""


def join(frames: list[bytes]) -> bytes:
    return frames[0] if len(frames) == 1 else b"".join(frames)


class WriterSettings(Protocol):
    """Where a writer reads ``send_timeout`` at each wait (the handler)."""

    @property
    def send_timeout(self) -> float | None: ...


class Writable(Protocol):
    """What a writer (the flusher, a drain task, a TLS writer) needs of a connection."""

    @property
    def queue(self) -> SendQueue: ...
    @property
    def sock(self) -> trio.socket.SocketType | None:
        """The plain TCP socket to write to; None before it runs and once it has ended."""

    @property
    def settings(self) -> WriterSettings: ...

    def write_failed(self, exc: BaseException, task: str) -> None:
        """Writing failed (``exc``; in the writer ``task``): the connection ends."""

    def writer_started(self, scope: trio.CancelScope) -> None:
        """A task of its own (a drain or TLS writer, in ``scope``) writes it from now on."""

    def writer_stopped(self) -> None: ...


class Flusher:
    """Writes the queued frames of a listener's plain-TCP connections.  Run :meth:`run` in the
    listener's nursery; drain tasks are started in ``nursery``."""

    __slots__ = ("_caught_up", "_left", "_nursery", "_pending", "_sleeping", "_task")

    def __init__(self, nursery: trio.Nursery) -> None:
        self._nursery = nursery
        self._pending: list[Writable] = []
        self._left = 0  # connections of the round being written, not written yet
        self._task: trio.lowlevel.Task | None = None
        self._sleeping = False
        self._caught_up: trio.Event | None = None  # made when a reader waits for it

    def behind(self) -> bool:
        """More than ``BACKLOG`` connections wait to be written."""
        return self._left + len(self._pending) > BACKLOG

    async def wait_caught_up(self) -> None:
        """Wait until no more than ``BACKLOG`` connections wait to be written."""
        while self.behind():
            if self._caught_up is None:
                self._caught_up = trio.Event()
            await self._caught_up.wait()

    def _progress(self) -> None:
        if self._caught_up is not None and not self.behind():
            self._caught_up.set()
            self._caught_up = None

    def schedule(self, connection: Writable) -> None:
        """List ``connection`` for the next round (its queue just became non-empty)."""
        connection.queue.listed = True
        self._pending.append(connection)
        if self._sleeping:
            self._sleeping = False
            assert self._task is not None
            trio.lowlevel.reschedule(self._task)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        self._task = trio.lowlevel.current_task()
        task_status.started()
        while True:
            if self._pending:
                await trio.lowlevel.checkpoint()  # busy: still let the others run in between
            else:
                self._sleeping = True
                await trio.lowlevel.wait_task_rescheduled(self._abort)
            pending, self._pending = self._pending, []
            self._left = len(pending)
            for done, connection in enumerate(pending, 1):
                if done % WRITES_PER_STEP == 0:  # thousands listed: let the others run too
                    self._left = len(pending) - done
                    self._progress()
                    await trio.lowlevel.checkpoint()
                try:
                    self.write(connection)
                except Exception as exc:  # a bug must cost one connection, not the listener
                    connection.write_failed(exc, "write")
            self._left = 0
            self._progress()

    def _abort(self, raise_cancel: Any) -> trio.lowlevel.Abort:
        self._sleeping = False
        return trio.lowlevel.Abort.SUCCEEDED

    def write(self, connection: Writable) -> None:
        """One non-blocking write of what ``connection`` has queued (also called on overflow,
        to see whether the socket takes the data before the slow-consumer policy applies)."""
        queue = connection.queue
        queue.listed = False
        sock = connection.sock
        if queue.draining or queue.finished or not queue.in_channel or sock is None:
            return  # a drain task has it, nothing to write, or the connection has ended
        fd = sock.fileno()
        if fd < 0:
            return
        frames, size = queue.take(COALESCE_BYTES)
        data = join(frames)
        try:
            sent = os.write(fd, data)
        except BlockingIOError:
            sent = 0
        except OSError as exc:  # EPIPE, ECONNRESET: the peer is gone
            connection.write_failed(exc, "write")
            return
        if sent == size:
            queue.wrote(frames, size)
            if queue.in_channel:  # more than COALESCE_BYTES were queued: next round
                self.schedule(connection)
            return
        queue.draining = True
        self._nursery.start_soon(
            self._drain, connection, frames, size, memoryview(data)[sent:], name="ws drain"
        )

    async def _drain(
        self, connection: Writable, frames: list[bytes], size: int, rest: memoryview
    ) -> None:
        try:
            with trio.CancelScope() as scope:
                connection.writer_started(scope)
                sock = connection.sock
                if sock is None:  # ended before this task first ran
                    return
                await drain(connection.queue, sock, frames, size, rest, connection.settings)
        except Exception as exc:  # a bug too must cost one connection, not the listener
            connection.write_failed(exc, "drain")
        finally:
            connection.writer_stopped()
        # only a drain that wrote everything hands back to the flusher: after a failure a
        # taken batch is lost, and nothing queued behind it may be written (``draining`` stays
        # set, and the connection is ending)


async def drain(
    queue: SendQueue,
    sock: trio.socket.SocketType,
    frames: list[bytes],
    size: int,
    rest: memoryview,
    settings: WriterSettings,
) -> None:
    """Write ``rest`` (what is left of a batch of ``frames``), then whatever else is queued,
    waiting for writability whenever the socket is full, until the queue is empty.

    ``settings.send_timeout`` is read at each wait: a socket that accepts no byte for that long
    raises :class:`WriteTimeout`; one that takes a little at a time never does.
    """
    while True:
        while rest:
            timeout = settings.send_timeout
            with trio.move_on_after(math.inf if timeout is None else timeout) as waited:
                await trio.lowlevel.wait_writable(sock)
            if waited.cancelled_caught:
                raise WriteTimeout(f"the socket took no data for {timeout} s")
            fd = sock.fileno()
            if fd < 0:
                return
            try:
                sent = os.write(fd, rest)
            except BlockingIOError:
                continue
            rest = rest[sent:]
        queue.wrote(frames, size)
        if not queue.in_channel:
            queue.draining = False  # all written: the flusher has it again
            return
        frames, size = queue.take(COALESCE_BYTES)
        rest = memoryview(join(frames))


def plain_socket_fd(stream: trio.abc.SendStream | trio.abc.ReceiveStream) -> int:
    """The file descriptor of a plain TCP stream on a POSIX system, else -1.

    The flusher and the connection's reader use it for non-blocking ``write(2)``/``read(2)``;
    any other stream (TLS, in-memory, Windows) goes through Trio's stream methods.
    """
    if type(stream) is trio.SocketStream and os.name == "posix":
        return stream.socket.fileno()
    return -1


def write_last_words(queue: SendQueue, stream: trio.abc.SendStream, close: bytes) -> bool:
    """Best effort, never waiting: write what is still queued, then ``close`` (our Close frame if
    none was queued yet), with one non-blocking ``write(2)``.  True if it all went out.

    For a connection that ends without its queue having been written (the server's scope was
    cancelled, a deadline expired), so that a client that got its 101 still learns why it is
    dropped (1001) instead of seeing the connection vanish (1006).  Only on plain TCP: a TLS
    record cannot be written without awaiting.  Nothing is written while a batch is in flight or
    was lost (``draining``: the socket was backed up, or its drain failed), since the peer would
    read our frames as the rest of a half-written one, or miss a batch without knowing.
    """
    fd = plain_socket_fd(stream)
    if fd < 0 or queue.draining:
        return False
    data = b"".join(queue.take_all()) + close
    if not data:
        return True
    try:
        return os.write(fd, data) == len(data)
    except OSError:  # would block, or the peer is gone: nothing more can be done
        return False
