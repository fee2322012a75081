"""Where a lane listens: one Redis connection subscribed to the lane's channels.

With one Redis the channels are classic (``SUBSCRIBE``); on a Redis Cluster they are sharded
(``SSUBSCRIBE``: the master that owns a channel's slot delivers it, and only it).  Both run on
a coredis connection taken from the lane's client (its public connection API: ``send_command``
and the RESP3 ``push_messages``), not on coredis's ``PubSub`` classes: its ``ShardedPubSub``
holds a connection to every master and fails as a whole when one of them does, where a
backplane must lose only the partitions of the master that failed.

Messages go to the handler as they are read (no task switch per message).  The connection is
lost (:class:`SubscriptionLost`, or coredis's ``ConnectionError``) when Redis closes it, when
Redis answers a subscription with an error (``MOVED``: the slot has another master now), or
when Redis ends a subscription nobody asked to end (a cluster does that to the subscribers of
a slot that moved to another master).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import trio

__all__ = ["SUBSCRIBE_CHUNK", "Subscription", "SubscriptionLost"]

#: Channels per SUBSCRIBE command (each command's acknowledgements are awaited together).
SUBSCRIBE_CHUNK = 256

_MESSAGES = (b"message", b"smessage")
_SUBSCRIBED = (b"subscribe", b"ssubscribe")
_UNSUBSCRIBED = (b"unsubscribe", b"sunsubscribe")


class SubscriptionLost(Exception):
    """Redis refused a subscription, or ended one unasked (its slot moved)."""


class Subscription:
    """The channels one connection is subscribed to, and its reader."""

    def __init__(
        self,
        connection: Any,
        sharded: bool,
        deliver: Callable[[bytes], None],
        timeout: float,
    ) -> None:
        self.connection = connection
        self.sharded = sharded
        self.deliver = deliver
        self.timeout = timeout
        #: the channels in force (acknowledged by Redis)
        self.channels: set[str] = set()
        self._waiting: dict[str, trio.Event] = {}
        self._leaving: dict[str, trio.Event] = {}

    async def subscribe(self, channels: list[str]) -> None:
        """Subscribe to ``channels``: sent in chunks, each chunk's acknowledgements awaited.

        :raises trio.TooSlowError: not acknowledged within ``timeout``.
        """
        command = b"SSUBSCRIBE" if self.sharded else b"SUBSCRIBE"
        for i in range(0, len(channels), SUBSCRIBE_CHUNK):
            chunk = channels[i : i + SUBSCRIBE_CHUNK]
            events = [self._waiting.setdefault(c, trio.Event()) for c in chunk]
            self.connection.send_command(command, *chunk)
            with trio.fail_after(self.timeout):
                for event in events:
                    await event.wait()

    async def unsubscribe(self, channels: list[str]) -> None:
        """Leave ``channels``; their acknowledgements are awaited.

        :raises trio.TooSlowError: not acknowledged within ``timeout``.
        """
        if not channels:
            return
        events = [self._leaving.setdefault(c, trio.Event()) for c in channels]
        self.connection.send_command(b"SUNSUBSCRIBE" if self.sharded else b"UNSUBSCRIBE", *channels)
        with trio.fail_after(self.timeout):
            for event in events:
                await event.wait()

    async def run(self) -> None:
        """Read until the connection is lost (raises: see the module's docstring)."""
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._errors)
            async for push in self.connection.push_messages:
                kind = push[0]
                if kind in _MESSAGES:
                    self.deliver(push[2])
                    continue
                channel = push[1].decode() if isinstance(push[1], bytes) else str(push[1])
                if kind in _SUBSCRIBED:
                    self.channels.add(channel)
                    event = self._waiting.pop(channel, None)
                    if event is not None:
                        event.set()
                elif kind in _UNSUBSCRIBED:
                    self.channels.discard(channel)
                    event = self._leaving.pop(channel, None)
                    if event is not None:
                        event.set()
                    elif self.sharded:
                        raise SubscriptionLost(f"Redis ended the subscription to {channel!r}")

    async def _errors(self) -> None:
        """An answer that is not a push message: only an error can come (to a subscribe)."""
        async for answer in self.connection.streamed_messages:
            raise SubscriptionLost(f"Redis refused a subscription: {answer}")
