"""Where queued frames are written: the writer task of one connection.

It waits for the first queued frame, takes every other frame already queued (up to
``COALESCE_BYTES``) and writes them with a single ``send_all``: under fan-out load a connection
gets many small frames between two of its writer's turns, and one system call for all of them is
what makes broadcast cheap.  Each write must complete within ``send_timeout`` seconds, or the
peer is taken to be stuck and :class:`WriteTimeout` is raised.
"""

from __future__ import annotations

import os
from typing import Protocol

import trio

from ._send_queue import SendQueue

__all__ = ["COALESCE_BYTES", "WriteTimeout", "write_last_words", "write_loop"]

#: Most bytes joined into one ``send_all`` (a single larger frame is written alone).
COALESCE_BYTES = 256 * 1024


class WriteTimeout(Exception):
    """A write did not complete within ``send_timeout`` seconds (the peer stopped reading)."""


def plain_socket_fd(stream: trio.abc.SendStream | trio.abc.ReceiveStream) -> int:
    """The file descriptor of a plain TCP stream on a POSIX system, else -1.

    The writer (and the connection's reader) use it for non-blocking ``write(2)``/``read(2)``;
    any other stream (TLS, in-memory, Windows) goes through Trio's stream methods.
    """
    if type(stream) is trio.SocketStream and os.name == "posix":
        return stream.socket.fileno()
    return -1


class WriterSettings(Protocol):
    """Where the writer reads ``send_timeout`` for each write (the handler)."""

    @property
    def send_timeout(self) -> float | None: ...


async def write_loop(
    queue: SendQueue, stream: trio.abc.SendStream, settings: WriterSettings
) -> None:
    """Write batches until the queue is closed and drained.

    On a plain TCP stream a batch is written with a non-blocking ``write(2)`` on the socket:
    Trio's ``SocketStream.send_all`` yields to the scheduler after every successful send, and
    when the kernel's send buffer has room, which is nearly always, one system call with no
    scheduling round is all a write needs.  Only a partial write falls back to ``send_all``,
    which waits for the socket to become writable, within ``send_timeout`` (read for every such
    write, so a changed setting applies at once).  The writer stays the only writer of the socket.
    Stream errors (``BrokenResourceError`` when the peer vanished) propagate to the caller.
    """
    fd = plain_socket_fd(stream)
    receive = queue.receive_channel
    while True:
        if queue.in_channel:  # frames are waiting: take them without yielding
            frames, size = queue.take(COALESCE_BYTES)
        else:
            try:
                first = await receive.receive()
            except trio.EndOfChannel:
                return
            frames, size = queue.take(COALESCE_BYTES, first)
        data = frames[0] if len(frames) == 1 else b"".join(frames)
        sent = 0
        if fd >= 0:
            try:
                sent = os.write(fd, data)
            except BlockingIOError:
                pass
            except OSError as exc:  # EPIPE, ECONNRESET: the peer is gone
                raise trio.BrokenResourceError(f"write failed: {exc}") from exc
        if sent < size:
            rest = memoryview(data)[sent:] if sent else data
            timeout = settings.send_timeout
            queue.partial = True  # stays set if this is cancelled half-way
            if timeout is None:
                await stream.send_all(rest)
            else:
                with trio.move_on_after(timeout) as scope:
                    await stream.send_all(rest)
                if scope.cancelled_caught:
                    raise WriteTimeout(
                        f"a write of {size} bytes did not complete within {timeout} s"
                    )
            queue.partial = False
        queue.wrote(frames, size)
        if sent == size and queue.in_channel:
            await trio.lowlevel.checkpoint()  # more than one batch was waiting: be fair


def write_last_words(queue: SendQueue, stream: trio.abc.SendStream, close: bytes) -> bool:
    """Best effort, never waiting: write what is still queued, then ``close`` (our Close frame if
    none was queued yet), with one non-blocking ``write(2)``.  True if it all went out.

    For a connection that ends without its writer having drained the queue (the server's scope
    was cancelled, a deadline expired), so that a client that got its 101 still learns why it is
    dropped (1001) instead of seeing the connection vanish (1006).  Only on plain TCP: a TLS
    record cannot be written without awaiting.  Nothing is written after a write that was cut
    short, since the peer would read our Close as the rest of a half-written frame.
    """
    fd = plain_socket_fd(stream)
    if fd < 0 or queue.partial:
        return False
    data = b"".join(queue.take_all()) + close
    if not data:
        return True
    try:
        return os.write(fd, data) == len(data)
    except OSError:  # would block, or the peer is gone: nothing more can be done
        return False
