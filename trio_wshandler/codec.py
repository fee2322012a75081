"""The WebSocket frame codec: the seed's ``WebSocketUtil`` module.

Encoding is done here, not by wsproto, on purpose: a server frame is unmasked, so the bytes of
one encoded message are the same for every client and :meth:`WebSocketHandler.send_all` can
encode a message once and queue the very same ``bytes`` object on thousands of connections.
wsproto's encoder lives on a stateful per-connection object, which would force one encode per
client.  Decoding and validation of incoming frames is always wsproto's (see ``_protocol.py``);
:func:`read_message` here only measures a frame's length so that it can read exactly one frame
from a stream, then lets wsproto's ``FrameDecoder`` validate and unmask it.
"""

from __future__ import annotations

import base64
import hashlib
import os
import struct
from enum import IntEnum

import attrs
import trio
from wsproto.frame_protocol import FrameDecoder, ParseFailed

__all__ = [
    "SENDABLE_CLOSE_CODES",
    "CloseCode",
    "Frame",
    "FrameError",
    "Opcode",
    "encode_data",
    "encode_message",
    "is_sendable_close_code",
    "message_payload",
    "read_message",
    "response_key",
    "validate_close_code",
]

#: The GUID of RFC 6455 section 1.3, appended to the client's key.
WS_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

#: Largest payload of a control frame (RFC 6455 section 5.5).
MAX_CONTROL_PAYLOAD = 125


class Opcode(IntEnum):
    """Frame opcodes (RFC 6455 section 5.2), named as in the seed."""

    CONTINUATION = 0x0
    TEXT = 0x1
    BINARY = 0x2
    CLOSE = 0x8
    PING = 0x9
    PONG = 0xA

    @property
    def is_control(self) -> bool:
        """Control frames (Close, Ping, Pong) may not be fragmented and carry <= 125 bytes."""
        return self >= 0x8


class CloseCode(IntEnum):
    """Close status codes with the texts the seed gives them (``WSCC_*`` / ``WSCCMap``)."""

    NORMAL_CLOSURE = 1000
    GOING_AWAY = 1001
    PROTOCOL_ERROR = 1002
    UNSUPPORTED_DATA = 1003
    NO_STATUS_RCVD = 1005
    ABNORMAL_CLOSURE = 1006
    INVALID_FRAME_PAYLOAD_DATA = 1007
    POLICY_VIOLATION = 1008
    MESSAGE_TOO_BIG = 1009
    MANDATORY_EXT = 1010
    INTERNAL_SERVER_ERROR = 1011
    SERVICE_RESTART = 1012
    TRY_AGAIN_LATER = 1013
    TLS_HANDSHAKE = 1015

    @property
    def text(self) -> str:
        """The human-readable text of this code, as in the seed's ``WSCCMap``."""
        return _CLOSE_TEXTS[self]


_CLOSE_TEXTS = {
    CloseCode.NORMAL_CLOSURE: "Normal Closure",
    CloseCode.GOING_AWAY: "Going Away",
    CloseCode.PROTOCOL_ERROR: "Protocol Error",
    CloseCode.UNSUPPORTED_DATA: "Unsupported Data",
    CloseCode.NO_STATUS_RCVD: "No Status Rcvd",
    CloseCode.ABNORMAL_CLOSURE: "Abnormal Closure",
    CloseCode.INVALID_FRAME_PAYLOAD_DATA: "Invalid Frame Payload Data",
    CloseCode.POLICY_VIOLATION: "Policy Violation",
    CloseCode.MESSAGE_TOO_BIG: "Message Too Big",
    CloseCode.MANDATORY_EXT: "Mandatory Ext.",
    CloseCode.INTERNAL_SERVER_ERROR: "Internal Server Error",
    CloseCode.SERVICE_RESTART: "Service Restart",
    CloseCode.TRY_AGAIN_LATER: "Try Again Later",
    CloseCode.TLS_HANDSHAKE: "TLS Handshake",
}


#: Close codes an endpoint may send (RFC 6455 section 7.4, IANA registry), besides 3000-4999.
SENDABLE_CLOSE_CODES = frozenset(
    {1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014}
)


def is_sendable_close_code(code: int) -> bool:
    """Whether a Close frame may carry ``code`` (1000-1003, 1007-1014 or 3000-4999)."""
    return code in SENDABLE_CLOSE_CODES or 3000 <= code <= 4999


def validate_close_code(code: int) -> None:
    """:raises ValueError: a Close frame may not carry ``code``."""
    if not is_sendable_close_code(code):
        raise ValueError(f"close code {code} cannot be sent; use 1000-1003, 1007-1014 or 3000-4999")


class FrameError(ValueError):
    """A frame that cannot be encoded, or a malformed frame read by :func:`read_message`.

    ``code`` is the close code a peer should be sent for it (1002 by default).
    """

    def __init__(self, message: str, code: int = CloseCode.PROTOCOL_ERROR) -> None:
        super().__init__(message)
        self.code = code


@attrs.frozen
class Frame:
    """One WebSocket frame, as seen by :meth:`WebSocketConnection.got_raw_message` and returned by
    :func:`read_message` (the seed's ``{op, masked, fin, msg, close}`` hash).

    ``data`` is ``str`` for Text frames and their continuations (decoded as UTF-8; a frame of a
    fragmented message may end in the middle of a character, the decoder carries the rest over)
    and ``bytes`` for everything else.  For a Close frame ``close_code`` is its status code
    (1005 when the frame had none) and ``close_reason`` its UTF-8 reason.
    """

    opcode: Opcode
    data: str | bytes = b""
    fin: bool = True
    masked: bool = False
    close_code: int | None = None
    close_reason: str = ""


DataLike = str | bytes | bytearray | memoryview

_pack_b = struct.Struct("!BB").pack
_pack_h = struct.Struct("!BBH").pack
_pack_q = struct.Struct("!BBQ").pack


def encode_message(
    data: DataLike,
    opcode: int | None = None,
    masked: bool = False,
    fin: bool = True,
    *,
    rsv1: bool = False,
) -> bytes:
    """Encode ``data`` as one WebSocket frame and return its bytes.

    The opcode comes from the type of ``data`` when not given: ``str`` is Text (encoded as
    UTF-8), ``bytes``/``bytearray``/``memoryview`` Binary.  Servers send unmasked frames
    (``masked=False``), which is what makes one encoding reusable for every client; clients must
    mask (``masked=True`` picks a random key).  ``fin=False`` makes a fragment; its
    continuations are sent with ``opcode=Opcode.CONTINUATION``.  ``rsv1=True`` marks the first
    frame of a message whose payload is compressed (permessage-deflate, RFC 7692); ``data`` must
    then be the compressed bytes, and the connection must have negotiated the extension.

    :raises FrameError: a control frame over 125 bytes or fragmented, or an unknown opcode.
    :raises TypeError: ``data`` is not text or bytes.
    """
    if isinstance(data, str):
        payload = data.encode("utf-8")
        op = Opcode.TEXT if opcode is None else opcode
    elif isinstance(data, bytes | bytearray | memoryview):
        payload = bytes(data)
        op = Opcode.BINARY if opcode is None else opcode
    else:
        raise TypeError(f"a WebSocket message is str or bytes-like, not {type(data).__name__}")
    try:
        op = Opcode(op)
    except ValueError:
        raise FrameError(f"unknown opcode {op!r}; valid: {[int(o) for o in Opcode]}") from None
    length = len(payload)
    if op.is_control and (length > MAX_CONTROL_PAYLOAD or not fin):
        raise FrameError(
            f"a {op.name} frame must be final and carry at most {MAX_CONTROL_PAYLOAD} bytes"
            f" (got {length} bytes, fin={fin})"
        )
    if rsv1 and (op.is_control or op == Opcode.CONTINUATION):
        raise FrameError("only the first frame of a Text or Binary message may set RSV1")
    b0 = (0x80 if fin else 0) | (0x40 if rsv1 else 0) | op
    mask_bit = 0x80 if masked else 0
    if length < 126:
        header = _pack_b(b0, mask_bit | length)
    elif length < 65536:
        header = _pack_h(b0, mask_bit | 126, length)
    else:
        header = _pack_q(b0, mask_bit | 127, length)
    if not masked:
        return header + payload
    key = os.urandom(4)
    while key == b"\0\0\0\0":  # the seed uses a non-zero mask
        key = os.urandom(4)
    return header + key + _mask(payload, key)


def encode_data(data: DataLike) -> bytes:
    """The frame of a whole, uncompressed message: :func:`encode_message` ``(data)`` with no
    more work than that takes (the encoding of every ``send()``)."""
    if isinstance(data, str):
        payload = data.encode("utf-8")
        b0 = 0x81
    elif isinstance(data, bytes):
        payload = data
        b0 = 0x82
    else:
        return encode_message(data)
    length = len(payload)
    if length < 126:
        return _pack_b(b0, length) + payload
    if length < 65536:
        return _pack_h(b0, 126, length) + payload
    return _pack_q(b0, 127, length) + payload


def message_payload(data: DataLike) -> tuple[bytes, Opcode]:
    """The payload bytes of a message and its opcode: Text for ``str``, Binary for bytes."""
    if isinstance(data, str):
        return data.encode("utf-8"), Opcode.TEXT
    if isinstance(data, bytes | bytearray | memoryview):
        return bytes(data), Opcode.BINARY
    raise TypeError(f"a WebSocket message is str or bytes-like, not {type(data).__name__}")


def _mask(payload: bytes, key: bytes) -> bytes:
    """XOR ``payload`` with the 4-byte ``key`` (RFC 6455 section 5.3), via big-int arithmetic."""
    if not payload:
        return b""
    n = len(payload)
    repeated = (key * (n // 4 + 1))[:n]
    x = int.from_bytes(payload, "big") ^ int.from_bytes(repeated, "big")
    return x.to_bytes(n, "big")


def response_key(key: str | bytes) -> str:
    """``Sec-WebSocket-Accept`` for a client's ``Sec-WebSocket-Key``: base64(SHA-1(key + GUID))."""
    if isinstance(key, bytes):
        key = key.decode("ascii")
    digest = hashlib.sha1((key.strip() + WS_GUID).encode("ascii")).digest()
    return base64.b64encode(digest).decode("ascii")


async def _receive_exactly(stream: trio.abc.ReceiveStream, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = await stream.receive_some(n - len(buf))
        if not chunk:
            raise FrameError(
                f"stream ended after {len(buf)} of {n} bytes", CloseCode.ABNORMAL_CLOSURE
            )
        buf += chunk
    return bytes(buf)


async def read_message(
    stream: trio.abc.ReceiveStream,
    *,
    expect_masked: bool | None = None,
    max_size: int = 1 << 20,
) -> Frame:
    """Read exactly one frame from ``stream`` (the seed's ``ws_read_message``).

    Reads nothing past the frame, so it can be called repeatedly on the same stream.  The frame is
    validated and unmasked by wsproto's ``FrameDecoder``.  ``expect_masked`` (default: accept
    either) makes an unmasked or masked frame an error, as a server or a client must.  A Text
    frame's payload is decoded; a Close frame yields ``close_code`` (1005 when empty) and
    ``close_reason``.

    :raises FrameError: malformed frame, payload over ``max_size``, or end of stream.
    """
    head = await _receive_exactly(stream, 2)
    masked = bool(head[1] & 0x80)
    if expect_masked is not None and masked != expect_masked:
        raise FrameError("unmasked frame from a client" if expect_masked else "masked frame")
    short = head[1] & 0x7F
    ext = await _receive_exactly(stream, {126: 2, 127: 8}.get(short, 0))
    length = short if short < 126 else int.from_bytes(ext, "big")
    if length > max_size:
        raise FrameError(
            f"frame of {length} bytes is over max_size={max_size}", CloseCode.MESSAGE_TOO_BIG
        )
    rest = await _receive_exactly(stream, (4 if masked else 0) + length)
    decoder = FrameDecoder(client=not masked, extensions=[])
    decoder.receive_bytes(head + ext + rest)
    try:
        raw = decoder.process_buffer()
    except ParseFailed as exc:
        raise FrameError(str(exc), exc.code) from None
    assert raw is not None, "a whole frame was fed"
    opcode = Opcode(raw.opcode)
    assert isinstance(raw.payload, bytes | bytearray)
    payload = bytes(raw.payload)
    if opcode is Opcode.CLOSE:
        return _close_frame(payload, masked)
    data: str | bytes = payload
    if opcode is Opcode.TEXT:
        try:
            data = payload.decode("utf-8")
        except UnicodeDecodeError as exc:
            if raw.message_finished:
                raise FrameError(str(exc), CloseCode.INVALID_FRAME_PAYLOAD_DATA) from None
            # a fragment may end inside a character; give the bytes as they are
    return Frame(opcode, data, raw.message_finished, masked)


def _close_frame(payload: bytes, masked: bool) -> Frame:
    if not payload:
        return Frame(Opcode.CLOSE, b"", True, masked, CloseCode.NO_STATUS_RCVD, "")
    if len(payload) == 1:
        raise FrameError("Close frame with a 1-byte payload")
    code = int.from_bytes(payload[:2], "big")
    try:
        reason = payload[2:].decode("utf-8")
    except UnicodeDecodeError as exc:
        raise FrameError(f"Close reason: {exc}", CloseCode.INVALID_FRAME_PAYLOAD_DATA) from None
    return Frame(Opcode.CLOSE, payload, True, masked, code, reason)
