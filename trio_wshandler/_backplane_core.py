"""The inside of a backplane: what its API, its tasks and its presence share, and the only
methods that change it.

:class:`~trio_wshandler.RedisBackplane` is the public object (options, ``run``); a
:class:`BackplaneCore` holds its state, and its tasks (``_backplane_tasks.py``) and presence
(``_presence.py``) work on it through its methods:

* the **outbox**: commands for Redis waiting for the publisher task, bounded in count and
  bytes; a message that does not fit, or that comes while Redis is lost, is dropped and counted
  in ``lost`` (logged at most once per ``LOG_INTERVAL``);
* the **link**: whether Redis answers now;
* the **subscription changes**: topics this process gained or lost, for the subscriber task, and
  the pub/sub connection in use;
* the **remote map**: which other process holds which connection (kept by presence), so that
  ``send_one`` knows synchronously where a connection is;
* the **counters** (plain ints) and the **hub** of the handler it serves
  (``_hub.Hub``), where messages from other processes are delivered.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from typing import TYPE_CHECKING, Any, Protocol

import trio

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
        # counters
        self.published = self.received = self.lost = self.misses = self.reconnects = 0
        self.round_trips = 0
        #: history reads sent to Redis (``_history_feed.py`` coalesces them before)
        self.history_reads = 0
        self._lost_logged = 0
        self._next_lost_log = 0.0
        # the outbox: (op, channel or key or topic, value, size)
        self._outbox: deque[tuple[int, str, Any, int]] = deque()
        self._pending_bytes = 0
        self._wake = trio.Event()
        # the link
        self._up = trio.Event()  # set while Redis answers
        # subscriptions
        self._changes: deque[tuple[bool, str]] = deque()  # (subscribe?, channel)
        self._changes_wake = trio.Event()
        self._applied = trio.Event()  # set when a round of subscriptions is in force
        self._applying: set[str] = set()  # channels of the round being applied
        self._pubsub: Any = None  # the coredis PubSub in use
        # the remote map: connection id -> node, for other nodes
        self._remote: dict[str, str] = {}

    # ---------------------------------------------------------------- the handler's side

    def publish(self, channel: str, envelope: Envelope) -> None:
        self.put(PUBLISH, channel, encode(envelope))

    def joined(self, cid: str) -> None:
        """A connection of this process registered: others learn it now (and from the set)."""
        self.put(SADD, self.names.connections(self.node_id), cid)
        self.publish(self.names.presence, Envelope(Kind.JOIN, self.node_id, 0, cid))

    def left(self, cid: str) -> None:
        """A connection of this process ended."""
        self.put(SREM, self.names.connections(self.node_id), cid)
        self.publish(self.names.presence, Envelope(Kind.LEAVE, self.node_id, 0, cid))

    def topic_changed(self, subscribe: bool, topic: str) -> None:
        """``topic`` gained its first local subscriber (or lost its last one).  Without a
        pub/sub connection nothing is queued: the next one subscribes to the topics of its
        moment."""
        if self._pubsub is not None:
            self._changes.append((subscribe, self.names.topic(topic)))
            self._changes_wake.set()

    # ---------------------------------------------------------------- the outbox

    def put(self, op: int, name: str, value: Any, size: int | None = None) -> bool:
        """Queue a command for Redis, unless Redis is lost or the outbox full (a PUBLISH or
        STORE is then lost; presence is rewritten whole once Redis is back); False if it was
        not queued.  ``size``: what it counts against ``max_pending_bytes`` (default
        ``len(value)``)."""
        if size is None:
            size = len(value)
        if (
            not self._up.is_set()
            or len(self._outbox) >= self.max_pending
            or self._pending_bytes + size > self.max_pending_bytes
        ):
            if op in (PUBLISH, STORE):
                self.count_lost(1)
            return False
        self._outbox.append((op, name, value, size))
        self._pending_bytes += size
        self._wake.set()
        return True

    async def wait_outbox(self) -> None:
        """Wait until a command is queued."""
        if not self._outbox:
            self._wake = trio.Event()
            await self._wake.wait()

    def take(self, most: int) -> list[tuple[int, str, Any, int]]:
        """The oldest ``most`` commands queued (fewer if fewer are)."""
        outbox = self._outbox
        batch = [outbox.popleft() for _ in range(min(most, len(outbox)))]
        self._pending_bytes -= sum(size for _, _, _, size in batch)
        return batch

    def sent(self, messages: int) -> None:
        """A pipeline went to Redis with ``messages`` PUBLISH commands."""
        self.published += messages
        self.round_trips += 1

    def failed(self, messages: int) -> None:
        """A pipeline with ``messages`` PUBLISH commands failed: they are lost, and so is what
        is still queued (Redis is lost)."""
        lost = messages + sum(1 for op, _, _, _ in self._outbox if op in (PUBLISH, STORE))
        self._outbox.clear()
        self._pending_bytes = 0
        if lost:
            self.count_lost(lost)

    def count_lost(self, n: int) -> None:
        self.lost += n
        now = time.monotonic()
        if now >= self._next_lost_log:
            self.logger.warning(
                "backplane %s: %d message(s) could not reach other processes (%s); %d lost in all",
                self.safe_url,
                self.lost - self._lost_logged,
                "Redis unreachable" if not self._up.is_set() else "outbox full",
                self.lost,
            )
            self._lost_logged = self.lost
            self._next_lost_log = now + LOG_INTERVAL

    # ---------------------------------------------------------------- the link

    @property
    def up(self) -> bool:
        """Redis answered the last command."""
        return self._up.is_set()

    def mark_up(self) -> None:
        self._up.set()

    def mark_down(self) -> bool:
        """Redis is lost; False if it was known to be already."""
        if not self._up.is_set():
            return False
        self._up = trio.Event()
        return True

    async def wait_up(self) -> None:
        await self._up.wait()

    def reconnected(self) -> None:
        self.reconnects += 1
        self._up.set()

    # ---------------------------------------------------------------- subscriptions

    def pubsub_opened(self, pubsub: Any) -> None:
        """A new pub/sub connection, subscribed to the channels of this moment: the changes
        queued before it are in it already."""
        self._changes.clear()
        self._applying.clear()
        self._pubsub = pubsub

    def pubsub_ready(self) -> None:
        """The new pub/sub connection's subscriptions are in force: publications on topics
        with history may have been missed while there was none, so the feeds check them
        against Redis now (not before: one published between that read and the SUBSCRIBE
        would be missed again)."""
        self.subscriptions_applied()
        shared = self.hub.shared if self.hub is not None else None
        if shared is not None:
            shared.resync()

    def subscriptions_applied(self) -> None:
        """A round of subscription changes is in force."""
        self._applying.clear()
        self._applied.set()
        self._applied = trio.Event()

    async def wait_channel(self, channel: str) -> None:
        """Wait until Redis delivers ``channel`` here, with no change of it queued or being
        applied (a topic left and joined again: its UNSUBSCRIBE may be on the way)."""
        while (
            not self.subscribed_channel(channel)
            or channel in self._applying
            or any(queued == channel for _, queued in self._changes)
        ):
            await self._applied.wait()

    def pubsub_closed(self) -> None:
        self._pubsub = None

    def subscribed_channel(self, channel: str) -> bool:
        pubsub = self._pubsub
        return pubsub is not None and channel.encode() in pubsub.channels

    async def wait_changes(self) -> None:
        if not self._changes:
            self._changes_wake = trio.Event()
            await self._changes_wake.wait()

    def take_changes(self) -> tuple[list[str], list[str]]:
        """The channels to subscribe to and to unsubscribe from (the last change of each
        channel wins)."""
        wanted: dict[str, bool] = {}
        while self._changes:
            subscribe, channel = self._changes.popleft()
            wanted[channel] = subscribe
        self._applying.update(wanted)
        adds = [channel for channel, subscribe in wanted.items() if subscribe]
        return adds, [channel for channel, subscribe in wanted.items() if not subscribe]

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
