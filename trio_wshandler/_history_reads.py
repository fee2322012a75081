"""Where reads of a topic's history in Redis are made: once for every caller that asks the
same at once.

A reconnect storm (1,000 clients coming back to one process from one position) would
otherwise send 1,000 identical read scripts to Redis; here the first caller makes the read and
the others wait for its outcome (``_history_feed.py`` also makes the snapshot's envelopes once
for all of them).  The read runs in the first caller's task: if that caller is cancelled (its
client went away), the others make it again rather than fail.
"""

from __future__ import annotations

from typing import Protocol

import trio

from ._history import HistoryOptions
from ._history_redis import Snapshot

__all__ = ["CoalescedReads", "HistoryLink", "HistoryUnavailable"]


class HistoryUnavailable(Exception):
    """A read of a topic's history in Redis failed (its cause says why)."""


class HistoryLink(Protocol):
    """What a shared history needs of its backplane (``RedisBackplane``)."""

    def store(self, topic: str, options: HistoryOptions, opcode: int, message: bytes) -> bool:
        """Queue the publish script for a publication (never waits); False: dropped."""

    async def read_history(
        self, topic: str, first: int, epoch: str, count: int, ttl: float
    ) -> Snapshot:
        """One read script (:raises: a Redis error, or trio.TooSlowError)."""

    async def wait_following(self, topic: str) -> None:
        """Wait until Redis delivers ``topic``'s channel here (:raises trio.TooSlowError:)."""


class CoalescedReads:
    """The reads in flight, by what they ask: (topic, first, epoch, count)."""

    __slots__ = ("_pending", "made")

    def __init__(self) -> None:
        #: the event and the outcome of each read in flight (empty if it was cancelled)
        self._pending: dict[tuple[str, int, str, int], tuple[trio.Event, list[object]]] = {}
        #: reads made (after coalescing)
        self.made = 0

    async def read(
        self, link: HistoryLink, topic: str, first: int, epoch: str, count: int, ttl: float
    ) -> Snapshot:
        """``link.read_history(...)``, shared by every caller asking the same at once.

        :raises HistoryUnavailable: the read failed (Redis lost, or slower than its timeout).
        """
        key = (topic, first, epoch, count)
        while (pending := self._pending.get(key)) is not None:
            done, outcome = pending
            await done.wait()
            if not outcome:
                continue  # its maker was cancelled
            found = outcome[0]
            if isinstance(found, Snapshot):
                return found
            assert isinstance(found, Exception)
            raise HistoryUnavailable(f"the history of {topic!r} could not be read") from found
        done, outcome = trio.Event(), []
        self._pending[key] = (done, outcome)
        try:
            self.made += 1
            snapshot = await link.read_history(topic, first, epoch, count, ttl)
            outcome.append(snapshot)
            return snapshot
        except Exception as exc:
            outcome.append(exc)
            raise HistoryUnavailable(f"the history of {topic!r} could not be read") from exc
        finally:
            self._pending.pop(key, None)
            done.set()
