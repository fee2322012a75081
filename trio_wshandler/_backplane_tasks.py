"""The tasks of a running backplane (``_backplane.py``): publisher, subscriber, heartbeat.

They run in one nursery (the server's, through ``RedisBackplane.run``):

* the **publisher** sends the outbox to Redis, up to ``batch`` commands per pipelined round
  trip; a failed round trip counts its messages as lost and marks Redis down;
* the **subscriber** reads the pub/sub connection (coredis reconnects and resubscribes it by
  itself) and delivers the other processes' messages locally; a second task applies topic
  subscriptions as local topics gain their first subscriber or lose their last;
* the **heartbeat** refreshes this node's presence and reads the others' every ``heartbeat``
  seconds; while Redis is down it retries with backoff, then rewrites this node's presence.
"""

from __future__ import annotations

import math
import time
from typing import TYPE_CHECKING, Any

import trio

from ._backplane import _PUBLISH, _SADD, _SREM, _text, envelope_of, live_nodes
from ._backplane_wire import Envelope, Kind

if TYPE_CHECKING:
    from ._backplane import RedisBackplane
    from ._handler import WebSocketHandler

__all__ = ["BackplaneTasks"]

_REDIS_ERRORS: tuple[type[BaseException], ...] = (OSError, trio.TooSlowError)


def _first(group: BaseExceptionGroup[Exception]) -> BaseException:
    """The first exception at the bottom of a group (to say what went wrong)."""
    exc: BaseException = group
    while isinstance(exc, BaseExceptionGroup):
        exc = exc.exceptions[0]
    return exc


def _redis_errors() -> tuple[type[BaseException], ...]:
    import coredis.exceptions

    return (*_REDIS_ERRORS, coredis.exceptions.RedisError)


class BackplaneTasks:
    def __init__(self, backplane: RedisBackplane, handler: WebSocketHandler, client: Any) -> None:
        self.bp = backplane
        self.handler = handler
        self.client = client
        self.errors = _redis_errors()
        self.stopping = False

    async def run(self, task_status: trio.TaskStatus[None]) -> None:
        async with trio.open_nursery() as nursery:
            await nursery.start(self._subscriber)
            await self._write_presence()
            await self._read_presence()
            nursery.start_soon(self._publisher)
            nursery.start_soon(self._heartbeat)
            task_status.started()
            try:
                await trio.sleep_forever()
            finally:
                self.stopping = True
                with trio.CancelScope(shield=True) as scope:
                    scope.deadline = trio.current_time() + 1.0
                    await self._withdraw()

    # ---------------------------------------------------------------- publishing

    async def _publisher(self) -> None:
        bp = self.bp
        outbox = bp._outbox
        while True:
            if not outbox:
                bp._wake = trio.Event()
                await bp._wake.wait()
            batch = [outbox.popleft() for _ in range(min(bp.batch, len(outbox)))]
            messages = sum(1 for op, _, _ in batch if op == _PUBLISH)
            try:
                async with self.client.pipeline(transaction=False) as pipe:
                    for op, name, value in batch:
                        if op == _PUBLISH:
                            pipe.publish(name, value)
                        elif op == _SADD:
                            pipe.sadd(name, [value])
                        elif op == _SREM:
                            pipe.srem(name, [value])
            except self.errors as exc:
                self._down(exc)
                if messages:
                    bp._count_lost(messages)
                lost = sum(1 for op, _, _ in outbox if op == _PUBLISH)
                outbox.clear()
                if lost:
                    bp._count_lost(lost)
                continue
            bp.published += messages
            bp.round_trips += 1

    # ---------------------------------------------------------------- receiving

    async def _subscriber(self, task_status: trio.TaskStatus[None]) -> None:
        """Keep a pub/sub connection subscribed to this node's channels, and read it.

        A new pub/sub connection after each failure (coredis's own retries would keep a dead
        subscription waiting), subscribed to the channels of the moment: the fixed ones and
        the topics with local subscribers.  A failure at start is raised to ``run``.
        """
        bp = self.bp
        delay = 0.05
        started = False
        while True:
            pubsub = self.client.pubsub(ignore_subscribe_messages=True, retry_policy=None)
            try:
                async with pubsub, trio.open_nursery() as nursery:
                    bp._subscriptions.clear()  # the channels of the moment, below
                    await pubsub.subscribe(*self._channels())
                    bp._pubsub = pubsub
                    delay = 0.05
                    nursery.start_soon(self._subscriptions, pubsub)
                    if not started:
                        task_status.started()
                        started = True
                    await self._receive(pubsub)
                    nursery.cancel_scope.cancel()
            except* Exception as group:  # Cancelled is no Exception: it goes on up
                if not started:
                    raise
                if not self.stopping:  # (while stopping, coredis's teardown may fail)
                    self._down(_first(group))
            finally:
                bp._pubsub = None
            await trio.sleep(delay)
            delay = min(delay * 2, bp.reconnect_max)
            await bp._up.wait()  # the heartbeat tells when Redis answers again

    def _channels(self) -> list[str]:
        names, bp = self.bp.names, self.bp
        channels = [names.all, names.presence, names.node(bp.node_id)]
        return channels + [names.topic(t) for t in self.handler.topics()]

    async def _receive(self, pubsub: Any) -> None:
        async for message in pubsub:
            if message.get("type") != "message":
                continue
            envelope = envelope_of(message["data"])
            if envelope is None or envelope.node == self.bp.node_id:
                continue  # not ours, or our own (delivered locally already)
            try:
                self._deliver(envelope)
            except Exception:  # one bad message must not end the subscriber
                self.bp.logger.error("backplane: delivering %s failed", envelope, exc_info=True)

    def _deliver(self, envelope: Envelope) -> None:
        bp, handler = self.bp, self.handler
        kind = envelope.kind
        if kind == Kind.JOIN:
            bp._remote[envelope.target] = envelope.node
            return
        if kind == Kind.LEAVE:
            if bp._remote.get(envelope.target) == envelope.node:
                del bp._remote[envelope.target]
            return
        bp.received += 1
        if kind == Kind.ALL:
            handler._fanout.send_payload(handler._registry, envelope.payload, envelope.opcode)
        elif kind == Kind.TOPIC:
            subscribers = handler._topics.subscribers(envelope.target)
            handler._fanout.send_payload(subscribers, envelope.payload, envelope.opcode)
        elif envelope.target not in handler._registry:
            bp.misses += 1  # ONE or STOP for a connection that has ended here
        elif kind == Kind.ONE:
            handler._fanout.send_payload(
                [handler._registry.get(envelope.target)], envelope.payload, envelope.opcode
            )
        elif kind == Kind.STOP:
            connection = handler._registry.get(envelope.target)
            connection.stop(envelope.opcode, envelope.payload.decode("utf-8", "replace"))

    async def _subscriptions(self, pubsub: Any) -> None:
        bp = self.bp
        changes = bp._subscriptions
        while True:
            if not changes:
                bp._subscriptions_wake = trio.Event()
                await bp._subscriptions_wake.wait()
            subscribe, channel = changes.popleft()
            # a failure here fails the pub/sub connection: the subscriber starts a new one,
            # subscribed to the topics of that moment
            if subscribe:
                await pubsub.subscribe(channel)
            else:
                await pubsub.unsubscribe(channel)

    # ---------------------------------------------------------------- presence

    async def _heartbeat(self) -> None:
        bp = self.bp
        delay = 0.05
        while True:
            await trio.sleep(bp.heartbeat if bp._up.is_set() else delay)
            try:
                if not bp._up.is_set():
                    await self.client.ping()
                    await self._write_presence()
                    bp.reconnects += 1
                    bp._up.set()
                    delay = 0.05
                    bp.logger.warning("backplane %s: Redis reachable again", bp.safe_url)
                else:
                    await self._refresh_presence()
                await self._read_presence()
            except self.errors as exc:
                self._down(exc)
                delay = min(delay * 2, bp.reconnect_max)

    async def _write_presence(self) -> None:
        """This node's whole presence: its connection ids and its expiry."""
        bp = self.bp
        key = bp.names.connections(bp.node_id)
        cids = list(self.handler._registry.ids())
        async with self.client.pipeline(transaction=False) as pipe:
            pipe.delete([key])
            if cids:
                pipe.sadd(key, cids)
                pipe.expire(key, int(bp.presence_ttl) + 1)
            pipe.zadd(bp.names.nodes, {bp.node_id: time.time() + bp.presence_ttl})

    async def _refresh_presence(self) -> None:
        bp = self.bp
        now = time.time()
        async with self.client.pipeline(transaction=False) as pipe:
            pipe.zadd(bp.names.nodes, {bp.node_id: now + bp.presence_ttl})
            pipe.expire(bp.names.connections(bp.node_id), int(bp.presence_ttl) + 1)
            pipe.zremrangebyscore(bp.names.nodes, -math.inf, now)

    async def _read_presence(self) -> None:
        """Rebuild the map of the other nodes' connections from their sets."""
        bp = self.bp
        client = self.client
        nodes = await live_nodes(client, bp.names)
        others = [n for n in nodes if n != bp.node_id]
        async with client.pipeline(transaction=False) as pipe:
            members = [pipe.smembers(bp.names.connections(n)) for n in others]
        remote: dict[str, str] = {}
        for node, result in zip(others, members, strict=True):
            for cid in await result:
                remote[_text(cid)] = node
        bp._remote = remote

    async def _withdraw(self) -> None:
        """Stopping: leave the cluster's view at once (best effort, bounded by the caller)."""
        bp = self.bp
        if not bp._up.is_set():
            return
        try:
            async with self.client.pipeline(transaction=False) as pipe:
                pipe.zrem(bp.names.nodes, [bp.node_id])
                pipe.delete([bp.names.connections(bp.node_id)])
        except Exception:  # best effort: the presence expires anyway
            pass

    def _down(self, exc: BaseException) -> None:
        bp = self.bp
        if bp._up.is_set():
            bp._up = trio.Event()
            bp.logger.warning(
                "backplane %s: Redis unreachable (%s); local delivery goes on, messages for"
                " other processes are dropped until it is back",
                bp.safe_url,
                exc,
            )
