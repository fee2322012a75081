"""The tasks of a running backplane (``_backplane.py``): publisher and subscriber (the
heartbeat and presence are ``_presence.py``).

They run in one nursery (the server's, through ``RedisBackplane.run``) and work on the
backplane's state (``_backplane_core.BackplaneCore``) through its methods:

* the **publisher** sends the outbox to Redis, up to ``batch`` commands per pipelined round
  trip; a failed or timed-out round trip counts its messages as lost and marks Redis down;
* the **subscriber** keeps one pub/sub connection subscribed to this node's channels (the fixed
  ones and the topics with local subscribers) and delivers the other processes' messages
  locally, as coredis hands them over (a handler per channel, coredis's public API: no task
  switch per message).  After a failure, or when the heartbeat declares Redis lost, it drops
  that connection and opens a new one once Redis answers again, subscribed to the channels of
  that moment.  (coredis could retry by itself, but a subscription waiting on a dead
  connection tells nobody.)  A second task applies topic changes in batches.

Errors from Redis, the network or a closed connection mean "Redis is lost"; anything else is
a bug and is raised (it ends ``serve()``, as Trio wants errors to surface).
"""

from __future__ import annotations

from typing import Any

import trio

from ._backplane_core import BackplaneCore, BackplaneOptions
from ._backplane_wire import (
    PUBLISH,
    SADD,
    SREM,
    STORE,
    Envelope,
    Kind,
    encode,
    envelope_of,
    refusal,
)
from ._history_redis import PUBLISH_SCRIPT, PUBLISH_SHA, publish_args
from ._presence import Presence, redis_errors

__all__ = ["BackplaneTasks"]

#: Channels per SUBSCRIBE command (coredis waits a second for the acknowledgements of one).
SUBSCRIBE_CHUNK = 256


def _first(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The first exception at the bottom of a group (to say what went wrong)."""
    exc: BaseException = group
    while isinstance(exc, BaseExceptionGroup):
        exc = exc.exceptions[0]
    return exc


class BackplaneTasks:
    """The publisher and the subscriber of one running backplane."""

    def __init__(self, options: BackplaneOptions, core: BackplaneCore, client: Any) -> None:
        self.options = options
        self.core = core
        self.client = client
        self.errors = redis_errors()
        self.presence = Presence(options, core, client, self.down)
        self.stopping = False
        self._subscriber_scope: trio.CancelScope | None = None

    async def run(self, task_status: trio.TaskStatus[None]) -> None:
        async with trio.open_nursery() as nursery:
            await nursery.start(self._subscriber)
            await self.presence.start()
            nursery.start_soon(self._publisher)
            nursery.start_soon(self.presence.heartbeat)
            shared = self.core.hub.shared if self.core.hub is not None else None
            if shared is not None:
                nursery.start_soon(shared.run_repairs)
            task_status.started()
            try:
                await trio.sleep_forever()
            finally:
                self.stopping = True
                with trio.CancelScope(shield=True) as scope:
                    scope.deadline = trio.current_time() + 1.0
                    await self.presence.withdraw()

    def down(self, exc: BaseException) -> None:
        """Redis is lost: say so once, drop the pub/sub connection (the subscriber opens a new
        one when the heartbeat finds Redis again)."""
        if self._subscriber_scope is not None:
            self._subscriber_scope.cancel()
        if self.core.mark_down() and not self.stopping:
            self.options.logger.warning(
                "backplane %s: Redis unreachable (%s); local delivery goes on, messages"
                " for other processes (and publications on topics with history, which"
                " Redis numbers) are dropped until it is back",
                self.options.safe_url,
                str(exc) or type(exc).__name__,
            )

    # ---------------------------------------------------------------- publishing

    async def _publisher(self) -> None:
        core, options = self.core, self.options
        while True:
            await core.wait_outbox()
            batch = core.take(options.batch)
            messages = sum(1 for op, _, _, _ in batch if op in (PUBLISH, STORE))
            ttl = int(options.presence_ttl) + 1
            names, node = core.names, core.node_id
            scripts: list[Any] = []
            try:
                with trio.fail_after(options.command_timeout):
                    # an error answer to one command fails that command only (a script on a
                    # key someone changed the type of is not "Redis lost"); a connection
                    # error still fails the pipeline
                    async with self.client.pipeline(
                        transaction=False, raise_on_error=False
                    ) as pipe:
                        loaded = False
                        for op, name, value, _ in batch:
                            if op == PUBLISH:
                                pipe.publish(name, value)
                            elif op == STORE:
                                if not loaded:  # cheap when cached; a restarted Redis needs it
                                    pipe.script_load(PUBLISH_SCRIPT)
                                    loaded = True
                                history, opcode, message = value
                                head = encode(Envelope(Kind.HISTORY, node, opcode, name))
                                script = pipe.evalsha(
                                    PUBLISH_SHA,
                                    [names.history(name), names.stream(name), names.topic(name)],
                                    publish_args(history, head, opcode, message),
                                )
                                scripts.append((name, script))
                            elif op == SADD:
                                pipe.sadd(name, [value])
                                pipe.expire(name, ttl)  # a set made anew has no expiry yet
                            elif op == SREM:
                                pipe.srem(name, [value])
            except self.errors as exc:
                self.down(exc)
                core.failed(messages)
                continue
            refused = await self._refused(scripts)
            core.sent(messages - refused)
            if refused:
                core.count_lost(refused)

    async def _refused(self, scripts: list[Any]) -> int:
        """How many publish scripts of a pipeline Redis answered with an error (logged)."""
        import coredis.exceptions

        refused: list[tuple[str, Exception]] = []
        for topic, script in scripts:
            try:
                await script
            except coredis.exceptions.ResponseError as exc:
                refused.append((topic, exc))
        if refused:
            first, error = refused[0]
            self.options.logger.warning(
                "backplane: %d publication(s) refused by Redis, the first on %r: %s",
                len(refused),
                first,
                error,
            )
        return len(refused)

    # ---------------------------------------------------------------- receiving

    async def _subscriber(self, task_status: trio.TaskStatus[None]) -> None:
        core = self.core
        delay = 0.05
        started = False
        while True:
            pubsub = self.client.pubsub(ignore_subscribe_messages=True, retry_policy=None)
            try:
                with trio.CancelScope() as self._subscriber_scope:
                    async with pubsub, trio.open_nursery() as nursery:
                        core.pubsub_opened(pubsub)  # the channels of this moment, below
                        await self._subscribe(pubsub, self._channels())
                        core.pubsub_ready()
                        delay = 0.05
                        nursery.start_soon(self._subscriptions, pubsub)
                        if not started:
                            task_status.started()
                            started = True
                        # the messages go to the channels' handler; what the iterator yields
                        # (nothing: coredis queues a None for each handled message) is drained
                        # so that coredis's buffer stays empty
                        async for _ in pubsub:
                            pass
                        nursery.cancel_scope.cancel()
            except* self.errors as group:
                if not started:
                    raise
                if not self.stopping:
                    self.down(_first(group))
            finally:
                self._subscriber_scope = None
                core.pubsub_closed()
            await trio.sleep(delay)
            delay = min(delay * 2, self.options.reconnect_max)
            await core.wait_up()  # the heartbeat tells when Redis answers again

    def _channels(self) -> list[str]:
        core = self.core
        names = core.names
        channels = [names.all, names.presence, names.node(core.node_id)]
        assert core.hub is not None
        return channels + [names.topic(t) for t in core.hub.followed_topics()]

    async def _subscribe(self, pubsub: Any, channels: list[str]) -> None:
        """Subscribe to ``channels``, each with :meth:`_message` as its handler."""
        for i in range(0, len(channels), SUBSCRIBE_CHUNK):
            await pubsub.subscribe(
                **dict.fromkeys(channels[i : i + SUBSCRIBE_CHUNK], self._message)
            )

    def _message(self, message: Any) -> None:
        """A message on one of our channels (coredis calls it as it reads it)."""
        envelope = envelope_of(message["data"])
        core = self.core
        if envelope is None or (envelope.node == core.node_id and envelope.kind != Kind.HISTORY):
            return  # not ours, or our own (delivered locally already; history is not)
        if envelope.kind == Kind.JOIN or envelope.kind == Kind.LEAVE:
            self.presence.change(envelope.kind == Kind.JOIN, envelope.target, envelope.node)
            return
        problem = refusal(envelope)
        if problem is not None:
            self.options.logger.warning("backplane: %s from %s", problem, envelope.node)
            return
        core.delivered(envelope)

    async def _subscriptions(self, pubsub: Any) -> None:
        """Apply topic changes, batched: one SUBSCRIBE and one UNSUBSCRIBE per round.  A
        failure fails the pub/sub connection (the subscriber starts a new one)."""
        core = self.core
        while True:
            await core.wait_changes()
            adds, removes = core.take_changes()
            await self._subscribe(pubsub, adds)
            if removes:
                await pubsub.unsubscribe(*removes)
            core.subscriptions_applied()
