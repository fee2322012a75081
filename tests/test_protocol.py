"""The sans-I/O protocol core on its own: bytes in, events and bytes out (no sockets, no Trio).

The socket tests (test_protocol_errors.py, test_faults.py) are the integration layer; these
check ``WebSocketProtocol`` directly, each input also fed one byte at a time, so a frame cut at
any point gives the same events.
"""

from __future__ import annotations

import struct

import pytest

from trio_wshandler._events import (
    SKIPPED,
    CloseCompleted,
    CloseReceived,
    DataFrame,
    MessageReceived,
    PingReceived,
    PongReceived,
    ProtocolFailed,
)
from trio_wshandler._limits import compressed_slack
from trio_wshandler._protocol import WebSocketProtocol
from trio_wshandler._stats import Counters
from trio_wshandler.codec import Opcode

from .conftest import client_frame
from .test_protocol_errors import PROTOCOL_VIOLATIONS


def protocol(
    max_message_size: int = 1 << 20, max_fragments: int = 4096, raw_frames: bool = False
) -> tuple[WebSocketProtocol, Counters]:
    counters = Counters()
    return (
        WebSocketProtocol(
            max_message_size=max_message_size,
            max_fragments=max_fragments,
            raw_frames=raw_frames,
            counters=counters,
        ),
        counters,
    )


def feed(proto: WebSocketProtocol, data: bytes, *, bytewise: bool) -> list[object]:
    """The events of ``data``, fed at once or one byte at a time."""
    events: list[object] = []
    for piece in [data[i : i + 1] for i in range(len(data))] if bytewise else [data]:
        proto.receive_data(piece)
        events.extend(proto.events())
    return events


def server_close(frame: bytes) -> tuple[int | None, str]:
    """The code and reason of a Close frame we send (unmasked, short), parsed by hand."""
    assert frame[0] == 0x88, frame
    length = frame[1]
    assert length < 126 and len(frame) == 2 + length
    payload = frame[2:]
    if not payload:
        return None, ""
    return struct.unpack("!H", payload[:2])[0], payload[2:].decode("utf-8")


BOTH = pytest.mark.parametrize("bytewise", [False, True], ids=["whole", "bytewise"])


@BOTH
@pytest.mark.parametrize(("name", "frames", "code"), PROTOCOL_VIOLATIONS)
def test_violations_fail_with_their_code(
    name: str, frames: list[bytes], code: int, bytewise: bool
) -> None:
    proto, counters = protocol()
    events = feed(proto, b"".join(frames), bytewise=bytewise)
    failed = events[-1]
    assert isinstance(failed, ProtocolFailed), (name, events)
    assert failed.code == code, name
    assert server_close(failed.reply)[0] == code
    assert not any(isinstance(e, MessageReceived) for e in events)
    assert counters.protocol_errors == {code: 1}
    assert counters.close_codes_sent == {code: 1}
    assert proto.closing
    # what follows is not acted on: no second failure, no second Close
    assert feed(proto, client_frame(b"more", Opcode.TEXT), bytewise=bytewise) in ([], [SKIPPED])


@BOTH
def test_fragments_are_joined_into_one_message(bytewise: bool) -> None:
    proto, counters = protocol()
    text = "héllo wörld, ünïcode split inside characters".encode()
    parts = [text[:2], text[2:15], text[15:]]  # 'é' is cut in two
    data = (
        client_frame(parts[0], Opcode.TEXT, fin=False)
        + client_frame(parts[1], Opcode.CONTINUATION, fin=False)
        + client_frame(b"ping", Opcode.PING)  # a control frame between fragments
        + client_frame(parts[2], Opcode.CONTINUATION)
        + client_frame(b"\x00\x01", Opcode.BINARY, fin=False)
        + client_frame(b"\x02", Opcode.CONTINUATION)
    )
    events = feed(proto, data, bytewise=bytewise)
    assert events == [
        PingReceived(b"ping"),
        MessageReceived(text.decode()),
        MessageReceived(b"\x00\x01\x02"),
    ]
    assert counters.bytes_received == len(data)


@BOTH
def test_raw_mode_gives_one_event_per_frame(bytewise: bool) -> None:
    proto, _ = protocol(raw_frames=True)
    data = (
        client_frame(b"ab", Opcode.TEXT, fin=False)
        + client_frame(b"cd", Opcode.CONTINUATION)
        + client_frame(b"\x07", Opcode.BINARY)
    )
    events = feed(proto, data, bytewise=bytewise)
    assert events == [
        DataFrame(Opcode.TEXT, "ab", False),
        DataFrame(Opcode.CONTINUATION, "cd", True),
        DataFrame(Opcode.BINARY, b"\x07", True),
    ]


def test_size_is_checked_on_the_frame_header() -> None:
    """A header that declares more than max_message_size fails before any payload comes."""
    proto, counters = protocol(max_message_size=100)
    events = feed(proto, client_frame(b"", Opcode.BINARY, declared_length=101)[:6], bytewise=False)
    [failed] = events
    assert isinstance(failed, ProtocolFailed) and failed.code == 1009
    assert failed.reason == "message over max_message_size (100 bytes)"
    assert server_close(failed.reply) == (1009, failed.reason)
    assert counters.protocol_errors == {1009: 1}


@BOTH
def test_exactly_the_limit_is_accepted(bytewise: bool) -> None:
    proto, _ = protocol(max_message_size=100)
    events = feed(proto, client_frame(b"x" * 100, Opcode.TEXT), bytewise=bytewise)
    assert events == [MessageReceived("x" * 100)]


def test_fragments_count_together_against_the_size() -> None:
    proto, _ = protocol(max_message_size=100)
    first = client_frame(b"x" * 60, Opcode.BINARY, fin=False)
    second_header = client_frame(b"", Opcode.CONTINUATION, declared_length=41)[:6]
    events = feed(proto, first + second_header, bytewise=False)
    assert isinstance(events[-1], ProtocolFailed) and events[-1].code == 1009


def test_the_number_of_fragments_is_bounded() -> None:
    proto, _ = protocol(max_fragments=3)
    data = client_frame(b"", Opcode.BINARY, fin=False) + b"".join(
        client_frame(b"", Opcode.CONTINUATION, fin=False) for _ in range(3)
    )
    events = feed(proto, data, bytewise=False)
    [failed] = events
    assert isinstance(failed, ProtocolFailed) and failed.code == 1009
    assert failed.reason == "message of more than max_fragments (3) frames"


def test_compressed_messages_may_exceed_the_size_on_the_wire_by_the_slack() -> None:
    """With permessage-deflate the wire size may be over the limit by what deflate adds to
    incompressible data (compressed_slack), and no more."""
    from trio_wshandler._extensions import DeflateAgreement

    limit = 1000
    allowed = limit + compressed_slack(limit, 1)
    for declared, fails in ((allowed, False), (allowed + 1, True)):
        proto, _ = protocol(max_message_size=limit)
        proto.use_deflate(DeflateAgreement())
        header = client_frame(b"", Opcode.BINARY, rsv=4, declared_length=declared)[:8]
        events = feed(proto, header, bytewise=False)
        assert bool(events) is fails, declared
        if fails:
            assert isinstance(events[0], ProtocolFailed) and events[0].code == 1009


@BOTH
def test_close_1014_is_accepted_and_echoed(bytewise: bool) -> None:
    """wsproto refuses 1014 (allowed by the IANA registry): a stand-in code is shown to it and
    the peer's code restored."""
    proto, counters = protocol()
    events = feed(proto, client_frame(b"\x03\xf6bad gateway", Opcode.CLOSE), bytewise=bytewise)
    [received] = events
    assert isinstance(received, CloseReceived)
    assert (received.code, received.reason) == (1014, "bad gateway")
    assert server_close(received.reply) == (1014, "bad gateway")
    assert counters.close_codes_received == {1014: 1}


@BOTH
def test_we_close_first(bytewise: bool) -> None:
    proto, counters = protocol()
    close = proto.close(4000, "bye")
    assert server_close(close) == (4000, "bye")
    assert proto.closing and proto.close(1000) == b""  # one Close only
    events = feed(
        proto,
        client_frame(b"late", Opcode.TEXT) + client_frame(b"p", Opcode.PING),
        bytewise=bytewise,
    )
    # the data is dropped unread (one SKIPPED per piece of it wsproto hands over)
    assert SKIPPED in events
    assert [e for e in events if e is not SKIPPED] == [PingReceived(b"p")]
    assert proto.pong(b"p") == b""  # no frame may follow our Close
    events = feed(proto, client_frame(b"\x0f\xa0", Opcode.CLOSE), bytewise=bytewise)
    assert events == [CloseCompleted(4000, "")]
    assert counters.close_codes_sent == {4000: 1} and counters.close_codes_received == {4000: 1}


@BOTH
def test_peer_closes_first(bytewise: bool) -> None:
    proto, _ = protocol()
    assert proto.pong(b"x") == b"\x8a\x01x"  # open: Pings are answered
    events = feed(proto, client_frame(b"\x03\xe8done", Opcode.CLOSE), bytewise=bytewise)
    [received] = events
    assert received == CloseReceived(1000, "done", received.reply)
    assert server_close(received.reply) == (1000, "done")
    assert proto.close(1001) == b""  # the answer was our Close
    # nothing after the peer's Close is parsed
    assert feed(proto, client_frame(b"after", Opcode.TEXT), bytewise=bytewise) == []


def test_an_empty_close_is_answered_with_an_empty_close() -> None:
    proto, counters = protocol()
    [received] = feed(proto, client_frame(b"", Opcode.CLOSE), bytewise=False)
    assert isinstance(received, CloseReceived) and received.code == 1005
    assert received.reply == b"\x88\x00"
    assert counters.close_codes_received == {1005: 1}


def test_pongs_are_events() -> None:
    proto, _ = protocol()
    assert feed(proto, client_frame(b"hb", Opcode.PONG), bytewise=False) == [PongReceived(b"hb")]
