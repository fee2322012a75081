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
from ._history import Position, ProcessHistory, Recovery
from ._stats import Counters
from ._topics import check_topic
from .codec import DataLike

__all__ = ["OVERRUN_CLOSE", "Recovering", "subscribe_from"]

#: The close code of a connection whose replay was overtaken by the topic (RFC 6455's "Try
#: Again Later"): the client should reconnect and subscribe from its last position again.
OVERRUN_CLOSE = 1013


class Recovering(Protocol):
    """What a replay needs of a connection (``_core.ConnectionCore``)."""

    async def send_wait(self, data: DataLike) -> None: ...

    def subscribe(self, topic: str) -> None: ...

    def unsubscribe(self, topic: str) -> None: ...

    def stop(self, code: int, reason: str) -> None: ...


async def subscribe_from(
    connection: Recovering,
    history: ProcessHistory | None,
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
    if history is None:
        raise ValueError("this handler keeps no topic history (WebSocketHandler(history=...))")
    recovery, missed = history.recover(topic, since, trio.current_time())
    connection.unsubscribe(topic)  # a live subscription would deliver the gap a second time
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
        while missed:
            for publication in missed:
                await connection.send_wait(publication.data)
            replayed += len(missed)
            last = missed[-1].position
            catch_up, missed = history.recover(topic, last, trio.current_time())
            position = catch_up.position
            if not catch_up.recovered:
                counters.recovery_failed("overrun")
                why = "history overrun: subscribe again"
                raise ConnectionClosedError(
                    f"the replay of {topic!r} was overtaken by its publications: closed with 1013"
                )
    except BaseException:
        # cancelled or failed half-way: the client has part of the gap and no live feed; it
        # must not take that for the whole (a 1013 tells it to subscribe again)
        connection.stop(OVERRUN_CLOSE, why)
        raise
    connection.subscribe(topic)
    counters.recoveries_succeeded += 1
    await trio.lowlevel.checkpoint()
    return Recovery(True, position, replayed)
