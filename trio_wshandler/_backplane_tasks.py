"""The tasks of a running backplane (``_backplane.py``): publisher and subscriber (the
heartbeat and presence are ``_presence.py``).

They run in one nursery (the server's, through ``RedisBackplane.run``):

* the **publisher** sends the outbox to Redis, up to ``batch`` commands per pipelined round
  trip; a failed or timed-out round trip counts its messages as lost and marks Redis down;
* the **subscriber** keeps one pub/sub connection subscribed to this node's channels (the fixed
  ones and the topics with local subscribers) and delivers the other processes' messages
  locally.  After a failure, or when the heartbeat declares Redis lost, it drops that
  connection and opens a new one once Redis answers again, subscribed to the channels of that
  moment.  (coredis could retry by itself, but a subscription waiting on a dead connection
  tells nobody.)  A second task applies topic changes in batches.

Errors from Redis, the network or a closed connection mean "Redis is lost"; anything else is
a bug and is raised (it ends ``serve()``, as Trio wants errors to surface).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import trio

from ._backplane import _PUBLISH, _SADD, _SREM, envelope_of
from ._backplane_wire import Envelope, Kind
from ._presence import Presence, redis_errors

if TYPE_CHECKING:
    from ._backplane import RedisBackplane
    from ._handler import WebSocketHandler

__all__ = ["BackplaneTasks"]

#: Channels per SUBSCRIBE command (coredis waits a second for the acknowledgements of one).
SUBSCRIBE_CHUNK = 256

#: Most messages from Redis delivered in one task step (those already waiting are taken
#: together, so that their frames join in one write per client).
DRAIN_MAX = 256


def _first(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The first exception at the bottom of a group (to say what went wrong)."""
    exc: BaseException = group
    while isinstance(exc, BaseExceptionGroup):
        exc = exc.exceptions[0]
    return exc


class BackplaneTasks:
    """The publisher and the subscriber of one running backplane."""

    def __init__(self, backplane: RedisBackplane, handler: WebSocketHandler, client: Any) -> None:
        self.bp = backplane
        self.handler = handler
        self.client = client
        self.errors = redis_errors()
        self.presence = Presence(backplane, handler, client, self.down)
        self.stopping = False
        self._subscriber_scope: trio.CancelScope | None = None

    async def run(self, task_status: trio.TaskStatus[None]) -> None:
        async with trio.open_nursery() as nursery:
            await nursery.start(self._subscriber)
            await self.presence.start()
            nursery.start_soon(self._publisher)
            nursery.start_soon(self.presence.heartbeat)
            task_status.started()
            try:
                await trio.sleep_forever()
            finally:
                self.stopping = self.presence.stopping = True
                with trio.CancelScope(shield=True) as scope:
                    scope.deadline = trio.current_time() + 1.0
                    await self.presence.withdraw()

    def down(self, exc: BaseException) -> None:
        """Redis is lost: say so once, drop the pub/sub connection (the subscriber opens a new
        one when the heartbeat finds Redis again)."""
        bp = self.bp
        if self._subscriber_scope is not None:
            self._subscriber_scope.cancel()
        if bp._up.is_set():
            bp._up = trio.Event()
            if not self.stopping:
                bp.logger.warning(
                    "backplane %s: Redis unreachable (%s); local delivery goes on, messages"
                    " for other processes are dropped until it is back",
                    bp.safe_url,
                    str(exc) or type(exc).__name__,
                )

    # ---------------------------------------------------------------- publishing

    async def _publisher(self) -> None:
        bp = self.bp
        outbox = bp._outbox
        while True:
            if not outbox:
                bp._wake = trio.Event()
                await bp._wake.wait()
            batch = [outbox.popleft() for _ in range(min(bp.batch, len(outbox)))]
            bp._pending_bytes -= sum(len(value) for _, _, value in batch)
            messages = sum(1 for op, _, _ in batch if op == _PUBLISH)
            ttl = int(bp.presence_ttl) + 1
            try:
                with trio.fail_after(bp.command_timeout):
                    async with self.client.pipeline(transaction=False) as pipe:
                        for op, name, value in batch:
                            if op == _PUBLISH:
                                pipe.publish(name, value)
                            elif op == _SADD:
                                pipe.sadd(name, [value])
                                pipe.expire(name, ttl)  # a set made anew has no expiry yet
                            elif op == _SREM:
                                pipe.srem(name, [value])
            except self.errors as exc:
                self.down(exc)
                lost = messages + sum(1 for op, _, _ in outbox if op == _PUBLISH)
                outbox.clear()
                bp._pending_bytes = 0
                if lost:
                    bp._count_lost(lost)
                continue
            bp.published += messages
            bp.round_trips += 1

    # ---------------------------------------------------------------- receiving

    async def _subscriber(self, task_status: trio.TaskStatus[None]) -> None:
        bp = self.bp
        delay = 0.05
        started = False
        while True:
            pubsub = self.client.pubsub(ignore_subscribe_messages=True, retry_policy=None)
            try:
                with trio.CancelScope() as self._subscriber_scope:
                    async with pubsub, trio.open_nursery() as nursery:
                        bp._subscriptions.clear()  # the channels of this moment, below
                        channels = self._channels()
                        for i in range(0, len(channels), SUBSCRIBE_CHUNK):
                            await pubsub.subscribe(*channels[i : i + SUBSCRIBE_CHUNK])
                        bp._pubsub = pubsub
                        delay = 0.05
                        nursery.start_soon(self._subscriptions, pubsub)
                        if not started:
                            task_status.started()
                            started = True
                        await self._receive(pubsub)
                        nursery.cancel_scope.cancel()
            except* self.errors as group:
                if not started:
                    raise
                if not self.stopping:
                    self.down(_first(group))
            finally:
                self._subscriber_scope = None
                bp._pubsub = None
            await trio.sleep(delay)
            delay = min(delay * 2, bp.reconnect_max)
            await bp._up.wait()  # the heartbeat tells when Redis answers again

    def _channels(self) -> list[str]:
        names, bp = self.bp.names, self.bp
        channels = [names.all, names.presence, names.node(bp.node_id)]
        return channels + [names.topic(t) for t in self.handler.topics()]

    async def _receive(self, pubsub: Any) -> None:
        """Deliver what the pub/sub connection brings.

        coredis hands messages over one per pass of the event loop; the ones already waiting
        are taken at once too (up to ``DRAIN_MAX``), so that a burst from another process is
        queued on each client together and written with one write per client, as a local
        burst is, instead of one write per message.
        """
        import anyio

        waiting: Any = getattr(pubsub, "_receive_stream", None)  # coredis's hand-over stream
        async for message in pubsub:
            self._message(message)
            for _ in range(DRAIN_MAX if waiting is not None else 0):
                try:
                    message = waiting.receive_nowait()
                except anyio.WouldBlock:
                    break
                self._message(message)

    def _message(self, message: Any) -> None:
        if not message or message.get("type") != "message":
            return
        envelope = envelope_of(message["data"])
        if envelope is None or envelope.node == self.bp.node_id:
            return  # not ours, or our own (delivered locally already)
        self._deliver(envelope)

    def _deliver(self, envelope: Envelope) -> None:
        bp, handler = self.bp, self.handler
        kind = envelope.kind
        if kind == Kind.JOIN or kind == Kind.LEAVE:
            self.presence.change(kind == Kind.JOIN, envelope.target, envelope.node)
            return
        if kind == Kind.STOP:
            code = envelope.opcode
            if not (code in _STOP_CODES or 3000 <= code <= 4999):
                bp.logger.warning(
                    "backplane: STOP with invalid code %d from %s", code, envelope.node
                )
                return
        elif envelope.opcode not in (1, 2):  # only Text and Binary messages cross
            bp.logger.warning(
                "backplane: message with opcode %d from %s", envelope.opcode, envelope.node
            )
            return
        if kind == Kind.ALL:
            handler._fanout.send_payload(handler._registry, envelope.payload, envelope.opcode)
        elif kind == Kind.TOPIC:
            subscribers = handler._topics.subscribers(envelope.target)
            handler._fanout.send_payload(subscribers, envelope.payload, envelope.opcode)
        elif envelope.target not in handler._registry:
            bp.misses += 1  # ONE or STOP for a connection that has ended here
            return
        elif kind == Kind.ONE:
            connection = handler._registry.get(envelope.target)
            handler._fanout.send_payload([connection], envelope.payload, envelope.opcode)
        else:
            connection = handler._registry.get(envelope.target)
            connection.stop(envelope.opcode, envelope.payload.decode("utf-8", "replace")[:100])
        bp.received += 1

    async def _subscriptions(self, pubsub: Any) -> None:
        """Apply topic changes, batched: one SUBSCRIBE and one UNSUBSCRIBE per round.  A
        failure fails the pub/sub connection (the subscriber starts a new one)."""
        bp = self.bp
        changes = bp._subscriptions
        while True:
            if not changes:
                bp._subscriptions_wake = trio.Event()
                await bp._subscriptions_wake.wait()
            wanted: dict[str, bool] = {}
            while changes:
                subscribe, channel = changes.popleft()
                wanted[channel] = subscribe
            adds = [c for c, subscribe in wanted.items() if subscribe]
            removes = [c for c, subscribe in wanted.items() if not subscribe]
            for i in range(0, len(adds), SUBSCRIBE_CHUNK):
                await pubsub.subscribe(*adds[i : i + SUBSCRIBE_CHUNK])
            if removes:
                await pubsub.unsubscribe(*removes)


#: Close codes a peer process may ask for (as ``validate_close_code``), besides 3000-4999.
_STOP_CODES = frozenset({1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014})
