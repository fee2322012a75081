"""Where frames are written to streams the flusher cannot write: the writer task of one TLS (or
other non-socket) connection, and the last words of a connection that ends abruptly.

Plain TCP connections are written by their listener's flusher (``_flusher.py``) with
non-blocking ``write(2)`` calls.  A TLS stream cannot be written without awaiting (``SSLStream``
encrypts and may need to wait for the socket), so such a connection keeps a writer task of its
own, which keeps every guarantee of the flusher: order, coalescing up to ``COALESCE_BYTES``, and
``send_timeout`` as a bound on *no progress*.
"""

from __future__ import annotations

import math
import os
from typing import Protocol

import trio

from ._flusher import COALESCE_BYTES, WriteTimeout, join
from ._send_queue import SendQueue

__all__ = ["TIMED_CHUNK", "plain_socket_fd", "write_last_words", "write_loop"]

#: With a ``send_timeout``, a stream write is cut into pieces of this size, each of which must
#: complete within the timeout: a peer that reads slowly but steadily keeps making progress.
TIMED_CHUNK = 16 * 1024


def plain_socket_fd(stream: trio.abc.SendStream | trio.abc.ReceiveStream) -> int:
    """The file descriptor of a plain TCP stream on a POSIX system, else -1.

    The flusher and the connection's reader use it for non-blocking ``write(2)``/``read(2)``;
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

    Stream errors (``BrokenResourceError`` when the peer vanished) propagate to the caller;
    :class:`WriteTimeout` when a piece of ``TIMED_CHUNK`` bytes makes no progress within
    ``send_timeout`` (read for every piece, so a changed setting applies at once).
    """
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
        data = memoryview(join(frames))
        queue.partial = True  # stays set if this is cancelled half-way
        while data:
            timeout = settings.send_timeout
            piece, data = (
                (data, data[:0]) if timeout is None else (data[:TIMED_CHUNK], data[TIMED_CHUNK:])
            )
            with trio.move_on_after(math.inf if timeout is None else timeout) as scope:
                await stream.send_all(piece)
            if scope.cancelled_caught:
                raise WriteTimeout(f"the stream took less than {len(piece)} bytes in {timeout} s")
        queue.partial = False
        queue.wrote(frames, size)


def write_last_words(queue: SendQueue, stream: trio.abc.SendStream, close: bytes) -> bool:
    """Best effort, never waiting: write what is still queued, then ``close`` (our Close frame if
    none was queued yet), with one non-blocking ``write(2)``.  True if it all went out.

    For a connection that ends without its queue having been written (the server's scope was
    cancelled, a deadline expired), so that a client that got its 101 still learns why it is
    dropped (1001) instead of seeing the connection vanish (1006).  Only on plain TCP: a TLS
    record cannot be written without awaiting.  Nothing is written while the socket is backed
    up (a drain task had it) or after a write that was cut short, since the peer would read our
    Close as the rest of a half-written frame.
    """
    fd = plain_socket_fd(stream)
    if fd < 0 or queue.partial or queue.draining:
        return False
    data = b"".join(queue.take_all()) + close
    if not data:
        return True
    try:
        return os.write(fd, data) == len(data)
    except OSError:  # would block, or the peer is gone: nothing more can be done
        return False
