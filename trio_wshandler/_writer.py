"""Where frames are written to streams the flusher cannot write: the writer task of one TLS (or
other non-socket) connection.

Plain TCP connections are written by their listener's flusher (``_flusher.py``) with
non-blocking ``write(2)`` calls.  A TLS stream cannot be written without awaiting (``SSLStream``
encrypts and may need to wait for the socket), so such a connection keeps a writer task of its
own, with the flusher's guarantees of order and coalescing up to ``COALESCE_BYTES``.  Trio's
``send_all`` reports no partial progress, so ``send_timeout`` bounds each piece of
``TIMED_CHUNK`` bytes: a peer that reads less than 16 KiB per ``send_timeout`` is dropped.
"""

from __future__ import annotations

import math

import trio

from ._flusher import COALESCE_BYTES, Writable, WriterSettings, WriteTimeout, join
from ._send_queue import SendQueue

__all__ = ["TIMED_CHUNK", "tls_writer", "write_loop"]

#: With a ``send_timeout``, a stream write is cut into pieces of this size, each of which must
#: complete within the timeout: a peer that reads slowly but steadily keeps making progress.
TIMED_CHUNK = 16 * 1024


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
        while data:
            timeout = settings.send_timeout
            piece, data = (
                (data, data[:0]) if timeout is None else (data[:TIMED_CHUNK], data[TIMED_CHUNK:])
            )
            with trio.move_on_after(math.inf if timeout is None else timeout) as scope:
                await stream.send_all(piece)
            if scope.cancelled_caught:
                raise WriteTimeout(f"the stream took less than {len(piece)} bytes in {timeout} s")
        queue.wrote(frames, size)


async def tls_writer(connection: Writable, stream: trio.abc.SendStream) -> None:
    """The writer task of a TLS connection (in the listener's nursery); its scope is handed to
    the connection (``writer_started``), which cancels it when it ends."""
    try:
        with trio.CancelScope() as scope:
            connection.writer_started(scope)
            queue = connection.queue
            if not queue.finished:  # not ended before this task first ran
                await write_loop(queue, stream, connection.settings)
    except Exception as exc:  # a bug too must cost this connection, not the listener
        connection.write_failed(exc, "writer")
    finally:
        connection.writer_stopped()
