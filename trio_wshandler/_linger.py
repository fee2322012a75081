"""Where a failed connection's last bytes are read: after our Close for a protocol error or a
limit, what the peer still sends is read and dropped for a while (:func:`linger`), so that our
Close reaches it.  Run by ``_lifecycle.run_connection`` after the reader (``_reader.py``)."""

from __future__ import annotations

import trio

from ._reader import RECEIVE_BYTES

__all__ = ["LINGER_BYTES", "LINGER_QUIET", "linger"]

#: After failing a connection (a protocol error, a limit), what the peer still sends is read
#: and discarded, up to ``LINGER_BYTES``, until it closes, sends nothing for ``LINGER_QUIET``
#: seconds, or the closing deadline passes.  Closing a socket with unread data makes the kernel
#: send a reset, which can destroy our Close frame in the peer's receive buffer before it is
#: read: the peer would see 1006 instead of why (say 1009 for a message that is too big, which
#: it was still sending).  The quiet period ends the wait for a peer that answered our Close
#: and waits for us to close (on TLS no FIN can tell it we are done).
LINGER_BYTES = 4 << 20
LINGER_QUIET = 0.25


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
