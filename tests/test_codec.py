"""trio_wshandler.codec: the seed's WebSocketUtil, checked against wsproto as the reference."""

from __future__ import annotations

import struct

import pytest
import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st
from wsproto import ConnectionType
from wsproto.connection import Connection
from wsproto.events import BytesMessage, CloseConnection, Ping, TextMessage

from trio_wshandler.codec import (
    CloseCode,
    Frame,
    FrameError,
    Opcode,
    encode_data,
    encode_message,
    read_message,
    response_key,
)


def test_response_key_rfc6455_example() -> None:
    # RFC 6455 section 1.3
    assert response_key("dGhlIHNhbXBsZSBub25jZQ==") == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
    assert response_key(b"dGhlIHNhbXBsZSBub25jZQ==") == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="


def test_close_code_texts_follow_the_seed() -> None:
    assert CloseCode(1000).text == "Normal Closure"
    assert CloseCode.GOING_AWAY.text == "Going Away"
    assert CloseCode(1011).text == "Internal Server Error"
    assert CloseCode(1015).text == "TLS Handshake"
    assert all(code.text for code in CloseCode)


@pytest.mark.parametrize(
    ("size", "header_len", "second_byte"),
    [(0, 2, 0), (125, 2, 125), (126, 4, 126), (65535, 4, 126), (65536, 10, 127)],
)
def test_length_forms(size: int, header_len: int, second_byte: int) -> None:
    frame = encode_message(b"x" * size)
    assert frame[0] == 0x80 | Opcode.BINARY
    assert frame[1] == second_byte
    assert len(frame) == header_len + size
    if second_byte == 126:
        assert struct.unpack("!H", frame[2:4])[0] == size
    if second_byte == 127:
        assert struct.unpack("!Q", frame[2:10])[0] == size


def test_opcode_from_type_and_explicit() -> None:
    assert encode_message("hé")[0] == 0x81
    assert encode_message("hé")[2:] == "hé".encode()
    assert encode_message(bytearray(b"a"))[0] == 0x82
    assert encode_message(memoryview(b"a"))[0] == 0x82
    assert encode_message(b"p", Opcode.PING)[0] == 0x89
    assert encode_message("part", fin=False)[0] == 0x01
    assert encode_message("rest", Opcode.CONTINUATION)[0] == 0x80


def test_encode_rejects_bad_input() -> None:
    with pytest.raises(FrameError, match="at most 125"):
        encode_message(b"x" * 126, Opcode.PING)
    with pytest.raises(FrameError, match="must be final"):
        encode_message(b"x", Opcode.PONG, fin=False)
    with pytest.raises(FrameError, match="unknown opcode"):
        encode_message(b"x", 3)
    with pytest.raises(TypeError, match="str or bytes-like"):
        encode_message(123)  # type: ignore[arg-type]


def test_masked_frames_have_nonzero_key_and_decode() -> None:
    frame = encode_message("hello", masked=True)
    assert frame[1] & 0x80
    assert frame[2:6] != b"\0\0\0\0"
    ws = Connection(ConnectionType.SERVER)
    ws.receive_data(frame)
    [event] = list(ws.events())
    assert isinstance(event, TextMessage) and event.data == "hello"


@settings(max_examples=100, deadline=None)
@given(
    data=st.one_of(st.text(max_size=70000), st.binary(max_size=70000)),
    masked=st.booleans(),
)
def test_any_message_round_trips_through_wsproto(data: str | bytes, masked: bool) -> None:
    """Property: whatever we encode, wsproto (the other side) decodes to the same message."""
    frame = encode_message(data, masked=masked)
    ws = Connection(ConnectionType.SERVER if masked else ConnectionType.CLIENT)
    ws.receive_data(frame)
    parts = list(ws.events())
    assert all(isinstance(p, TextMessage | BytesMessage) for p in parts)
    joined = (
        "".join(p.data for p in parts) if isinstance(data, str) else b"".join(p.data for p in parts)
    )
    assert joined == data
    assert parts[-1].message_finished


async def _read_from(data: bytes, **kw: object) -> Frame:
    send, receive = trio.testing.memory_stream_pair()
    await send.send_all(data)
    await send.aclose()
    with trio.fail_after(5):
        return await read_message(receive, **kw)  # type: ignore[arg-type]


async def test_read_message_reads_exactly_one_frame() -> None:
    send, receive = trio.testing.memory_stream_pair()
    await send.send_all(encode_message("one", masked=True) + encode_message(b"two", masked=True))
    first = await read_message(receive)
    second = await read_message(receive)
    assert (first.opcode, first.data, first.fin, first.masked) == (Opcode.TEXT, "one", True, True)
    assert (second.opcode, second.data) == (Opcode.BINARY, b"two")


async def test_read_message_close_frames() -> None:
    empty = await _read_from(encode_message(b"", Opcode.CLOSE))
    assert (empty.opcode, empty.close_code, empty.close_reason) == (Opcode.CLOSE, 1005, "")
    ws = Connection(ConnectionType.CLIENT)
    data = ws.send(CloseConnection(code=4001, reason="bye"))
    closing = await _read_from(data)
    assert (closing.close_code, closing.close_reason, closing.masked) == (4001, "bye", True)


async def test_read_message_validates() -> None:
    with pytest.raises(FrameError, match="unmasked"):
        await _read_from(encode_message("x"), expect_masked=True)
    with pytest.raises(FrameError) as info:
        await _read_from(encode_message(b"x" * 100), max_size=10)
    assert info.value.code == CloseCode.MESSAGE_TOO_BIG
    with pytest.raises(FrameError) as info:
        await _read_from(encode_message(b"\xff\xfe", Opcode.TEXT))
    assert info.value.code == CloseCode.INVALID_FRAME_PAYLOAD_DATA
    with pytest.raises(FrameError) as info:
        await _read_from(bytes([0x83, 0]))  # reserved opcode 3
    assert info.value.code == CloseCode.PROTOCOL_ERROR
    with pytest.raises(FrameError) as info:
        await _read_from(bytes([0xC1, 0]))  # RSV1 without an extension
    assert info.value.code == CloseCode.PROTOCOL_ERROR
    with pytest.raises(FrameError) as info:
        await _read_from(encode_message(b"x" * 10)[:5])  # stream ends mid-frame
    assert info.value.code == CloseCode.ABNORMAL_CLOSURE


async def test_read_message_ping_from_wsproto() -> None:
    ws = Connection(ConnectionType.CLIENT)
    frame = await _read_from(ws.send(Ping(b"abc")))
    assert (frame.opcode, frame.data) == (Opcode.PING, b"abc")


@given(st.one_of(st.text(), st.binary(max_size=70_000), st.binary().map(bytearray)))
def test_encode_data_is_encode_message_of_a_whole_message(data: str | bytes | bytearray) -> None:
    """The fast path of every send() frames exactly as encode_message does."""
    assert encode_data(data) == encode_message(data)
