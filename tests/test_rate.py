"""Rate limits on what a client sends (issue #20), sans-I/O: the buckets and the error budget
with a clock the test moves, then the protocol fed the bytes of real frames (whole, and cut
byte by byte) under each policy.  The same over real sockets is in test_rate_sockets.py."""

from __future__ import annotations

import os
import zlib

import pytest

from trio_wshandler import ErrorBudget, RateLimit, RateLimits
from trio_wshandler._events import (
    MessageReceived,
    ProtocolFailed,
    RateRefused,
    Throttled,
)
from trio_wshandler._extensions import DeflateAgreement
from trio_wshandler._frames import MAX_SKIPPED
from trio_wshandler._protocol import WebSocketProtocol
from trio_wshandler._rate import RateGate
from trio_wshandler._stats import Counters

from .conftest import client_frame


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def gate(
    *limits: RateLimit, policy: str = "delay", budget: ErrorBudget | None = None
) -> tuple[RateGate, Clock, Counters]:
    clock, counters = Clock(), Counters()
    rates = RateLimits(limits, policy=policy, error_budget=budget)  # type: ignore[arg-type]
    return RateGate(rates, clock, counters), clock, counters


# ---------------------------------------------------------------- the buckets


def test_a_burst_then_the_rate() -> None:
    g, clock, counters = gate(RateLimit(100, burst=200))
    assert all(g.admit(5, True) is None for _ in range(200))
    wait = g.admit(5, True)
    assert wait == pytest.approx(0.01)
    assert g.admit(5, True) == pytest.approx(0.01)  # asked again: the same wait, counted once
    assert counters.rate_limited == 1
    clock.now = 0.01
    assert g.admit(5, True) is None
    clock.now = 1.01  # a second later: 100 more, not 200 (no more than the burst either)
    assert sum(g.admit(5, True) is None for _ in range(150)) == 100


def test_several_buckets_at_once_the_emptiest_decides() -> None:
    # 20/s burst 50 *and* 300 a minute
    g, clock, _ = gate(RateLimit(20, burst=50), RateLimit(300, per=60.0))
    assert sum(g.admit(1, True) is None for _ in range(60)) == 50
    admitted = 50
    for _ in range(200):  # 200 s at 20/s would be 4,000: the minute's bucket holds it to 5/s
        clock.now += 1.0
        admitted += sum(g.admit(1, True) is None for _ in range(30))
    assert admitted == pytest.approx(300 + 200 * 5, abs=2)
    assert isinstance(g.admit(1, True), float)


def test_bytes_are_charged_frame_by_frame_and_a_large_message_takes_the_bucket_into_debt() -> None:
    g, clock, _ = gate(RateLimit(1000, burst=1000, unit="bytes"), policy="drop")
    assert g.admit(600, True) is None
    assert g.admit(300, False) is None  # a later frame of an admitted message: charged
    assert g.admit(5000, False) is None  # never cut, even past the bucket: debt
    refused = g.admit(10, True)
    assert isinstance(refused, RateLimit) and refused.unit == "bytes"
    clock.now = 4.9  # the debt (-4,900) is repaid at 1,000/s: 10 bytes after 4.91 s
    assert isinstance(g.admit(10, True), RateLimit)
    clock.now = 4.92
    assert g.admit(10, True) is None
    # a message larger than the bucket waits for a full one, then goes
    d, dclock, _ = gate(RateLimit(100, burst=100, unit="bytes"))
    assert d.admit(50, True) is None
    assert d.admit(10_000, True) == pytest.approx(0.5)
    dclock.now = 0.5
    assert d.admit(10_000, True) is None


def test_messages_buckets_ignore_later_frames_and_drop_counts() -> None:
    g, _, counters = gate(RateLimit(2, burst=2), policy="drop")
    assert g.admit(1, True) is None and g.admit(1, False) is None and g.admit(1, False) is None
    assert g.admit(1, True) is None
    assert isinstance(g.admit(1, True), RateLimit)
    assert isinstance(g.admit(1, True), RateLimit)
    assert counters.rate_limited == 2 and counters.rate_dropped == 2


def test_the_error_budget_is_a_sliding_window() -> None:
    g, _, _ = gate(budget=ErrorBudget(errors=3, per=10.0))
    assert not g.limiting
    assert [g.refused() for _ in range(3)] == [False, False, False]
    assert g.refused()  # the 4th within 10 s
    spaced, sclock, _ = gate(budget=ErrorBudget(errors=3, per=10.0))
    for _ in range(20):  # one every 4 s: never more than 3 within 10 s
        assert not spaced.refused()
        sclock.now += 4.0
    unbudgeted, _, _ = gate(RateLimit(1))
    assert not any(unbudgeted.refused() for _ in range(100))


def test_options_are_checked() -> None:
    with pytest.raises(ValueError):
        RateLimit(0)
    with pytest.raises(TypeError):
        RateLimit("10")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        RateLimit(10, per=-1)
    with pytest.raises(ValueError):
        RateLimit(10, unit="frames")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        RateLimits(RateLimit(1), policy="ignore")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        RateLimits([10])  # type: ignore[list-item]
    with pytest.raises(TypeError):
        RateLimits(error_budget=5)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        ErrorBudget(errors=0)
    assert RateLimits(RateLimit(5)).limits == (RateLimit(5),)  # one limit or several
    assert RateLimit(5).capacity == 5 and RateLimit(5, burst=8).capacity == 8


# ---------------------------------------------------------------- the protocol


def text(message: str, **kw: object) -> bytes:
    return client_frame(message.encode(), 1, **kw)  # type: ignore[arg-type]


def protocol(
    limits: RateLimits, clock: Clock, *, raw: bool = False, deflate: DeflateAgreement | None = None
) -> WebSocketProtocol:
    p = WebSocketProtocol(max_message_size=1 << 20, max_fragments=64, raw_frames=raw)
    if deflate is not None:
        p.use_deflate(deflate)
    p.limit_rate(limits, clock)
    return p


def run(
    p: WebSocketProtocol, data: bytes, clock: Clock, *, cut: bool, step: int = 1
) -> list[object]:
    """Feed ``data`` whole or cut every ``step`` bytes; a Throttled moves the clock on."""
    events: list[object] = []
    for piece in [data[i : i + step] for i in range(0, len(data), step)] if cut else [data]:
        p.receive_data(piece)
        for event in p.events():
            if isinstance(event, Throttled):
                clock.now += event.seconds
            events.append(event)
    return events


def messages(events: list[object]) -> list[object]:
    return [e.data for e in events if isinstance(e, MessageReceived)]


def expanded(events: list[object]) -> list[object]:
    """The events with a run of refusals (``count``) as that many single ones."""
    out: list[object] = []
    for e in events:
        if isinstance(e, RateRefused):
            out += [RateRefused(e.limit, e.unread)] * e.count
        else:
            out.append(e)
    return out


@pytest.mark.parametrize("cut", [False, True], ids=["whole", "byte-by-byte"])
def test_delay_delivers_every_message_at_the_pace(cut: bool) -> None:
    clock = Clock()
    p = protocol(RateLimits(RateLimit(100, burst=20)), clock)
    sent = [f"m{i}" for i in range(120)]
    events = run(p, b"".join(text(m) for m in sent), clock, cut=cut)
    assert messages(events) == sent
    assert clock.now == pytest.approx(1.0)  # 100 after the burst of 20, at 100/s
    assert sum(isinstance(e, Throttled) for e in events) >= 100


@pytest.mark.parametrize("cut", [False, True], ids=["whole", "byte-by-byte"])
def test_drop_skips_whole_messages_unread(cut: bool) -> None:
    clock = Clock()
    p = protocol(RateLimits(RateLimit(1000, burst=3), policy="drop"), clock)
    data = b"".join(text(f"m{i}") for i in range(3))
    # a fragmented message with invalid UTF-8 in it: refused at its first header, never read
    data += text("bad ", fin=False) + client_frame(b"\xff\xfe", 0, fin=False)
    data += client_frame(b"", 9)  # a Ping in the middle of it is still answered
    data += client_frame(b"end", 0)
    events = expanded(run(p, data, clock, cut=cut))
    assert messages(events) == ["m0", "m1", "m2"]
    assert [type(e).__name__ for e in events if not isinstance(e, MessageReceived)] == [
        "RateRefused",
        "PingReceived",
    ]
    clock.now = 1.0
    p.receive_data(text("later"))
    assert messages(list(p.events())) == ["later"]


def test_a_dropped_message_still_breaks_the_protocol_where_it_would() -> None:
    clock = Clock()
    p = protocol(RateLimits(RateLimit(1, burst=1), policy="drop"), clock)
    data = text("ok") + text("dropped", fin=False) + text("a new message, not a continuation")
    events = run(p, data, clock, cut=False)
    assert messages(events) == ["ok"]
    failed = [e for e in events if isinstance(e, ProtocolFailed)]
    assert failed and failed[0].code == 1002
    # a continuation over max_fragments in a dropped message: 1009 as always
    p = protocol(RateLimits(RateLimit(1, burst=1), policy="drop"), clock)
    data = text("ok") + text("x", fin=False) + client_frame(b"x", 0, fin=False) * 80
    failed = [e for e in run(p, data, clock, cut=False) if isinstance(e, ProtocolFailed)]
    assert failed and failed[0].code == 1009


def test_close_refuses_once_and_a_budget_counts_drops() -> None:
    clock = Clock()
    p = protocol(RateLimits(RateLimit(10, burst=2), policy="close"), clock)
    events = expanded(run(p, b"".join(text(f"m{i}") for i in range(5)), clock, cut=False))
    refused = [e for e in events if isinstance(e, RateRefused)]
    assert messages(events) == ["m0", "m1"] and len(refused) == 3  # the reader closes at the 1st
    assert p.gate is not None and p.gate.policy == "close"


def compress(message: bytes, compressor: zlib._Compress) -> bytes:
    data = compressor.compress(message) + compressor.flush(zlib.Z_SYNC_FLUSH)
    return client_frame(data[:-4], 1, rsv=4)


@pytest.mark.parametrize("keep_context", [False, True], ids=["no-context", "context-takeover"])
def test_dropped_compressed_messages_leave_the_context_whole(keep_context: bool) -> None:
    """With context takeover a later message refers to the bytes of one refused: it is
    inflated all the same and discarded; without, it is skipped unread."""
    clock = Clock()
    agreement = DeflateAgreement(client_no_context_takeover=not keep_context)
    p = protocol(RateLimits(RateLimit(1, burst=2), policy="drop"), clock, deflate=agreement)
    line = "the same long line, again and again, " * 4
    data = b""
    compressor = zlib.compressobj(wbits=-15)
    for i in range(6):
        if not keep_context:
            compressor = zlib.compressobj(wbits=-15)
        data += compress(f"{line}{i}".encode(), compressor)
    events = expanded(run(p, data, clock, cut=False))
    assert messages(events) == [f"{line}0", f"{line}1"]
    assert [e.unread for e in events if isinstance(e, RateRefused)] == [not keep_context] * 4
    clock.now = 10.0
    if not keep_context:
        compressor = zlib.compressobj(wbits=-15)
    p.receive_data(compress(f"{line}6".encode(), compressor))
    assert messages(list(p.events())) == [f"{line}6"]


def test_raw_frames_are_limited_too() -> None:
    clock = Clock()
    p = protocol(RateLimits(RateLimit(1000, burst=2), policy="drop"), clock, raw=True)
    data = text("a") + text("b", fin=False) + client_frame(b"c", 0) + text("d") + text("e")
    events = expanded(run(p, data, clock, cut=False))
    frames = [(e.opcode, e.data, e.fin) for e in events if type(e).__name__ == "DataFrame"]
    assert [f[1] for f in frames] == ["a", "b", "c"]
    assert sum(isinstance(e, RateRefused) for e in events) == 2


def test_random_streams_cut_anywhere_give_the_same_events() -> None:
    """Under "drop", the same bytes give the same messages and refusals however they are cut
    (the gate is asked at the same headers in the same order)."""
    rng = __import__("random").Random(20)
    for _ in range(40):
        frames: list[bytes] = []
        for i in range(rng.randrange(1, 30)):
            size = rng.choice([0, 3, 125, 126, 300, 70_000])
            body = os.urandom(size)
            if rng.random() < 0.3:
                half = size // 2
                frames += [
                    client_frame(body[:half], 2, fin=False),
                    client_frame(body[half:], 0),
                ]
            else:
                frames.append(client_frame(body, 2))
            if rng.random() < 0.2:
                frames.append(client_frame(b"p%d" % i, 9))
        data = b"".join(frames)
        results = []
        for cuts in (False, True):
            clock = Clock()
            limits = RateLimits(
                (RateLimit(5, burst=4), RateLimit(50_000, burst=100_000, unit="bytes")),
                policy="drop",
            )
            p = protocol(limits, clock)
            events = expanded(run(p, data, clock, cut=cuts, step=rng.randrange(1, 200)))
            results.append([(type(e).__name__, getattr(e, "data", None)) for e in events])
        assert results[0] == results[1]


def test_a_flooders_read_is_refused_in_runs() -> None:
    """The whole messages of one read that the gate refuses (a messages bucket is empty) are
    skipped together: one event for the run, the counters bumped by its length."""
    clock = Clock()
    counters = Counters()
    p = WebSocketProtocol(max_message_size=1 << 20, max_fragments=64, counters=counters)
    p.limit_rate(RateLimits(RateLimit(10, burst=5), policy="drop"), clock)
    data = b"".join(text(f"{i:04}") for i in range(1000)) + client_frame(b"", 9)
    data += b"".join(text(f"{i:04}") for i in range(1000, 1010)) + text("cut")[:3]
    events = run(p, data, clock, cut=False)
    runs = [e.count for e in events if isinstance(e, RateRefused)]
    assert messages(events) == ["0000", "0001", "0002", "0003", "0004"]
    assert sum(runs[:-1]) == 995 and runs[-1] == 10  # the Ping between is answered in order
    assert max(runs) == 1 + MAX_SKIPPED  # (a run is one event of the reader's step budget)
    assert counters.rate_dropped == counters.rate_limited == 1005


def test_a_refused_fragmented_message_never_reaches_a_raw_hook() -> None:
    """Raw frames: the later frames of a refused message are skipped too, and the next
    messages' later frames are charged as usual (found in review)."""
    clock = Clock()
    limits = RateLimits(
        (RateLimit(1000, burst=1), RateLimit(100, burst=100, unit="bytes")), policy="drop"
    )
    p = protocol(limits, clock, raw=True)
    data = text("a") + text("b1", fin=False) + client_frame(b"b2", 0, fin=False)
    data += client_frame(b"b3", 0)
    events = expanded(run(p, data, clock, cut=False))
    frames = [e.data for e in events if type(e).__name__ == "DataFrame"]
    assert frames == ["a"] and sum(isinstance(e, RateRefused) for e in events) == 1
    clock.now = 10.0  # buckets full again: a 1-byte first frame, a 50,000-byte continuation
    events = run(
        p, client_frame(b"x", 2, fin=False) + client_frame(b"y" * 50_000, 0), clock, cut=False
    )
    assert [len(e.data) for e in events if type(e).__name__ == "DataFrame"] == [1, 50_000]
    assert p.gate is not None
    assert isinstance(p.gate.admit(1, True), RateLimit)  # the bytes bucket is in debt


def test_a_refused_compressed_fragmented_message_is_not_judged_by_its_wire_size() -> None:
    """Its compressed size may exceed max_message_size where its message does not (found in
    review: it was closed with 1009 where no limit would close it)."""
    clock = Clock()
    agreement = DeflateAgreement(client_no_context_takeover=True)
    p = WebSocketProtocol(max_message_size=1000, max_fragments=64)
    p.use_deflate(agreement)
    p.limit_rate(RateLimits(RateLimit(1000, burst=1), policy="drop"), clock)
    compressor = zlib.compressobj(wbits=-15)
    body = compressor.compress(os.urandom(1000)) + compressor.flush(zlib.Z_SYNC_FLUSH)
    body = body[:-4]  # incompressible: a little over 1,000 bytes on the wire
    half = len(body) // 2
    message = client_frame(body[:half], 2, fin=False, rsv=4) + client_frame(body[half:], 0)
    events = run(p, client_frame(b"a", 2) + message + client_frame(b"after", 2), clock, cut=False)
    assert not [e for e in events if isinstance(e, ProtocolFailed)]
    assert messages(events) == [b"a"] and sum(isinstance(e, RateRefused) for e in events) == 2


def test_delay_counts_a_message_once() -> None:
    g, clock, counters = gate(RateLimit(1, burst=1), RateLimit(10, burst=10, unit="bytes"))
    assert g.admit(1, True) is None
    assert isinstance(g.admit(1, True), float)  # its first frame waits for a message token
    clock.now = 1.0
    assert g.admit(1, True) is None
    assert isinstance(g.admit(100, False), float)  # a later frame waits for bytes
    assert counters.rate_limited == 1
