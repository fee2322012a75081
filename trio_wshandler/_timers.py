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
* **Send timeout** (connections mounted under an ASGI server only, whose writer awaits the
  server's ``send`` for each message, a wait that the server may shield from cancellation): a
  send under way for ``send_timeout`` seconds per 16 KiB of its message ends the connection
  (``write_failed``).  Under ``serve()`` the flusher's drain tasks time their own writes.

None of them fires while the connection's reader is paused because its peer does not read (its
Pongs and messages then wait unread); ``send_timeout`` covers a peer that reads nothing.

The sweep decides *when*; what happens then (the Ping queued, the Close, the counters and the
log line) is a method of the connection (:class:`Timed`), which owns that state.
"""

from __future__ import annotations

import math
from typing import Protocol

import trio

from ._flusher import WriteTimeout
from ._state import OPEN, ConnectionState

__all__ = ["MAX_TICK", "MIN_TICK", "SWEEP_PER_STEP", "Timed", "TimerSettings", "Timers"]

#: Longest time between two sweeps while any timer is set.
MAX_TICK = 1.0
#: Shortest time between two sweeps.
MIN_TICK = 0.005
#: Connections checked per task step of a sweep.
SWEEP_PER_STEP = 1024


class TimerSettings(Protocol):
    """The timer settings of a connection's handler, read at every sweep (so a change applies
    to live connections)."""

    @property
    def heartbeat(self) -> float | None: ...
    @property
    def idle_timeout(self) -> float | None: ...
    @property
    def pong_timeout(self) -> float: ...
    @property
    def send_timeout(self) -> float | None: ...


class _Sending(Protocol):
    @property
    def send_late(self) -> float: ...


class Timed(Protocol):
    """What the sweep needs of a connection: its clocks to read, and what to do when a timer
    fires."""

    @property
    def state(self) -> ConnectionState: ...
    @property
    def settings(self) -> TimerSettings: ...
    @property
    def paused(self) -> bool:
        """Its reader waits for its peer to read: no timer fires."""

    @property
    def last_received(self) -> float:
        """When data last arrived."""

    @property
    def last_message(self) -> float:
        """When a whole message last arrived."""

    @property
    def pings(self) -> bool:
        """It can send Pings and see Pongs (not under ASGI): else no heartbeat."""

    @property
    def ping_sent(self) -> float:
        """When the unanswered heartbeat Ping went out; 0 when none is unanswered."""

    def send_heartbeat(self, now: float) -> None: ...

    def idle_timed_out(self, idle: float) -> None: ...

    def pong_timed_out(self, timeout: float) -> None: ...

    @property
    def queue(self) -> _Sending:
        """Its send queue: when the send under way is late."""

    def write_failed(self, exc: BaseException, task: str) -> None: ...

    def timer_failed(self) -> None:
        """A bug in the sweep: end this connection, not the listener."""


class Timers:
    """The timer sweep of one listener's connections; run :meth:`run` in its nursery."""

    __slots__ = ("_connections", "_sleep")

    def __init__(self) -> None:
        self._connections: set[Timed] = set()
        self._sleep: trio.CancelScope | None = None

    def add(self, connection: Timed) -> None:
        self._connections.add(connection)
        self.wake()

    def discard(self, connection: Timed) -> None:
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
            if connection.state is not OPEN:  # only open connections
                continue
            try:
                shortest = min(shortest, self._fire(connection, now))
            except Exception:  # a bug must cost one connection, not the listener
                connection.timer_failed()
        return min(MAX_TICK, max(MIN_TICK, shortest / 8)) if shortest < math.inf else math.inf

    @staticmethod
    def _fire(connection: Timed, now: float) -> float:
        """Fire ``connection``'s due timers; returns its shortest interval (``inf``: none)."""
        settings = connection.settings
        if connection.pings:
            return _fire_timers(connection, settings, now, settings.heartbeat)
        stall = settings.send_timeout  # mounted under an ASGI server: its sends are watched
        if stall is None:
            return _fire_timers(connection, settings, now, None)
        late = connection.queue.send_late
        if late and now >= late:
            why = WriteTimeout(f"a message took the server over {stall} s per 16 KiB")
            connection.write_failed(why, "ASGI writer")
            return stall
        return min(stall, _fire_timers(connection, settings, now, None))


def _fire_timers(
    connection: Timed, settings: TimerSettings, now: float, heartbeat: float | None
) -> float:
    """The heartbeat (unless None), Pong and idle timeouts of ``connection``."""
    idle = settings.idle_timeout
    if heartbeat is None and idle is None:
        return math.inf
    if connection.paused:  # its Pongs and messages wait unread: see Reader.run
        return min(t for t in (heartbeat, idle) if t is not None)
    if idle is not None and now >= connection.last_message + idle:
        connection.idle_timed_out(idle)
        return idle
    shortest = math.inf if idle is None else idle
    pong_timeout = settings.pong_timeout
    ping_sent = connection.ping_sent
    if ping_sent:
        if now >= ping_sent + pong_timeout:
            connection.pong_timed_out(pong_timeout)
        return min(shortest, pong_timeout)
    if heartbeat is not None:
        if now >= connection.last_received + heartbeat:
            connection.send_heartbeat(now)
        return min(shortest, heartbeat, pong_timeout)
    return shortest
