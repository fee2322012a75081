"""Where a handler's numbers are kept: plain int counters on the hot path, a frozen snapshot out.

Every :class:`~trio_wshandler.WebSocketHandler` owns one :class:`Counters`.  The code that
reads, queues and writes bumps its fields in place (``counters.messages_received += 1``): no
allocation, no lock (one Trio thread), and the hot paths count in bulk: ``messages_sent`` grows
once per broadcast by its number of recipients, never once per delivery.  Writes are the one
count kept per connection: a write already updates its queue (``_send_queue.py``), and two more
int fields there cost about half of what reaching a handler-wide counter from each write would
(the figures are in docs/performance.md); a connection's writes join the handler's totals when
it ends.  What is a state rather than an event (live connections, queued bytes) is not counted
at all.  :meth:`WebSocketHandler.stats` adds it all up when asked, walking the live connections
once, so keeping the numbers costs next to nothing between two scrapes.

:class:`HandlerStats` is the snapshot: frozen, made of ints and read-only mappings, safe to hand
to another task or thread, to log, or to serialize (:meth:`HandlerStats.to_dict`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from types import MappingProxyType
from typing import Any, Protocol

import attrs

__all__ = ["BackplaneStats", "Counters", "HandlerStats", "QueueFigures"]


class QueueFigures(Protocol):
    """What the numbers need of a connection's send queue (``_send_queue.SendQueue``)."""

    @property
    def queued_bytes(self) -> int: ...
    @property
    def writes(self) -> int: ...
    @property
    def written(self) -> int: ...
    @property
    def bytes_written(self) -> int: ...


class BackplaneFigures(Protocol):
    """What the numbers need of a backplane (``RedisBackplane``)."""

    @property
    def published(self) -> int: ...
    @property
    def received(self) -> int: ...
    @property
    def lost(self) -> int: ...
    @property
    def reconnects(self) -> int: ...
    @property
    def connected(self) -> bool: ...


#: the fields of :class:`Counters` that are plain ints, in the order of :class:`HandlerStats`
_INT_COUNTERS = (
    "upgrades",
    "messages_received",
    "bytes_received",
    "messages_sent",
    "broadcasts",
    "publishes",
    "dropped_messages",
    "slow_consumer_closes",
    "send_timeouts",
    "heartbeat_timeouts",
    "idle_timeouts",
    "rate_limited",
    "rate_dropped",
    "errors_reported",
)
#: what ended connections wrote: their queues' ``writes``, ``written``, ``bytes_written``
_RETIRED = ("retired_writes", "retired_frames", "retired_bytes")
#: the fields of :class:`Counters` that count by a code (HTTP status or close code)
_CODE_COUNTERS = ("refused", "close_codes_sent", "close_codes_received", "protocol_errors")
#: the counters of topic history (see :class:`HandlerStats`); ``recovery_failures`` by reason
_HISTORY = (
    "history_publications",
    "recoveries",
    "recoveries_succeeded",
    "history_gaps_repaired",
    "history_gaps_closed",
)


#: the fields of :class:`Counters` that count by a name (a reason)
_BY_NAME = ("recovery_failures", "cap_refusals", "limit_closes")


class Counters:
    """The live counters of one handler (see :class:`HandlerStats` for what each one counts).

    Mutable and unsynchronized on purpose: the event loop is the only writer.  Code outside
    the package reads them through :meth:`WebSocketHandler.stats`.
    """

    __slots__ = (
        *_INT_COUNTERS,
        *_CODE_COUNTERS,
        *_RETIRED,
        *_HISTORY,
        *_BY_NAME,
        "rate_delay_seconds",
    )

    def __init__(self) -> None:
        self.upgrades = 0
        self.messages_received = 0
        self.bytes_received = 0
        self.messages_sent = 0
        self.broadcasts = 0
        self.publishes = 0
        self.dropped_messages = 0
        self.slow_consumer_closes = 0
        self.send_timeouts = 0
        self.heartbeat_timeouts = 0
        self.idle_timeouts = 0
        self.rate_limited = self.rate_dropped = self.errors_reported = 0
        self.rate_delay_seconds = 0.0
        self.refused: dict[int, int] = {}
        self.close_codes_sent: dict[int, int] = {}
        self.close_codes_received: dict[int, int] = {}
        self.protocol_errors: dict[int, int] = {}
        self.retired_writes = self.retired_frames = self.retired_bytes = 0
        self.history_publications = self.recoveries = self.recoveries_succeeded = 0
        self.history_gaps_repaired = self.history_gaps_closed = 0
        self.recovery_failures: dict[str, int] = {}
        self.cap_refusals: dict[str, int] = {}
        self.limit_closes: dict[str, int] = {}

    def count_cap(self, reason: str) -> None:
        """A handshake refused by a cap (``reason``: address, attempts or user)."""
        self.cap_refusals[reason] = self.cap_refusals.get(reason, 0) + 1

    def closed_by_limit(self, reason: str) -> None:
        """A connection closed (1008) by a rate limit ("rate") or its error budget ("errors")."""
        self.limit_closes[reason] = self.limit_closes.get(reason, 0) + 1

    def recovery_failed(self, reason: str) -> None:
        """A subscription from a position did not recover (``reason``: epoch, too_old,
        too_many, or overrun: the topic outran the replay)."""
        self.recovery_failures[reason] = self.recovery_failures.get(reason, 0) + 1

    def response(self, status: int) -> None:
        """The handler's answer to an HTTP request went out: 101 is an upgrade."""
        if status == 101:
            self.upgrades += 1
        else:
            self.refused[status] = self.refused.get(status, 0) + 1

    def retire(self, queue: QueueFigures) -> None:
        """A connection ended: add what its queue wrote to the totals (a live connection's
        writes are counted on its queue, and added up by ``HandlerStats.take``)."""
        self.retired_writes += queue.writes
        self.retired_frames += queue.written
        self.retired_bytes += queue.bytes_written

    @staticmethod
    def count(by_code: dict[int, int], code: int) -> None:
        """Count one ``code`` in one of the by-code counters."""
        by_code[code] = by_code.get(code, 0) + 1


def _frozen_codes(value: Mapping[int, int]) -> Mapping[int, int]:
    return MappingProxyType({int(k): int(v) for k, v in sorted(value.items())})


@attrs.frozen
class BackplaneStats:
    """The counters of a handler's :class:`~trio_wshandler.RedisBackplane` at one moment."""

    #: messages this process sent to Redis
    published: int
    #: messages from other processes delivered to this one's clients
    received: int
    #: messages that could not reach other processes (Redis lost, outbox full)
    lost: int
    #: times the connection to Redis was lost and made again
    reconnects: int
    #: Redis is reachable now
    connected: bool

    @classmethod
    def of(cls, backplane: BackplaneFigures) -> BackplaneStats:
        return cls(
            published=backplane.published,
            received=backplane.received,
            lost=backplane.lost,
            reconnects=backplane.reconnects,
            connected=backplane.connected,
        )


@attrs.frozen
class HandlerStats:
    """What one handler has done since it was made, and its state now (``handler.stats()``).

    Counters only grow (a restarted process starts again from zero, which Prometheus reads as a
    counter reset); ``connections``, ``queued_bytes`` and ``largest_queue_bytes`` are the state
    at the moment of the snapshot.  Byte counts are WebSocket bytes (frames as written and read,
    after compression and before TLS).
    """

    #: the handler's ``name`` (the ``handler`` label of its Prometheus metrics)
    name: str
    #: live connections now
    connections: int
    #: upgrades accepted (101 sent)
    upgrades: int
    #: HTTP requests the handler answered with anything but 101, by status (403 origin, 401
    #: authentication, 503 full or stopped, 400/405/426 not a valid upgrade, ...)
    refused: Mapping[int, int]
    #: whole data messages handed to ``got_message`` (or assembled from raw frames)
    messages_received: int
    #: bytes read from clients after their upgrade (frames as received, compressed or not)
    bytes_received: int
    #: data messages queued for clients: a broadcast to 1,000 clients counts 1,000; a message
    #: refused by a full queue or a closing connection is not counted
    messages_sent: int
    #: bytes written to clients (every frame, control frames too)
    bytes_sent: int
    #: ``send_all`` calls made in this process
    broadcasts: int
    #: ``publish`` calls made in this process
    publishes: int
    #: batches of queued frames written together (one ``write`` when the socket takes them)
    writes: int
    #: frames in those batches (``frames_written / writes`` is the coalescing achieved)
    frames_written: int
    #: bytes queued and not yet written, over all connections, now
    queued_bytes: int
    #: the largest of those queues, now
    largest_queue_bytes: int
    #: messages dropped because a client's queue was full (``slow_consumer="drop"``)
    dropped_messages: int
    #: connections closed (1013) because their queue was full (``slow_consumer="close"``)
    slow_consumer_closes: int
    #: connections dropped because their socket took no byte for ``send_timeout``
    send_timeouts: int
    #: Close frames sent, by close code
    close_codes_sent: Mapping[int, int]
    #: Close frames received, by close code (1005: a Close without a code)
    close_codes_received: Mapping[int, int]
    #: connections failed because the client broke the protocol or a limit, by the close code
    #: sent (1002 protocol, 1007 invalid data, 1009 too big)
    protocol_errors: Mapping[int, int]
    #: connections closed (1011) because a heartbeat Ping got no Pong within ``pong_timeout``
    heartbeat_timeouts: int
    #: connections closed (1001) by ``idle_timeout``
    idle_timeouts: int
    #: the backplane's counters, or None without one
    backplane: BackplaneStats | None = None
    #: publications kept in a topic's history (``history=``)
    history_publications: int = 0
    #: subscriptions from a position (``subscribe_from`` with ``since``)
    recoveries: int = 0
    #: those that replayed the whole gap
    recoveries_succeeded: int = 0
    #: those that did not, by reason: "epoch" (another history), "too_old" (the gap is no longer
    #: kept), "too_many" (longer than ``max_recover``), "overrun" (the topic outran the replay:
    #: closed with 1013)
    recovery_failures: Mapping[str, int] = attrs.field(factory=lambda: MappingProxyType({}))
    #: with the Redis backplane: publications lost between Redis and this process, read from
    #: the topic's stream and delivered in order (counted per repair)
    history_gaps_repaired: int = 0
    #: gaps that could not be repaired (no longer kept, or a new epoch): the topic's
    #: subscribers here were closed with 1013
    history_gaps_closed: int = 0
    #: handshakes refused (429) by a cap (``caps=``), by reason: "address" (connections per
    #: address), "attempts" (upgrade attempts per address), "user" (connections per user)
    cap_refusals: Mapping[str, int] = attrs.field(factory=lambda: MappingProxyType({}))
    #: data messages that found a rate limit's bucket empty at their first frame
    #: (``rate_limits=``; under "delay" each one waited, under "drop" and "close" it was
    #: refused)
    rate_limited: int = 0
    #: messages discarded by a rate limit (``policy="drop"``)
    rate_dropped: int = 0
    #: seconds readers waited for tokens (``policy="delay"``), all connections together
    rate_delay_seconds: float = 0.0
    #: errors the application reported (``WebSocketConnection.report_error``)
    errors_reported: int = 0
    #: connections closed (1008) by a limit, by reason: "rate" (``policy="close"``), "errors"
    #: (the error budget)
    limit_closes: Mapping[str, int] = attrs.field(factory=lambda: MappingProxyType({}))

    @property
    def frames_per_write(self) -> float:
        """Frames written per write on average (0.0 before the first write)."""
        return self.frames_written / self.writes if self.writes else 0.0

    @classmethod
    def take(
        cls,
        name: str,
        counters: Counters,
        queues: Iterable[QueueFigures],
        backplane: BackplaneFigures | None,
    ) -> HandlerStats:
        """The snapshot of ``counters`` and of the live connections' ``queues`` (walked once)."""
        live = queued = largest = 0
        writes, frames, sent = (
            counters.retired_writes,
            counters.retired_frames,
            counters.retired_bytes,
        )
        for queue in queues:
            live += 1
            size = queue.queued_bytes
            queued += size
            largest = max(largest, size)
            writes += queue.writes
            frames += queue.written
            sent += queue.bytes_written
        values: dict[str, Any] = {field: getattr(counters, field) for field in _INT_COUNTERS}
        for field in _CODE_COUNTERS:
            values[field] = _frozen_codes(getattr(counters, field))
        for field in _HISTORY:
            values[field] = getattr(counters, field)
        for field in _BY_NAME:
            values[field] = MappingProxyType(dict(sorted(getattr(counters, field).items())))
        return cls(
            name=name,
            connections=live,
            queued_bytes=queued,
            largest_queue_bytes=largest,
            writes=writes,
            frames_written=frames,
            bytes_sent=sent,
            backplane=None if backplane is None else BackplaneStats.of(backplane),
            rate_delay_seconds=counters.rate_delay_seconds,
            **values,
        )

    def to_dict(self) -> dict[str, Any]:
        """Plain data (str keys, numbers and bools) for JSON; :meth:`from_dict` reads it back."""
        data = attrs.asdict(self, recurse=False)
        for field in _CODE_COUNTERS:
            data[field] = {str(code): n for code, n in data[field].items()}
        data["backplane"] = None if self.backplane is None else attrs.asdict(self.backplane)
        for field in _BY_NAME:
            data[field] = dict(getattr(self, field))
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> HandlerStats:
        """The snapshot :meth:`to_dict` gave (fields it does not know are ignored)."""
        known = {field.name for field in attrs.fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        for field in _CODE_COUNTERS:
            values[field] = _frozen_codes({int(k): v for k, v in values[field].items()})
        for field in _BY_NAME:
            values[field] = MappingProxyType(dict(values.get(field, {})))
        if values.get("backplane") is not None:
            values["backplane"] = BackplaneStats(**values["backplane"])
        return cls(**values)
