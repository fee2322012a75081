"""Where a client's messages are bounded: the size and fragment limits, checked on frame headers.

:class:`InboundLimits` is a wsproto extension (never negotiated: applied locally after the
handshake) that sees every frame header wsproto parses; the hot path (``_frames.py``) checks the
same bounds on the frames it takes, and hands wsproto the frames beyond them.
"""

from __future__ import annotations

from wsproto.extensions import Extension
from wsproto.frame_protocol import CloseReason, FrameDecoder, FrameProtocol, RsvBits
from wsproto.frame_protocol import Opcode as WsOpcode

__all__ = ["STAND_IN", "InboundLimits", "compressed_slack"]


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
#: What :class:`InboundLimits` lets wsproto see instead (any code wsproto accepts will do).
STAND_IN = 1011


class InboundLimits(Extension):
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
            self._data_frame = False
            if fin:  # the message is complete: a stray Continuation starts from nothing
                self._done_bytes = self._done_frames = 0
                self._compressed = False
            else:
                self._done_bytes, self._done_frames = self._frame_bytes, self._frame_frames
        return None

    def resume(self, size: int, frames: int) -> None:
        """wsproto takes over a message the hot path began (``_events.HandOver``): its frames so
        far, uncompressed, count as if wsproto had seen them."""
        self._done_bytes, self._done_frames, self._compressed = size, frames, False

    def reason(self) -> str:
        """The reason of the Close of a message refused for its size or fragments (1009)."""
        if self.tripped == "fragments":
            return f"message of more than max_fragments ({self.max_fragments}) frames"
        return f"message over max_message_size ({self.max_size} bytes)"

    def frame_inbound_payload_data(
        self, proto: FrameDecoder | FrameProtocol, data: bytes
    ) -> bytes | CloseReason:
        if self._close_frame:
            self._close_frame = False
            if len(data) >= 2 and int.from_bytes(data[:2], "big") == _UNKNOWN_TO_WSPROTO:
                self.peer_close_code = _UNKNOWN_TO_WSPROTO
                return STAND_IN.to_bytes(2, "big") + data[2:]
        return data
