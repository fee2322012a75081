"""Where connections are registered and removed: the handler's registry of live connections.

The seed guards its connection hash with a read-write lock because Qore handlers run on many
threads.  Here every task of a handler runs on one Trio thread and the registry is only touched
between checkpoints, so it needs no lock: ``send_all`` iterates it synchronously and nothing can
add or remove an entry while it does.  Call the handler from other threads through
``trio.from_thread.run_sync``.

The registry holds each connection's state (``_core.ConnectionCore``), which is what fan-out,
the statistics and the timer settings work on (:class:`Entry` says what they need of it); what
users see of it (``get``, iteration, ``snapshot``) are the connection objects themselves
(``entry.connection``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, ValuesView
from typing import Generic, Protocol, TypeVar

import attrs
import trio

from ._errors import UnknownConnectionError
from ._fanout import Recipient
from ._stats import QueueFigures

__all__ = ["ConnectionRegistry", "Entry"]

C_co = TypeVar("C_co", covariant=True)
C = TypeVar("C")


class Entry(Recipient, Protocol[C_co]):
    """A registered connection, as the package uses it: a recipient of ``send_all``, a queue
    whose figures ``stats()`` adds up, timers that follow the handler's settings."""

    @property
    def id(self) -> str: ...
    @property
    def connection(self) -> C_co:
        """The user's connection object."""

    @property
    def queue(self) -> QueueFigures: ...

    def settings_changed(self) -> None:
        """The handler's timer settings changed."""


@attrs.define(slots=True)
class ConnectionRegistry(Generic[C]):
    """Live connections by id, in registration order."""

    _entries: dict[str, Entry[C]] = attrs.field(factory=dict, init=False)
    _on_add: Callable[[str], None] | None = attrs.field(default=None, init=False)
    _on_remove: Callable[[str], None] | None = attrs.field(default=None, init=False)
    _empty: trio.Event | None = attrs.field(default=None, init=False)

    def watch(self, on_add: Callable[[str], None], on_remove: Callable[[str], None]) -> None:
        """Call ``on_add(id)`` and ``on_remove(id)`` for each connection added and removed (a
        backplane's presence)."""
        self._on_add, self._on_remove = on_add, on_remove

    def add(self, entry: Entry[C]) -> None:
        if entry.id in self._entries:
            raise ValueError(f"a connection with id {entry.id!r} is already registered")
        self._entries[entry.id] = entry
        if self._on_add is not None:
            self._on_add(entry.id)

    def remove(self, entry: Entry[C]) -> None:
        """Remove ``entry`` (no error if it is not there: removal runs in ``finally``)."""
        if self._entries.get(entry.id) is entry:
            del self._entries[entry.id]
            if self._on_remove is not None:
                self._on_remove(entry.id)
            if not self._entries and self._empty is not None:
                self._empty.set()
                self._empty = None

    async def wait_empty(self) -> None:
        """Wait until no connection is left."""
        while self._entries:
            if self._empty is None:
                self._empty = trio.Event()
            await self._empty.wait()

    def get(self, cid: str) -> C:
        try:
            return self._entries[cid].connection
        except KeyError:
            raise UnknownConnectionError(cid) from None

    def entry(self, cid: str) -> Entry[C]:
        """The state of connection ``cid`` (for the package; :raises UnknownConnectionError:)."""
        try:
            return self._entries[cid]
        except KeyError:
            raise UnknownConnectionError(cid) from None

    def entries(self) -> ValuesView[Entry[C]]:
        """The live connections' states, for the package's loops over them (a live view:
        iterate without awaiting)."""
        return self._entries.values()

    def ids(self) -> list[str]:
        return list(self._entries)

    def __contains__(self, cid: object) -> bool:
        return cid in self._entries

    def __len__(self) -> int:
        return len(self._entries)

    def __iter__(self) -> Iterator[C]:
        """Iterate the live connections; safe only without a checkpoint inside the loop."""
        return (entry.connection for entry in self._entries.values())

    def snapshot(self) -> list[C]:
        """A copy, for loops that await."""
        return [entry.connection for entry in self._entries.values()]
