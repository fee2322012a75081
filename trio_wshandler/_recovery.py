"""Where a connection subscribes to a topic from a position: the replay of what it missed.

The rule (:func:`_history.decide`) says whether the gap can be replayed whole; this module
replays it through the connection's send queue and then subscribes, so that the client gets
the missed publications once, in order, and then the live ones, none twice and none skipped.

The replay waits for room in the queue (a gap of ``max_recover`` large messages need not fit in
it at once), so publications may be made while it waits.  They are in the topic's history:
after each pass the history is read again from the last offset replayed, and the connection is
subscribed in the same step as the read that finds nothing more (no checkpoint between them, so
nothing published can fall between the replay and the live feed).  If the history moved on past
what the connection has taken (its client reads more slowly than the topic is published to, so
the gap fell out of the history or grew past ``max_recover``), the replay cannot be completed:
the connection is closed with 1013 (try again later), the client reconnects and asks again;
the same if the replay is cancelled or fails half-way (the client has part of the gap only).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import attrs
import trio

from ._errors import ConnectionClosedError
from ._history import HistoryOptions, Position, ProcessHistory, Publication, Recovery
from ._stats import Counters
from ._topics import check_topic
from .codec import DataLike

__all__ = ["OVERRUN_CLOSE", "HistorySource", "LocalHistory", "Recovering", "subscribe_from"]

#: The close code of a connection whose replay was overtaken by the topic (RFC 6455's "Try
#: Again Later"): the client should reconnect and subscribe from its last position again.
OVERRUN_CLOSE = 1013

#: How long a replay waits, in all, for this process to receive publications that the store
#: has numbered already (Redis: in flight on the pub/sub connection, or being repaired); then
#: the connection is closed with 1013
CATCH_UP_TIMEOUT = 5.0


class Recovering(Protocol):
    """What a replay needs of a connection (``_core.ConnectionCore``)."""

    async def send_wait(self, data: DataLike) -> None: ...

    def subscribe(self, topic: str) -> None: ...

    def unsubscribe(self, topic: str) -> None: ...

    def stop(self, code: int, reason: str) -> None: ...


class HistorySource(Protocol):
    """Where a replay reads (:class:`LocalHistory`, or ``_history_feed.SharedHistory``)."""

    def options(self, topic: str) -> HistoryOptions | None: ...

    def hold(self, topic: str) -> None:
        """Receive ``topic`` in this process until :meth:`release` (no subscriber yet)."""

    def release(self, topic: str) -> None: ...

    async def start(self, topic: str, since: Position | None) -> tuple[Recovery, list[Publication]]:
        """The decision for a subscription from ``since``, and the publications to replay."""

    def follow(self, topic: str, last: Position) -> tuple[Recovery, list[Publication]] | None:
        """What came after ``last`` (read without waiting), or None: not here yet."""

    async def caught_up(self, topic: str) -> None:
        """Wait until :meth:`follow` may find more (:raises trio.TooSlowError:)."""


class LocalHistory:
    """:class:`HistorySource` over this process's rings (``ProcessHistory``)."""

    def __init__(self, history: ProcessHistory) -> None:
        self.history = history

    def options(self, topic: str) -> HistoryOptions | None:
        return self.history.options(topic)

    def hold(self, topic: str) -> None:
        pass

    def release(self, topic: str) -> None:
        pass

    async def start(self, topic: str, since: Position | None) -> tuple[Recovery, list[Publication]]:
        return self.history.recover(topic, since, trio.current_time())

    def follow(self, topic: str, last: Position) -> tuple[Recovery, list[Publication]] | None:
        return self.history.recover(topic, last, trio.current_time())

    async def caught_up(self, topic: str) -> None:  # pragma: no cover - follow never waits
        await trio.lowlevel.checkpoint()


async def subscribe_from(
    connection: Recovering,
    source: HistorySource | None,
    counters: Counters,
    topic: str,
    since: Position | None,
    announce: Callable[[Recovery], None] | None = None,
) -> Recovery:
    """Subscribe ``connection`` to ``topic`` after replaying what it missed since ``since``.

    ``announce`` is called with the decision before anything is replayed (what it sends goes
    first: a protocol's answer to the subscription, ``_pubsub.py``); its ``replayed`` is the
    gap found then, its ``position`` the topic's position then.

    :raises ValueError: the topic keeps no history.
    :raises ConnectionClosedError: the connection closed (or the replay was overtaken, 1013).
    """
    check_topic(topic)
    if since is not None and not isinstance(since, Position):
        raise TypeError(f"since is a Position or None, not {since!r}")
    if source is None:
        raise ValueError("this handler keeps no topic history (WebSocketHandler(history=...))")
    if source.options(topic) is None:
        raise ValueError(f"topic {topic!r} keeps no history (see the handler's history=)")
    source.hold(topic)
    try:
        return await _replay(connection, source, counters, topic, since, announce)
    finally:
        source.release(topic)


async def _replay(
    connection: Recovering,
    source: HistorySource,
    counters: Counters,
    topic: str,
    since: Position | None,
    announce: Callable[[Recovery], None] | None,
) -> Recovery:
    connection.unsubscribe(topic)  # a live subscription would deliver the gap a second time
    try:
        recovery, missed = await source.start(topic, since)
    except Exception as exc:  # the store did not answer (Redis lost or slow)
        counters.recovery_failed("unavailable")
        connection.stop(OVERRUN_CLOSE, "history unavailable: subscribe again")
        raise ConnectionClosedError(
            f"the history of {topic!r} could not be read ({exc or type(exc).__name__}):"
            " closed with 1013"
        ) from exc
    if announce is not None:
        announce(attrs.evolve(recovery, replayed=len(missed)))
    if since is not None:
        counters.recoveries += 1
    if not recovery.recovered:
        connection.subscribe(topic)
        if recovery.reason is not None:
            counters.recovery_failed(recovery.reason)
        await trio.lowlevel.checkpoint()
        return recovery
    replayed, position = 0, recovery.position
    why = "replay interrupted: subscribe again"
    try:
        while True:
            for publication in missed:
                await connection.send_wait(publication.data)
            replayed += len(missed)
            last = missed[-1].position if missed else position
            found = source.follow(topic, last)
            if found is None:  # the store numbered more than has reached this process
                try:
                    with trio.fail_after(CATCH_UP_TIMEOUT):
                        while found is None:
                            await source.caught_up(topic)
                            found = source.follow(topic, last)
                except trio.TooSlowError:
                    counters.recovery_failed("unavailable")
                    why = "history unavailable: subscribe again"
                    raise ConnectionClosedError(
                        f"the replay of {topic!r} could not catch up with the topic in"
                        f" {CATCH_UP_TIMEOUT} s: closed with 1013"
                    ) from None
            catch_up, missed = found
            position = catch_up.position
            if not catch_up.recovered:
                counters.recovery_failed("overrun")
                why = "history overrun: subscribe again"
                raise ConnectionClosedError(
                    f"the replay of {topic!r} was overtaken by its publications: closed with 1013"
                )
            if not missed:
                break
    except BaseException:
        # cancelled or failed half-way: the client has part of the gap and no live feed; it
        # must not take that for the whole (a 1013 tells it to subscribe again)
        connection.stop(OVERRUN_CLOSE, why)
        raise
    connection.subscribe(topic)
    counters.recoveries_succeeded += 1
    await trio.lowlevel.checkpoint()
    return Recovery(True, position, replayed)
