"""The tasks a listener runs for all its connections: the flusher and the timer sweep."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import attrs
import trio

from ._flusher import Flusher
from ._timers import Timers

__all__ = ["ListenerTasks", "open_listener_tasks"]


@attrs.frozen
class ListenerTasks:
    """What a connection needs from its listener: who writes its frames, who fires its timers,
    and where a task of its own runs (a TLS writer; the flusher's drain tasks)."""

    flusher: Flusher
    timers: Timers
    nursery: trio.Nursery


@asynccontextmanager
async def open_listener_tasks() -> AsyncIterator[ListenerTasks]:
    """Run a flusher and a timer sweep (and the flusher's drain tasks) for the block's duration;
    they are cancelled when it ends, so the block must outlast the connections that use them."""
    async with trio.open_nursery() as nursery:
        tasks = ListenerTasks(Flusher(nursery), Timers(), nursery)
        await nursery.start(tasks.flusher.run)
        await nursery.start(tasks.timers.run)
        try:
            yield tasks
        finally:
            nursery.cancel_scope.cancel()
