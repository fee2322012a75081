"""Where incoming bytes become messages: the sans-I/O protocol core of one connection.

This module does no I/O.  :class:`WebSocketProtocol` feeds received bytes to wsproto's
``FrameProtocol`` (which parses frames, unmasks, validates RSV bits, opcodes, fragment
sequences, control-frame rules, Close payloads and UTF-8) and turns its frames into the few
events the connection's reader task acts on.  It adds what wsproto leaves to the
application: the message size limit (checked on each frame *header*, so a frame that declares a
huge length is refused before any of its payload is buffered), reassembly of fragments into
whole messages, and the rules of the closing handshake (who closed, what to answer).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import cast

import attrs
from wsproto.extensions import Extension
from wsproto.frame_protocol import (
    CloseReason,
    Frame,
    FrameDecoder,
    FrameProtocol,
    ParseFailed,
    RsvBits,
)
from wsproto.frame_protocol import Opcode as WsOpcode

from ._deflate import Inflater
from ._extensions import DeflateAgreement
from ._state import CLOSE_DONE, CLOSE_RECEIVED, CLOSE_SENT, NO_CLOSE
from ._stats import Counters
from .codec import CloseCode, Opcode, encode_message

__all__ = [
    "SKIPPED",
    "CloseCompleted",
    "CloseReceived",
    "DataFrame",
    "DataSkipped",
    "MessageAssembler",
    "MessageReceived",
    "PingReceived",
    "PongReceived",
    "ProtocolFailed",
    "WebSocketProtocol",
]


# ---------------------------------------------------------------- events


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
class DataSkipped:
    """A data frame dropped unread because we have sent our Close (:data:`SKIPPED`)."""


#: The one :class:`DataSkipped` event: the reader counts it against its per-step budget, so a
#: peer that floods frames after our Close cannot hold the event loop.
SKIPPED = DataSkipped()


Event = (
    DataSkipped
    | MessageReceived
    | DataFrame
    | PingReceived
    | PongReceived
    | CloseReceived
    | CloseCompleted
    | ProtocolFailed
)


# ---------------------------------------------------------------- inbound limits


def compressed_slack(max_size: int, fragments: int) -> int:
    """How many bytes more than ``max_size`` a compressed message may have on the wire.

    Deflate adds a few bytes per block to data it cannot compress: Node's ``ws`` sends 1 MiB of
    random bytes as 1,048,902 bytes, zlib with memLevel 1 as 1,089,842 (4 %), and fixed Huffman
    codes could add 6 %; and each flush a few more (a client that flushes every fragment, as
    websockets does, adds up to about 6 bytes per fragment).  An eighth of the limit plus
    4 KiB and 16 bytes per fragment covers all of these with room to spare, and still bounds
    what a client can make us read for a message that inflates to little or nothing.
    """
    return (max_size >> 3) + 4096 + 16 * fragments


#: A Close code the IANA registry allows (Bad Gateway) that wsproto 1.3 rejects as reserved.
_UNKNOWN_TO_WSPROTO = 1014
#: What :class:`_InboundLimits` lets wsproto see instead (any code wsproto accepts will do).
_STAND_IN = 1011


class _InboundLimits(Extension):
    """Sees every frame before wsproto acts on it: the size and fragment limits, and Close codes.

    It uses wsproto's public extension hooks (never negotiated, applied locally after the
    handshake, claiming no RSV bits, so wsproto's reserved-bit validation is unchanged):

    * ``frame_inbound_header`` sees every frame header before its payload: a message whose frames
      declare more than ``max_size`` payload bytes in all, or that has more than
      ``max_fragments`` frames, is refused (1009) there, so the check costs nothing per byte,
      works even when the payload never arrives, and makes empty fragments count.
    * ``frame_inbound_payload_data`` sees a Close frame's payload (control frames arrive whole):
      a peer's 1014, which RFC 6455's registry allows but wsproto refuses, is passed to wsproto
      as a code it knows and restored by :class:`WebSocketProtocol` (``peer_close_code``).
    """

    name = "trio-wshandler-inbound-limits"

    def __init__(self, max_size: int, max_fragments: int) -> None:
        self.max_size = max_size
        self.max_fragments = max_fragments
        # payload bytes and frames of the current message's frames before the current one
        # (counted when a frame is complete: wsproto may call the header hook twice for one
        # frame, when its masking key arrives after its length, so that hook only checks)
        self._done_bytes = 0
        self._done_frames = 0
        self._frame_bytes = 0  # the same, including the current frame
        self._frame_frames = 0
        self._data_frame = False  # the current frame is a Text, Binary or Continuation frame
        self._compressed = False  # the current message has RSV1 (permessage-deflate)
        #: which limit refused the current message ("size" or "fragments"), for the reason text
        self.tripped = ""
        self._close_frame = False
        #: the code of the peer's Close when wsproto was shown a stand-in, else None
        self.peer_close_code: int | None = None

    def enabled(self) -> bool:
        return True

    def offer(self) -> bool:  # never negotiated: it is applied locally after the handshake
        return False

    def frame_inbound_header(
        self,
        proto: FrameDecoder | FrameProtocol,
        opcode: WsOpcode,
        rsv: RsvBits,
        payload_length: int,
    ) -> CloseReason | RsvBits:
        if opcode.iscontrol():
            self._data_frame = False
            self._close_frame = opcode is WsOpcode.CLOSE
            return RsvBits(False, False, False)
        if opcode is WsOpcode.CONTINUATION:
            total, frames = self._done_bytes + payload_length, self._done_frames + 1
        else:
            total, frames = payload_length, 1
            self._compressed = rsv.rsv1
        self._frame_bytes, self._frame_frames, self._data_frame = total, frames, True
        limit = self.max_size
        if self._compressed:
            # a compressed message is bounded once inflated (``_deflate.Inflater``); on the wire
            # it may exceed the limit by what deflate adds to incompressible data, and no more
            limit += compressed_slack(self.max_size, frames)
        if total > limit:
            self.tripped = "size"
            return CloseReason.MESSAGE_TOO_BIG
        if frames > self.max_fragments:
            self.tripped = "fragments"
            return CloseReason.MESSAGE_TOO_BIG
        return RsvBits(False, False, False)

    def frame_inbound_complete(
        self, proto: FrameDecoder | FrameProtocol, fin: bool
    ) -> bytes | CloseReason | None:
        if self._data_frame:  # a data frame is complete: it counts for the next ones
            self._done_bytes, self._done_frames = self._frame_bytes, self._frame_frames
            self._data_frame = False
        return None

    def frame_inbound_payload_data(
        self, proto: FrameDecoder | FrameProtocol, data: bytes
    ) -> bytes | CloseReason:
        if self._close_frame:
            self._close_frame = False
            if len(data) >= 2 and int.from_bytes(data[:2], "big") == _UNKNOWN_TO_WSPROTO:
                self.peer_close_code = _UNKNOWN_TO_WSPROTO
                return _STAND_IN.to_bytes(2, "big") + data[2:]
        return data


# ---------------------------------------------------------------- reassembly


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


# ---------------------------------------------------------------- the protocol


class WebSocketProtocol:
    """The protocol state of one server-side connection after a successful upgrade.

    ``receive_data(bytes)`` then iterate ``events()``.  With ``raw_frames=True`` data arrives
    as one :class:`DataFrame` per frame (for ``got_raw_message``) instead of whole messages.
    Data that arrives after we have sent a Close is discarded, as RFC 6455 section 1.4 allows.

    Frames are parsed and validated by wsproto's ``FrameProtocol``; the four states of the
    closing handshake are kept here.  (wsproto's ``Connection`` adds only those states and an
    event queue on top of it, which every idle connection would carry: a deque alone is 624
    bytes, and each message would cost an event object more.)
    """

    __slots__ = (
        "_assembler",
        "_counters",
        "_in_message",
        "_inflater",
        "_limits",
        "_proto",
        "_state",
        "raw_frames",
    )

    def __init__(
        self,
        *,
        max_message_size: int,
        max_fragments: int,
        raw_frames: bool = False,
        counters: Counters | None = None,
    ) -> None:
        # bytes received, Close frames sent and received, protocol errors (the handler's)
        self._counters = counters if counters is not None else Counters()
        self._limits = _InboundLimits(max_message_size, max_fragments)
        self._proto = FrameProtocol(False, [self._limits])
        self._state = NO_CLOSE  # of the closing handshake (``_state.HandshakeState``)
        self.raw_frames = raw_frames
        self._assembler = MessageAssembler()  # pieces of a message (or, raw, of one frame)
        self._in_message = False
        self._inflater: Inflater | None = None

    def use_deflate(self, agreement: DeflateAgreement) -> None:
        """Accept compressed messages (permessage-deflate) as ``agreement`` says.

        Call it before any data is received: wsproto's parser takes its extensions when made.
        """
        self._inflater = Inflater(agreement, self._limits.max_size)
        self._proto = FrameProtocol(False, [self._limits, self._inflater])

    @property
    def closing(self) -> bool:
        """A Close was sent or received: no more data frames may be sent."""
        return self._state is not NO_CLOSE

    @property
    def inflated_total(self) -> int:
        """Bytes inflated on this connection so far (permessage-deflate; the reader's
        per-step budget), 0 without compression."""
        inflater = self._inflater
        return 0 if inflater is None else inflater.inflated_total

    def receive_data(self, data: bytes) -> None:
        self._counters.bytes_received += len(data)
        if self._state <= CLOSE_SENT:  # after the peer's Close: ignored
            self._proto.receive_bytes(data)

    def close(self, code: int, reason: str = "") -> bytes:
        """Start the closing handshake: the Close frame to send, or b"" if one was sent already."""
        state = self._state
        if state is not NO_CLOSE and state is not CLOSE_RECEIVED:
            return b""
        self._state = CLOSE_SENT if state is NO_CLOSE else CLOSE_DONE
        if self._inflater is not None:
            self._inflater.discard()  # what the peer still sends is dropped, not inflated
        Counters.count(self._counters.close_codes_sent, code)
        if code == CloseCode.NO_STATUS_RCVD:  # answering an empty Close: an empty Close
            return bytes(self._proto.close())
        return bytes(self._proto.close(code, reason))

    def pong(self, payload: bytes) -> bytes:
        """The Pong answering a Ping, or b"" once closing (no frames may follow our Close)."""
        if self._state is not NO_CLOSE:
            return b""
        return encode_message(payload, Opcode.PONG)

    def events(self) -> Iterator[Event]:
        try:
            for frame in self._proto.received_frames():
                opcode = frame.opcode
                if opcode is WsOpcode.TEXT or opcode is WsOpcode.BINARY:
                    if self._state is not NO_CLOSE:
                        yield SKIPPED  # counted by the reader's per-step budget
                        continue
                    if self.raw_frames:
                        data_frame = self._raw_frame(frame)
                        if data_frame is not None:
                            yield data_frame
                        continue
                    data = cast("str | bytes", frame.payload)
                    message = self._assembler.add(data, frame.message_finished)
                    if message is not None:
                        yield MessageReceived(message)
                elif opcode is WsOpcode.PING:
                    yield PingReceived(bytes(cast(bytes, frame.payload)))
                elif opcode is WsOpcode.PONG:
                    yield PongReceived(bytes(cast(bytes, frame.payload)))
                elif opcode is WsOpcode.CLOSE:
                    code, reason = cast("tuple[int, str]", frame.payload)
                    yield self._close_event(int(code), reason or "")
                    return
        except ParseFailed as exc:
            yield self._failed(int(exc.code), str(exc))

    def _raw_frame(self, frame: Frame) -> DataFrame | None:
        data = self._assembler.add(cast("str | bytes", frame.payload), frame.frame_finished)
        if data is None:
            return None
        first = Opcode.TEXT if frame.opcode is WsOpcode.TEXT else Opcode.BINARY
        opcode = Opcode.CONTINUATION if self._in_message else first
        self._in_message = not frame.message_finished
        return DataFrame(opcode, data, frame.message_finished)

    def _close_event(self, code: int, reason: str) -> Event:
        limits = self._limits
        peer_code, limits.peer_close_code = limits.peer_close_code, None
        if peer_code is not None and code == _STAND_IN:  # wsproto was shown a stand-in
            code = peer_code
        Counters.count(self._counters.close_codes_received, code)
        if self._state is CLOSE_SENT:
            self._state = CLOSE_DONE
            return CloseCompleted(code, reason)
        self._state = CLOSE_RECEIVED
        return CloseReceived(code, reason, self.close(code, reason))

    def _failed(self, code: int, reason: str) -> ProtocolFailed:
        """The peer broke the protocol (or a limit): fail the connection with ``code``."""
        limits = self._limits
        if code == CloseCode.MESSAGE_TOO_BIG and limits.tripped == "fragments":
            reason = f"message of more than max_fragments ({limits.max_fragments}) frames"
        elif self._inflater is not None and self._inflater.problem:
            reason = self._inflater.problem
        elif code == CloseCode.MESSAGE_TOO_BIG:
            reason = f"message over max_message_size ({limits.max_size} bytes)"
        Counters.count(self._counters.protocol_errors, code)
        reply = self.close(code, reason) if self._state is NO_CLOSE else b""
        return ProtocolFailed(code, reason, reply)
