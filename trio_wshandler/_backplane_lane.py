"""One partition's link to the Redis that serves it: its outbox, whether it answers, and its
subscriptions.

With one Redis a backplane has one lane.  On a Redis Cluster it has one per partition
(``_cluster_slots.py``), each talking to the master that owns its partition's slot: a master
that fails, or a whole shard that is lost, stops its lanes only (their messages are counted
lost, as when one Redis is unreachable), and the other partitions' topics carry on.  The
lane's tasks (``_backplane_tasks.py``) and presence (``_presence.py``) change it through these
methods; the outbox's bounds are the backplane's, shared by its lanes
(``_backplane_core.BackplaneCore``).
"""

from __future__ import annotations

from collections import deque
from typing import Any

import trio

__all__ = ["Lane"]


class Lane:
    """The state of one partition's link (see the module's docstring)."""

    def __init__(self, partition: int) -> None:
        self.partition = partition
        #: "host:port" of the Redis this lane talks to now (for logs; a cluster's master)
        self.address = ""
        # the outbox: (op, channel or key or topic, value, size)
        self.outbox: deque[tuple[int, str, Any, int]] = deque()
        self._wake = trio.Event()
        self._up = trio.Event()  # set while Redis answers
        # subscriptions
        self._changes: deque[tuple[bool, str]] = deque()  # (subscribe?, channel)
        self._changes_wake = trio.Event()
        self._applied = trio.Event()  # set when a round of subscriptions is in force
        self._applying: set[str] = set()  # channels of the round being applied
        self._channels: set[str] | None = None  # in force on the open subscription, if any

    # ---------------------------------------------------------------- the outbox

    def append(self, item: tuple[int, str, Any, int]) -> None:
        self.outbox.append(item)
        self._wake.set()

    async def wait_outbox(self) -> None:
        """Wait until a command is queued."""
        if not self.outbox:
            self._wake = trio.Event()
            await self._wake.wait()

    def take(self, most: int) -> list[tuple[int, str, Any, int]]:
        """The oldest ``most`` commands queued (fewer if fewer are)."""
        outbox = self.outbox
        return [outbox.popleft() for _ in range(min(most, len(outbox)))]

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

    # ---------------------------------------------------------------- subscriptions

    def queue_change(self, subscribe: bool, channel: str) -> None:
        """A topic channel to subscribe to or leave.  Without a subscription open nothing is
        queued: the next one subscribes to the channels of its moment."""
        if self._channels is not None:
            self._changes.append((subscribe, channel))
            self._changes_wake.set()

    def subscription_opened(self, channels: set[str]) -> None:
        """A new subscription connection (``channels``: the set it keeps current), subscribing
        to the channels of this moment: the changes queued before it are in it already."""
        self._changes.clear()
        self._applying.clear()
        self._channels = channels

    def subscription_closed(self) -> None:
        self._channels = None

    def subscriptions_applied(self) -> None:
        """A round of subscription changes is in force."""
        self._applying.clear()
        self._applied.set()
        self._applied = trio.Event()

    def subscribed_channel(self, channel: str) -> bool:
        return self._channels is not None and channel in self._channels

    async def wait_channel(self, channel: str) -> None:
        """Wait until Redis delivers ``channel`` here, with no change of it queued or being
        applied (a topic left and joined again: its UNSUBSCRIBE may be on the way)."""
        while (
            not self.subscribed_channel(channel)
            or channel in self._applying
            or any(queued == channel for _, queued in self._changes)
        ):
            await self._applied.wait()

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
