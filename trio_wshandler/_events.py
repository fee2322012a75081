"""The events of the receive side: what the sans-I/O protocol (``_protocol.py``, ``_frames.py``)
tells the connection's reader (``_reader.py``), as small frozen values; and the reassembly of
the pieces of a message that wsproto hands over (:class:`MessageAssembler`)."""

from __future__ import annotations

import attrs

from ._options import RateLimit
from .codec import Opcode

__all__ = [
    "SKIPPED",
    "CloseCompleted",
    "CloseReceived",
    "DataFrame",
    "DataSkipped",
    "Event",
    "HandOver",
    "MessageAssembler",
    "MessageReceived",
    "PingReceived",
    "PongReceived",
    "ProtocolFailed",
    "RateRefused",
    "Throttled",
    "ToWsproto",
]


@attrs.frozen
class MessageReceived:
    """A whole message (fragments already joined): ``str`` for Text, ``bytes`` for Binary."""

    data: str | bytes


@attrs.frozen
class DataFrame:
    """One whole data frame; produced instead of MessageReceived in ``raw_frames`` mode."""

    opcode: Opcode
    data: str | bytes
    fin: bool


@attrs.frozen
class PingReceived:
    payload: bytes


@attrs.frozen
class PongReceived:
    payload: bytes


@attrs.frozen
class CloseReceived:
    """The peer started the closing handshake; ``reply`` is our echo of its code, to be sent."""

    code: int
    reason: str
    reply: bytes


@attrs.frozen
class CloseCompleted:
    """The peer answered the Close we sent: the closing handshake is over."""

    code: int
    reason: str


@attrs.frozen
class ProtocolFailed:
    """The peer broke RFC 6455 (or a limit): ``reply`` is our Close with ``code`` (1002, 1007,
    1009), empty if we had already sent one.  The connection must now be failed."""

    code: int
    reason: str
    reply: bytes


@attrs.frozen
class Throttled:
    """A rate limit's bucket is empty (``policy="delay"``): read on after ``seconds``; the
    frame whose header said so is parsed then."""

    seconds: float


@attrs.frozen
class RateRefused:
    """A message refused by a rate limit (``policy="drop"`` or ``"close"``; see ``_rate.py``):
    ``limit`` is the :class:`~trio_wshandler.RateLimit` whose bucket was empty.  ``unread``: the
    parser skips it; else it is compressed with the client's context kept (later messages refer
    to its bytes), so it is inflated all the same, and the protocol discards it."""

    limit: RateLimit
    unread: bool = True
    #: messages refused together: a flooder's whole messages that were all in one read
    count: int = 1


@attrs.frozen
class DataSkipped:
    """A data frame dropped unread because we have sent our Close (:data:`SKIPPED`)."""


#: The one :class:`DataSkipped` event: the reader counts it against its per-step budget, so a
#: peer that floods frames after our Close cannot hold the event loop.
SKIPPED = DataSkipped()


class ToWsproto:
    """From the hot path (``_frames.py``) to the protocol: feed ``data`` to wsproto (the bytes
    of one frame it parses, or of part of it)."""

    __slots__ = ("data",)

    def __init__(self, data: bytes | memoryview) -> None:
        self.data = data  # (a view of the bytes read: wsproto copies what it is given)


class HandOver:
    """Show wsproto the message this parser began, before a frame only wsproto may judge: its
    opcode, the UTF-8 bytes of a character not yet complete, and its size and frames so far."""

    __slots__ = ("frames", "opcode", "pending", "size")

    def __init__(self, opcode: int, pending: bytes, size: int, frames: int) -> None:
        self.opcode = opcode
        self.pending = pending
        self.size = size
        self.frames = frames


Event = (
    DataSkipped
    | MessageReceived
    | DataFrame
    | PingReceived
    | PongReceived
    | CloseReceived
    | CloseCompleted
    | ProtocolFailed
    | Throttled
    | RateRefused
)


class MessageAssembler:
    """Joins the data of consecutive frames (or of the pieces of one frame) into one message.

    Pieces are appended to one growing ``bytearray`` as they arrive (Text as UTF-8, decoded
    once at the end; wsproto has validated it already), so the memory held for a message in
    reassembly stays near its size however it is cut up: a list of parts costs about 56 bytes
    per part, which a client sending empty or one-byte fragments could grow without bound, and
    ``io.StringIO`` peaks at 9 bytes per character on Python 3.11.  A message of one piece (the
    common case) is returned as it came, without a copy.

    ``skip`` supports :attr:`FrameAction.CONTINUE`: a skipped frame adds nothing, and a message
    all of whose frames were skipped is not delivered at all.
    """

    __slots__ = ("_buffer", "_first", "_text")

    def __init__(self) -> None:
        self._first: str | bytes | None = None  # the first piece, kept as it came
        self._buffer: bytearray | None = None  # made when a second piece comes
        self._text = False

    def add(self, data: str | bytes | bytearray, fin: bool) -> str | bytes | None:
        """Add one piece; returns the whole message after its final piece."""
        buffer = self._buffer
        if buffer is None:
            if self._first is None:
                piece = bytes(data) if isinstance(data, bytearray) else data
                if fin:
                    return piece
                self._first = piece
                return None
            first, self._first = self._first, None
            self._text = isinstance(first, str)
            buffer = self._buffer = bytearray(
                first.encode("utf-8") if isinstance(first, str) else first
            )
        buffer += data.encode("utf-8") if isinstance(data, str) else data
        return self._finish() if fin else None

    def skip(self, fin: bool) -> str | bytes | None:
        return self._finish() if fin else None

    def _finish(self) -> str | bytes | None:
        buffer, first = self._buffer, self._first
        self._buffer = self._first = None
        if buffer is None:
            return first
        return buffer.decode("utf-8") if self._text else bytes(buffer)
