"""Where a connection speaks a ready-made JSON protocol for topics: subscribe (from a
position), unsubscribe, publish (where allowed).  For browsers and other clients that want
"give me what I missed, or tell me you can't" without writing a protocol of their own.

Commands are JSON text, one per message; every answer is JSON text with an ``"op"``:

* ``{"op": "subscribe", "topic": t, "since": {"offset": n, "epoch": e} | null}`` is answered
  ``{"op": "subscribed", "topic": t, "recovered": bool, "position": {"offset": n, "epoch":
  e}, "reason": r | null}`` and then the topic's envelopes (the replayed ones first).  On a topic
  without history ``position`` is null and ``since`` must be null.
* ``{"op": "unsubscribe", "topic": t}`` is answered ``{"op": "unsubscribed", "topic": t}``.
* ``{"op": "publish", "topic": t, "data": text}`` publishes, when
  :meth:`PubSubConnection.may_publish` allows it (by default nothing may be published); no
  answer but the envelope a subscriber gets.
* Anything else is answered ``{"op": "error", "error": why}`` (with the ``"topic"`` and the
  ``"command"`` when known), and the connection stays open: a client's mistake is its own.
"""

from __future__ import annotations

import json
from typing import Any

from ._connection import WebSocketConnection
from ._errors import ConnectionClosedError
from ._history import Position, Recovery
from ._recovery import subscribe_from
from ._topics import check_topic

__all__ = ["PubSubConnection"]


class PubSubConnection(WebSocketConnection):
    """A connection that speaks the JSON protocol of ``_pubsub.py`` (see the guide).

    Override :meth:`may_subscribe` and :meth:`may_publish` to decide per topic (the user is in
    ``self.cx.user`` when an authenticator set it); ``max_topics`` bounds the topics one
    connection may subscribe to.
    """

    #: the most topics one connection may be subscribed to (a client cannot make the server
    #: keep an unbounded set for it)
    max_topics = 100

    def may_subscribe(self, topic: str) -> bool:
        """Whether this connection may subscribe to ``topic``.  Default: yes."""
        return True

    def may_publish(self, topic: str, data: str) -> bool:
        """Whether this connection may publish ``data`` to ``topic``.  Default: no."""
        return False

    async def got_message(self, message: str | bytes) -> None:
        """A command: parsed and carried out, or answered with an error."""
        try:
            command = _parse(message)
        except ValueError as exc:
            self.send(_json({"op": "error", "error": str(exc)}))
            return
        op, topic = command["op"], command["topic"]
        try:
            check_topic(topic)
            if op == "subscribe":
                await self._pubsub_subscribe(topic, _position(command.get("since")))
            elif op == "unsubscribe":
                self.unsubscribe(topic)
                self.send(_json({"op": "unsubscribed", "topic": topic}))
            elif op == "publish":
                data = command.get("data")
                if not isinstance(data, str):
                    raise ValueError('publish needs a text "data"')
                if not self.may_publish(topic, data):
                    raise ValueError("publishing to this topic is not allowed")
                self.handler.publish(topic, data)
            else:
                raise ValueError(f"unknown op {op!r} (subscribe, unsubscribe, publish)")
        except (ValueError, TypeError) as exc:
            self.send(_json({"op": "error", "error": str(exc), "topic": topic, "command": op}))
        except ConnectionClosedError:
            return  # closing (a replay overtaken by its topic: 1013): nothing more to answer

    async def _pubsub_subscribe(self, topic: str, since: Position | None) -> None:
        if not self.may_subscribe(topic):
            raise ValueError("subscribing to this topic is not allowed")
        if topic not in self.topics and len(self.topics) >= self.max_topics:
            raise ValueError(f"at most {self.max_topics} topics per connection")
        core = self._core
        history = core.hub.history
        if history is None or history.options(topic) is None:
            if since is not None:
                raise ValueError('this topic keeps no history: subscribe with "since": null')
            self.subscribe(topic)
            self.send(_subscribed(topic, None))
            return

        def announce(recovery: Recovery) -> None:
            self.send(_subscribed(topic, recovery))

        await subscribe_from(core, core.hub.source, core.counters, topic, since, announce)


def _json(value: dict[str, Any]) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def _subscribed(topic: str, recovery: Recovery | None) -> str:
    answer: dict[str, Any] = {"op": "subscribed", "topic": topic, "recovered": False}
    if recovery is None:
        answer.update(position=None, reason=None)
    else:
        position = recovery.position
        answer.update(
            recovered=recovery.recovered,
            position={"offset": position.offset, "epoch": position.epoch},
            reason=recovery.reason,
        )
    return _json(answer)


def _parse(message: str | bytes) -> dict[str, Any]:
    if not isinstance(message, str):
        raise ValueError("commands are JSON text messages")
    try:
        command = json.loads(message)
    except (ValueError, RecursionError):  # RecursionError: nested deeper than Python parses
        raise ValueError("not JSON") from None
    if not isinstance(command, dict) or not isinstance(command.get("op"), str):
        raise ValueError('a command is a JSON object with an "op"')
    if not isinstance(command.get("topic"), str):
        raise ValueError('a command names its "topic" (a string)')
    return command


def _position(since: object) -> Position | None:
    if since is None:
        return None
    if (
        isinstance(since, dict)
        and isinstance(since.get("offset"), int)
        and not isinstance(since.get("offset"), bool)
        and isinstance(since.get("epoch"), str)
    ):
        return Position(since["offset"], since["epoch"])
    raise ValueError('"since" is {"offset": n, "epoch": e} or null')
