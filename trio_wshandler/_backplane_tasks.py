"""The tasks of one lane of a running backplane (``_backplane_lane.py``): publisher and
subscriber (the heartbeat and presence are ``_presence.py``; where each lane's Redis is,
``_backplane_run.py``).

They run in the lane's nursery and work on the backplane's state
(``_backplane_core.BackplaneCore``) and the lane's through their methods:

* the **publisher** sends the lane's outbox to its Redis, up to ``batch`` commands per
  pipelined round trip (shared with the other lanes on that Redis, ``_backplane_pipeline.py``);
  a failed or timed-out round trip counts its messages as lost and marks the lane down;
* the **subscriber** keeps one connection subscribed to the lane's channels (``send_all`` and
  presence of its partition, this process's own channel on its home lane, and the topics of
  the partition with local subscribers; ``_backplane_subscription.py``) and delivers the other
  processes' messages locally as they are read.  After a failure, or when the heartbeat
  declares the lane's Redis lost, it drops that connection and opens a new one once Redis
  answers again, subscribed to the channels of that moment.  A second task applies topic
  changes in batches.

Errors from Redis, the network or a closed connection mean "this lane's Redis is lost";
anything else is a bug and is raised (it ends ``serve()``, as Trio wants errors to surface).
"""

from __future__ import annotations

from functools import partial
from typing import Any

import trio

from ._backplane_core import BackplaneCore, BackplaneOptions
from ._backplane_lane import Lane
from ._backplane_pipeline import Pipelines
from ._backplane_subscription import LaneSubscription, SharedSubscription
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
from ._errors import first_error
from ._history_redis import (
    PUBLISH_SCRIPT,
    PUBLISH_SHA,
    SHARDED_PUBLISH_SCRIPT,
    SHARDED_PUBLISH_SHA,
    publish_args,
)
from ._presence import Presence, redis_errors

__all__ = ["LaneTasks"]


class LaneTasks:
    """The publisher, subscriber and presence of one lane, on one Redis client."""

    def __init__(
        self,
        options: BackplaneOptions,
        core: BackplaneCore,
        lane: Lane,
        client: Any,
        pipelines: Pipelines,
        shared: SharedSubscription,
    ) -> None:
        self.options = options
        self.core = core
        self.lane = lane
        self.client = client
        self.pipelines = pipelines
        self.shared = shared
        self.sharded = bool(core.names.tags)  # a cluster (even with one partition)
        self.errors = redis_errors()
        self.presence = Presence(options, core, lane, client, self.down)
        self.stopping = False
        self._subscriber_scope: trio.CancelScope | None = None
        self._delay = 0.05  # before the next subscription after a failed one
        self._in_flight = 0  # messages of the pipeline on its way
        self._subscribed_once = False

    async def run(self, fresh: bool, task_status: trio.TaskStatus[None]) -> None:
        """Run until cancelled.  ``fresh``: the backplane is starting (subscribe and write
        the presence before it says it started); else the lane starts down and its heartbeat
        finds its Redis (a cluster's partition moved to another master)."""
        async with trio.open_nursery() as nursery:
            if fresh:
                await nursery.start(self._subscriber, True)
                await self.presence.start()
            else:
                nursery.start_soon(self._subscriber, False)
            nursery.start_soon(self._publisher)
            nursery.start_soon(self.presence.heartbeat)
            task_status.started()

    def down(self, exc: BaseException) -> None:
        """This lane's Redis is lost: say so once, drop its subscription (the subscriber opens
        a new one when the heartbeat finds Redis again) and the connection it was on (which
        may be dead without knowing it: every lane on that Redis starts again)."""
        if self._subscriber_scope is not None:
            self._subscriber_scope.cancel()
            if not self.stopping:
                self.shared.reset(f"Redis lost: {exc}")
        if self.lane.mark_down() and not self.stopping:
            where = self.options.safe_url
            if self.sharded:
                where += f" partition {self.lane.partition} (master {self.lane.address})"
            self.options.logger.warning(
                "backplane %s: Redis unreachable (%s); local delivery goes on, messages"
                " for other processes (and publications on topics with history, which"
                " Redis numbers) are dropped until it is back",
                where,
                str(exc) or type(exc).__name__,
            )

    def relocated(self, why: str) -> None:
        """These tasks are cancelled because the lane moved to another master: the messages
        on their way or queued are lost (counted)."""
        self.down(RuntimeError(why))
        in_flight, self._in_flight = self._in_flight, 0
        self.core.failed(self.lane, in_flight)

    # ---------------------------------------------------------------- publishing

    async def _publisher(self) -> None:
        core, lane = self.core, self.lane
        while True:
            await lane.wait_outbox()
            batch = core.take(lane, self.options.batch)
            messages = sum(1 for op, _, _, _ in batch if op in (PUBLISH, STORE))
            self._in_flight = messages
            try:
                scripts = await self.pipelines.send(partial(self._build, batch))
            except self.errors as exc:
                self._in_flight = 0
                self.down(exc)
                core.failed(lane, messages)
                continue
            self._in_flight = 0
            refused = await self._refused(scripts)
            core.sent(messages - refused)
            if refused:
                core.count_lost(refused, lane)

    def _build(self, batch: list[tuple[int, str, Any, int]], pipe: Any) -> list[Any]:
        """Add ``batch``'s commands to ``pipe``; the replies of its messages (PUBLISH and
        publish scripts), each with its channel or topic."""
        names, node = self.core.names, self.core.node_id
        ttl = int(self.options.presence_ttl) + 1
        script, sha = PUBLISH_SCRIPT, PUBLISH_SHA
        if self.sharded:
            script, sha = SHARDED_PUBLISH_SCRIPT, SHARDED_PUBLISH_SHA
        scripts: list[Any] = []
        loaded = False
        for op, name, value, _ in batch:
            if op == PUBLISH:
                if self.sharded:
                    scripts.append((name, pipe.spublish(name, value)))
                else:
                    scripts.append((name, pipe.publish(name, value)))
            elif op == STORE:
                if not loaded:  # cheap when cached; a restarted Redis needs it
                    pipe.script_load(script)
                    loaded = True
                history, opcode, message = value
                head = encode(Envelope(Kind.HISTORY, node, opcode, name))
                result = pipe.evalsha(
                    sha,
                    [names.history(name), names.stream(name), names.topic(name)],
                    publish_args(history, head, opcode, message),
                )
                scripts.append((name, result))
            elif op == SADD:
                pipe.sadd(name, [value])
                pipe.expire(name, ttl)  # a set made anew has no expiry yet
            elif op == SREM:
                pipe.srem(name, [value])
        return scripts

    async def _refused(self, replies: list[Any]) -> int:
        """How many messages of a round Redis answered with an error (logged): a script on a
        key of another type, a ``MOVED`` (the slot has another master: the watch of the
        masters moves the lane), a Redis out of memory or read-only."""
        import coredis.exceptions

        refused: list[tuple[str, Exception]] = []
        for name, reply in replies:
            try:
                await reply
            except coredis.exceptions.ResponseError as exc:
                refused.append((name, exc))
        if refused:
            first, error = refused[0]
            self.options.logger.warning(
                "backplane: %d message(s) refused by Redis, the first on %r: %s",
                len(refused),
                first,
                error,
            )
        return len(refused)

    # ---------------------------------------------------------------- receiving

    async def _subscriber(
        self, fresh: bool, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        lane = self.lane
        if not fresh:
            await lane.wait_up()
        while True:
            try:
                with trio.CancelScope() as self._subscriber_scope:
                    subscription = await self.shared.attach(self._message)
                    try:
                        await self._listen(subscription, task_status)
                    finally:
                        self.shared.detach(subscription)
            except* self.errors as group:
                if fresh and not self._subscribed_once:
                    raise  # at start: the backplane fails to start
                if not self.stopping:
                    self.down(first_error(group))
            finally:
                self._subscriber_scope = None
                lane.subscription_closed()
            await trio.sleep(self._delay)
            self._delay = min(self._delay * 2, self.options.reconnect_max)
            await lane.wait_up()  # the heartbeat tells when Redis answers again

    async def _listen(
        self, subscription: LaneSubscription, task_status: trio.TaskStatus[None]
    ) -> None:
        core, lane = self.core, self.lane
        lane.subscription_opened(subscription.channels)  # the channels of this moment:
        await self._subscribe(subscription, core.followed_channels(lane))
        core.subscription_ready(lane)
        self._delay = 0.05
        if not self._subscribed_once:
            self._subscribed_once = True
            task_status.started()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._subscriptions, subscription)
            await subscription.wait_lost()

    async def _subscribe(self, subscription: LaneSubscription, channels: list[str]) -> None:
        await subscription.subscribe(channels)

    def _message(self, data: bytes) -> None:
        """A message on one of our channels (called as it is read)."""
        envelope = envelope_of(data)
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

    async def _subscriptions(self, subscription: LaneSubscription) -> None:
        """Apply topic changes, batched: one SUBSCRIBE and one UNSUBSCRIBE per round.  A
        failure fails the subscription (the subscriber starts a new one)."""
        lane = self.lane
        while True:
            await lane.wait_changes()
            adds, removes = lane.take_changes()
            await self._subscribe(subscription, adds)
            await subscription.unsubscribe(removes)
            lane.subscriptions_applied()
