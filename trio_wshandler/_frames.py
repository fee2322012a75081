"""Where a client's frames are parsed: the hot path of the receive side (sans-I/O).

:class:`FrameParser` reads every frame header a client sends.  The frames of uncompressed data
messages (Text, Binary and their Continuations: what clients send most) it takes itself: no
object per frame, the payload unmasked once (``_unmask.py``, compiled) straight from the bytes
read, Text validated as UTF-8 piece by piece as it arrives (so an invalid byte fails the
connection at once, as RFC 6455 section 8.1 recommends) and decoded only that once, a message
of one piece delivered as it is and one of several joined once at its end.

Pings and Pongs it takes too (final, masked, without RSV bits: any other is not valid).
Everything else goes to wsproto (``_protocol.py`` feeds it), byte for byte and frame by frame
(:class:`ToWsproto`): Close frames, compressed messages (its extension inflates them), and any
frame that is not a clean, valid one, so that wsproto alone judges errors, with its
reasons, in its order.  wsproto keeps the state of a message in progress (which opcode, the
UTF-8 decoder, the size so far): when a frame that only wsproto may judge comes in the middle of
a message this parser began, the parser first hands that message over (:class:`HandOver`: the
protocol shows wsproto a frame that puts it in the same state), then the frame.  wsproto is
therefore also the oracle the parser is tested against (``tests/test_differential.py``): the
same bytes, cut anywhere, give the same events and the same Close from both.
"""

from __future__ import annotations

import codecs
from collections.abc import Generator, Iterator
from typing import Any

from ._events import (
    SKIPPED,
    DataSkipped,
    HandOver,
    MessageReceived,
    PingReceived,
    PongReceived,
    RateRefused,
    Throttled,
    ToWsproto,
)
from ._rate import RateGate
from ._unmask import unmask

__all__ = ["MAX_SKIPPED", "FrameParser", "Utf8Error"]

_TEXT, _BINARY = 1, 2
#: where the bytes that follow go
_HEADER, _HOT, _WSPROTO, _WSPROTO_ALL = 0, 1, 2, 3
#: _message when wsproto holds the message in progress (it began compressed, or was handed over)
_WSPROTO_MESSAGE = -1

_utf8_decoder = codecs.getincrementaldecoder("utf-8")

#: Most messages refused together in one event: the reader handles ``EVENTS_PER_STEP`` events
#: per task step, so a step refuses at most 32 x 65 messages (about 0.3 ms of CPU).
MAX_SKIPPED = 64

#: the extended payload length's bytes, by the 7-bit length field
_LENGTH_BYTES = (0,) * 126 + (2, 8)


def _minimal(field: int, length: int) -> bool:
    """The payload length is encoded as RFC 6455 requires: in the fewest bytes, and in 63 bits."""
    if field == 126:
        return length > 125
    if field == 127:
        return 0xFFFF < length < 1 << 63
    return True


#: what :meth:`FrameParser.events` gives
Item = (
    MessageReceived
    | PingReceived
    | PongReceived
    | DataSkipped
    | ToWsproto
    | HandOver
    | Throttled
    | RateRefused
)


class Utf8Error(Exception):
    """A Text message is not valid UTF-8 (1007)."""


class FrameParser:
    """Parses what one client sends (see the module's docstring).

    ``feed(data)`` then iterate ``events()``: ``MessageReceived`` for a whole message,
    :data:`SKIPPED` for each piece of data read after our Close (while ``closing``),
    :class:`ToWsproto` and :class:`HandOver` for the protocol; :class:`Utf8Error` is raised for
    invalid UTF-8.

    With a ``gate`` (``_rate.RateGate``), each data frame's header is shown to it first:
    :class:`Throttled` when the frame must wait (it is parsed again after), :class:`RateRefused`
    when its message is refused (then skipped unread).  ``wsproto_data`` sends every data frame
    to wsproto (``raw_frames``: wsproto then makes one event per frame).  ``compressed``:
    permessage-deflate was agreed (a first frame may have RSV1); ``keep_context``:
    with the client's context takeover (a refused compressed message must still be inflated).
    """

    __slots__ = (
        "_data",
        "_decoder",
        "_dropping",
        "_fin",
        "_frames",
        "_left",
        "_mask",
        "_message",
        "_phase",
        "_pieces",
        "_route",
        "_size",
        "_slow",
        "closing",
        "compressed",
        "gate",
        "keep_context",
        "max_fragments",
        "max_size",
        "wsproto_data",
    )

    def __init__(
        self,
        max_size: int,
        max_fragments: int,
        *,
        gate: RateGate | None = None,
        wsproto_data: bool = False,
        compressed: bool = False,
        keep_context: bool = False,
    ) -> None:
        self.max_size = max_size
        self.max_fragments = max_fragments
        self.gate = gate
        self.wsproto_data = wsproto_data
        self._slow = gate is not None or wsproto_data  # the headers' longer path
        self.compressed = compressed
        self.keep_context = keep_context
        self._dropping = 0  # the message in progress was refused by the gate: skipped (2:
        # a compressed one)
        #: our Close was sent: data is checked as before but not delivered
        self.closing = False
        self._data: bytes | memoryview = b""  # what was read and not parsed yet (at most a
        # header cut short, after events())
        self._route = _HEADER
        self._left = 0  # payload bytes of the current frame not yet read
        self._mask = b""
        self._phase = 0
        self._fin = False
        self._message = 0  # _TEXT or _BINARY: a message this parser began; 0: none
        self._size = 0  # payload bytes of the message's frames so far (the current one too)
        self._frames = 0
        self._decoder: Any = None  # the UTF-8 decoder of a Text message of several pieces
        self._pieces: list[Any] = []

    def feed(self, data: bytes | memoryview) -> None:
        """Parse ``data`` next (bytes read; a view of a buffer the reader reuses is read only
        until :meth:`events` is done with it: nothing of it is kept but copies)."""
        if self._data:  # a header cut short by the end of the last read
            data = bytes(self._data) + data
        self._data = data

    def events(self) -> Iterator[Item]:
        data = self._data
        end = len(data)
        pos = 0
        try:
            while pos < end or (self._route == _HOT and not self._left):
                route = self._route
                if route == _HOT:
                    n = min(self._left, end - pos)
                    self._left -= n
                    pos += n
                    event = self._piece(data, pos - n, pos)
                    if event is not None:
                        yield event
                    continue
                if route != _HEADER:  # bytes for wsproto: the rest of a frame, or all of it
                    n = end - pos if route == _WSPROTO_ALL else min(self._left, end - pos)
                    self._left -= n
                    if route == _WSPROTO and not self._left:
                        self._route = _HEADER
                    pos += n
                    yield ToWsproto(data[pos - n : pos])
                    continue
                # a frame header: first what decides where the frame goes
                if end - pos < 2:
                    break
                b0 = data[pos]
                b1 = data[pos + 1]
                opcode = b0 & 0x0F
                length = b1 & 0x7F
                if opcode > 2:  # a control frame, or a reserved opcode
                    if (opcode == 9 or opcode == 10) and b0 & 0xF0 == 0x80 and b1 & 0x80:
                        # a clean Ping or Pong (final, no RSV bit, masked, 125 bytes at most):
                        # taken here, once it is all here, as wsproto would take it
                        stop = pos + 6 + length
                        if length > 125:
                            pos = yield from self._to_wsproto(data, pos, end, b0, length)
                        elif stop > end:
                            break
                        else:
                            payload = unmask(data, pos + 6, stop, bytes(data[pos + 2 : pos + 6]), 0)
                            pos = stop
                            yield PingReceived(payload) if opcode == 9 else PongReceived(payload)
                        continue
                    pos = yield from self._to_wsproto(data, pos, end, b0, length)
                    continue
                if length < 126:
                    start = pos + 6
                elif length == 126:
                    if end - pos < 4:
                        break
                    start = pos + 8
                    length = (data[pos + 2] << 8) | data[pos + 3]
                else:
                    if end - pos < 10:
                        break
                    start = pos + 14
                    length = int.from_bytes(data[pos + 2 : pos + 10], "big")
                message = self._message
                refused = False
                gate = self.gate if self._slow else None
                if gate is not None and self._gated(b0, b1, length):
                    if start > end:  # the header is not all here yet
                        break
                    verdict = gate.admit(length, opcode != 0)
                    if verdict is not None:
                        if isinstance(verdict, float):  # (policy "delay")
                            yield Throttled(verdict)
                            continue  # the same header, parsed again
                        if b0 & 0x40 and self.keep_context:  # inflated all the same
                            yield RateRefused(verdict, unread=False)
                        elif b0 & 0x80 and start + length <= end:  # all here: skipped,
                            # with the whole messages after it that the gate refuses too
                            pos, more = self._skip_refused(data, start + length, end, gate)
                            yield RateRefused(verdict, count=1 + more)
                            continue
                        else:  # skipped unread as it comes (2: it is compressed)
                            yield RateRefused(verdict)
                            self._dropping = 2 if b0 & 0x40 else 1
                            refused = True
                            message = self._message = opcode
                            self._size = self._frames = 0
                if opcode:  # Text or Binary: a new message
                    clean = not message and length <= self.max_size
                else:  # a Continuation
                    clean = (
                        message > 0
                        and self._size + length <= self.max_size
                        and self._frames < self.max_fragments
                    )
                if self._slow:  # rate limited, or raw frames
                    if refused:  # (its first frame may be compressed: RSV1)
                        clean = True
                        b0 &= 0x8F
                    elif self._dropping:  # a refused message's later frames are skipped here
                        # (in raw mode too); a compressed one's wire size is not its size
                        if not opcode and self._dropping == 2:
                            clean = message > 0 and self._frames < self.max_fragments
                    elif self.wsproto_data:
                        clean = False
                if not clean or b0 & 0x70 or not b1 & 0x80 or not _minimal(b1 & 0x7F, length):
                    # not a clean data frame: wsproto judges it
                    pos = yield from self._to_wsproto(data, pos, end, b0, length)
                    continue
                if start > end:  # the masking key is not all here yet
                    break
                if opcode and not refused:  # (a frame after a refused one is not clean)
                    stop = start + length
                    if b0 & 0x80 and stop <= end and not self.closing:
                        # the common case: a whole message, all here
                        payload = unmask(data, start, stop, bytes(data[start - 4 : start]), 0)
                        pos = stop
                        if opcode == _TEXT:
                            try:
                                text = payload.decode("utf-8")
                            except UnicodeDecodeError:
                                raise Utf8Error from None
                            yield MessageReceived(text)
                        else:
                            yield MessageReceived(payload)
                        continue
                    self._message = opcode
                    self._size = length
                    self._frames = 1
                else:
                    self._size += length
                    self._frames += 1
                self._mask = bytes(data[start - 4 : start])
                self._phase = 0
                self._fin = bool(b0 & 0x80)
                self._left = length
                self._route = _HOT
                pos = start
        finally:
            # an idle connection keeps no bytes it has read: at most a header cut short
            self._data = bytes(data[pos:]) if pos < end else b""

    def use_gate(self, gate: RateGate | None) -> None:
        """Ask ``gate`` from the next header on (None: no more)."""
        self.gate = gate
        self._slow = gate is not None or self.wsproto_data

    def _skip_refused(
        self, data: bytes | memoryview, pos: int, end: int, gate: RateGate
    ) -> tuple[int, int]:
        """Skip the whole single-frame messages from ``pos`` on while the gate refuses every
        message (a flooder's read): where parsing goes on, and how many were skipped.  Stops
        at anything else (a frame cut short, a control frame, a fragment, a frame the protocol
        or the compression context must see), left to the loop of :meth:`events`."""
        if not gate.refusing():
            return pos, 0
        count = 0
        max_size = self.max_size
        while end - pos >= 2 and count < MAX_SKIPPED:
            b0 = data[pos]
            b1 = data[pos + 1]
            opcode = b0 & 0x0F
            if b0 & 0xB0 != 0x80 or not b1 & 0x80 or not (opcode == 1 or opcode == 2):
                break  # not final, RSV2/3, not masked, not a Text or Binary
            if b0 & 0x40 and (not self.compressed or self.keep_context):
                break  # RSV1 that is invalid, or a context that needs the message inflated
            length = b1 & 0x7F
            start = pos + 6
            if length == 126:
                if end - pos < 4:
                    break
                length = (data[pos + 2] << 8) | data[pos + 3]
                start = pos + 8
                if length < 126:
                    break  # not minimal: wsproto says so
            elif length == 127:
                break  # (rare in a flood: the loop of events() takes it)
            if start + length > end or (length > max_size and not b0 & 0x40):
                break
            pos = start + length
            count += 1
        gate.refuse(count)
        return pos, count

    def _gated(self, b0: int, b1: int, length: int) -> bool:
        """The data frame's header is one the gate judges: a valid first frame of a message
        (not larger than ``max_size`` unless compressed), or a later frame of one admitted;
        any other frame goes on as it would without a gate (wsproto fails an invalid one)."""
        if self.closing or not b1 & 0x80 or not _minimal(b1 & 0x7F, length):
            return False
        rsv = b0 & 0x70
        if b0 & 0x0F:
            if rsv:
                return rsv == 0x40 and self.compressed and not self._message
            return not self._message and length <= self.max_size
        return bool(self._message) and not rsv and not self._dropping

    def _to_wsproto(
        self, data: bytes | memoryview, pos: int, end: int, b0: int, length: int
    ) -> Generator[ToWsproto | HandOver, None, int]:
        """Route the frame at ``pos`` to wsproto (handing over the message in progress first,
        if this parser began one and the frame is a data frame): all of it when its header is
        valid and ``length`` (its payload's) is known, else everything from here on (wsproto
        fails the connection on what it is given, or as soon as it has enough of the header to
        tell).  Returns where parsing goes on."""
        opcode = b0 & 0x0F
        b1 = data[pos + 1]
        masked = b1 & 0x80
        message = self._message
        if opcode <= 2 and message > 0:
            # only wsproto may judge this frame, and it must know the message it interrupts
            pending = b"" if self._decoder is None else self._decoder.getstate()[0]
            yield HandOver(message, pending, self._size, self._frames)
            self._dropping = 0  # (a refused message broken off: wsproto fails what follows)
            self._decoder = None
            self._pieces = []
            message = self._message = _WSPROTO_MESSAGE
        if opcode > 10 or (opcode > 2 and (opcode < 8 or not b0 & 0x80 or length > 125)):
            size = -1  # invalid at its first two bytes: wsproto fails it at once
        else:
            size = 2 + _LENGTH_BYTES[b1 & 0x7F] + (4 if masked else 0) + length
            if opcode <= 2:  # a data frame: wsproto now holds the message it belongs to
                fin = b0 & 0x80
                if message == _WSPROTO_MESSAGE:
                    if fin and not opcode:
                        self._message = 0
                elif opcode and not fin:
                    self._message = _WSPROTO_MESSAGE
        if size < 0:
            self._route = _WSPROTO_ALL
            n = end - pos
        else:
            n = min(size, end - pos)
            self._left = size - n
            self._route = _WSPROTO if self._left else _HEADER
        yield ToWsproto(data[pos : pos + n])
        return pos + n

    def _piece(
        self, data: bytes | memoryview, start: int, stop: int
    ) -> MessageReceived | DataSkipped | None:
        """A piece of the current frame's payload (its last one when ``_left`` is 0)."""
        n = stop - start
        phase = self._phase
        self._phase = (phase + n) & 3
        last = not self._left
        if last:
            self._route = _HEADER
        final = last and self._fin
        if self._dropping:  # refused by the gate: not unmasked, not validated
            if final:
                self._end_message()
            return None
        message = self._message
        if message == _TEXT:
            piece = unmask(data, start, stop, self._mask, phase)
            decoder = self._decoder
            if decoder is None:
                decoder = self._decoder = _utf8_decoder()
            try:
                text = decoder.decode(piece, final)
            except UnicodeDecodeError:
                raise Utf8Error from None
            if not self.closing:
                self._pieces.append(text)
        elif not self.closing:
            self._pieces.append(unmask(data, start, stop, self._mask, phase))
        if self.closing:
            if final:
                self._end_message()
            return SKIPPED
        if not final:
            return None
        pieces = self._pieces
        whole: str | bytes
        if len(pieces) == 1:
            whole = pieces[0]
        elif message == _TEXT:
            whole = "".join(pieces)
        else:
            whole = b"".join(pieces)
        self._end_message()
        return MessageReceived(whole)

    def _end_message(self) -> None:
        self._message = 0
        self._dropping = 0
        self._decoder = None
        self._pieces = []
