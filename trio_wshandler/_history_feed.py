"""Where a process follows a topic's history kept in Redis: publications delivered in offset
order, gaps repaired from the stream, and the reads of recoveries coalesced.

With the Redis backplane, a publication on a topic with history is numbered by Redis (the
publish script of ``_history_redis.py``) and comes back to every process on the topic's
channel, the publisher's included.  Redis pub/sub is at most once, so each process keeps, per
topic it follows, a :class:`TopicFeed`: the topic's epoch, the last offset it delivered, and a
*mirror*, a ring of the latest publications it delivered (the same :class:`TopicHistory` as
without a backplane, and bounded alike).  A publication is delivered to the local subscribers
only when it is the next offset:

* an offset already delivered is a duplicate and dropped;
* a later offset means some were lost between Redis and this process: the later ones are held,
  the missing ones read from the stream and delivered first ("gaps repaired"); if they are no
  longer kept, or the epoch changed (Redis lost the history), the topic's subscribers here are
  closed with :data:`GAP_CLOSE` (1013) and come back to learn ``recovered: false`` ("gaps
  closed"), and the feed starts again from the position Redis gives;
* when the pub/sub connection is opened again after a failure, every feed is checked against
  Redis the same way (what was published meanwhile is read, not waited for).

A connection that subscribes from a position (``_recovery.py``) first makes the process follow
the topic (held in ``_topics.TopicMap`` until the connection joins the live feed), waits until
Redis delivers the topic's channel here, then replays from the mirror if it covers the gap and
otherwise from one read of the stream, and catches up from the mirror.  Reads of the same
stretch of the same topic in flight at once are made once (a reconnect storm costs one read).
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from typing import Protocol, cast

import trio

from ._fanout import FanOut, Recipient
from ._history import (
    HistoryOptions,
    Position,
    ProcessHistory,
    Publication,
    Recovery,
    TopicHistory,
    decide,
    default_envelope,
)
from ._history_reads import CoalescedReads, HistoryLink
from ._history_redis import Snapshot
from ._stats import Counters
from .codec import message_payload

__all__ = ["GAP_CLOSE", "SharedHistory", "TopicFeed"]

#: The close code of subscribers whose topic lost publications that cannot be repaired (RFC
#: 6455's "Try Again Later"): subscribe again from the last position, and learn the outcome.
GAP_CLOSE = 1013
GAP_REASON = "history gap: subscribe again"

#: Most publications a feed holds while it waits for a baseline or a repair; past it, the
#: oldest held go (they are in the stream, and the repair reads them).
MAX_HELD = 10_000


class Stoppable(Recipient, Protocol):
    def stop(self, code: int, reason: str) -> None: ...


class Topics(Protocol):
    """What a shared history needs of the hub's topic map (``_topics.TopicMap``)."""

    def subscribers(self, topic: str) -> Collection[Recipient]: ...

    def hold(self, topic: str) -> None: ...

    def release(self, topic: str) -> None: ...

    def followed(self, topic: str) -> bool: ...


class TopicFeed:
    """A topic as this process follows it: its epoch, the last offset delivered here, the
    mirror of what was delivered, and what is held back until a gap is filled."""

    __slots__ = ("advanced", "held", "mirror", "options", "repairing", "topic")

    def __init__(self, topic: str, options: HistoryOptions) -> None:
        self.topic = topic
        self.options = options
        #: None until the first publication or read gives the baseline
        self.mirror: TopicHistory | None = None
        #: offset -> (epoch, message as published) of publications that came too early
        self.held: dict[int, tuple[str, str | bytes]] = {}
        self.repairing = False
        self.advanced = trio.Event()

    def recover(self, since: Position, now: float) -> tuple[Recovery, list[Publication]] | None:
        """A recovery from ``since`` decided by the mirror alone, or None if the mirror cannot
        tell (another epoch, ahead of it, or older than it keeps: Redis may keep more)."""
        mirror = self.mirror
        if mirror is None or since.epoch != mirror.epoch or since.offset > mirror.offset:
            return None
        found = mirror.recover(since, now)
        recovery = found[0]
        return found if recovery.recovered or recovery.reason == "too_many" else None

    def hold(self, offset: int, epoch: str, data: str | bytes) -> None:
        held = self.held
        held[offset] = (epoch, data)
        if len(held) > MAX_HELD:
            del held[min(held)]

    def woke(self) -> None:
        self.advanced.set()
        self.advanced = trio.Event()


class SharedHistory:
    """The histories of one handler's topics, kept in Redis (see the module's docstring)."""

    def __init__(
        self,
        process: ProcessHistory,
        topics: Topics,
        fanout: FanOut,
        counters: Counters,
        warn: Callable[..., None],
        error: Callable[..., None],
    ) -> None:
        self.process = process
        self.topics = topics
        self.fanout = fanout
        self.counters = counters
        self.warn = warn
        self.error = error
        self.link: HistoryLink | None = None
        self.feeds: dict[str, TopicFeed] = {}
        self._reads = CoalescedReads()
        self._repairs: dict[str, None] = {}
        #: the envelopes of recent snapshots: id -> (snapshot, publications)
        self._envelopes: dict[int, tuple[Snapshot, tuple[Publication, ...]]] = {}
        self._repair_wake = trio.Event()

    def options(self, topic: str) -> HistoryOptions | None:
        return self.process.options(topic)

    # ---------------------------------------------------------------- publishing

    def publish(self, topic: str, opcode: int, message: bytes) -> bool:
        """Queue a publication on ``topic`` for Redis; False if the topic keeps no history."""
        options = self.options(topic)
        if options is None:
            return False
        assert self.link is not None
        if self.link.store(topic, options, opcode, message):
            self.counters.history_publications += 1
        return True

    # ---------------------------------------------------------------- the feed

    def feed(self, topic: str) -> TopicFeed | None:
        """The feed of a followed topic with history (made on first use)."""
        feed = self.feeds.get(topic)
        if feed is None and self.topics.followed(topic):
            options = self.options(topic)
            if options is not None:
                feed = self.feeds[topic] = TopicFeed(topic, options)
        return feed

    def forget(self, topic: str) -> None:
        """Nobody here follows ``topic`` any more: its feed goes (nothing would keep it
        current)."""
        self.feeds.pop(topic, None)
        self._repairs.pop(topic, None)

    def received(self, topic: str, offset: int, epoch: str, data: str | bytes) -> None:
        """A publication came on ``topic``'s channel (``data`` as published)."""
        feed = self.feed(topic)
        if feed is None:
            return  # not followed here (any more)
        mirror = feed.mirror
        if mirror is None:
            # the first publication since this process follows the topic: what came before
            # is no subscriber's here (a replay reads it from the stream)
            mirror = feed.mirror = TopicHistory(feed.options, epoch, offset - 1)
        if feed.repairing:
            feed.hold(offset, epoch, data)
            return
        if epoch == mirror.epoch:
            if offset <= mirror.offset:
                return  # delivered already
            if offset == mirror.offset + 1:
                self._deliver(feed, mirror, data)
                self._release_held(feed)
                feed.woke()
                return
        feed.hold(offset, epoch, data)
        self._repair(topic)

    def _deliver(self, feed: TopicFeed, mirror: TopicHistory, data: str | bytes) -> None:
        position = Position(mirror.offset + 1, mirror.epoch)
        kept = mirror.append(
            self._envelope(feed.options, feed.topic, position, data), trio.current_time()
        )
        payload, wrapped_opcode = message_payload(kept.data)
        self.fanout.send_payload(self.topics.subscribers(feed.topic), payload, wrapped_opcode)

    def _envelope(
        self, options: HistoryOptions, topic: str, position: Position, data: str | bytes
    ) -> str | bytes:
        """``options.wrap``; if a user's envelope function raises, the error is logged and the
        default envelope is sent instead: the publication was numbered and kept in Redis
        already, and every process makes its envelope as it arrives, so raising here would
        lose it (and stop this process's backplane) rather than tell the publisher."""
        try:
            return options.wrap(topic, position, data)
        except Exception as exc:
            self.error(
                "history of %r: the envelope function failed at %s: %r", topic, position, exc
            )
            return default_envelope(topic, position, data)

    def _release_held(self, feed: TopicFeed) -> None:
        """Deliver what was held and now comes next; drop what is older."""
        mirror, held = feed.mirror, feed.held
        assert mirror is not None
        while held:
            nxt = mirror.offset + 1
            item = held.pop(nxt, None)
            if item is not None and item[0] == mirror.epoch:
                self._deliver(feed, mirror, item[1])
                continue
            for offset in [o for o, (e, _) in held.items() if e == mirror.epoch and o < nxt]:
                del held[offset]
            break

    def _close_subscribers(self, topic: str) -> None:
        for subscriber in list(self.topics.subscribers(topic)):
            cast(Stoppable, subscriber).stop(GAP_CLOSE, GAP_REASON)

    def _rebase(self, feed: TopicFeed, snapshot: Snapshot) -> None:
        """Start the feed again at ``snapshot``'s position (a gap that could not be filled)."""
        position = snapshot.position
        feed.mirror = TopicHistory(feed.options, position.epoch, position.offset)
        feed.held = {o: v for o, v in feed.held.items() if v[0] == position.epoch}

    # ---------------------------------------------------------------- repairs

    def resync(self, which: Callable[[str], bool]) -> None:
        """A pub/sub connection was opened again: what was published meanwhile may be
        missing here; check the feeds of the topics ``which`` says (those of the partition
        whose subscription it is; every topic with one Redis) against Redis."""
        for topic, feed in self.feeds.items():
            if feed.mirror is not None and which(topic):
                self._repair(topic)

    def _repair(self, topic: str) -> None:
        feed = self.feeds[topic]
        if not feed.repairing:
            feed.repairing = True
            self._repairs[topic] = None
            self._repair_wake.set()

    async def run_repairs(self) -> None:
        """Repair the feeds that need it, one at a time (a task of the backplane).  A repair
        that fails (Redis lost or slow) is tried again, backing off from 0.1 s to 2 s; the
        first failure of a run of them is logged."""
        delay = 0.1
        while True:
            if not self._repairs:
                self._repair_wake = trio.Event()
                await self._repair_wake.wait()
                continue
            topic = next(iter(self._repairs))
            del self._repairs[topic]  # a repair may queue the topic again
            try:
                await self._repair_one(topic)
            except Exception as exc:
                if topic in self.feeds:
                    self._repairs[topic] = None
                if delay == 0.1:
                    self.warn("history of %r: repair failed, trying again (%s)", topic, exc)
                await trio.sleep(delay)
                delay = min(delay * 2, 2.0)
                continue
            delay = 0.1

    async def _repair_one(self, topic: str) -> None:
        feed = self.feeds.get(topic)
        if feed is None:
            return
        mirror = feed.mirror
        if mirror is None:  # no baseline yet: the first publication or read gives it
            feed.repairing = False
            return
        first = mirror.offset + 1
        count = feed.options.size
        snapshot = await self.read(topic, first, mirror.epoch, count)
        if self.feeds.get(topic) is not feed:
            return  # forgotten meanwhile
        if feed.mirror is not mirror or mirror.offset + 1 != first:  # (not expected: held)
            feed.repairing = False
            self._repair(topic)
            return
        top = snapshot.position
        if top.epoch == mirror.epoch and top.offset == mirror.offset:
            # nothing missing: what is held in another epoch is stale (Redis says this one)
            feed.held = {o: v for o, v in feed.held.items() if v[0] == mirror.epoch}
        elif top.epoch == mirror.epoch and snapshot.first_kept == first:
            for entry in snapshot.entries:
                self._deliver(feed, mirror, entry.data)
            self.counters.history_gaps_repaired += 1
        else:
            self._close_subscribers(topic)
            self.counters.history_gaps_closed += 1
            self.warn(
                "history of %r: publications after %s are no longer kept; subscribers closed",
                topic,
                mirror.position,
            )
            self._rebase(feed, snapshot)
        feed.repairing = False
        self._release_held(feed)
        feed.woke()
        if feed.held:
            self._repair(topic)  # still a hole (more was lost, or held ones were dropped)

    async def read(self, topic: str, first: int, epoch: str, count: int) -> Snapshot:
        """:meth:`CoalescedReads.read` of ``topic`` through this history's link."""
        options = self.options(topic)
        ttl = options.ttl if options is not None else 0.001
        assert self.link is not None
        return await self._reads.read(self.link, topic, first, epoch, count, ttl)

    # ---------------------------------------------------------------- recoveries

    async def start(self, topic: str, since: Position | None) -> tuple[Recovery, list[Publication]]:
        """The first step of a subscription from ``since`` (the topic is held by the caller):
        the decision and the publications to replay, from the mirror or from Redis."""
        assert self.link is not None
        await self.link.wait_following(topic)
        feed = self.feed(topic)
        assert feed is not None
        now = trio.current_time()
        if feed.mirror is not None and feed.held == {} and not feed.repairing:
            if since is None:
                return Recovery(False, feed.mirror.position), []
            found = feed.recover(since, now)
            if found is not None:
                return found
        options = feed.options
        first = since.offset + 1 if since is not None else 0
        snapshot = await self.read(
            topic, first, since.epoch if since is not None else "", options.max_recover
        )
        if feed.mirror is None and self.feeds.get(topic) is feed:
            self._rebase(feed, snapshot)  # the baseline: what comes later is delivered
            self._release_held(feed)
            if feed.held:
                self._repair(topic)
            feed.woke()
        top = snapshot.position
        reason = (
            None if since is None else decide(since, top, snapshot.first_kept, options.max_recover)
        )
        if since is None or reason is not None:
            # the live feed starts where this process's feed is (the read may be ahead of it,
            # or behind): that is the position the client may count on
            mirror = feed.mirror
            if mirror is not None and mirror.epoch == top.epoch:
                top = mirror.position
            return Recovery(False, top, 0, reason), []
        missed = self._wrapped(topic, snapshot, options, now)
        return Recovery(True, top, len(missed)), list(missed)

    def _wrapped(
        self, topic: str, snapshot: Snapshot, options: HistoryOptions, now: float
    ) -> tuple[Publication, ...]:
        """The snapshot's entries in their envelopes, made once for every caller that shares
        the snapshot (a storm's coalesced read): the envelopes of a recovery storm are encoded
        once, like a live publication's."""
        cached = self._envelopes.get(id(snapshot))
        if cached is not None and cached[0] is snapshot:
            return cached[1]
        missed = []
        for entry in snapshot.entries:
            position = Position(entry.offset, snapshot.position.epoch)
            envelope = self._envelope(options, topic, position, entry.data)
            missed.append(Publication(position, envelope, now))
        if len(self._envelopes) >= 16:
            self._envelopes.clear()
        self._envelopes[id(snapshot)] = (snapshot, tuple(missed))
        return tuple(missed)

    def follow(self, topic: str, last: Position) -> tuple[Recovery, list[Publication]] | None:
        """What came after ``last`` (replayed already), from the mirror; None if the feed has
        not come that far yet (wait with :meth:`caught_up`)."""
        feed = self.feed(topic)
        mirror = None if feed is None else feed.mirror
        now = trio.current_time()
        if mirror is None or (mirror.epoch == last.epoch and mirror.offset < last.offset):
            return None
        return mirror.recover(last, now)

    def hold(self, topic: str) -> None:
        self.topics.hold(topic)

    def release(self, topic: str) -> None:
        self.topics.release(topic)

    async def caught_up(self, topic: str) -> None:
        """Wait for the feed to move; if it does not within a moment, what Redis numbered
        did not reach this process: read it (a repair)."""
        feed = self.feed(topic)
        if feed is None:
            raise trio.TooSlowError(f"{topic!r} is not followed here")
        with trio.move_on_after(0.5):
            await feed.advanced.wait()
            return
        self._repair(topic)
        await feed.advanced.wait()
