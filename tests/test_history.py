"""The history of a topic in one process, and the recovery rule (sans-I/O: time passed in)."""

from __future__ import annotations

import json

import attrs
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trio_wshandler._history import (
    MAX_RECOVER,
    HistoryOptions,
    Position,
    ProcessHistory,
    Publication,
    Recovery,
    TopicHistory,
    decide,
    new_epoch,
)


def offsets(publications: list[Publication]) -> list[int]:
    return [p.position.offset for p in publications]


def test_offsets_count_from_one_without_gaps_under_one_epoch() -> None:
    history = TopicHistory(HistoryOptions(size=10, ttl=60), epoch="e1")
    assert history.position == Position(0, "e1")
    got = [history.append(f"m{i}", now=0.0).position for i in range(5)]
    assert got == [Position(i, "e1") for i in range(1, 6)]
    assert history.position == Position(5, "e1")


def test_a_subscriber_that_missed_some_gets_exactly_them_in_order() -> None:
    history = TopicHistory(HistoryOptions(size=100, ttl=60))
    for i in range(3):
        history.append(f"m{i}", now=0.0)
    last_seen = history.position
    for i in range(3, 53):
        history.append(f"m{i}", now=1.0)
    recovery, missed = history.recover(last_seen, now=2.0)
    assert recovery == Recovery(True, history.position, 50)
    assert offsets(missed) == list(range(4, 54))
    assert [p.data for p in missed] == [f"m{i}" for i in range(3, 53)]


def test_nothing_missed_recovers_even_with_nothing_kept() -> None:
    history = TopicHistory(HistoryOptions(size=5, ttl=1))
    history.append(b"x", now=0.0)
    seen = history.position
    recovery, missed = history.recover(seen, now=100.0)  # everything expired, nothing missed
    assert recovery == Recovery(True, seen, 0) and missed == []


def test_no_position_subscribes_without_a_replay() -> None:
    history = TopicHistory(HistoryOptions(size=5, ttl=60))
    history.append("a", now=0.0)
    assert history.recover(None, now=0.0) == (Recovery(False, history.position), [])


@pytest.mark.parametrize(
    ("since", "reason"),
    [
        (Position(1, "another epoch"), "epoch"),  # another history: a restarted process
        (Position(9, "E"), "epoch"),  # ahead of this history: it cannot come from it
        (Position(1, "E"), "too_old"),  # offsets 2 and 3 have fallen out of the ring
    ],
)
def test_a_gap_that_cannot_be_replayed_whole_replays_nothing(since: Position, reason: str) -> None:
    history = TopicHistory(HistoryOptions(size=3, ttl=60), epoch="E")
    for i in range(6):
        history.append(str(i), now=0.0)
    recovery, missed = history.recover(since, now=0.0)
    assert recovery == Recovery(False, Position(6, "E"), 0, reason)
    assert missed == []


def test_max_recover_is_the_longest_gap_replayed() -> None:
    history = TopicHistory(HistoryOptions(size=100, ttl=60, max_recover=10), epoch="E")
    for i in range(30):
        history.append(str(i), now=0.0)
    assert history.recover(Position(20, "E"), now=0.0)[0] == Recovery(True, Position(30, "E"), 10)
    assert history.recover(Position(19, "E"), now=0.0)[0] == Recovery(
        False, Position(30, "E"), 0, "too_many"
    )


def test_publications_expire_after_ttl() -> None:
    history = TopicHistory(HistoryOptions(size=100, ttl=10), epoch="E")
    history.append("old", now=0.0)
    history.append("new", now=8.0)
    recovery, missed = history.recover(Position(0, "E"), now=9.0)
    assert recovery.recovered and offsets(missed) == [1, 2]
    recovery, missed = history.recover(Position(0, "E"), now=10.5)  # offset 1 has expired
    assert recovery.reason == "too_old" and missed == []
    assert history.recover(Position(1, "E"), now=10.5)[1][0].data == "new"


def test_kept_bytes_are_bounded() -> None:
    history = TopicHistory(HistoryOptions(size=100, ttl=60, max_bytes=10), epoch="E")
    for data in ("abcd", b"efgh", "ijkl"):  # 12 bytes: the first goes
        history.append(data, now=0.0)
    assert len(history) == 2
    assert history.recover(Position(0, "E"), now=0.0)[0].reason == "too_old"
    assert [p.data for p in history.recover(Position(1, "E"), now=0.0)[1]] == [b"efgh", "ijkl"]
    history.append("é" * 6, now=0.0)  # counted as UTF-8: 12 bytes, more than max_bytes alone
    assert len(history) == 0 and history.position.offset == 4
    assert history.recover(Position(3, "E"), now=0.0)[0].reason == "too_old"


def test_options_are_checked() -> None:
    with pytest.raises(ValueError, match="size"):
        HistoryOptions(size=0, ttl=1)
    with pytest.raises(ValueError, match="ttl"):
        HistoryOptions(size=1, ttl=0)
    with pytest.raises(ValueError, match="max_recover"):
        HistoryOptions(size=1, ttl=1, max_recover=-1)
    with pytest.raises(ValueError, match="size"):
        HistoryOptions(size=True, ttl=1)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="offset"):
        Position(-1, "E")
    assert HistoryOptions(size=1, ttl=1).max_recover == MAX_RECOVER
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        Position(1, "E").offset = 2  # type: ignore[misc]


def test_epochs_differ() -> None:
    assert len({new_epoch() for _ in range(100)}) == 100
    assert (
        TopicHistory(HistoryOptions(size=1, ttl=1)).epoch
        != TopicHistory(HistoryOptions(size=1, ttl=1)).epoch
    )


@settings(max_examples=300, deadline=None)
@given(
    size=st.integers(1, 20),
    max_recover=st.integers(0, 25),
    steps=st.lists(st.tuples(st.integers(0, 3), st.floats(0, 5)), max_size=60),
    since_offset=st.integers(0, 70),
    same_epoch=st.booleans(),
)
def test_recovery_replays_the_whole_gap_or_nothing(
    size: int,
    max_recover: int,
    steps: list[tuple[int, float]],
    since_offset: int,
    same_epoch: bool,
) -> None:
    """Against a model (a plain list trimmed from the front after every step): recovered exactly
    when the epoch matches, the gap is within max_recover and every offset of it is still kept;
    then the replay is exactly that gap, with the data published."""
    options = HistoryOptions(size=size, ttl=10, max_recover=max_recover, max_bytes=40)
    history = TopicHistory(options, epoch="E")
    model: list[tuple[int, str, float]] = []  # (offset, data, time) kept
    top, now = 0, 0.0

    def trim() -> None:
        while model and (
            len(model) > size or sum(len(d) for _, d, _ in model) > 40 or model[0][2] < now - 10
        ):
            del model[0]

    for length, advance in steps:
        now += advance
        top += 1
        model.append((top, "x" * length + str(top), now))
        history.append(model[-1][1], now)
        trim()
    now += 1.0  # time passes before the client comes back
    trim()
    since = Position(since_offset, "E" if same_epoch else "F")
    recovery, missed = history.recover(since, now)
    gap = list(range(since_offset + 1, top + 1))
    could = (
        same_epoch
        and since_offset <= top
        and len(gap) <= max_recover
        and set(gap) <= {offset for offset, _, _ in model}
    )
    assert recovery.recovered == could
    assert recovery.position == Position(top, "E")
    assert len(history) == len(model)
    if could:
        assert offsets(missed) == gap
        assert [p.data for p in missed] == [data for offset, data, _ in model if offset in gap]
        assert recovery.replayed == len(gap) and recovery.reason is None
    else:
        assert missed == [] and recovery.reason is not None and recovery.replayed == 0


def test_decide_is_the_rule_every_store_uses() -> None:
    top = Position(10, "E")
    assert decide(Position(10, "E"), top, first_kept=11, max_recover=0) is None
    assert decide(Position(7, "E"), top, first_kept=8, max_recover=3) is None
    assert decide(Position(7, "E"), top, first_kept=9, max_recover=3) == "too_old"
    assert decide(Position(6, "E"), top, first_kept=1, max_recover=3) == "too_many"
    assert decide(Position(7, "X"), top, first_kept=1, max_recover=3) == "epoch"


def test_a_process_keeps_rings_only_for_topics_published_to() -> None:
    """Subscribing (recovering) creates nothing: a client that asks for many names costs no
    memory; a topic nothing was published to is at (0, the process's epoch)."""
    history = ProcessHistory(
        lambda topic: HistoryOptions(size=5, ttl=60) if topic.startswith("room:") else None
    )
    for i in range(1000):
        recovery, missed = history.recover(f"room:{i}", None, now=0.0)
        assert recovery.position == Position(0, history.epoch) and missed == []
    assert len(history) == 0
    history.publish("room:1", "hello", lambda: 0.0)
    assert len(history) == 1
    recovery, missed = history.recover("room:1", Position(0, history.epoch), now=0.0)
    envelope = {"topic": "room:1", "offset": 1, "epoch": history.epoch, "data": "hello"}
    assert recovery.recovered and [json.loads(p.data) for p in missed] == [envelope]
    assert history.publish("news", "x", lambda: 1 / 0) is None  # no history: no clock read


def test_offsets_are_whole_numbers() -> None:
    with pytest.raises(ValueError, match="offset"):
        Position(1.5, "E")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="size"):
        HistoryOptions(size=2.5, ttl=1)  # type: ignore[arg-type]
