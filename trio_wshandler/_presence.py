"""Where the processes of a cluster know of each other: presence and the heartbeat.

Each process (a *node*) keeps the ids of its connections in the Redis set ``P:conns:N``, with a
TTL, and itself in the sorted set ``P:nodes``, scored by when its presence expires: Redis's own
clock (``TIME``) plus ``presence_ttl``, so the machines' clocks need not agree.  Every
``heartbeat`` seconds it pushes both forward and removes the nodes whose time has passed; a
node that crashed therefore drops out within ``presence_ttl`` + ``heartbeat``.

Each process also keeps a map of the *other* nodes' connection ids (``RedisBackplane._remote``),
so that ``send_one`` knows synchronously where a connection is.  It reads a node's whole set
once, when the node first appears (or after Redis was lost), and follows the JOIN/LEAVE
messages after that; a node that vanishes has its ids dropped at once.  JOIN/LEAVE messages
that arrive while a set is being read are applied again on top of what was read, so a read
never undoes them.  Every ``FULL_READ_EVERY`` heartbeats the whole map is read again, in case
a message was lost.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import trio

from ._backplane import _text

if TYPE_CHECKING:
    from ._backplane import RedisBackplane
    from ._handler import WebSocketHandler

__all__ = ["FULL_READ_EVERY", "Presence", "redis_errors"]

#: Heartbeats between two full reads of the other nodes' connection sets (a safety net).
FULL_READ_EVERY = 60


def redis_errors() -> tuple[type[BaseException], ...]:
    """What "Redis is lost" looks like: its errors, the network's, a closed connection, and
    our own command timeouts."""
    import anyio
    import coredis.exceptions

    return (
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
        backplane: RedisBackplane,
        handler: WebSocketHandler,
        client: Any,
        down: Callable[[BaseException], None],
    ) -> None:
        self.bp = backplane
        self.handler = handler
        self.client = client
        self.down = down
        self.errors = redis_errors()
        self.stopping = False
        self._nodes: set[str] = set()  # the other live nodes whose sets have been read
        self._changes: list[tuple[bool, str, str]] | None = None  # JOIN/LEAVE during a read

    async def start(self) -> None:
        with trio.fail_after(self.bp.command_timeout * 2):
            await self._write()
            await self._read(full=True)

    def change(self, joined: bool, cid: str, node: str) -> None:
        """A JOIN or LEAVE from another node."""
        remote = self.bp._remote
        if joined:
            remote[cid] = node
        elif remote.get(cid) == node:
            del remote[cid]
        if self._changes is not None:
            self._changes.append((joined, cid, node))

    async def heartbeat(self) -> None:
        bp = self.bp
        delay = 0.05
        beats = 0
        while True:
            await trio.sleep(bp.heartbeat if bp._up.is_set() else delay)
            try:
                with trio.fail_after(bp.command_timeout):
                    if bp._up.is_set():
                        beats += 1
                        await self._refresh()
                        await self._read(full=beats % FULL_READ_EVERY == 0)
                    else:
                        await self._reconnect()
                        delay = 0.05
            except self.errors as exc:
                self.down(exc)
                delay = min(delay * 2, bp.reconnect_max)

    async def _reconnect(self) -> None:
        bp = self.bp
        await self.client.ping()
        written = await self._write()
        bp.reconnects += 1
        bp._up.set()
        # connections that came or went while the presence was written: their SADD/SREM
        # were dropped (Redis counted as lost then); queue them now
        now = set(self.handler._registry.ids())
        for cid in now - written:
            bp.joined(cid)
        for cid in written - now:
            bp.left(cid)
        bp.logger.warning("backplane %s: Redis reachable again", bp.safe_url)
        self._nodes.clear()
        await self._read(full=True)

    async def _now(self) -> float:
        """Redis's clock: every node scores presence by the same clock."""
        when = await self.client.time()
        return float(when.timestamp())

    async def _write(self) -> set[str]:
        """This node's whole presence: its connection ids and its expiry."""
        bp = self.bp
        key = bp.names.connections(bp.node_id)
        cids = set(self.handler._registry.ids())
        now = await self._now()
        async with self.client.pipeline(transaction=False) as pipe:
            pipe.delete([key])
            if cids:
                pipe.sadd(key, list(cids))
                pipe.expire(key, int(bp.presence_ttl) + 1)
            pipe.zadd(bp.names.nodes, {bp.node_id: now + bp.presence_ttl})
        return cids

    async def _refresh(self) -> None:
        bp = self.bp
        now = await self._now()
        async with self.client.pipeline(transaction=False) as pipe:
            pipe.zadd(bp.names.nodes, {bp.node_id: now + bp.presence_ttl})
            pipe.expire(bp.names.connections(bp.node_id), int(bp.presence_ttl) + 1)
            pipe.zremrangebyscore(bp.names.nodes, -math.inf, now)

    async def _read(self, full: bool) -> None:
        """Follow the other nodes: drop the vanished, read the sets of the new (all, if
        ``full``), keeping the JOIN/LEAVE messages that arrive meanwhile."""
        bp = self.bp
        client = self.client
        from coredis.tokens import PureToken

        now = await self._now()
        live = await client.zrange(bp.names.nodes, now, "+inf", sortby=PureToken.BYSCORE)
        others = {_text(n) for n in live} - {bp.node_id}
        vanished = self._nodes - others
        if vanished:
            bp._remote = {c: n for c, n in bp._remote.items() if n not in vanished}
        to_read = others if full else others - self._nodes
        self._nodes = others
        if not to_read:
            return
        nodes = sorted(to_read)
        self._changes = []
        try:
            async with client.pipeline(transaction=False) as pipe:
                members = [pipe.smembers(bp.names.connections(n)) for n in nodes]
            read: dict[str, str] = {}
            for node, result in zip(nodes, members, strict=True):
                for cid in await result:
                    read[_text(cid)] = node
            remote = {c: n for c, n in bp._remote.items() if n not in to_read}
            remote.update(read)
            for joined, cid, node in self._changes:  # what arrived while reading wins
                if joined:
                    remote[cid] = node
                elif remote.get(cid) == node:
                    del remote[cid]
            bp._remote = remote
        finally:
            self._changes = None

    async def withdraw(self) -> None:
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
