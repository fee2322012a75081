"""The states of a connection, and of its closing handshake: one definition each.

This module imports nothing of the package, so that every module can name the states without
tying itself to the modules that keep them.

Two state machines, with names of their own:

* :class:`ConnectionState` is the life of a :class:`~trio_wshandler.WebSocketConnection` as the
  rest of the package sees it (kept by ``_core.ConnectionCore``): messages may be queued while
  it is ``NEW`` or ``OPEN``; ``CLOSING`` from the moment a Close is sent or received or the
  connection is failed; ``CLOSED`` once its task has ended.  It only moves forward.
* :class:`HandshakeState` is the closing handshake inside the sans-I/O protocol
  (``_protocol.WebSocketProtocol``): who sent a Close first, and whether the other answered.

Both are ``IntEnum`` (as websockets' ``State``), with module-level aliases: the connection's state
is compared for every delivery of a broadcast, and a global name costs one dictionary lookup,
where ``ConnectionState.OPEN`` costs a second one through the enum class.  Being ints, the states
compare by order (``state > OPEN``: no more messages may be queued).
"""

from __future__ import annotations

import enum

__all__ = [
    "CLOSED",
    "CLOSE_DONE",
    "CLOSE_RECEIVED",
    "CLOSE_SENT",
    "CLOSING",
    "NEW",
    "NO_CLOSE",
    "OPEN",
    "ConnectionState",
    "HandshakeState",
]


class ConnectionState(enum.IntEnum):
    """The life of a connection; it only moves forward."""

    #: created (in ``get_connection``), not yet running: messages may already be queued
    NEW = 0
    #: registered and running
    OPEN = 1
    #: a Close was sent or received, or the connection is being failed: nothing more is queued
    CLOSING = 2
    #: its task has ended and its socket is closed
    CLOSED = 3


NEW = ConnectionState.NEW
OPEN = ConnectionState.OPEN
CLOSING = ConnectionState.CLOSING
CLOSED = ConnectionState.CLOSED


class HandshakeState(enum.IntEnum):
    """The closing handshake of the sans-I/O protocol."""

    #: no Close sent or received: data flows both ways
    NO_CLOSE = 0
    #: we sent a Close and wait for the peer's (what it still sends is discarded)
    CLOSE_SENT = 1
    #: the peer sent a Close; ours is the answer
    CLOSE_RECEIVED = 2
    #: both Close frames are out: the handshake is over
    CLOSE_DONE = 3


NO_CLOSE = HandshakeState.NO_CLOSE
CLOSE_SENT = HandshakeState.CLOSE_SENT
CLOSE_RECEIVED = HandshakeState.CLOSE_RECEIVED
CLOSE_DONE = HandshakeState.CLOSE_DONE
