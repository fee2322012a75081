"""Where connections subscribe to topics: the handler's map from topic to subscribers.

A topic is a name (any non-empty ``str`` of at most ``MAX_TOPIC_LENGTH`` characters) that
connections subscribe to; :meth:`WebSocketHandler.publish` sends a message to its subscribers
only.  Each topic maps to an insertion-ordered dict of its connections, so publishing costs in
proportion to the topic's subscribers, not to all connections, and subscribing or leaving is one
dict operation.  A connection keeps the set of its own topics (``_core.ConnectionCore.topics``,
made on its first subscription: a connection without topics pays one empty slot) so that it
leaves them all when it ends.
"""

from __future__ import annotations

from collections.abc import Callable, Collection

from ._fanout import Recipient

__all__ = ["MAX_TOPIC_LENGTH", "TopicMap", "check_topic"]

#: Longest topic name, in characters (a topic is also a Redis channel name with a backplane).
MAX_TOPIC_LENGTH = 1024

_EMPTY: dict[Recipient, None] = {}


def check_topic(topic: object) -> str:
    if not isinstance(topic, str):
        raise TypeError(f"a topic is a str, not {type(topic).__name__}")
    if not 0 < len(topic) <= MAX_TOPIC_LENGTH:
        raise ValueError(f"a topic has 1 to {MAX_TOPIC_LENGTH} characters, got {len(topic)}")
    try:
        topic.encode("utf-8")  # a lone surrogate (JSON can carry one) is no channel name
    except UnicodeEncodeError:
        raise ValueError("a topic must be valid Unicode (no lone surrogates)") from None
    return topic


class TopicMap:
    """Topic -> its subscribed connections, in subscription order.

    ``on_first`` and ``on_last`` (set by a backplane) are called when a topic gains its first
    subscriber in this process and loses its last one.  A topic may also be *held* without
    subscribers (:meth:`hold`): a connection that replays a topic's history before it joins
    the live feed needs the process to receive the topic meanwhile.
    """

    __slots__ = ("_held", "_subscribers", "on_first", "on_last")

    def __init__(self) -> None:
        self._subscribers: dict[str, dict[Recipient, None]] = {}
        self._held: dict[str, int] = {}
        self.on_first: Callable[[str], None] | None = None
        self.on_last: Callable[[str], None] | None = None

    def watch(self, on_first: Callable[[str], None], on_last: Callable[[str], None]) -> None:
        """Call ``on_first(topic)`` when a topic gains its first subscriber, ``on_last(topic)``
        when it loses its last one (a backplane follows the topics of this process)."""
        self.on_first, self.on_last = on_first, on_last

    def add(self, topic: str, connection: Recipient) -> None:
        subscribers = self._subscribers.get(topic)
        if subscribers is None:
            subscribers = self._subscribers[topic] = {}
            if self.on_first is not None and topic not in self._held:
                self.on_first(topic)
        subscribers[connection] = None

    def discard(self, topic: str, connection: Recipient) -> None:
        subscribers = self._subscribers.get(topic)
        if subscribers is None or subscribers.pop(connection, _EMPTY) is _EMPTY:
            return
        if not subscribers:
            del self._subscribers[topic]
            if self.on_last is not None and topic not in self._held:
                self.on_last(topic)

    def hold(self, topic: str) -> None:
        """Keep ``topic`` as if it had a subscriber until as many :meth:`release` calls."""
        held = self._held.get(topic, 0)
        self._held[topic] = held + 1
        if not held and topic not in self._subscribers and self.on_first is not None:
            self.on_first(topic)

    def release(self, topic: str) -> None:
        held = self._held[topic] - 1
        if held:
            self._held[topic] = held
            return
        del self._held[topic]
        if topic not in self._subscribers and self.on_last is not None:
            self.on_last(topic)

    def followed(self, topic: str) -> bool:
        """``topic`` has a subscriber here, or is held."""
        return topic in self._subscribers or topic in self._held

    def subscribers(self, topic: str) -> Collection[Recipient]:
        """The connections subscribed to ``topic`` (a live view: iterate without awaiting)."""
        return self._subscribers.get(topic, _EMPTY).keys()

    def size(self, topic: str) -> int:
        return len(self._subscribers.get(topic, _EMPTY))

    def topics(self) -> list[str]:
        """The topics with at least one subscriber in this process."""
        return list(self._subscribers)

    def followed_topics(self) -> list[str]:
        """The topics with at least one subscriber in this process, or held."""
        return list(self._subscribers.keys() | self._held.keys())
