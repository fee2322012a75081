"""Where messages are compressed and inflated (permessage-deflate, RFC 7692).  Sans-I/O.

Outgoing: :class:`Deflater` belongs to a handler, not to a connection.  Because the server never
takes its compression context from one message to the next (it answers every offer with
``server_no_context_takeover``, ``_extensions.py``), the compressed bytes of a message depend
only on the window size: ``send_all`` compresses once per window size in use and queues the same
frame on every client that negotiated it.  The handler keeps one zlib compressor per window size
and ends each message with ``Z_FULL_FLUSH``, which empties the window as a new compressor would,
without allocating and clearing about 256 KiB of zlib state per message
(``benchmarks/deflate_costs.py`` measures both).

Incoming: :class:`Inflater` is a wsproto extension (wsproto's frame parser calls its hooks for
every frame), bounded where wsproto's own ``PerMessageDeflate`` is not: it inflates at most
``max_message_size`` bytes of a message plus one byte, so a small frame that would inflate to a
gigabyte costs at most that much memory and CPU before it is refused with 1009.  Unless the
client keeps its context (``DeflateOptions.client_context_takeover``), its zlib state exists only
while a compressed message is being received.
"""

from __future__ import annotations

import zlib
from typing import Protocol

from wsproto.extensions import Extension
from wsproto.frame_protocol import CloseReason, FrameDecoder, FrameProtocol, Opcode, RsvBits

from ._extensions import EXTENSION_NAME, DeflateAgreement, DeflateOptions

__all__ = ["Deflater", "Inflater"]


class _Compressor(Protocol):
    """What is used of a zlib compression object (``zlib.compressobj``)."""

    def compress(self, data: bytes, /) -> bytes: ...

    def flush(self, mode: int = ..., /) -> bytes: ...


class _Decompressor(Protocol):
    """What is used of a zlib decompression object (``zlib.decompressobj``)."""

    @property
    def eof(self) -> bool: ...
    @property
    def unused_data(self) -> bytes: ...

    def decompress(self, data: bytes, max_length: int = ..., /) -> bytes: ...


#: What every flushed deflate stream ends with, removed by the sender and put back by the
#: receiver (RFC 7692 section 7.2.1 and 7.2.2).
_TAIL = b"\x00\x00\xff\xff"

#: Bytes a message may have after the end of its deflate stream (a block with BFINAL set):
#: RFC 7692 section 7.2.3.4's one 0x00 octet and the tail we append.  More is an error (1007):
#: zlib would keep it unread, and copy all of it again on every later call.
_AFTER_FINAL_BLOCK = 8


class Deflater:
    """Compresses outgoing messages for a handler: one compressor per server window size."""

    __slots__ = ("_compressors", "options")

    def __init__(self, options: DeflateOptions) -> None:
        self.options = options
        self._compressors: dict[int, _Compressor] = {}

    def worth_it(self, size: int) -> bool:
        """Whether a message of ``size`` bytes is compressed (``threshold``,
        ``compress_limit``)."""
        options = self.options
        return options.threshold <= size <= options.compress_limit

    def compress(self, payload: bytes, bits: int) -> bytes:
        """``payload`` compressed for a client window of ``bits`` bits (without the tail)."""
        compressor = self._compressors.get(bits)
        if compressor is None:
            options = self.options
            if bits < 9:  # zlib has no 8-bit raw deflate; Huffman codes refer to nothing
                compressor = zlib.compressobj(
                    options.level, zlib.DEFLATED, -9, options.mem_level, zlib.Z_HUFFMAN_ONLY
                )
            else:
                compressor = zlib.compressobj(
                    options.level, zlib.DEFLATED, -bits, options.mem_level
                )
            self._compressors[bits] = compressor
        try:
            data = compressor.compress(payload) + compressor.flush(zlib.Z_FULL_FLUSH)
        except zlib.error:  # never seen; a compressor in an unknown state is not reused
            del self._compressors[bits]
            raise
        return data[:-4]


class Inflater(Extension):
    """The inbound half of permessage-deflate on one connection, as a wsproto extension.

    wsproto's ``FrameProtocol`` calls these hooks for every frame: the header (RSV1 is allowed
    on the first frame of a data message only, RFC 7692 section 6.1), each piece of payload as
    it arrives (inflated here, bounded), and the end of each frame (the end of a compressed
    message appends the ``00 00 ff ff`` tail the sender removed).  Text is validated as UTF-8
    by wsproto after inflation.
    """

    name = EXTENSION_NAME

    def __init__(self, agreement: DeflateAgreement, max_size: int) -> None:
        self.max_size = max_size
        self._bits = max(agreement.client_max_window_bits, 9)  # clients using zlib use >= 9
        self._keep_context = not agreement.client_no_context_takeover
        self._inflater: _Decompressor | None = None
        self._message = False  # the current data message is compressed
        self._frame = False  # the current frame is a compressed message's data frame
        self._inflated = 0
        #: bytes inflated on this connection so far (the reader's fairness budget)
        self.inflated_total = 0
        #: why inflation failed (the reason of the Close), or "" while it has not
        self.problem = ""
        self._discarding = False

    def discard(self) -> None:
        """We sent our Close: data that still comes is dropped unread, not inflated (RFC 6455
        section 1.4 allows it), so a client cannot make us inflate while we wait for its
        Close."""
        self._discarding = True
        self._inflater = None

    def enabled(self) -> bool:
        return True

    def offer(self) -> bool:  # negotiated by ``_extensions.py``, never by wsproto
        return False

    def frame_inbound_header(
        self,
        proto: FrameDecoder | FrameProtocol,
        opcode: Opcode,
        rsv: RsvBits,
        payload_length: int,
    ) -> CloseReason | RsvBits:
        if opcode.iscontrol():
            if rsv.rsv1:
                return CloseReason.PROTOCOL_ERROR
            self._frame = False
            return RsvBits(False, False, False)
        if opcode is Opcode.CONTINUATION:
            if rsv.rsv1:
                return CloseReason.PROTOCOL_ERROR
        else:
            self._message = rsv.rsv1
            self._inflated = 0
        self._frame = self._message
        if self._frame and self._inflater is None and not self._discarding:
            self._inflater = zlib.decompressobj(-self._bits)
        return RsvBits(True, False, False)

    def frame_inbound_payload_data(
        self, proto: FrameDecoder | FrameProtocol, data: bytes
    ) -> bytes | CloseReason:
        if not self._frame:
            return data
        if self._discarding:
            return b""
        return self._inflate(data)

    def frame_inbound_complete(
        self, proto: FrameDecoder | FrameProtocol, fin: bool
    ) -> bytes | CloseReason | None:
        if not (self._frame and fin) or self._discarding:
            return None
        data = self._inflate(_TAIL)
        self._message = self._frame = False
        inflater = self._inflater
        if not self._keep_context or (inflater is not None and inflater.eof):
            # no context kept (or the client ended its deflate stream with a final block)
            self._inflater = None
        return data

    def _inflate(self, data: bytes) -> bytes | CloseReason:
        inflater = self._inflater
        assert inflater is not None
        room = self.max_size - self._inflated
        try:
            # at most one byte more than the message may still have: with max_length, zlib
            # stops there and keeps the rest of the input unread
            out = inflater.decompress(data, room + 1)
        except zlib.error as exc:
            self._inflater = None
            self.problem = f"invalid compressed data ({exc})"
            return CloseReason.INVALID_FRAME_PAYLOAD_DATA
        self._inflated += len(out)
        self.inflated_total += len(out)
        if self._inflated > self.max_size:
            self.problem = f"message over max_message_size ({self.max_size} bytes) once inflated"
            self._inflater = None
            return CloseReason.MESSAGE_TOO_BIG
        if inflater.eof and len(inflater.unused_data) > _AFTER_FINAL_BLOCK:
            self.problem = "invalid compressed data (data after its final block)"
            self._inflater = None
            return CloseReason.INVALID_FRAME_PAYLOAD_DATA
        return out
