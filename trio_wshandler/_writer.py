"""Where queued frames are written: the writer task of one connection.

It waits for the first queued frame, takes every other frame already queued (up to
``COALESCE_BYTES``) and writes them with a single ``send_all``: under fan-out load a connection
gets many small frames between two of its writer's turns, and one system call for all of them is
what makes broadcast cheap.  Each write must complete within ``send_timeout`` seconds, or the
peer is taken to be stuck and :class:`WriteTimeout` is raised.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import trio

from ._send_queue import SendQueue

__all__ = ["COALESCE_BYTES", "WriteTimeout", "write_loop"]

#: Most bytes joined into one ``send_all`` (a single larger frame is written alone).
COALESCE_BYTES = 256 * 1024


class WriteTimeout(Exception):
    """A write did not complete within ``send_timeout`` seconds (the peer stopped reading)."""


def _direct_send(stream: trio.abc.SendStream) -> Callable[[bytes], int] | None:
    """A non-blocking ``write(2)`` on the socket of a plain TCP stream, or None.

    Trio's ``SocketStream.send_all`` yields to the scheduler after every successful send.  When
    the kernel's send buffer has room, which is nearly always, writing directly costs one system
    call and no scheduling round; only a partial write falls back to ``send_all``, which waits
    for the socket to become writable.  The writer task stays the only writer of the socket.
    """
    if type(stream) is not trio.SocketStream:
        return None
    fd = stream.socket.fileno()

    def send(data: bytes) -> int:
        try:
            return os.write(fd, data)
        except BlockingIOError:
            return 0
        except OSError as exc:  # EPIPE, ECONNRESET: the peer is gone
            raise trio.BrokenResourceError(f"write failed: {exc}") from exc

    return send


async def write_loop(
    queue: SendQueue,
    stream: trio.abc.SendStream,
    send_timeout: Callable[[], float | None],
) -> None:
    """Write batches until the queue is closed and drained.

    ``send_timeout`` is read for every write so a changed setting applies at once.  Stream
    errors (``BrokenResourceError`` when the peer vanished) propagate to the caller.
    """
    direct = _direct_send(stream)
    while True:
        batch = await queue.next_batch(COALESCE_BYTES)
        if batch is None:
            return
        frames, size = batch
        data = frames[0] if len(frames) == 1 else b"".join(frames)
        sent = direct(data) if direct is not None else 0
        if sent < size:
            rest = memoryview(data)[sent:] if sent else data
            timeout = send_timeout()
            if timeout is None:
                await stream.send_all(rest)
            else:
                with trio.move_on_after(timeout) as scope:
                    await stream.send_all(rest)
                if scope.cancelled_caught:
                    raise WriteTimeout(
                        f"a write of {size} bytes did not complete within {timeout} s"
                    )
        queue.wrote(frames, size)
        if sent == size and queue.in_channel:
            await trio.lowlevel.checkpoint()  # more than one batch was waiting: be fair
