"""Where incoming bytes become events: the sans-I/O protocol core of one connection.

This module does no I/O.  :class:`WebSocketProtocol` takes the bytes a client sends and gives
the few events the connection's reader (``_reader.py``) acts on (``_events.py``).  Two parsers
share the work: the hot path (``_frames.FrameParser``) takes the frames of uncompressed data
messages, what clients send most; wsproto's ``FrameProtocol`` takes the rest (control frames,
compressed messages, and every frame that breaks a rule: wsproto says which rule, in its order)
and validates RSV bits, opcodes, fragment sequences, control-frame rules, Close payloads and
UTF-8.  Each frame goes to one of them (the hot path routes); the differential test
(``tests/test_differential.py``) holds them to the same events and the same Close for the same
bytes, cut anywhere.  With ``raw_frames`` (``got_raw_message``) wsproto takes every data frame
(the hot path still reads each header: rate limits, Pings).

What wsproto leaves to the application is here: the size and fragment limits (``_limits.py``,
checked on each frame *header*, so a frame that declares a huge length is refused before any of
its payload is buffered), reassembly of wsproto's pieces into whole messages, and the rules of
the closing handshake (who closed, what to answer).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import cast

from wsproto.extensions import Extension
from wsproto.frame_protocol import Frame, FrameProtocol, ParseFailed
from wsproto.frame_protocol import Opcode as WsOpcode

from ._deflate import Inflater
from ._events import (
    SKIPPED,
    CloseCompleted,
    CloseReceived,
    DataFrame,
    Event,
    HandOver,
    MessageAssembler,
    MessageReceived,
    PingReceived,
    PongReceived,
    ProtocolFailed,
    RateRefused,
    ToWsproto,
)
from ._extensions import DeflateAgreement
from ._frames import FrameParser, Utf8Error
from ._limits import STAND_IN, InboundLimits
from ._options import RateLimits
from ._rate import RateGate
from ._state import CLOSE_DONE, CLOSE_RECEIVED, CLOSE_SENT, NO_CLOSE
from ._stats import Counters
from .codec import CloseCode, Opcode, encode_message

__all__ = ["INVALID_UTF8", "WebSocketProtocol"]

#: The reason of the Close for a Text message that is not UTF-8 (1007): a fixed text, whichever
#: parser found it and wherever the bad byte was (wsproto's says where, by the piece it read).
INVALID_UTF8 = "invalid UTF-8 in a Text message"
#: The same for the reason of a client's Close.
INVALID_UTF8_CLOSE = "invalid UTF-8 in the reason of a Close"


class WebSocketProtocol:
    """The protocol state of one server-side connection after a successful upgrade.

    ``receive_data(bytes)`` then iterate ``events()``.  With ``raw_frames=True`` data arrives
    as one :class:`DataFrame` per frame (for ``got_raw_message``) instead of whole messages.
    Data that arrives after we have sent a Close is discarded, as RFC 6455 section 1.4 allows.

    The four states of the closing handshake are kept here.  (wsproto's ``Connection`` adds only
    those states and an event queue on top of ``FrameProtocol``, which every idle connection
    would carry: a deque alone is 624 bytes, and each message would cost an event object more.)
    ``hot_path=False`` has wsproto parse everything: the oracle of the differential test.
    """

    __slots__ = (
        "_assembler",
        "_broken",
        "_counters",
        "_discard",
        "_gate",
        "_hot_path",
        "_in_message",
        "_inflater",
        "_keep_context",
        "_limits",
        "_parser",
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
        hot_path: bool = True,
    ) -> None:
        # bytes received, Close frames sent and received, protocol errors (the handler's)
        self._counters = counters if counters is not None else Counters()
        self._limits = InboundLimits(max_message_size, max_fragments)
        self._state = NO_CLOSE  # of the closing handshake (``_state.HandshakeState``)
        self.raw_frames = raw_frames
        # the parsers are made when first needed: a connection that never sends costs neither
        # (wsproto's is about half a KiB), and most never need wsproto's until a Pong or Close.
        # (With raw_frames the hot path reads the headers and sends every data frame to wsproto.)
        self._hot_path = hot_path
        self._gate: RateGate | None = None
        self._discard = False  # wsproto's next message was refused by the gate: not delivered
        self._keep_context = False  # compressed messages share the client's context
        self._parser: FrameParser | None = None
        self._proto: FrameProtocol | None = None
        self._assembler = MessageAssembler()  # wsproto's pieces of a message (raw: of a frame)
        self._in_message = False
        self._inflater: Inflater | None = None
        self._broken = False  # failed: nothing more is parsed

    def use_deflate(self, agreement: DeflateAgreement) -> None:
        """Accept compressed messages (permessage-deflate) as ``agreement`` says.

        Call it before any data is received: wsproto's parser takes its extensions when made.
        """
        self._inflater = Inflater(agreement, self._limits.max_size)
        self._keep_context = not agreement.client_no_context_takeover
        self._proto = None  # (made again, with the inflater, when needed)

    def limit_rate(self, limits: RateLimits | None, clock: Callable[[], float]) -> None:
        """Check what the client sends against ``limits`` (``_rate.py``; None: no limit), from
        the next frame header on.  The gate also keeps the error budget (:attr:`gate`)."""
        gate = None if limits is None else RateGate(limits, clock, self._counters)
        self._gate = gate
        if self._parser is not None:
            self._parser.use_gate(gate if gate is not None and gate.limiting else None)

    @property
    def gate(self) -> RateGate | None:
        """The rate limits in force (and the error budget), or None."""
        return self._gate

    def _wsproto(self) -> FrameProtocol:
        proto = self._proto
        if proto is None:
            extensions: list[Extension] = [self._limits]
            if self._inflater is not None:
                extensions.append(self._inflater)
            proto = self._proto = FrameProtocol(False, extensions)
        return proto

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

    def receive_data(self, data: bytes | memoryview) -> None:
        """Take ``data`` (a view of a buffer the reader reuses is read only until
        :meth:`events` is done with it)."""
        self._counters.bytes_received += len(data)
        if self._state <= CLOSE_SENT and not self._broken:  # after the peer's Close: ignored
            if self._hot_path:
                parser = self._parser
                if parser is None:
                    limits, gate = self._limits, self._gate
                    parser = self._parser = FrameParser(
                        limits.max_size,
                        limits.max_fragments,
                        gate=gate if gate is not None and gate.limiting else None,
                        wsproto_data=self.raw_frames,
                        compressed=self._inflater is not None,
                        keep_context=self._keep_context,
                    )
                    parser.closing = self._state is not NO_CLOSE
                parser.feed(data)
            else:
                self._wsproto().receive_bytes(bytes(data))

    def close(self, code: int, reason: str = "") -> bytes:
        """Start the closing handshake: the Close frame to send, or b"" if one was sent already."""
        state = self._state
        if state is not NO_CLOSE and state is not CLOSE_RECEIVED:
            return b""
        self._state = CLOSE_SENT if state is NO_CLOSE else CLOSE_DONE
        if self._parser is not None:
            self._parser.closing = True  # what the peer still sends is checked, not delivered
        if self._inflater is not None:
            self._inflater.discard()  # what the peer still sends is dropped, not inflated
        Counters.count(self._counters.close_codes_sent, code)
        if code == CloseCode.NO_STATUS_RCVD:  # answering an empty Close: an empty Close
            return bytes(self._wsproto().close())
        return bytes(self._wsproto().close(code, reason))

    def pong(self, payload: bytes) -> bytes:
        """The Pong answering a Ping, or b"" once closing (no frames may follow our Close)."""
        if self._state is not NO_CLOSE:
            return b""
        return encode_message(payload, Opcode.PONG)

    def events(self) -> Iterator[Event]:
        if self._broken or self._state is CLOSE_RECEIVED or self._state is CLOSE_DONE:
            return  # failed, or the client's Close came: nothing after it is parsed
        parser = self._parser
        try:
            if parser is None:
                if not self._hot_path:
                    yield from self._wsproto_events()
                return
            for item in parser.events():
                cls = item.__class__
                if cls is MessageReceived:  # the common item first
                    yield item  # type: ignore[misc]
                elif cls is ToWsproto:
                    # wsproto copies what it is given (its buffer is a bytearray)
                    self._wsproto().receive_bytes(cast(bytes, cast(ToWsproto, item).data))
                    yield from self._wsproto_events()
                    if self._state is CLOSE_RECEIVED or self._state is CLOSE_DONE:
                        return  # the client's Close: nothing after it is parsed
                elif cls is HandOver:
                    self._hand_over(cast(HandOver, item))
                else:
                    if cls is RateRefused and not cast(RateRefused, item).unread:
                        self._discard = True  # wsproto inflates it: not delivered
                    yield cast(Event, item)
        except ParseFailed as exc:
            yield self._failed(int(exc.code), str(exc))
        except Utf8Error:
            yield self._failed(CloseCode.INVALID_FRAME_PAYLOAD_DATA, INVALID_UTF8)

    def _wsproto_events(self) -> Iterator[Event]:
        """The events of what wsproto has been given (:raises ParseFailed:)."""
        for frame in self._wsproto().received_frames():
            opcode = frame.opcode
            if opcode is WsOpcode.TEXT or opcode is WsOpcode.BINARY:
                if self._state is not NO_CLOSE:
                    yield SKIPPED  # counted by the reader's per-step budget
                    continue
                if self._discard:  # refused by the gate, inflated for the context's sake
                    self._discard = not frame.message_finished
                    yield SKIPPED
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

    def _hand_over(self, message: HandOver) -> None:
        """wsproto takes over a message the hot path began: shown a first frame of the same
        opcode carrying the bytes of the character not yet complete, and told the size and
        frames so far, it is where it would be had it parsed the message itself."""
        opcode = WsOpcode.TEXT if message.opcode == Opcode.TEXT else WsOpcode.BINARY
        frame = encode_message(message.pending, opcode, fin=False, masked=True)
        proto = self._wsproto()
        proto.receive_bytes(frame)
        for _ in proto.received_frames():  # the pieces it holds: nothing to deliver
            pass
        self._limits.resume(message.size, message.frames)

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
        if peer_code is not None and code == STAND_IN:  # wsproto was shown a stand-in
            code = peer_code
        Counters.count(self._counters.close_codes_received, code)
        if self._state is CLOSE_SENT:
            self._state = CLOSE_DONE
            return CloseCompleted(code, reason)
        self._state = CLOSE_RECEIVED
        return CloseReceived(code, reason, self.close(code, reason))

    def _failed(self, code: int, reason: str) -> ProtocolFailed:
        """The peer broke the protocol (or a limit): fail the connection with ``code``."""
        self._broken = True
        if self._inflater is not None and self._inflater.problem:
            reason = self._inflater.problem
        elif code == CloseCode.MESSAGE_TOO_BIG:
            reason = self._limits.reason()
        elif code == CloseCode.INVALID_FRAME_PAYLOAD_DATA and reason != INVALID_UTF8:
            # wsproto's text says where the bad byte was in the piece it read
            closing = reason.startswith("Error decoding CLOSE reason")
            reason = INVALID_UTF8_CLOSE if closing else INVALID_UTF8
        Counters.count(self._counters.protocol_errors, code)
        reply = self.close(code, reason) if self._state is NO_CLOSE else b""
        return ProtocolFailed(code, reason, reply)
