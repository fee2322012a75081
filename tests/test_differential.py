"""The hot path against wsproto, its oracle: random streams of valid and invalid frames, cut at
random points, fed to two protocols, one parsing with the hot path (``_frames.py``) and one with
wsproto alone (``hot_path=False``): after every piece, the same events (messages, Pings, Pongs,
Close, failures with their code, reason and Close frame bytes), and the same counters.

Hypothesis generates the streams (bounded: a fixed number of examples, no deadline per example
but small inputs); failures shrink to a minimal stream of frames.
"""

from __future__ import annotations

import os
import struct
import zlib
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from trio_wshandler._extensions import DeflateAgreement
from trio_wshandler._protocol import WebSocketProtocol
from trio_wshandler._stats import Counters

EXAMPLES = int(os.environ.get("DIFFERENTIAL_EXAMPLES", "400"))


def frame(
    opcode: int,
    payload: bytes,
    *,
    fin: bool = True,
    rsv: int = 0,
    masked: bool = True,
    length_bytes: int | None = None,
    declared: int | None = None,
    key: bytes = b"\x11\x22\x33\x44",
) -> bytes:
    """A client frame, built by hand; ``length_bytes`` forces an encoding of the length (0, 2
    or 8 extra bytes, minimal or not), ``declared`` a length other than the payload's."""
    n = len(payload) if declared is None else declared
    if length_bytes is None:
        length_bytes = 0 if n < 126 else 2 if n < 65536 else 8
    b0 = (0x80 if fin else 0) | (rsv << 4) | opcode
    mask = 0x80 if masked else 0
    if length_bytes == 0:
        head = struct.pack("!BB", b0, mask | min(n, 127))
    elif length_bytes == 2:
        head = struct.pack("!BBH", b0, mask | 126, n & 0xFFFF)
    else:
        head = struct.pack("!BBQ", b0, mask | 127, n)
    if not masked:
        return head + payload
    return head + key + bytes(b ^ key[i % 4] for i, b in enumerate(payload))


def deflated(data: bytes) -> bytes:
    compressor = zlib.compressobj(wbits=-15)
    return (compressor.compress(data) + compressor.flush(zlib.Z_SYNC_FLUSH))[:-4]


texts = st.text(alphabet=st.characters(codec="utf-8"), max_size=40)
blobs = st.binary(max_size=300)
keys = st.binary(min_size=4, max_size=4)


def cut(data: bytes, parts: int) -> list[bytes]:
    """``data`` in ``parts`` pieces (possibly empty), cut at even points."""
    step = max(1, len(data) // parts) if data else 1
    pieces = [data[i * step : (i + 1) * step] for i in range(parts - 1)]
    return [*pieces, data[(parts - 1) * step :]]


@st.composite
def messages(draw: Any, deflate: bool, max_size: int) -> bytes:
    """One item of a stream: mostly valid messages (whole or in fragments, Pings among the
    fragments), sometimes a control frame, sometimes something invalid."""
    key = draw(keys)
    kind = draw(
        st.sampled_from(
            ["text", "text", "binary", "binary", "ping", "pong", "close", "invalid", "raw"]
            + ["limit"]
            + (["compressed", "compressed"] if deflate else [])
        )
    )
    if kind == "limit":  # a message of about the size limit, whole or in fragments
        kind = draw(st.sampled_from(["text", "binary"]))
        size = max(0, min(max_size, 5000) + draw(st.integers(-1, 1)))
        payload = b"x" * size if kind == "text" else draw(st.binary(min_size=size, max_size=size))
    elif kind in ("text", "binary", "compressed"):
        payload = draw(texts).encode() if kind == "text" else draw(blobs)
    if kind in ("text", "binary", "compressed"):
        if kind == "compressed":
            payload = deflated(payload)
        opcode = 1 if kind == "text" or draw(st.booleans()) else 2
        pieces = cut(payload, draw(st.integers(1, 4)))
        out = b""
        for i, piece in enumerate(pieces):
            last = i == len(pieces) - 1
            rsv = 4 if kind == "compressed" and i == 0 else 0
            out += frame(opcode if i == 0 else 0, piece, fin=last, rsv=rsv, key=key)
            if not last and draw(st.booleans()):
                out += frame(9, draw(st.binary(max_size=20)), key=key)  # a Ping between
        return out
    if kind == "ping":
        return frame(9, draw(st.binary(max_size=125)), key=key)
    if kind == "pong":
        return frame(10, draw(st.binary(max_size=125)), key=key)
    if kind == "close":
        code = draw(st.sampled_from([1000, 1001, 1005, 1014, 3000, 4999, 999, 1004, 5000]))
        if code == 1005:
            return frame(8, b"", key=key)
        reason = draw(st.sampled_from([b"", b"bye", b"\xff\xfe", "né".encode()]))
        return frame(8, struct.pack("!H", code) + reason, key=key)
    if kind == "invalid":
        return draw(
            st.sampled_from(
                [
                    frame(1, b"\xff\xfe", key=key),  # not UTF-8
                    frame(1, "é".encode()[:1], key=key),  # cut inside a character
                    frame(0, b"x", key=key),  # a Continuation without a message
                    frame(1, b"a", fin=False, key=key) + frame(2, b"b", key=key),  # no Continuation
                    frame(2, b"x", masked=False),  # unmasked
                    frame(2, b"x", rsv=2, key=key),  # RSV2
                    frame(2, b"x", rsv=4, key=key),  # RSV1 (compressed without deflate?)
                    frame(3, b"x", key=key),  # reserved opcode
                    frame(9, b"p", fin=False, key=key),  # a fragmented Ping
                    frame(9, b"p" * 126, key=key),  # a Ping over 125 bytes
                    frame(2, b"x" * 10, length_bytes=2, key=key),  # length not minimal
                    frame(2, b"x" * 200, length_bytes=8, key=key),  # length not minimal
                    frame(2, b"", declared=1 << 63, length_bytes=8, key=key),  # 64th bit set
                    frame(2, b"", declared=5000, key=key)[:8],  # over the size limit
                    frame(1, "héllo".encode()[:2], fin=False, key=key)  # a cut character...
                    + frame(1, b"x", key=key),  # ...then a new message
                ]
            )
        )
    # "raw": any first byte, any payload, masked or not
    b0 = draw(st.integers(0, 255))
    return frame(
        b0 & 0x0F,
        draw(st.binary(max_size=130)),
        fin=bool(b0 & 0x80),
        rsv=(b0 >> 4) & 7,
        masked=draw(st.booleans()),
        key=key,
    )


def protocols(
    max_size: int, max_fragments: int, deflate: bool
) -> tuple[WebSocketProtocol, WebSocketProtocol]:
    pair = []
    for hot in (True, False):
        proto = WebSocketProtocol(
            max_message_size=max_size,
            max_fragments=max_fragments,
            counters=Counters(),
            hot_path=hot,
        )
        if deflate:
            proto.use_deflate(DeflateAgreement())
        pair.append(proto)
    return pair[0], pair[1]


def counters(proto: WebSocketProtocol) -> tuple[Any, ...]:
    c = proto._counters
    return (c.bytes_received, c.protocol_errors, c.close_codes_sent, c.close_codes_received)


@st.composite
def streams(draw: Any, deflate: bool) -> tuple[list[bytes], int | None, int, int]:
    max_size = draw(st.sampled_from([50, 300, 1 << 20]))
    max_fragments = draw(st.sampled_from([2, 3, 4096]))
    data = b"".join(draw(st.lists(messages(deflate, max_size), min_size=1, max_size=12)))
    cuts = sorted(draw(st.lists(st.integers(0, len(data)), max_size=8)))
    pieces = [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True)]
    close_after = draw(st.none() | st.integers(0, len(pieces)))
    return pieces, close_after, max_size, max_fragments


def run_both(
    pieces: list[bytes], close_after: int | None, max_size: int, max_fragments: int, deflate: bool
) -> None:
    hot, oracle = protocols(max_size, max_fragments, deflate)
    for i, piece in enumerate(pieces):
        if i == close_after:  # our Close, between two reads
            assert hot.close(4000, "bye") == oracle.close(4000, "bye")
        hot.receive_data(piece)
        oracle.receive_data(piece)
        got, expected = list(hot.events()), list(oracle.events())
        assert got == expected, (i, pieces)
        assert hot.closing == oracle.closing
    assert counters(hot) == counters(oracle)


SETTINGS = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@SETTINGS
@given(streams(deflate=False))
def test_same_events_as_wsproto(stream: tuple[list[bytes], int | None, int, int]) -> None:
    run_both(*stream, deflate=False)


@SETTINGS
@given(streams(deflate=True))
def test_same_events_as_wsproto_with_compression(
    stream: tuple[list[bytes], int | None, int, int],
) -> None:
    run_both(*stream, deflate=True)


@pytest.mark.parametrize("size", [125, 126, 65535, 65536, 200_000])
@pytest.mark.parametrize("opcode", [1, 2])
def test_large_and_boundary_lengths_cut_everywhere_near_the_header(size: int, opcode: int) -> None:
    """Lengths at the edges of the 7-, 16- and 64-bit encodings, cut at every point of the
    header and at a few points of the payload (a fragmented message too)."""
    payload = (b"a" * size) if opcode == 1 else os.urandom(size)
    data = frame(opcode, payload[: size // 2], fin=False) + frame(0, payload[size // 2 :])
    for at in [*range(1, 16), size // 2 + 3, size // 2 + 14, size // 2 + 20, len(data) - 1]:
        run_both([data[:at], data[at:]], None, 1 << 20, 4096, deflate=False)
