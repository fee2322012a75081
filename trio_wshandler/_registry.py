"""Where connections are registered and removed: the handler's registry of live connections.

The seed guards its connection hash with a read-write lock because Qore handlers run on many
threads.  Here every task of a handler runs on one Trio thread and the registry is only touched
between checkpoints, so it needs no lock: ``send_all`` iterates it synchronously and nothing can
add or remove an entry while it does.  Call the handler from other threads through
``trio.from_thread.run_sync``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

import attrs

from ._errors import UnknownConnectionError

if TYPE_CHECKING:
    from ._connection import WebSocketConnection

__all__ = ["ConnectionRegistry"]


@attrs.define(slots=True)
class ConnectionRegistry:
    """Live connections by id, in registration order."""

    _connections: dict[str, WebSocketConnection] = attrs.field(factory=dict, init=False)
    #: called with the id of each connection added and removed (a backplane's presence)
    on_add: Callable[[str], None] | None = attrs.field(default=None, init=False)
    on_remove: Callable[[str], None] | None = attrs.field(default=None, init=False)

    def add(self, connection: WebSocketConnection) -> None:
        if connection.id in self._connections:
            raise ValueError(f"a connection with id {connection.id!r} is already registered")
        self._connections[connection.id] = connection
        if self.on_add is not None:
            self.on_add(connection.id)

    def remove(self, connection: WebSocketConnection) -> None:
        """Remove ``connection`` (no error if it is not there: removal runs in ``finally``)."""
        if self._connections.get(connection.id) is connection:
            del self._connections[connection.id]
            if self.on_remove is not None:
                self.on_remove(connection.id)

    def get(self, cid: str) -> WebSocketConnection:
        try:
            return self._connections[cid]
        except KeyError:
            raise UnknownConnectionError(cid) from None

    def ids(self) -> list[str]:
        return list(self._connections)

    def __contains__(self, cid: object) -> bool:
        return cid in self._connections

    def __len__(self) -> int:
        return len(self._connections)

    def __iter__(self) -> Iterator[WebSocketConnection]:
        """Iterate the live connections; safe only without a checkpoint inside the loop."""
        return iter(self._connections.values())

    def snapshot(self) -> list[WebSocketConnection]:
        """A copy, for loops that await."""
        return list(self._connections.values())
