"""Where a rate-limited connection waits, or is refused: the I/O side of ``_rate.py``.

The parser (``_frames.FrameParser``) asks the connection's ``_rate.RateGate`` at each data
frame header; the reader (``_reader.py``) acts on its answers here: under ``"delay"`` it reads
and handles nothing more for the seconds the gate said (:func:`wait`), under ``"drop"`` it tells
the user's object and counts the refusal against the error budget (:func:`refused`), under
``"close"`` it closes with 1008.  ``WebSocketConnection.report_error`` counts against the same
budget (:func:`spend_budget`).
"""

from __future__ import annotations

from typing import Protocol

import trio

from ._options import RateLimit
from ._protocol import WebSocketProtocol
from ._rate import ERRORS_REASON, RATE_CLOSE_CODE, RATE_REASON
from ._send_queue import SendQueue
from ._state import OPEN, ConnectionState
from ._stats import Counters
from .codec import CloseCode

__all__ = ["Limited", "refused", "spend_budget", "wait"]


class _Hooks(Protocol):
    def message_refused(self, limit: RateLimit, count: int) -> None: ...


class _Log(Protocol):
    def log_info(self, msg: str, *args: object) -> None: ...

    def log_error(self, msg: str, *args: object, exc_info: bool = ...) -> None: ...


class Limited(Protocol):
    """What a rate limit needs of a connection (``_core.ConnectionCore`` provides it)."""

    @property
    def id(self) -> str: ...
    @property
    def state(self) -> ConnectionState: ...
    @property
    def protocol(self) -> WebSocketProtocol: ...
    @property
    def queue(self) -> SendQueue: ...
    @property
    def counters(self) -> Counters: ...
    @property
    def connection(self) -> _Hooks: ...
    @property
    def settings(self) -> _Log: ...

    def pause(self) -> None:
        """Its reader stops reading (backpressure, a rate limit's wait)."""

    def resume(self, now: float) -> None: ...

    def cork(self) -> None:
        """What the hooks send now waits for :meth:`uncork`."""

    def uncork(self) -> None:
        """Write what the hooks sent (one non-blocking write)."""

    def start_close(self, code: int, reason: str) -> None: ...

    def fail(self, code: int, reason: str, reply: bytes) -> None:
        """The peer broke the protocol or a limit: close with ``code``."""


async def wait(core: Limited, seconds: float) -> None:
    """Policy ``"delay"``: read and handle nothing more of this client for ``seconds`` (what
    the hooks sent goes out first; the heartbeat and idle timeout leave it alone meanwhile, as
    under backpressure).  The wait ends early when the connection begins closing: what the
    client still sends is then skipped, and its Close is read in time."""
    core.uncork()
    core.pause()
    start = trio.current_time()
    until = start + seconds
    try:
        while core.state is OPEN and trio.current_time() < until:
            await core.queue.wait_progress(until)  # (woken by writes, and by a closing)
    finally:
        now = trio.current_time()
        core.counters.rate_delay_seconds += now - start
        core.resume(now)
        core.cork()


def refused(core: Limited, limit: RateLimit, count: int) -> bool:
    """``count`` messages refused unread (one, or a flooder's run of them): policy ``"close"``
    fails the connection (1008), ``"drop"`` tells the user's object (``message_refused``) and
    counts against the error budget, which fails it when spent.  True when it was failed: the
    reader reads no more of it (what the flooder still sends is dropped unparsed while our
    Close goes out: ``_linger.py``)."""
    gate = core.protocol.gate
    if gate is not None and gate.policy == "close":
        _fail(core, "rate")
        return True
    try:
        core.connection.message_refused(limit, count)
    except Exception:
        core.settings.log_error(
            "connection %s: message_refused() failed; closing", core.id, exc_info=True
        )
        core.start_close(CloseCode.INTERNAL_SERVER_ERROR, "internal error")
        return False
    if gate is not None and gate.refused(count):
        _fail(core, "errors")
        return True
    return False


def spend_budget(core: Limited) -> None:
    """An error the application reported, against the connection's error budget: closes it
    (1008) when spent."""
    gate = core.protocol.gate
    if gate is not None and gate.refused() and core.state <= OPEN:
        core.counters.closed_by_limit("errors")
        _log(core, ERRORS_REASON)
        core.start_close(RATE_CLOSE_CODE, ERRORS_REASON)


def _fail(core: Limited, why: str) -> None:
    reason = RATE_REASON if why == "rate" else ERRORS_REASON
    _log(core, reason)
    core.counters.closed_by_limit(why)
    core.fail(RATE_CLOSE_CODE, reason, core.protocol.close(RATE_CLOSE_CODE, reason))


def _log(core: Limited, reason: str) -> None:
    core.settings.log_info("connection %s: %s; closing (%d)", core.id, reason, RATE_CLOSE_CODE)
