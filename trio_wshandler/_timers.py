"""Where timers fire: one task per listener for heartbeats, Pong timeouts and idle timeouts.

An idle connection must cost no task and no wake-ups of its own, so instead of a sleeping task
per connection, :class:`Timers` sweeps the listener's connections every *tick*: an eighth of the
shortest interval in force (``heartbeat``, ``pong_timeout``, ``idle_timeout`` of the handlers of
its connections), at most ``MAX_TICK`` and at least ``MIN_TICK`` seconds.  A timer therefore
fires up to one tick late (2.5 s on a 20 s heartbeat would be too coarse, hence the 1 s cap).
With no timer set on any connection it sleeps until woken.  Changing a handler's settings wakes
it, so a new value applies to live connections at once, including a Ping already waiting for
its Pong.

For each open connection, at each sweep:

* **Pong timeout**: a heartbeat Ping unanswered for ``pong_timeout`` seconds closes with 1011.
* **Heartbeat**: ``heartbeat`` seconds without *received* data sends a Ping (only received data
  counts, so a peer that stopped reading or vanished is caught whatever the server sends).
* **Idle timeout**: no message for ``idle_timeout`` seconds closes with 1001 "idle timeout".

None of them fires while the connection's reader is paused because its peer does not read (its
Pongs and messages then wait unread); ``send_timeout`` covers a peer that reads nothing.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import trio

from .codec import CloseCode, Opcode, encode_message

if TYPE_CHECKING:
    from ._connection import WebSocketConnection

__all__ = ["MAX_TICK", "MIN_TICK", "SWEEP_PER_STEP", "Timers"]

#: Longest time between two sweeps while any timer is set.
MAX_TICK = 1.0
#: Shortest time between two sweeps.
MIN_TICK = 0.005
#: Connections checked per task step of a sweep.
SWEEP_PER_STEP = 1024


class Timers:
    """The timer sweep of one listener's connections; run :meth:`run` in its nursery."""

    __slots__ = ("_connections", "_sleep")

    def __init__(self) -> None:
        self._connections: set[WebSocketConnection] = set()
        self._sleep: trio.CancelScope | None = None

    def add(self, connection: WebSocketConnection) -> None:
        self._connections.add(connection)
        self.wake()

    def discard(self, connection: WebSocketConnection) -> None:
        self._connections.discard(connection)

    def wake(self) -> None:
        """Sweep now (a connection came, or a handler's timer settings changed)."""
        if self._sleep is not None:
            self._sleep.cancel()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        while True:
            tick = await self.sweep(trio.current_time())
            with trio.CancelScope() as self._sleep:
                await trio.sleep(tick)
            self._sleep = None

    async def sweep(self, now: float) -> float:
        """Fire what is due; returns the time until the next sweep (``inf``: none needed)."""
        shortest = math.inf
        for done, connection in enumerate(list(self._connections), 1):
            if done % SWEEP_PER_STEP == 0:  # thousands of connections: let the others run
                await trio.lowlevel.checkpoint()
            if connection._state != 1:  # only open connections
                continue
            try:
                shortest = min(shortest, self._fire(connection, now))
            except Exception:  # a bug must cost one connection, not the listener
                connection.handler.log_error(
                    "connection %s: timer failed", connection.id, exc_info=True
                )
                connection._abort()
        return min(MAX_TICK, max(MIN_TICK, shortest / 8)) if shortest < math.inf else math.inf

    @staticmethod
    def _fire(connection: WebSocketConnection, now: float) -> float:
        """Fire ``connection``'s due timers; returns its shortest interval (``inf``: none)."""
        handler = connection.handler
        heartbeat, idle = handler.heartbeat, handler.idle_timeout
        if heartbeat is None and idle is None:
            return math.inf
        if connection._paused:  # its Pongs and messages wait unread: see _connection._read
            return min(t for t in (heartbeat, idle) if t is not None)
        if idle is not None and now >= connection._last_message + idle:
            handler.log_info("connection %s: no message for %s s; closing", connection.id, idle)
            handler._counters.idle_timeouts += 1
            connection._start_close(CloseCode.GOING_AWAY, "idle timeout")
            return idle
        shortest = math.inf if idle is None else idle
        pong_timeout = handler.pong_timeout
        if connection._ping_sent:
            if now >= connection._ping_sent + pong_timeout:
                handler.log_warning(
                    "connection %s: no Pong within %s s; closing", connection.id, pong_timeout
                )
                handler._counters.heartbeat_timeouts += 1
                connection._start_close(CloseCode.INTERNAL_SERVER_ERROR, "pong timeout")
            return min(shortest, pong_timeout)
        if heartbeat is not None:
            if now >= connection._last_received + heartbeat:
                connection._ping_sent = now
                connection._put_control(encode_message(handler.heartbeat_message, Opcode.PING))
            return min(shortest, heartbeat, pong_timeout)
        return shortest
