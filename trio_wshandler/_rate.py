"""Where a client's messages are rate limited: token buckets and an error budget (issue #20).
Sans-I/O: the clock is passed in.

Without a limit, one client may send as many messages as its socket carries, and what it sends
fans out to everyone (a chat line to every member).  :class:`RateLimits` puts token buckets on
what one connection sends (messages, bytes or both; several at once, e.g. 20/s burst 50 *and*
1,000/min) and says what happens when one is empty (``policy``):

``"delay"`` (the default)
    the reader stops reading that client until the tokens are back: nothing is lost, the
    client is only slowed (TCP pushes back on it; its other connections and every other
    client are served meanwhile).
``"drop"``
    the message is discarded unread (its payload is neither unmasked, validated nor inflated)
    and counted; ``WebSocketConnection.message_refused`` is told.
``"close"``
    the connection is closed with 1008 (:data:`RATE_CLOSE_CODE`, a policy violation: a client
    told to slow down should not reconnect at once).

The buckets are checked on frame *headers* (``_frames.FrameParser``), before any payload is
unmasked, assembled or inflated, so a limited client costs little CPU.  A message's bytes are
charged frame by frame as their headers arrive; a message already admitted is never cut: under
``"drop"`` and ``"close"`` its later frames may take a bytes bucket into debt, which the next
messages pay (they wait, or are refused, until it is repaid).  Control frames (Ping, Pong,
Close) are not limited here (``_protocol`` bounds the Pongs owed).

The **error budget** (:class:`ErrorBudget`) closes (1008) a client that keeps being refused:
messages dropped by a rate limit, and bad commands the application reports with
``WebSocketConnection.report_error``, more than ``errors`` of them within ``per`` seconds.
"""

from __future__ import annotations

import collections
from collections.abc import Callable

from ._options import RateLimit, RateLimits, RatePolicy
from ._stats import Counters
from .codec import CloseCode

__all__ = ["ERRORS_REASON", "RATE_CLOSE_CODE", "RATE_REASON", "RateGate"]

#: The close code of a connection closed by a rate limit (``policy="close"``) or by its error
#: budget: 1008, policy violation (terminal in ``CLOSE_CODES``: do not reconnect at once).
RATE_CLOSE_CODE = CloseCode.POLICY_VIOLATION
#: The reason of that Close, by cause.
RATE_REASON = "rate limit exceeded"
ERRORS_REASON = "too many errors"

_EPSILON = 1e-9


class _Bucket:
    __slots__ = ("capacity", "limit", "messages", "rate", "stamp", "tokens")

    def __init__(self, limit: RateLimit) -> None:
        self.limit = limit
        self.messages = limit.unit == "messages"
        self.capacity = limit.capacity
        self.rate = limit.per_second
        self.tokens = self.capacity  # full until first used
        self.stamp: float | None = None

    def refill(self, now: float) -> float:
        if self.stamp is None:
            self.stamp = now
        tokens = self.tokens + (now - self.stamp) * self.rate
        self.tokens = tokens = tokens if tokens < self.capacity else self.capacity
        self.stamp = now
        return tokens


class RateGate:
    """The buckets and error budget of one connection (made from its :class:`RateLimits`).

    The parser calls :meth:`admit` at each data frame header (``first``: it starts a message);
    the reader calls :meth:`refused` for each refusal (the error budget).
    """

    __slots__ = (
        "_buckets",
        "_clock",
        "_counters",
        "_drop",
        "_errors",
        "_refusing",
        "_until",
        "_waiting",
        "limits",
    )

    def __init__(
        self, limits: RateLimits, clock: Callable[[], float], counters: Counters | None = None
    ) -> None:
        self.limits = limits
        self._clock = clock
        self._counters = counters if counters is not None else Counters()
        self._buckets = [_Bucket(limit) for limit in limits.limits]
        self._errors: collections.deque[float] | None = None  # refusal times, when budgeted
        self._waiting = False  # the message at the head waits (counted once as limited)
        self._drop = limits.policy == "drop"
        # a flooder's messages are refused without a look at the buckets until ``_until``,
        # when a messages bucket that refused the last one has a token again
        self._until = 0.0
        self._refusing: RateLimit | None = None

    @property
    def limiting(self) -> bool:
        """There are buckets to check (an error budget alone checks no header)."""
        return bool(self._buckets)

    @property
    def policy(self) -> RatePolicy:
        return self.limits.policy

    def admit(self, size: int, first: bool) -> float | RateLimit | None:
        """A data frame of ``size`` payload bytes (``first``: a message's first frame): None
        when admitted (its tokens are taken), else under ``"delay"`` the seconds until it
        would be, and under ``"drop"``/``"close"`` the limit that refuses it (a later frame
        of an admitted message is never refused: its bytes are charged, into debt if need
        be)."""
        now = self._clock()
        if first and now < self._until:  # (under "drop" and "close" only)
            counters = self._counters
            counters.rate_limited += 1
            counters.rate_dropped += self._drop
            return self._refusing
        wait = 0.0
        refusing: RateLimit | None = None
        until = 0.0
        until_limit: RateLimit | None = None
        delay = self.limits.policy == "delay"
        if first or delay:
            for bucket in self._buckets:
                if bucket.messages:
                    if not first:
                        continue  # a message's later frames cost no message token
                    need = 1.0 if bucket.capacity > 1.0 else bucket.capacity
                else:
                    need = size if size < bucket.capacity else bucket.capacity
                tokens = bucket.refill(now)
                if tokens < need - _EPSILON:  # (the wait's rounding cannot make another)
                    wait = max(wait, (need - tokens) / bucket.rate)
                    refusing = bucket.limit
                    if bucket.messages:  # no message can pass it before then
                        ready = now + (need - _EPSILON - tokens) / bucket.rate
                        if ready > until:
                            until, until_limit = ready, bucket.limit
        if refusing is not None:
            if not self._waiting and first:  # (counted per message, at its first frame)
                self._counters.rate_limited += 1
                self._waiting = delay
            if delay:
                return wait
            self._until, self._refusing = until, until_limit or refusing
            self._counters.rate_dropped += self._drop
            return refusing
        self._waiting = False
        for bucket in self._buckets:
            if bucket.messages:
                if first:
                    bucket.refill(now)
                    bucket.tokens -= 1.0
            elif size:
                bucket.refill(now)
                bucket.tokens -= size
        return None

    def refusing(self) -> bool:
        """Every message is refused now (a messages bucket is empty): the parser may skip a
        run of them with one look at the clock (:meth:`refuse` counts them)."""
        return self._clock() < self._until

    def refuse(self, count: int) -> None:
        """``count`` more messages refused while :meth:`refusing`."""
        counters = self._counters
        counters.rate_limited += count
        counters.rate_dropped += count if self._drop else 0

    def refused(self, count: int = 1) -> bool:
        """``count`` refusals (dropped messages, errors the application reported): True when
        the error budget is spent (the connection is to be closed)."""
        budget = self.limits.error_budget
        if budget is None:
            return False
        errors = self._errors
        if errors is None:
            errors = self._errors = collections.deque(maxlen=budget.errors + 1)
        now = self._clock()
        errors.extend([now] * min(count, budget.errors + 1))
        return len(errors) > budget.errors and now - errors[0] <= budget.per
