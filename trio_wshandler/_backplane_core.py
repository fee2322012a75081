"""The inside of a backplane: what its API, its tasks and its presence share, and the only
methods that change it.

:class:`~trio_wshandler.RedisBackplane` is the public object (options, ``run``); a
:class:`BackplaneCore` holds its state, and its tasks (``_backplane_tasks.py``) and presence
(``_presence.py``) work on it through its methods:

* the **lanes** (``_backplane_lane.py``): one per partition (one with one Redis), each with
  its outbox of commands for Redis waiting for its publisher task, whether its Redis answers
  now, and its subscriptions; the outboxes are bounded together in count and bytes; a message
  that does not fit, or that comes while its lane's Redis is lost, is dropped and counted in
  ``lost`` (logged at most once per ``LOG_INTERVAL``);
* the **remote map**: which other process holds which connection (kept by presence), so that
  ``send_one`` knows synchronously where a connection is;
* the **counters** (plain ints) and the **hub** of the handler it serves
  (``_hub.Hub``), where messages from other processes are delivered.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any, Protocol

from ._backplane_lane import Lane
from ._backplane_wire import PUBLISH, SADD, SREM, STORE, Envelope, Kind, Names, encode
from ._errors import UnknownConnectionError

if TYPE_CHECKING:
    from ._hub import Hub

__all__ = ["LOG_INTERVAL", "BackplaneCore", "BackplaneOptions"]

#: At most one warning about lost messages per this many seconds (with the count).
LOG_INTERVAL = 10.0


class BackplaneOptions(Protocol):
    """The settings the tasks read (a ``RedisBackplane``'s)."""

    @property
    def batch(self) -> int: ...
    @property
    def command_timeout(self) -> float: ...
    @property
    def heartbeat(self) -> float: ...
    @property
    def presence_ttl(self) -> float: ...
    @property
    def reconnect_max(self) -> float: ...
    @property
    def safe_url(self) -> str: ...
    @property
    def logger(self) -> logging.Logger: ...


class BackplaneCore:
    """The state of one backplane (see the module's docstring)."""

    def __init__(
        self,
        *,
        names: Names,
        node_id: str,
        max_pending: int,
        max_pending_bytes: int,
        safe_url: str,
        logger: logging.Logger,
    ) -> None:
        self.names = names
        self.node_id = node_id
        self.safe_url = safe_url
        self.logger = logger
        self.max_pending = max_pending
        self.max_pending_bytes = max_pending_bytes
        self.hub: Hub | None = None
        #: one lane per partition
        self.lanes = [Lane(p) for p in range(names.partitions)]
        #: the partition of this process's channels and presence
        self.home = self.lanes[names.node_partition(node_id)]
        # counters
        self.published = self.received = self.lost = self.misses = self.reconnects = 0
        self.round_trips = 0
        #: history reads sent to Redis (``_history_feed.py`` coalesces them before)
        self.history_reads = 0
        self._lost_logged = 0
        self._next_lost_log = 0.0
        self._pending = 0  # commands in the lanes' outboxes
        self._pending_bytes = 0
        # the remote map: connection id -> node, for other nodes
        self._remote: dict[str, str] = {}

    # ---------------------------------------------------------------- the handler's side

    def topic_lane(self, topic: str) -> Lane:
        return self.lanes[self.names.topic_partition(topic)]

    def node_lane(self, node: str) -> Lane:
        return self.lanes[self.names.node_partition(node)]

    def publish(self, lane: Lane, channel: str, envelope: Envelope) -> None:
        self.put(lane, PUBLISH, channel, encode(envelope))

    def joined(self, cid: str) -> None:
        """A connection of this process registered: others learn it now (and from the set)."""
        home = self.home
        self.put(home, SADD, self.names.connections(self.node_id), cid)
        envelope = Envelope(Kind.JOIN, self.node_id, 0, cid)
        self.publish(home, self.names.presence(home.partition), envelope)

    def left(self, cid: str) -> None:
        """A connection of this process ended."""
        home = self.home
        self.put(home, SREM, self.names.connections(self.node_id), cid)
        envelope = Envelope(Kind.LEAVE, self.node_id, 0, cid)
        self.publish(home, self.names.presence(home.partition), envelope)

    def topic_changed(self, subscribe: bool, topic: str) -> None:
        """``topic`` gained its first local subscriber (or lost its last one)."""
        self.topic_lane(topic).queue_change(subscribe, self.names.topic(topic))

    # ---------------------------------------------------------------- the outboxes

    def put(self, lane: Lane, op: int, name: str, value: Any, size: int | None = None) -> bool:
        """Queue a command for ``lane``'s Redis, unless it is lost or the outboxes are full (a
        PUBLISH or STORE is then lost; presence is rewritten whole once Redis is back); False
        if it was not queued.  ``size``: what it counts against ``max_pending_bytes``
        (default ``len(value)``)."""
        if size is None:
            size = len(value)
        if (
            not lane.up
            or self._pending >= self.max_pending
            or self._pending_bytes + size > self.max_pending_bytes
        ):
            if op in (PUBLISH, STORE):
                self.count_lost(1, lane)
            return False
        lane.append((op, name, value, size))
        self._pending += 1
        self._pending_bytes += size
        return True

    def take(self, lane: Lane, most: int) -> list[tuple[int, str, Any, int]]:
        """The oldest ``most`` commands queued on ``lane`` (fewer if fewer are)."""
        batch = lane.take(most)
        self._pending -= len(batch)
        self._pending_bytes -= sum(size for _, _, _, size in batch)
        return batch

    def sent(self, messages: int) -> None:
        """A pipeline went to Redis with ``messages`` PUBLISH commands."""
        self.published += messages
        self.round_trips += 1

    def failed(self, lane: Lane, messages: int) -> None:
        """A pipeline with ``messages`` PUBLISH commands failed: they are lost, and so is what
        is still queued on its lane (its Redis is lost)."""
        rest = self.take(lane, len(lane.outbox))
        lost = messages + sum(1 for op, _, _, _ in rest if op in (PUBLISH, STORE))
        if lost:
            self.count_lost(lost, lane)

    def count_lost(self, n: int, lane: Lane | None = None) -> None:
        self.lost += n
        now = time.monotonic()
        if now >= self._next_lost_log:
            where = self.safe_url
            if lane is not None and len(self.lanes) > 1:
                where += f" (partition {lane.partition}, {lane.address or 'no master'})"
            self.logger.warning(
                "backplane %s: %d message(s) could not reach other processes (%s); %d lost in all",
                where,
                self.lost - self._lost_logged,
                "Redis unreachable" if lane is not None and not lane.up else "outbox full",
                self.lost,
            )
            self._lost_logged = self.lost
            self._next_lost_log = now + LOG_INTERVAL

    # ---------------------------------------------------------------- the link

    @property
    def up(self) -> bool:
        """Every lane's Redis answered its last command."""
        return all(lane.up for lane in self.lanes)

    def mark_up(self) -> None:
        for lane in self.lanes:
            lane.mark_up()

    def mark_down(self) -> None:
        for lane in self.lanes:
            lane.mark_down()

    def reconnected(self, lane: Lane) -> None:
        self.reconnects += 1
        lane.mark_up()

    # ---------------------------------------------------------------- subscriptions

    def subscription_ready(self, lane: Lane) -> None:
        """``lane``'s new subscription is in force: publications on its topics with history
        may have been missed while there was none, so the feeds check them against Redis now
        (not before: one published between that read and the SUBSCRIBE would be missed
        again)."""
        lane.subscriptions_applied()
        shared = self.hub.shared if self.hub is not None else None
        if shared is not None:
            names = self.names
            shared.resync(lambda topic: names.topic_partition(topic) == lane.partition)

    def subscribed_topic(self, topic: str) -> bool:
        return self.topic_lane(topic).subscribed_channel(self.names.topic(topic))

    async def wait_topic(self, topic: str) -> None:
        await self.topic_lane(topic).wait_channel(self.names.topic(topic))

    def followed_channels(self, lane: Lane) -> list[str]:
        """The channels ``lane``'s subscription follows now: every process's ``send_all`` and
        presence of its partition, this process's own channel if it is its partition, and the
        topics of its partition with local subscribers."""
        names, p = self.names, lane.partition
        channels = [names.all(p), names.presence(p)]
        if lane is self.home:
            channels.append(names.node(self.node_id))
        assert self.hub is not None
        topics = [t for t in self.hub.followed_topics() if names.topic_partition(t) == p]
        return channels + [names.topic(t) for t in topics]

    # ---------------------------------------------------------------- from other processes

    def delivered(self, envelope: Envelope) -> None:
        """Deliver a checked message from another process to this one's clients."""
        assert self.hub is not None
        if self.hub.deliver(envelope):
            self.received += 1
        else:
            self.misses += 1  # ONE or STOP for a connection that has ended here

    # ---------------------------------------------------------------- the remote map

    def knows(self, cid: str) -> bool:
        return cid in self._remote

    def node_of(self, cid: str) -> str:
        try:
            return self._remote[cid]
        except KeyError:
            raise UnknownConnectionError(cid) from None

    def presence_changed(self, joined: bool, cid: str, node: str) -> None:
        """A JOIN or LEAVE of another node."""
        remote = self._remote
        if joined:
            remote[cid] = node
        elif remote.get(cid) == node:
            del remote[cid]

    def forget_nodes(self, nodes: set[str]) -> None:
        """These nodes vanished: their connections with them."""
        self._remote = {c: n for c, n in self._remote.items() if n not in nodes}

    def replace_nodes(self, nodes: set[str], read: dict[str, str]) -> None:
        """The connections of ``nodes`` are ``read`` now (what the others hold is kept)."""
        remote = {c: n for c, n in self._remote.items() if n not in nodes}
        remote.update(read)
        self._remote = remote
