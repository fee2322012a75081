"""Where the lanes that share one Redis send their commands: one pipeline per round.

On a Redis Cluster several lanes (partitions) talk to each master.  Each lane's publisher
takes its own outbox's commands, but sends them through the master's :class:`Pipelines`,
which puts the commands of every lane that has some ready into one pipelined round trip (as
rueidis's auto-pipelining does for centrifuge): a master reads one batch per round, not one
per partition, and a process makes one round trip per master.  With one Redis there is one
lane and this changes nothing.

A lane gives a *builder*: a function that adds its commands to the pipeline and returns what
it will look at after (its scripts' replies).  A failed round (Redis lost, or no answer within
``timeout``) fails every lane in it, with the same error.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import trio

__all__ = ["Pipelines", "Stopping"]


class Stopping(Exception):
    """The backplane stopped before a lane's commands were sent."""


class _Entry:
    __slots__ = ("build", "done", "error", "result")

    def __init__(self, build: Callable[[Any], Any]) -> None:
        self.build = build
        self.done = trio.Event()
        self.result: Any = None
        self.error: BaseException | None = None


class Pipelines:
    """The rounds of pipelined commands to one Redis (see the module's docstring)."""

    def __init__(self, client: Any, timeout: float, errors: tuple[type[BaseException], ...]):
        self.client = client
        self.timeout = timeout
        self.errors = errors
        self._queued: list[_Entry] = []
        self._wake = trio.Event()
        self._closed = False
        self._round = trio.Event()  # set when no round is on its way
        self._round.set()
        #: round trips made (each carries one or more lanes' commands)
        self.rounds = 0

    async def send(self, build: Callable[[Any], Any]) -> Any:
        """Send ``build``'s commands in the next round; what ``build`` returned.

        :raises Exception: one of ``errors``: the round failed; :class:`Stopping`: the
            backplane stopped first.
        """
        if self._closed:
            raise Stopping("the backplane is stopping")
        entry = _Entry(build)
        self._queued.append(entry)
        self._wake.set()
        await entry.done.wait()
        if entry.error is not None:
            raise entry.error
        return entry.result

    async def run(self) -> None:
        """Send rounds until :meth:`close` (a task of the backplane, for as long as the
        client); what is still queued then fails with :class:`Stopping`."""
        try:
            while not self._closed:
                if not self._queued:
                    self._wake = trio.Event()
                    await self._wake.wait()
                    continue
                self._round = trio.Event()
                try:
                    await trio.lowlevel.checkpoint()  # the lanes woken with the first join it
                    if self._closed:
                        break
                    await self._send_round()
                finally:
                    self._round.set()
        finally:
            queued, self._queued = self._queued, []
            for entry in queued:
                entry.error = Stopping("the backplane is stopping")
                entry.done.set()

    async def _send_round(self) -> None:
        batch, self._queued = self._queued, []
        try:
            with trio.fail_after(self.timeout):
                # an error answer to one command fails that command only (a script on a key
                # someone changed the type of is not "Redis lost"); a connection error still
                # fails the round
                async with self.client.pipeline(transaction=False, raise_on_error=False) as pipe:
                    for entry in batch:
                        entry.result = entry.build(pipe)
        except self.errors as exc:
            for entry in batch:
                entry.error = exc
        self.rounds += 1
        for entry in batch:
            entry.done.set()

    async def close(self) -> None:
        """Send no more rounds; return once the one on its way has ended (the backplane is
        stopping: cancelling a round while coredis opens a connection for it makes coredis
        log an error)."""
        self._closed = True
        self._wake.set()
        await self._round.wait()
