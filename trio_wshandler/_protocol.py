"""Where incoming bytes become messages: the sans-I/O protocol core of one connection.

This module does no I/O.  :class:`WebSocketProtocol` feeds received bytes to wsproto's
post-handshake ``Connection`` (which parses frames, unmasks, validates RSV bits, opcodes,
fragment sequences, control-frame rules, Close payloads and UTF-8) and turns wsproto's events
into the few events the connection's reader task acts on.  It adds what wsproto leaves to the
application: the message size limit (checked on each frame *header*, so a frame that declares a
huge length is refused before any of its payload is buffered), reassembly of fragments into
whole messages, and the rules of the closing handshake (who closed, what to answer).
"""

from __future__ import annotations

from collections.abc import Iterator

import attrs
from wsproto import ConnectionType
from wsproto.connection import Connection, ConnectionState
from wsproto.events import BytesMessage, CloseConnection, Ping, Pong, TextMessage
from wsproto.extensions import Extension
from wsproto.frame_protocol import CloseReason, FrameDecoder, FrameProtocol, RsvBits
from wsproto.frame_protocol import Opcode as WsOpcode

from .codec import CloseCode, Opcode, encode_message

__all__ = [
    "CloseCompleted",
    "CloseReceived",
    "DataFrame",
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


Event = (
    MessageReceived
    | DataFrame
    | PingReceived
    | PongReceived
    | CloseReceived
    | CloseCompleted
    | ProtocolFailed
)


# ---------------------------------------------------------------- size limit


class _MessageSizeLimit(Extension):
    """Refuses (1009) a message whose frames declare more than ``limit`` payload bytes in all.

    It uses wsproto's public extension hook, which sees every frame header before its payload,
    so the check costs nothing per byte and works even when the payload never arrives.  It
    claims no RSV bits, so wsproto's reserved-bit validation is unchanged.
    """

    name = "trio-wshandler-size-limit"

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.message_bytes = 0

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
        if opcode is WsOpcode.CONTINUATION:
            self.message_bytes += payload_length
        elif not opcode.iscontrol():
            self.message_bytes = payload_length
        else:
            return RsvBits(False, False, False)
        if self.message_bytes > self.limit:
            return CloseReason.MESSAGE_TOO_BIG
        return RsvBits(False, False, False)


# ---------------------------------------------------------------- reassembly


class MessageAssembler:
    """Joins the data of consecutive frames into one message.

    ``skip`` supports :attr:`FrameAction.CONTINUE`: a skipped frame adds nothing, and a message
    all of whose frames were skipped is not delivered at all.
    """

    __slots__ = ("_kept", "_parts")

    def __init__(self) -> None:
        self._parts: list[str | bytes | bytearray] = []
        self._kept = False

    def add(self, data: str | bytes | bytearray, fin: bool) -> str | bytes | None:
        """Add one frame's data; returns the whole message after its final frame."""
        self._parts.append(data)
        self._kept = True
        return self._finish() if fin else None

    def skip(self, fin: bool) -> str | bytes | None:
        return self._finish() if fin else None

    def _finish(self) -> str | bytes | None:
        parts, kept = self._parts, self._kept
        self._parts, self._kept = [], False
        if not kept:
            return None
        if len(parts) == 1:
            part = parts[0]
            return bytes(part) if isinstance(part, bytearray) else part
        if isinstance(parts[0], str):
            return "".join(parts)  # type: ignore[arg-type]
        return b"".join(parts)  # type: ignore[arg-type]


# ---------------------------------------------------------------- the protocol


class WebSocketProtocol:
    """The protocol state of one server-side connection after a successful upgrade.

    ``receive_data(bytes)`` then iterate ``events()``.  With ``raw_frames=True`` data arrives
    as one :class:`DataFrame` per frame (for ``got_raw_message``) instead of whole messages.
    Data that arrives after we have sent a Close is discarded, as RFC 6455 section 1.4 allows.
    """

    __slots__ = ("_assembler", "_frame_parts", "_in_message", "_limit", "_ws", "raw_frames")

    def __init__(self, *, max_message_size: int, raw_frames: bool = False) -> None:
        self._limit = max_message_size
        self._ws = Connection(
            ConnectionType.SERVER, extensions=[_MessageSizeLimit(max_message_size)]
        )
        self.raw_frames = raw_frames
        self._assembler = MessageAssembler()
        self._frame_parts: list[str | bytes | bytearray] = []
        self._in_message = False

    def receive_data(self, data: bytes) -> None:
        self._ws.receive_data(data)

    def close(self, code: int, reason: str = "") -> bytes:
        """Start the closing handshake: the Close frame to send, or b"" if one was sent already."""
        if self._ws.state not in (ConnectionState.OPEN, ConnectionState.REMOTE_CLOSING):
            return b""
        return bytes(self._ws.send(CloseConnection(code=code, reason=reason)))

    def pong(self, payload: bytes) -> bytes:
        """The Pong answering a Ping, or b"" once closing (no frames may follow our Close)."""
        if self._ws.state is not ConnectionState.OPEN:
            return b""
        return encode_message(payload, Opcode.PONG)

    def events(self) -> Iterator[Event]:
        ws = self._ws
        for event in ws.events():
            if isinstance(event, TextMessage | BytesMessage):
                if ws.state is not ConnectionState.OPEN:
                    continue
                if self.raw_frames:
                    frame = self._raw_frame(event)
                    if frame is not None:
                        yield frame
                    continue
                message = self._assembler.add(event.data, event.message_finished)
                if message is not None:
                    yield MessageReceived(message)
            elif isinstance(event, Ping):
                yield PingReceived(bytes(event.payload))
            elif isinstance(event, Pong):
                yield PongReceived(bytes(event.payload))
            elif isinstance(event, CloseConnection):
                yield self._close_event(event)

    def _raw_frame(self, event: TextMessage | BytesMessage) -> DataFrame | None:
        self._frame_parts.append(event.data)
        if not event.frame_finished:
            return None
        parts, self._frame_parts = self._frame_parts, []
        data: str | bytes
        if isinstance(event, TextMessage):
            data = "".join(parts)  # type: ignore[arg-type]
            first = Opcode.TEXT
        else:
            data = b"".join(parts)  # type: ignore[arg-type]
            first = Opcode.BINARY
        opcode = Opcode.CONTINUATION if self._in_message else first
        self._in_message = not event.message_finished
        return DataFrame(opcode, data, event.message_finished)

    def _close_event(self, event: CloseConnection) -> Event:
        ws = self._ws
        state = ws.state
        code, reason = int(event.code), event.reason or ""
        if state is ConnectionState.REMOTE_CLOSING:
            return CloseReceived(code, reason, bytes(ws.send(event.response())))
        if state is ConnectionState.CLOSED:
            return CloseCompleted(code, reason)
        # wsproto reports a protocol violation as a CloseConnection without a state change
        if code == CloseCode.MESSAGE_TOO_BIG:
            reason = f"message over max_message_size ({self._limit} bytes)"
        reply = self.close(code, reason) if state is ConnectionState.OPEN else b""
        return ProtocolFailed(code, reason, reply)
