"""Where the lanes listen: one Redis connection per Redis, subscribed to the channels of every
lane on it.

With one Redis the channels are classic (``SUBSCRIBE``); on a Redis Cluster they are sharded
(``SSUBSCRIBE``: the master that owns a channel's slot delivers it, and only it).  The lanes
(partitions) served by one master share its :class:`SharedSubscription`, as they share its
pipelines (``_backplane_pipeline.py``): a master writes each process one stream of messages,
not one per partition.  Each lane subscribes and leaves its own channels through a
:class:`LaneSubscription` (one ``SSUBSCRIBE`` per lane and round: a lane's channels share a
slot) and learns there when the connection is lost.

The connection is a coredis one, taken from the client's pool (its public connection API:
``send_command`` and the RESP3 ``push_messages``), not one of coredis's ``PubSub`` classes: its
``ShardedPubSub`` holds a connection to every master and fails as a whole when one of them
does, where a backplane must lose only the partitions of the master that failed.  Messages go
to their lane's handler as they are read (no task switch per message).  The connection is
lost when Redis closes it, when Redis answers a subscription with an error (``MOVED``: the
slot has another master now), or when Redis ends a subscription nobody asked to end (a cluster
does that to the subscribers of a slot that moved): every lane on it then starts again.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Any

import trio

from ._backplane_wire import text
from ._errors import first_error

__all__ = ["SUBSCRIBE_CHUNK", "LaneSubscription", "SharedSubscription", "SubscriptionLost"]

#: Channels per SUBSCRIBE command (each command's acknowledgements are awaited together).
SUBSCRIBE_CHUNK = 256

_MESSAGES = (b"message", b"smessage")
_SUBSCRIBED = (b"subscribe", b"ssubscribe")
_UNSUBSCRIBED = (b"unsubscribe", b"sunsubscribe")


class SubscriptionLost(Exception):
    """Redis refused a subscription, ended one unasked (its slot moved), or the connection
    closed."""


class SharedSubscription:
    """One subscribed connection to one Redis, for the lanes on it (a task of the backplane
    runs :meth:`run` for as long as the client)."""

    def __init__(
        self, client: Any, sharded: bool, timeout: float, errors: tuple[type[BaseException], ...]
    ) -> None:
        self.client = client
        self.sharded = sharded
        self.timeout = timeout
        self.errors = errors
        self._connection: Any = None
        self._routes: dict[str, Callable[[bytes], None]] = {}
        # the replies expected, in order, per (subscribe?, channel): an event to set, or None
        # for an unsubscription nobody awaits (a lane that went away)
        self._expected: dict[tuple[bool, str], deque[trio.Event | None]] = {}
        self._users = 0
        self._wanted = trio.Event()
        self._opened = trio.Event()  # set while a connection is open
        self._lost = trio.Event()  # set when the current connection is lost
        self._error: BaseException = SubscriptionLost("not connected")
        self._closed = False
        self._reading = trio.CancelScope()  # of the reads of the connection open
        self._idle = trio.Event()  # set while no connection is open or being opened
        self._idle.set()

    @property
    def error(self) -> BaseException:
        """Why the last connection was lost (or could not be opened)."""
        return self._error

    async def run(self) -> None:
        """Open a connection while some lane wants one; read it until it is lost, or until
        :meth:`close`."""
        while not self._closed:
            if not self._users:
                self._wanted = trio.Event()
                await self._wanted.wait()
                continue
            self._idle = trio.Event()
            try:
                async with self.client.connection_pool.acquire() as connection:
                    try:
                        self._connection = connection
                        self._opened.set()
                        with self._reading:
                            await self._read(connection)
                    finally:
                        connection.invalidate()  # subscribed: never back to the pool
            except* self.errors as group:
                self._error = first_error(group)
            finally:
                self._connection = None
                self._opened = trio.Event()
                self._lost.set()
                self._lost = trio.Event()
                for waiting in self._expected.values():
                    for event in waiting:
                        if event is not None:
                            event.set()  # their waiters find the connection lost
                self._expected.clear()
                self._reading = trio.CancelScope()
                self._idle.set()
            await trio.sleep(0.05)  # the lanes come back after their own backoff

    async def close(self) -> None:
        """Open no more connections, stop reading the one open (the backplane is stopping);
        return once a connection being opened is open (cancelling coredis while it opens one
        makes it log an error)."""
        self._closed = True
        self._wanted.set()
        self._reading.cancel()
        await self._idle.wait()

    async def attach(self, deliver: Callable[[bytes], None]) -> LaneSubscription:
        """A lane's subscription on the connection (opened if there is none).

        :raises Exception: the connection could not be opened (one of ``errors``), or not
            within ``timeout`` (``trio.TooSlowError``).
        """
        self._users += 1
        self._wanted.set()
        try:
            lost = self._lost
            with trio.fail_after(self.timeout):
                while not self._opened.is_set():
                    await _first_of(self._opened, lost)
                    if lost.is_set() and not self._opened.is_set():
                        raise self._error
        except BaseException:
            self._users -= 1
            raise
        return LaneSubscription(self, self._connection, self._lost, deliver)

    def detach(self, view: LaneSubscription) -> None:
        """The lane is done with the connection: its channels (and those it was still
        subscribing to) are left, without waiting."""
        self._users -= 1
        channels = sorted(view.channels | view.pending)
        for channel in channels:
            self._routes.pop(channel, None)
        if channels and view.connection is self._connection and self._connection is not None:
            self._send(False, channels, None)

    def send(
        self, view: LaneSubscription, subscribe: bool, channels: list[str]
    ) -> list[trio.Event]:
        """Subscribe to or leave ``channels`` on ``view``'s connection; the events their
        replies set.

        :raises Exception: the connection is lost (the error that lost it).
        """
        if view.connection is not self._connection or self._connection is None:
            raise self._error
        events = [trio.Event() for _ in channels]
        self._send(subscribe, channels, events)
        return events

    def reset(self, why: str) -> None:
        """Drop the connection (Redis did not answer on it, or a lane found its Redis lost):
        every lane on it starts again on a new one."""
        if self._connection is not None:
            self._error = SubscriptionLost(why)
            self._connection.invalidate()

    def _send(self, subscribe: bool, channels: list[str], events: list[trio.Event] | None) -> None:
        for i, channel in enumerate(channels):
            waiting = self._expected.setdefault((subscribe, channel), deque())
            waiting.append(None if events is None else events[i])
        if subscribe:
            command = b"SSUBSCRIBE" if self.sharded else b"SUBSCRIBE"
        else:
            command = b"SUNSUBSCRIBE" if self.sharded else b"UNSUBSCRIBE"
        self._connection.send_command(command, *channels)

    def route(self, channel: str, deliver: Callable[[bytes], None] | None) -> None:
        if deliver is None:
            self._routes.pop(channel, None)
        else:
            self._routes[channel] = deliver

    async def _read(self, connection: Any) -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._errors, connection)
            async for push in connection.push_messages:
                kind = push[0]
                if kind in _MESSAGES:
                    deliver = self._routes.get(text(push[1]))
                    if deliver is not None:
                        deliver(push[2])
                    continue
                channel = text(push[1])
                key = (kind in _SUBSCRIBED, channel)
                waiting = self._expected.get(key)
                if waiting:
                    event = waiting.popleft()
                    if not waiting:
                        del self._expected[key]
                    if event is not None:
                        event.set()
                elif kind in _UNSUBSCRIBED and self.sharded:
                    raise SubscriptionLost(f"Redis ended the subscription to {channel!r}")
            raise SubscriptionLost("the subscription connection closed")

    async def _errors(self, connection: Any) -> None:
        """An answer that is not a push message: only an error can come (to a subscribe)."""
        async for answer in connection.streamed_messages:
            raise SubscriptionLost(f"Redis refused a subscription: {answer}")


class LaneSubscription:
    """One lane's channels on a :class:`SharedSubscription`'s connection."""

    def __init__(
        self,
        shared: SharedSubscription,
        connection: Any,
        lost: trio.Event,
        deliver: Callable[[bytes], None],
    ) -> None:
        self.shared = shared
        self.connection = connection
        self._lost = lost
        self.deliver = deliver
        #: the channels in force (acknowledged by Redis)
        self.channels: set[str] = set()
        #: the channels asked for and not yet acknowledged
        self.pending: set[str] = set()

    async def subscribe(self, channels: list[str]) -> None:
        """Subscribe to ``channels`` (their messages go to ``deliver``), in chunks, each
        chunk's acknowledgements awaited.

        :raises Exception: the connection was lost, or ``trio.TooSlowError``: not
            acknowledged within the timeout (the connection is then dropped).
        """
        shared = self.shared
        for i in range(0, len(channels), SUBSCRIBE_CHUNK):
            chunk = channels[i : i + SUBSCRIBE_CHUNK]
            for channel in chunk:
                shared.route(channel, self.deliver)
            events = shared.send(self, True, chunk)
            self.pending.update(chunk)
            await self._acknowledged(events)
            self.pending.difference_update(chunk)
            self.channels.update(chunk)

    async def unsubscribe(self, channels: list[str]) -> None:
        """Leave ``channels``; their acknowledgements are awaited (as :meth:`subscribe`)."""
        if not channels:
            return
        shared = self.shared
        events = shared.send(self, False, channels)
        self.channels.difference_update(channels)
        for channel in channels:
            shared.route(channel, None)
        await self._acknowledged(events)

    async def wait_lost(self) -> None:
        """Return when the connection is lost (raise its error)."""
        await self._lost.wait()
        raise self.shared.error

    async def _acknowledged(self, events: list[trio.Event]) -> None:
        try:
            with trio.fail_after(self.shared.timeout):
                for event in events:
                    await event.wait()
        except trio.TooSlowError:
            self.shared.reset("Redis did not acknowledge a subscription in time")
            raise
        if self._lost.is_set():
            raise self.shared.error


async def _first_of(*events: trio.Event) -> None:
    """Wait until one of ``events`` is set."""
    async with trio.open_nursery() as nursery:
        for event in events:

            async def wait(event: trio.Event = event) -> None:
                await event.wait()
                nursery.cancel_scope.cancel()

            nursery.start_soon(wait)
