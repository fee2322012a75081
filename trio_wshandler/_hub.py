"""What a handler shares with its connections and its backplane, and where messages go.

A :class:`~trio_wshandler.WebSocketHandler` makes one :class:`Hub`: the registry of its live
connections, the topics they subscribe to, the fan-out that encodes a message once for all of
them, the counters of ``stats()``, and the route to other processes.  Every connection's state
(``_core.ConnectionCore``) keeps the hub it belongs to, and a backplane delivers what other
processes send through it (:meth:`Hub.deliver`).

Routing is one step: a message for many clients is queued on this process's connections by
fan-out and handed to the :class:`Remote` (:data:`NO_REMOTE` without a backplane, which carries
nothing; a ``RedisBackplane`` otherwise) for the other processes.  Nothing here awaits.
"""

from __future__ import annotations

from typing import Any, Protocol, cast

import trio

from ._backplane_wire import Envelope, Kind, history_parts
from ._errors import UnknownConnectionError
from ._extensions import DeflateOptions
from ._fanout import FanOut
from ._history import ProcessHistory
from ._history_feed import SharedHistory
from ._history_reads import HistoryLink
from ._options import ConnectionLimits, RateLimits
from ._recovery import HistorySource, LocalHistory
from ._registry import ConnectionRegistry
from ._stats import Counters
from ._topics import TopicMap
from .codec import DataLike, message_payload

__all__ = ["NO_REMOTE", "Backplane", "ConnectionHost", "Hub", "Remote"]


class ConnectionHost(Protocol):
    """What a connection needs of its handler; read when needed, so that a changed setting
    applies to live connections."""

    @property
    def limits(self) -> ConnectionLimits: ...
    @property
    def close_timeout(self) -> float: ...
    @property
    def send_timeout(self) -> float | None: ...
    @property
    def slow_consumer(self) -> str: ...
    @property
    def heartbeat(self) -> float | None: ...
    @property
    def heartbeat_message(self) -> bytes: ...
    @property
    def idle_timeout(self) -> float | None: ...
    @property
    def pong_timeout(self) -> float: ...
    @property
    def compression(self) -> DeflateOptions | None: ...
    @property
    def rate_limits(self) -> RateLimits | None: ...
    @property
    def stopped(self) -> bool: ...
    @property
    def stopping_with(self) -> tuple[int, str]:
        """The Close of a stopped handler (code, reason)."""

    async def deregister_connection(self, connection: Any) -> None: ...

    def log_debug(self, msg: str, *args: object, **kwargs: Any) -> None: ...

    def log_info(self, msg: str, *args: object, **kwargs: Any) -> None: ...

    def log_warning(self, msg: str, *args: object, **kwargs: Any) -> None: ...

    def log_error(self, msg: str, *args: object, **kwargs: Any) -> None: ...


class Remote(Protocol):
    """Where messages for the clients of other processes go."""

    def publish_all(self, payload: bytes, opcode: int) -> None: ...

    def publish_topic(self, topic: str, payload: bytes, opcode: int) -> None: ...

    def send_to(self, cid: str, payload: bytes, opcode: int) -> None:
        """:raises UnknownConnectionError: no other process holds ``cid``."""

    def stop_remote(self, cid: str, code: int, reason: str) -> None:
        """:raises UnknownConnectionError: no other process holds ``cid``."""


class _NoRemote:
    """The route of a handler without a backplane: there are no other processes."""

    def publish_all(self, payload: bytes, opcode: int) -> None:
        pass

    def publish_topic(self, topic: str, payload: bytes, opcode: int) -> None:
        pass

    def send_to(self, cid: str, payload: bytes, opcode: int) -> None:
        raise UnknownConnectionError(cid)

    def stop_remote(self, cid: str, code: int, reason: str) -> None:
        raise UnknownConnectionError(cid)


NO_REMOTE: Remote = _NoRemote()


class Backplane(Remote, HistoryLink, Protocol):
    """A route to other processes that follows this one's connections and topics (a
    ``RedisBackplane``): it delivers what they send here through :meth:`Hub.deliver`."""

    def attach(self, hub: Hub) -> None: ...

    def joined(self, cid: str) -> None: ...

    def left(self, cid: str) -> None: ...

    def topic_added(self, topic: str) -> None: ...

    def topic_removed(self, topic: str) -> None: ...


class Hub:
    """A handler's connections, topics, fan-out, counters and route."""

    __slots__ = (
        "counters",
        "fanout",
        "history",
        "host",
        "registry",
        "remote",
        "shared",
        "source",
        "topics",
    )

    def __init__(self, host: ConnectionHost, compression: DeflateOptions | None) -> None:
        #: the handler (its settings and hooks)
        self.host = host
        self.counters = Counters()
        self.fanout = FanOut(compression, self.counters)
        self.registry: ConnectionRegistry[Any] = ConnectionRegistry()
        self.topics = TopicMap()
        self.remote = NO_REMOTE
        #: the topics' history options and, without a backplane, their rings (``history=``)
        self.history: ProcessHistory | None = None
        #: with a backplane and a history: the topics' histories as kept in Redis
        self.shared: SharedHistory | None = None
        #: where a subscription from a position reads (None: no history)
        self.source: HistorySource | None = None

    def keep_history(self, history: ProcessHistory) -> None:
        """Keep the history of the topics ``history`` has options for (before serving): in
        this process, or in Redis once a backplane is connected."""
        self.history = history
        self.source = LocalHistory(history)
        if self.remote is not NO_REMOTE:
            self._share_history()

    def connect(self, backplane: Backplane) -> None:
        """Route to other processes through ``backplane`` from now on; it learns of the
        connections and topics of this process as they come and go."""
        backplane.attach(self)
        self.remote = backplane
        self.registry.watch(backplane.joined, backplane.left)
        self.topics.watch(backplane.topic_added, self._topic_removed)
        if self.history is not None:
            self._share_history()

    def _share_history(self) -> None:
        assert self.history is not None
        shared = SharedHistory(
            self.history,
            self.topics,
            self.fanout,
            self.counters,
            self.host.log_warning,
            self.host.log_error,
        )
        shared.link = cast(Backplane, self.remote)
        self.shared = self.source = shared

    def _topic_removed(self, topic: str) -> None:
        cast(Backplane, self.remote).topic_removed(topic)
        if self.shared is not None:
            self.shared.forget(topic)

    # ---------------------------------------------------------------- routing

    def send_all(self, data: DataLike) -> int:
        """Every connection here, and every other process's; how many took it here."""
        payload, opcode = message_payload(data)
        self.remote.publish_all(payload, opcode)
        return self.fanout.send_payload(self.registry.entries(), payload, opcode)

    def publish(self, topic: str, data: DataLike) -> int:
        """The subscribers of ``topic`` here and in every other process; how many here.  On a
        topic with history, the message is kept and sent in its envelope."""
        payload, opcode = message_payload(data)
        if self.shared is not None:
            if self.shared.publish(topic, opcode, payload):
                # numbered by Redis, delivered here too when it comes back from there
                return self.topics.size(topic)
        elif self.history is not None:
            kept = self.history.publish(
                topic, data if isinstance(data, str) else payload, trio.current_time
            )
            if kept is not None:
                self.counters.history_publications += 1
                payload, opcode = message_payload(kept.data)
        self.remote.publish_topic(topic, payload, opcode)
        return self.fanout.send_payload(self.topics.subscribers(topic), payload, opcode)

    def send_one(self, cid: str, data: DataLike) -> None:
        """The connection ``cid``, here or (:raises UnknownConnectionError: nowhere) elsewhere."""
        if cid in self.registry:
            self.registry.get(cid).send(data)
            return
        payload, opcode = message_payload(data)
        self.remote.send_to(cid, payload, opcode)

    def stop_one(self, cid: str, code: int, reason: str) -> None:
        """Close connection ``cid``, here or elsewhere (``code`` already checked)."""
        if cid in self.registry:
            self.registry.get(cid).stop(code, reason)
            return
        self.remote.stop_remote(cid, code, reason)

    # ---------------------------------------------------------------- from other processes

    def deliver(self, envelope: Envelope) -> bool:
        """A message from another process (checked by the backplane): deliver it to the
        connections here that it is for, encoded once; False for a ``send_one`` or
        ``stop_one`` whose connection is no longer here."""
        kind = envelope.kind
        registry = self.registry
        if kind == Kind.ALL:
            self.fanout.send_payload(registry.entries(), envelope.payload, envelope.opcode)
        elif kind == Kind.TOPIC:
            subscribers = self.topics.subscribers(envelope.target)
            self.fanout.send_payload(subscribers, envelope.payload, envelope.opcode)
        elif kind == Kind.HISTORY:
            parts = history_parts(envelope.payload, envelope.opcode)
            if parts is None or self.shared is None:
                return True  # damaged, or this handler keeps no history
            self.shared.received(envelope.target, *parts)
        elif envelope.target not in registry:
            return False
        elif kind == Kind.ONE:
            entry = registry.entry(envelope.target)
            self.fanout.send_payload([entry], envelope.payload, envelope.opcode)
        else:
            reason = envelope.payload.decode("utf-8", "replace")[:100]
            registry.get(envelope.target).stop(envelope.opcode, reason)
        return True

    def connection_ids(self) -> list[str]:
        return self.registry.ids()

    def topic_names(self) -> list[str]:
        return self.topics.topics()

    def followed_topics(self) -> list[str]:
        """The topics this process receives from other processes (subscribed, or held)."""
        return self.topics.followed_topics()
