"""Where the processes of a cluster know of each other: presence and the heartbeat.

Each process (a *node*) keeps the ids of its connections in the Redis set ``P:conns:N``, with a
TTL, and itself in the sorted set ``P:nodes``, scored by when its presence expires: Redis's own
clock (``TIME``) plus ``presence_ttl``, so the machines' clocks need not agree.  Every
``heartbeat`` seconds it pushes both forward and removes the nodes whose time has passed, in
one round trip (a script, :data:`BEAT_SCRIPT`); a node that crashed therefore drops out within
``presence_ttl`` + ``heartbeat``.

On a Redis Cluster these keys are per partition (``_backplane_wire.Names``): a node's set, its
entry in its partition's sorted set, and its JOIN/LEAVE channel live on its partition's shard,
so one :class:`Presence` per lane writes this node's presence (on its home lane) and follows the
nodes of its partition (each lane's Redis scores by its own clock).

Each process also keeps a map of the *other* nodes' connection ids (the remote map of
``_backplane_core.BackplaneCore``), so that ``send_one`` knows synchronously where a connection
is.  It reads a node's whole set
once, when the node first appears (or after Redis was lost), and follows the JOIN/LEAVE
messages after that; a node that vanishes has its ids dropped at once.  JOIN/LEAVE messages
that arrive while a set is being read are applied again on top of what was read, so a read
never undoes them.  Every ``FULL_READ_EVERY`` heartbeats the whole map is read again, in case
a message was lost.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any

import trio

from ._backplane_core import BackplaneCore, BackplaneOptions
from ._backplane_lane import Lane
from ._backplane_pipeline import Stopping
from ._backplane_subscription import SubscriptionLost
from ._backplane_wire import text

__all__ = ["BEAT_SCRIPT", "FULL_READ_EVERY", "Presence", "redis_errors"]

#: Heartbeats between two full reads of the other nodes' connection sets (a safety net).
FULL_READ_EVERY = 60

#: One heartbeat of one partition, in one round trip, by Redis's clock: push this node's
#: presence forward (ARGV[1] its id, or "" on a lane that is not its home; ARGV[2] the
#: presence's time to live, ARGV[3] its connection set's, in whole seconds), remove the nodes
#: whose time has passed, and return the live ones.  KEYS: the partition's sorted set of nodes,
#: and this node's connection set (same slot: same hash tag).
BEAT_SCRIPT = """
redis.replicate_commands()
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
if ARGV[1] ~= '' then
  redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
  redis.call('EXPIRE', KEYS[2], ARGV[3])
end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
return redis.call('ZRANGEBYSCORE', KEYS[1], now, '+inf')
"""
BEAT_SHA = hashlib.sha1(BEAT_SCRIPT.encode()).hexdigest()


def redis_errors() -> tuple[type[BaseException], ...]:
    """What "Redis is lost" looks like: its errors, the network's, a closed connection, a
    subscription Redis refused or ended, and our own command timeouts."""
    import anyio
    import coredis.exceptions

    return (
        SubscriptionLost,
        Stopping,
        coredis.exceptions.RedisError,
        OSError,
        trio.TooSlowError,
        anyio.ClosedResourceError,
        anyio.BrokenResourceError,
        anyio.EndOfStream,
    )


class Presence:
    """This node's presence in Redis, and what it knows of the others'."""

    def __init__(
        self,
        options: BackplaneOptions,
        core: BackplaneCore,
        lane: Lane,
        client: Any,
        down: Callable[[BaseException], None],
    ) -> None:
        self.options = options
        self.core = core
        self.lane = lane
        self.home = lane is core.home  # this node's presence is written here
        self.client = client
        self.down = down
        self.errors = redis_errors()
        self._nodes: set[str] = set()  # the other live nodes whose sets have been read
        self._changes: list[tuple[bool, str, str]] | None = None  # JOIN/LEAVE during a read
        self._to_read: set[str] = set()  # nodes whose sets the next read takes

    async def start(self) -> None:
        with trio.fail_after(self.options.command_timeout * 2):
            await self._write()
            await self._read(full=True)

    def change(self, joined: bool, cid: str, node: str) -> None:
        """A JOIN or LEAVE from another node."""
        self.core.presence_changed(joined, cid, node)
        if self._changes is not None:
            self._changes.append((joined, cid, node))

    async def heartbeat(self) -> None:
        lane, options = self.lane, self.options
        delay = 0.05
        beats = 0
        while True:
            await trio.sleep(options.heartbeat if lane.up else delay)
            try:
                with trio.fail_after(options.command_timeout):
                    if lane.up:
                        beats += 1
                        await self._beat(full=beats % FULL_READ_EVERY == 0)
                    else:
                        await self._reconnect()
                        delay = 0.05
            except self.errors as exc:
                self.down(exc)
                delay = min(delay * 2, options.reconnect_max)

    def _local_ids(self) -> set[str]:
        assert self.core.hub is not None
        return set(self.core.hub.connection_ids())

    async def _reconnect(self) -> None:
        core = self.core
        await self.client.ping()
        written = await self._write()
        core.reconnected(self.lane)
        if self.home:
            # connections that came or went while the presence was written: their SADD/SREM
            # were dropped (Redis counted as lost then); queue them now
            now = self._local_ids()
            for cid in now - written:
                core.joined(cid)
            for cid in written - now:
                core.left(cid)
        where = self.options.safe_url
        if len(core.lanes) > 1:
            where += f" partition {self.lane.partition} (master {self.lane.address})"
        self.options.logger.warning("backplane %s: Redis reachable again", where)
        self._nodes.clear()
        await self._read(full=True)

    async def _now(self) -> float:
        """Redis's clock: every node scores presence by the same clock."""
        when = await self.client.time()
        return float(when.timestamp())

    async def _write(self) -> set[str]:
        """This node's whole presence, on its home lane: its connection ids and its expiry."""
        if not self.home:
            return set()
        names, node, ttl = self.core.names, self.core.node_id, self.options.presence_ttl
        key = names.connections(node)
        cids = self._local_ids()
        now = await self._now()
        async with self.client.pipeline(transaction=False) as pipe:
            pipe.delete([key])
            if cids:
                pipe.sadd(key, list(cids))
                pipe.expire(key, int(ttl) + 1)
            pipe.zadd(names.nodes(self.lane.partition), {node: now + ttl})
        return cids

    async def _beat(self, full: bool) -> None:
        """One heartbeat, one round trip (:data:`BEAT_SCRIPT`): this node's presence pushed
        forward (on its home lane), the expired nodes removed, the live ones followed."""
        from coredis.exceptions import NoScriptError

        names, node, ttl = self.core.names, self.core.node_id, self.options.presence_ttl
        nodes_key = names.nodes(self.lane.partition)
        if self.home:
            keys, mine = [nodes_key, names.connections(node)], node
        else:
            keys, mine = [nodes_key], ""
        args = [mine, ttl, int(ttl) + 1]
        try:
            live = await self.client.evalsha(BEAT_SHA, keys, args)
        except NoScriptError:  # a Redis that has not seen it (new, restarted, failed over)
            await self.client.script_load(BEAT_SCRIPT)
            live = await self.client.evalsha(BEAT_SHA, keys, args)
        self._follow(live, full)
        await self._read_sets(full)

    async def _read(self, full: bool) -> None:
        """Follow the other nodes: drop the vanished, read the sets of the new (all, if
        ``full``), keeping the JOIN/LEAVE messages that arrive meanwhile."""
        from coredis.tokens import PureToken

        now = await self._now()
        nodes_key = self.core.names.nodes(self.lane.partition)
        live = await self.client.zrange(nodes_key, now, "+inf", sortby=PureToken.BYSCORE)
        self._follow(live, full)
        await self._read_sets(full)

    def _follow(self, live: list[bytes | str], full: bool) -> None:
        """The live nodes of the partition: the vanished are dropped; the sets to read next
        (of the new ones; all, if ``full``) are noted."""
        core = self.core
        others = {text(n) for n in live} - {core.node_id}
        vanished = self._nodes - others
        if vanished:
            core.forget_nodes(vanished)
        self._to_read = others if full else others - self._nodes
        self._nodes = others

    async def _read_sets(self, full: bool) -> None:
        core, client = self.core, self.client
        to_read, self._to_read = self._to_read, set()
        if not to_read:
            return
        nodes = sorted(to_read)
        self._changes = []
        try:
            async with client.pipeline(transaction=False) as pipe:
                members = [pipe.smembers(core.names.connections(n)) for n in nodes]
            read: dict[str, str] = {}
            for node, result in zip(nodes, members, strict=True):
                for cid in await result:
                    read[text(cid)] = node
            core.replace_nodes(to_read, read)
            for joined, cid, node in self._changes:  # what arrived while reading wins
                core.presence_changed(joined, cid, node)
        finally:
            self._changes = None

    async def withdraw(self) -> None:
        """Stopping: leave the cluster's view at once (best effort, bounded by the caller)."""
        core = self.core
        if not self.home or not self.lane.up:
            return
        try:
            async with self.client.pipeline(transaction=False) as pipe:
                pipe.zrem(core.names.nodes(self.lane.partition), [core.node_id])
                pipe.delete([core.names.connections(core.node_id)])
        except Exception:  # best effort: the presence expires anyway
            pass
