"""Where a topic's history is kept in one process, and where a recovery is decided (issue #19).

A topic with history numbers its publications: offsets 1, 2, 3, ... without gaps, under an
*epoch*, a random string drawn when the history starts (here: when this process first needs the
topic).  A client that knows its last :class:`Position` can ask for what it missed; it is told
``recovered`` only when the epoch is the same and every offset of the gap is still kept (and the
gap is within ``max_recover``), and then it gets exactly that gap.  Otherwise it gets nothing and
must reload from its own source: a partial replay would look like a complete one, which is the
silent loss this exists to prevent.  A stale position can never pass for a current one, since a
history that is lost (a new process, a Redis restarted empty) starts under a new epoch.

This module is sans-I/O: the time is passed in, nothing awaits.  :func:`decide` is the rule,
shared by every store; :class:`TopicHistory` is the in-memory ring of one topic, bounded in
publications (``size``), age (``ttl``) and payload bytes (``max_bytes``).
"""

from __future__ import annotations

import base64
import json
import secrets
from collections import deque
from collections.abc import Callable, Mapping
from itertools import islice
from typing import Any, cast

import attrs

__all__ = [
    "MAX_RECOVER",
    "REASONS",
    "HistoryLike",
    "HistoryOptions",
    "Position",
    "ProcessHistory",
    "Publication",
    "Recovery",
    "TopicHistory",
    "decide",
    "default_envelope",
    "new_epoch",
]

#: Default of :attr:`HistoryOptions.max_recover`: the most publications one recovery replays.
MAX_RECOVER = 300

#: Why a recovery that was asked for failed: the position is from another history (or ahead of
#: this one), the gap is no longer all kept, or it is longer than ``max_recover``.
REASONS = ("epoch", "too_old", "too_many")


#: ``(topic, position, data) -> message``: what a publication on a topic with history is sent as
Envelope = Callable[[str, "Position", "str | bytes"], "str | bytes"]


def default_envelope(topic: str, position: Position, data: str | bytes) -> str:
    """``{"topic": ..., "offset": ..., "epoch": ..., "data": ...}`` as JSON text; published bytes
    go base64-encoded in ``"data_b64"`` instead of ``"data"``.  Every message carries its
    position, so a client always knows where it stands (and what to ask for on reconnect)."""
    body: dict[str, object] = {"topic": topic, "offset": position.offset, "epoch": position.epoch}
    if isinstance(data, str):
        body["data"] = data
    else:
        body["data_b64"] = base64.b64encode(data).decode("ascii")
    return json.dumps(body, ensure_ascii=False, separators=(",", ":"))


def new_epoch() -> str:
    """A fresh epoch: 16 random hex digits (a collision with a stale one is not a concern)."""
    return secrets.token_hex(8)


def _at_least(
    minimum: float, kinds: type | tuple[type, ...] = (int, float)
) -> Callable[[object, attrs.Attribute[Any], Any], None]:
    """An attrs validator: a number of ``kinds`` (never a bool) of at least ``minimum``."""

    def check(instance: object, attribute: attrs.Attribute[Any], value: Any) -> None:
        if (
            isinstance(value, bool)
            or not isinstance(value, kinds)
            or not cast(float, value) >= minimum
        ):
            raise ValueError(f"{attribute.name} must be a number >= {minimum}, got {value!r}")

    return check


@attrs.frozen
class Position:
    """Where a topic's history stands: the offset of its last publication (0 before the first)
    and the epoch it counts in."""

    offset: int = attrs.field(validator=_at_least(0, int))
    epoch: str = attrs.field(validator=attrs.validators.instance_of(str))


@attrs.frozen
class HistoryOptions:
    """How much of a topic's past is kept, and how much one recovery may replay.

    ``size``: publications kept (the oldest go first); ``ttl``: seconds a publication is kept;
    ``max_bytes``: bytes kept, of the messages as sent (text counted as its UTF-8 length);
    ``max_recover``: the longest gap one recovery replays (a longer one fails with "too_many":
    the client reloads, which is cheaper for both sides than a replay of thousands of messages);
    ``envelope``: ``(topic, position, data) -> str | bytes``, the message a publication is sent
    as (default: :func:`default_envelope`), made once per publication, kept and replayed as is.
    """

    size: int = attrs.field(validator=_at_least(1, int))
    ttl: float = attrs.field(validator=_at_least(0.001))
    max_recover: int = attrs.field(default=MAX_RECOVER, validator=_at_least(0, int))
    max_bytes: int = attrs.field(default=1 << 20, validator=_at_least(1, int))
    envelope: Envelope | None = attrs.field(default=None, eq=False)

    def wrap(self, topic: str, position: Position, data: str | bytes) -> str | bytes:
        """The message subscribers get for a publication: ``envelope(topic, position, data)``,
        or :func:`default_envelope`'s JSON text."""
        if self.envelope is None:
            return default_envelope(topic, position, data)
        return self.envelope(topic, position, data)


@attrs.frozen
class Publication:
    """One kept publication: its position, its data as published, and when (``time``, in the
    store's clock)."""

    position: Position
    data: str | bytes
    time: float

    @property
    def cost(self) -> int:
        """What it counts against ``max_bytes``."""
        data = self.data
        return len(data.encode("utf-8", "surrogatepass")) if isinstance(data, str) else len(data)


@attrs.frozen
class Recovery:
    """The outcome of a subscription from a position.

    ``recovered``: the whole gap was replayed (always false when no position was given);
    ``position``: the topic's position after the replay, the client's to keep; ``replayed``:
    how many publications were replayed; ``reason``: why a recovery that was asked for failed
    (one of :data:`REASONS`), None otherwise.
    """

    recovered: bool
    position: Position
    replayed: int = 0
    reason: str | None = None


def decide(since: Position, top: Position, first_kept: int, max_recover: int) -> str | None:
    """Whether the publications after ``since`` can all be replayed: None if so, else the reason.

    ``top`` is the topic's position now, ``first_kept`` the offset of the oldest publication
    still kept (``top.offset + 1`` when none is).  A gap of zero always recovers: nothing was
    missed, even if nothing is kept.
    """
    if since.epoch != top.epoch or since.offset > top.offset:
        return "epoch"
    gap = top.offset - since.offset
    if gap > max_recover:
        return "too_many"
    if gap and since.offset + 1 < first_kept:
        return "too_old"
    return None


class TopicHistory:
    """One topic's history in memory: a ring of its latest publications.

    Bounded three ways (:class:`HistoryOptions`); what falls out is gone for recoveries, which
    then fail with "too_old".  The epoch is drawn when the ring is made, so a process that
    restarts starts a new history.
    """

    __slots__ = ("_bytes", "_items", "epoch", "offset", "options")

    def __init__(self, options: HistoryOptions, epoch: str | None = None, offset: int = 0) -> None:
        self.options = options
        self.epoch = epoch if epoch is not None else new_epoch()
        #: the offset of the last publication (``offset``: where a ring that follows another
        #: store starts, none of the earlier ones kept)
        self.offset = offset
        self._items: deque[Publication] = deque()
        self._bytes = 0

    @property
    def position(self) -> Position:
        return Position(self.offset, self.epoch)

    def __len__(self) -> int:
        return len(self._items)

    def append(self, data: str | bytes, now: float) -> Publication:
        """Keep ``data`` as the next publication; returns it, with its position."""
        self.offset += 1
        publication = Publication(Position(self.offset, self.epoch), data, now)
        self._items.append(publication)
        self._bytes += publication.cost
        self._trim(now)
        return publication

    def expire(self, now: float) -> None:
        """Let go of what is older than ``ttl`` (done by every append and recovery, too)."""
        self._trim(now)

    def _trim(self, now: float) -> None:
        items, options = self._items, self.options
        oldest = now - options.ttl
        while items and (
            len(items) > options.size or self._bytes > options.max_bytes or items[0].time < oldest
        ):
            self._bytes -= items.popleft().cost

    def recover(self, since: Position | None, now: float) -> tuple[Recovery, list[Publication]]:
        """What a subscriber that last saw ``since`` missed: the outcome, and the publications
        to replay (in offset order; empty unless recovered)."""
        self._trim(now)
        top = self.position
        if since is None:
            return Recovery(False, top), []
        first_kept = self._items[0].position.offset if self._items else top.offset + 1
        reason = decide(since, top, first_kept, self.options.max_recover)
        if reason is not None:
            return Recovery(False, top, 0, reason), []
        # the ring holds consecutive offsets, first_kept first: the gap starts at a known index
        missed = list(islice(self._items, since.offset + 1 - first_kept, None))
        return Recovery(True, top, len(missed)), missed


#: What a handler's ``history=`` option takes: the topics that keep history and how, as a
#: mapping of names, or a function of the name (None: no history for that topic).
HistoryLike = Mapping[str, HistoryOptions] | Callable[[str], "HistoryOptions | None"]


class ProcessHistory:
    """The histories of one handler's topics, in this process's memory, under one epoch drawn
    when it is made (a new process: a new epoch for every topic).

    A topic's ring is made by its first publication, never by a subscription: a client that
    subscribes to many names costs nothing here.  A topic nothing was published to has the
    position ``(0, epoch)``.  What a ring keeps past its ``ttl`` is let go at its next use.
    """

    __slots__ = ("_options", "_topics", "epoch")

    def __init__(self, history: HistoryLike) -> None:
        if isinstance(history, Mapping):
            for topic, options in history.items():
                if not isinstance(options, HistoryOptions):
                    raise TypeError(f"history[{topic!r}] is not a HistoryOptions: {options!r}")
            self._options: Callable[[str], HistoryOptions | None] = history.get
        elif callable(history):
            self._options = history
        else:
            raise TypeError(f"history is a mapping or a callable, not {history!r}")
        self._topics: dict[str, TopicHistory] = {}
        self.epoch = new_epoch()

    def __len__(self) -> int:
        """How many topics have a ring (were published to)."""
        return len(self._topics)

    def options(self, topic: str) -> HistoryOptions | None:
        """How ``topic`` keeps history, or None if it keeps none."""
        options = self._options(topic)
        if options is not None and not isinstance(options, HistoryOptions):
            raise TypeError(f"history({topic!r}) returned {options!r}, not a HistoryOptions")
        return options

    def publish(
        self, topic: str, data: str | bytes, clock: Callable[[], float]
    ) -> Publication | None:
        """Keep a publication on ``topic``, wrapped in its envelope (None: no history;
        ``clock`` is read only for a topic that keeps one)."""
        options = self.options(topic)
        if options is None:
            return None
        ring = self._topics.get(topic)
        if ring is None:
            ring = self._topics[topic] = TopicHistory(options, self.epoch)
        position = Position(ring.offset + 1, ring.epoch)
        return ring.append(options.wrap(topic, position, data), clock())

    def recover(
        self, topic: str, since: Position | None, now: float
    ) -> tuple[Recovery, list[Publication]]:
        """:meth:`TopicHistory.recover` on ``topic``.

        :raises ValueError: ``topic`` keeps no history.
        """
        options = self.options(topic)
        if options is None:
            raise ValueError(f"topic {topic!r} keeps no history (see the handler's history=)")
        ring = self._topics.get(topic)
        if ring is None:  # nothing published yet: an empty history, made by nothing
            ring = TopicHistory(options, self.epoch)
        return ring.recover(since, now)
