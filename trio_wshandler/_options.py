"""Where the handler's options are checked: a bad value raises ``TypeError``/``ValueError``
naming the option, at construction (or when a live setting is changed), never later.

:class:`ConnectionLimits` is the bounds every connection of a handler is made with (its
protocol's size limits, its send queue's bounds): fixed for a connection's life, checked here
once, and documented here once (the guide's table is checked against these defaults by
``tests/test_docs.py``).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable
from typing import Any, Literal

import attrs

from .codec import MAX_CONTROL_PAYLOAD

__all__ = [
    "ConnectionLimits",
    "ErrorBudget",
    "HandlerSettings",
    "RateLimit",
    "RateLimits",
    "RatePolicy",
    "SlowConsumerPolicy",
    "checked",
    "heartbeat_payload",
    "positive",
]

SlowConsumerPolicy = Literal["close", "drop"]
RatePolicy = Literal["delay", "drop", "close"]


def positive(name: str, value: Any, *, allow_none: bool = False, integer: bool = False) -> Any:
    kind = "an int" if integer else "a number"
    valid = f"{kind} > 0" + (" or None" if allow_none else "")
    if value is None and allow_none:
        return None
    types = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, types):
        raise TypeError(f"{name} must be {valid}, not {type(value).__name__}")
    if not (value > 0 and math.isfinite(value)):
        raise ValueError(f"{name} must be {valid}, got {value!r}")
    return value


def heartbeat_payload(value: Any) -> bytes:
    if isinstance(value, str):
        payload = value.encode("utf-8")
    elif isinstance(value, bytes | bytearray):
        payload = bytes(value)
    else:
        raise TypeError(f"heartbeat_message must be str or bytes, not {type(value).__name__}")
    if len(payload) > MAX_CONTROL_PAYLOAD:
        raise ValueError(
            f"heartbeat_message must be at most {MAX_CONTROL_PAYLOAD} bytes, got {len(payload)}"
        )
    return payload


def _positive_int(instance: object, attribute: attrs.Attribute[int], value: int) -> None:
    positive(attribute.name, value, integer=True)


@attrs.frozen
class ConnectionLimits:
    """The bounds of each connection of a handler, set when the connection is made.

    Pass them to :class:`~trio_wshandler.WebSocketHandler` as options of the same names
    (``WebSocketHandler(max_message_size=...)``); ``handler.limits`` is the value in force.
    Changing one on the handler (``handler.max_queue = 100``) applies to connections made after.
    """

    #: Largest incoming message, all fragments together (compressed: once inflated); checked on
    #: each frame *header*, so a frame that only declares a larger length is refused (1009)
    #: before any of its payload is read.
    max_message_size: int = attrs.field(default=1 << 20, validator=_positive_int)
    #: Most frames one incoming message may have (1009 beyond).  Reassembly joins fragments into
    #: one buffer as they arrive, so memory stays near the message's size; this bounds the work a
    #: client can cause with empty or tiny fragments.
    max_fragments: int = attrs.field(default=4096, validator=_positive_int)
    #: Frames a send queue holds (control frames have slots of their own beyond it).
    max_queue: int = attrs.field(default=4096, validator=_positive_int)
    #: Bytes a send queue holds; a single larger frame is still taken into an empty queue.
    max_queue_bytes: int = attrs.field(default=1 << 20, validator=_positive_int)


def checked(*, integer: bool = False, allow_none: bool = False) -> Any:
    """An attrs validator: :func:`positive` (the check of every other option)."""

    def check(instance: object, attribute: attrs.Attribute[Any], value: Any) -> None:
        positive(attribute.name, value, allow_none=allow_none, integer=integer)

    return check


def _unit(instance: object, attribute: attrs.Attribute[str], value: str) -> None:
    if value not in ("messages", "bytes"):
        raise ValueError(f"unit must be 'messages' or 'bytes', got {value!r}")


@attrs.frozen
class RateLimit:
    """One token bucket: ``rate`` tokens every ``per`` seconds, holding at most ``burst``.

    ``unit="messages"`` costs one token per data message; ``unit="bytes"`` one per payload byte
    received (as sent on the wire: compressed messages count their compressed size).  ``burst``
    (default ``rate``: one period's worth) is what a client may send at once after a quiet
    spell.  A message larger than ``burst`` bytes waits for a full bucket, then takes it into
    debt.
    """

    #: tokens added every ``per`` seconds
    rate: float = attrs.field(validator=checked())
    #: the period of ``rate``, in seconds (1.0: per second; 60.0: per minute)
    per: float = attrs.field(default=1.0, validator=checked())
    #: the bucket's size (None: ``rate``)
    burst: float | None = attrs.field(default=None, validator=checked(allow_none=True))
    #: "messages" or "bytes"
    unit: Literal["messages", "bytes"] = attrs.field(default="messages", validator=_unit)

    @property
    def capacity(self) -> float:
        """The bucket's size: ``burst``, or ``rate`` when it is not set."""
        return self.rate if self.burst is None else self.burst

    @property
    def per_second(self) -> float:
        return self.rate / self.per


@attrs.frozen
class ErrorBudget:
    """Close (1008 "too many errors") a client refused more than ``errors`` times within ``per``
    seconds (messages dropped by a rate limit, errors reported by the application)."""

    #: refusals allowed within ``per`` seconds; one more closes the connection
    errors: int = attrs.field(default=10, validator=checked(integer=True))
    #: the window, in seconds
    per: float = attrs.field(default=60.0, validator=checked())


def _limits(value: Iterable[RateLimit] | RateLimit) -> tuple[RateLimit, ...]:
    return (value,) if isinstance(value, RateLimit) else tuple(value)


def _each_limit(instance: object, attribute: attrs.Attribute[Any], value: Any) -> None:
    for limit in value:
        if not isinstance(limit, RateLimit):
            raise TypeError(f"limits must be RateLimit values, not {limit!r}")


def _policy(instance: object, attribute: attrs.Attribute[str], value: str) -> None:
    if value not in ("delay", "drop", "close"):
        raise ValueError(f"policy must be 'delay', 'drop' or 'close', got {value!r}")


def _budget(instance: object, attribute: attrs.Attribute[Any], value: Any) -> None:
    if value is not None and not isinstance(value, ErrorBudget):
        raise TypeError(f"error_budget must be an ErrorBudget or None, not {value!r}")


@attrs.frozen
class RateLimits:
    """What one connection may send (``WebSocketHandler(rate_limits=...)`` for every
    connection, ``connection.rate_limits = ...`` for one): token buckets (``limits``, all of
    them must have tokens), what happens when one is empty (``policy``), and an error budget.
    See ``_rate.py``, where they are applied, and the guide's "Rate limits"."""

    #: the buckets (one :class:`RateLimit` or several)
    limits: tuple[RateLimit, ...] = attrs.field(
        default=(), converter=_limits, validator=_each_limit
    )
    #: "delay" (default), "drop" or "close"
    policy: RatePolicy = attrs.field(default="delay", validator=_policy)
    #: close a client that is refused too often (None: never)
    error_budget: ErrorBudget | None = attrs.field(default=None, validator=_budget)


class HandlerSettings:
    """What a handler's connections read of it: the limits they are made with, the policies and
    timeouts they apply, and the timers (``heartbeat``, ``heartbeat_message``, ``pong_timeout``,
    ``idle_timeout``) whose change applies to live connections at once.  A base class of
    :class:`~trio_wshandler.WebSocketHandler`, whose docstring documents each option."""

    #: where its connections log (the handler's ``logger``)
    logger: logging.Logger

    def __init__(
        self,
        *,
        heartbeat: float | None,
        heartbeat_message: str | bytes,
        pong_timeout: float,
        limits: ConnectionLimits,
        slow_consumer: SlowConsumerPolicy,
        send_timeout: float | None,
        close_timeout: float,
        idle_timeout: float | None,
        rate_limits: RateLimits | None = None,
    ) -> None:
        if slow_consumer not in ("close", "drop"):
            raise ValueError(f"slow_consumer must be 'close' or 'drop', got {slow_consumer!r}")
        self._heartbeat: float | None = positive("heartbeat", heartbeat, allow_none=True)
        self._heartbeat_message = heartbeat_payload(heartbeat_message)
        self._pong_timeout: float = positive("pong_timeout", pong_timeout)
        self._limits = limits
        self.slow_consumer: SlowConsumerPolicy = slow_consumer
        self.send_timeout: float | None = positive("send_timeout", send_timeout, allow_none=True)
        self.close_timeout: float = positive("close_timeout", close_timeout)
        self._idle_timeout: float | None = positive("idle_timeout", idle_timeout, allow_none=True)
        self.rate_limits = rate_limits

    @property
    def rate_limits(self) -> RateLimits | None:
        """What each client may send (:class:`RateLimits`), or None; a connection made after a
        change gets the new value (``connection.rate_limits`` sets one connection's)."""
        return self._rate_limits

    @rate_limits.setter
    def rate_limits(self, value: RateLimits | None) -> None:
        if value is not None and not isinstance(value, RateLimits):
            raise TypeError(f"rate_limits must be a RateLimits or None, not {value!r}")
        self._rate_limits = value

    def _settings_changed(self) -> None:
        """A timer setting changed (the handler has its live connections follow it)."""

    @property
    def limits(self) -> ConnectionLimits:
        """The bounds every connection is made with (:class:`ConnectionLimits`); the four
        properties below read them."""
        return self._limits

    @property
    def max_message_size(self) -> int:
        return self._limits.max_message_size

    @property
    def max_fragments(self) -> int:
        return self._limits.max_fragments

    @property
    def max_queue(self) -> int:
        return self._limits.max_queue

    @property
    def max_queue_bytes(self) -> int:
        return self._limits.max_queue_bytes

    @property
    def heartbeat(self) -> float | None:
        """Seconds without input before a Ping; setting it applies to live connections."""
        return self._heartbeat

    @heartbeat.setter
    def heartbeat(self, value: float | None) -> None:
        self._heartbeat = positive("heartbeat", value, allow_none=True)
        self._settings_changed()

    @property
    def heartbeat_message(self) -> bytes:
        """The heartbeat Ping payload (bytes; a str set here is UTF-8 encoded)."""
        return self._heartbeat_message

    @heartbeat_message.setter
    def heartbeat_message(self, value: str | bytes) -> None:
        self._heartbeat_message = heartbeat_payload(value)

    @property
    def idle_timeout(self) -> float | None:
        """Seconds without a message before a connection is closed; applies to live ones."""
        return self._idle_timeout

    @idle_timeout.setter
    def idle_timeout(self, value: float | None) -> None:
        self._idle_timeout = positive("idle_timeout", value, allow_none=True)
        self._settings_changed()

    @property
    def pong_timeout(self) -> float:
        """Seconds a heartbeat Ping may wait for its Pong; setting it applies at once."""
        return self._pong_timeout

    @pong_timeout.setter
    def pong_timeout(self, value: float) -> None:
        self._pong_timeout = positive("pong_timeout", value)
        self._settings_changed()  # applies to a Ping already waiting for its Pong too

    # ---------------------------------------------------------------- its log (``logger``)

    def log_debug(self, msg: str, *args: object, **kwargs: Any) -> None:
        self.logger.debug(msg, *args, **kwargs)

    def log_info(self, msg: str, *args: object, **kwargs: Any) -> None:
        self.logger.info(msg, *args, **kwargs)

    def log_warning(self, msg: str, *args: object, **kwargs: Any) -> None:
        self.logger.warning(msg, *args, **kwargs)

    def log_error(self, msg: str, *args: object, **kwargs: Any) -> None:
        self.logger.error(msg, *args, **kwargs)
