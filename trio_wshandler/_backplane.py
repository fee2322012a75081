"""Where processes meet: the Redis backplane that carries ``send_all``, ``publish``,
``send_one`` and ``stop_one`` to every process of a cluster (``coredis``, native on Trio).

The handler's calls stay synchronous and never await Redis: they deliver locally at once and
put the message in a bounded outbox; one publisher task sends the outbox to Redis in pipelined
batches.  One subscriber (a Redis pub/sub connection) receives the other processes' messages
and delivers each to the local clients, encoded (and compressed) once per process, like a
local ``send_all``; a process skips its own messages (it delivered them already).

Presence: each process (a *node*, with an id of its own) keeps the ids of its connections in a
Redis set that expires ``presence_ttl`` seconds after its last heartbeat, and its node id in a
sorted set scored by that expiry.  Each heartbeat also reads the live nodes' sets into a local
map of remote connection ids, kept current between heartbeats by JOIN/LEAVE messages; that map
lets ``send_one`` know synchronously where a connection is.  A process that crashes vanishes
from the others' view within ``presence_ttl`` + ``heartbeat`` seconds.

Delivery across processes is at most once, as with Socket.IO's Redis adapter: while Redis is
unreachable, local delivery goes on, and what would cross processes is dropped, counted in
``lost`` and logged (once per ``LOG_INTERVAL``); the heartbeat retries the connection with
backoff and, once back, rewrites this node's presence.

Past one Redis: on a Redis Cluster (``redis+cluster://``) the channels and keys are collapsed
into ``partitions`` groups, each with a hash tag, carried by sharded pub/sub (``SPUBLISH``,
``SSUBSCRIBE``: a message goes to the shard of its channel only).  Each partition has a *lane*
(``_backplane_lane.py``) with its own outbox, publisher, subscription and presence, talking to
the master of its slot; a master that fails over is survived as a Redis restart is, by its
lanes only (``_backplane_run.py``).
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import trio

from ._backplane_core import BackplaneCore
from ._backplane_lane import Lane
from ._backplane_run import Address, BackplaneRun
from ._backplane_wire import STORE, Envelope, Kind, Names
from ._cluster_slots import parse_cluster_url, partition_tags
from ._errors import WebSocketHandlerError, first_error
from ._history import HistoryOptions
from ._history_redis import READ_SCRIPT, Snapshot, decode_read, read_args
from ._ids import new_connection_id
from ._options import positive
from ._redis_clients import CLUSTER_SCHEMES, ClientMaker, live_nodes, redact_url

if TYPE_CHECKING:
    from ._hub import Hub

__all__ = ["BackplaneError", "RedisBackplane", "redact_url"]


class BackplaneError(WebSocketHandlerError):
    """The backplane cannot work: Redis is unreachable at start (the message names the URL,
    without its password), or it is used wrongly (attached to two handlers)."""


class RedisBackplane:
    """Connects a :class:`WebSocketHandler` to the other processes of a cluster through Redis.

    ``WebSocketHandler(backplane=RedisBackplane(url))``; :func:`serve` starts it before it
    accepts connections (to run it in a nursery of your own: ``await
    nursery.start(backplane.run)`` before ``serve``).  Options (keyword-only):

    ``prefix`` ("trio_wshandler")
        of every Redis key and channel: handlers with different prefixes share a Redis
        without seeing each other.
    ``max_pending`` (10,000 messages)
        the outbox: messages for other processes waiting for the publisher task.  When it is
        full (Redis slower than the producer) a message is dropped for the other processes
        (local clients still get it) and counted in ``lost``.
    ``max_pending_bytes`` (16 MiB)
        the outbox's bound in bytes (large messages fill it before ``max_pending`` does).
    ``batch`` (512)
        most messages sent to Redis in one pipelined round trip.
    ``command_timeout`` (2.0 s)
        longest wait for Redis's answer to a command or a pipeline: a Redis that stops
        answering without closing the connection (a partition, a frozen host) is declared
        lost after this long, as one that refuses connections is at once.  Must be shorter
        than ``presence_ttl`` - ``heartbeat``, so that a slow answer does not let this
        process's presence expire.
    ``heartbeat`` (1.0 s) and ``presence_ttl`` (5.0 s)
        how often this process refreshes its presence and reads the others', and how long
        its presence outlives its last heartbeat (the bound on how long a crashed process's
        connections stay visible: ``presence_ttl`` + ``heartbeat``).
    ``connect_timeout`` (5.0 s)
        how long ``serve()`` waits for Redis at start before failing.
    ``reconnect_max`` (2.0 s)
        the longest wait between two attempts to reach a lost Redis (backoff from 0.05 s).
    ``ssl_context`` (None)
        for ``rediss://`` URLs: the TLS settings (a private CA, a client certificate); None
        uses the system's trusted CAs.
    ``partitions`` (12)
        on a Redis Cluster (``redis+cluster://host:port,host:port``, or ``startup_nodes``):
        how many groups its channels and keys are collapsed into, each with a hash tag of its
        own (``_cluster_slots.py``) and a lane (a publisher, a sharded subscription, a
        presence) to the master that owns the tag's slot.  A multiple of the number of
        masters spreads them evenly (12: 3, 4 or 6 masters); ignored with one Redis.
    ``startup_nodes`` (None)
        a cluster's nodes as ``[(host, port), ...]``, instead of a ``redis+cluster://`` URL
        (``url`` then only gives the credentials and TLS, e.g. ``"rediss+cluster://:pw@"``).
    ``logger``
        default ``logging.getLogger("trio_wshandler.backplane")``.

    Counters (plain ints): ``published`` (messages sent to Redis), ``received`` (messages from
    other processes delivered here), ``lost`` (messages that could not cross), ``misses``
    (``send_one``/``stop_one`` that reached a process no longer holding the connection),
    ``reconnects``, ``round_trips`` (pipelines the publisher sent: ``published /
    round_trips`` is the batching achieved).
    """

    def __init__(
        self,
        url: str = "redis://127.0.0.1:6379/0",
        *,
        prefix: str = "trio_wshandler",
        max_pending: int = 10_000,
        max_pending_bytes: int = 16 << 20,
        batch: int = 512,
        heartbeat: float = 1.0,
        presence_ttl: float = 5.0,
        command_timeout: float = 2.0,
        connect_timeout: float = 5.0,
        reconnect_max: float = 2.0,
        ssl_context: ssl.SSLContext | None = None,
        partitions: int = 12,
        startup_nodes: Sequence[tuple[str, int]] | None = None,
        logger: logging.Logger | None = None,
    ) -> None:
        if startup_nodes is not None:
            scheme, _, rest = url.partition("://")
            auth = rest.rpartition("@")[0]
            scheme = "rediss+cluster" if scheme.startswith("rediss") else "redis+cluster"
            nodes = ",".join(f"{host}:{port}" for host, port in startup_nodes)
            url = f"{scheme}://{auth + '@' if auth else ''}{nodes}"
        if not url.startswith(("redis://", "rediss://", "unix://", *CLUSTER_SCHEMES)):
            raise ValueError(
                "url must be redis://, rediss://, unix://, redis+cluster:// or"
                f" rediss+cluster://, got {redact_url(url)}"
            )
        #: the cluster's startup nodes and credentials; None with one Redis
        self.cluster = parse_cluster_url(url) if url.startswith(CLUSTER_SCHEMES) else None
        if self.cluster is not None and ("{" in prefix or "}" in prefix):
            raise ValueError("on a Redis Cluster the prefix cannot hold { or } (hash tags)")
        positive("partitions", partitions, integer=True)
        for name, value in (
            ("heartbeat", heartbeat),
            ("presence_ttl", presence_ttl),
            ("command_timeout", command_timeout),
            ("connect_timeout", connect_timeout),
            ("reconnect_max", reconnect_max),
        ):
            positive(name, value)
        for name, value in (
            ("max_pending", max_pending),
            ("max_pending_bytes", max_pending_bytes),
            ("batch", batch),
        ):
            positive(name, value, integer=True)
        if command_timeout >= presence_ttl - heartbeat:
            raise ValueError("command_timeout must be shorter than presence_ttl - heartbeat")
        self.safe_url = redact_url(url)
        tags = partition_tags(partitions) if self.cluster is not None else ()
        self.names = Names(prefix, tags)
        self.max_pending = max_pending
        self.max_pending_bytes = max_pending_bytes
        self.batch = batch
        self.command_timeout = command_timeout
        self.heartbeat = heartbeat
        self.presence_ttl = presence_ttl
        self.connect_timeout = connect_timeout
        self.reconnect_max = reconnect_max
        self.logger = logger or logging.getLogger("trio_wshandler.backplane")
        #: this process's id in the cluster
        self.node_id = new_connection_id()
        self._clients = ClientMaker(  # holds the URL, with its password: never logged
            url, self.cluster, ssl_context, f"{prefix}:{self.node_id}", command_timeout
        )
        self._core = BackplaneCore(
            names=self.names,
            node_id=self.node_id,
            max_pending=max_pending,
            max_pending_bytes=max_pending_bytes,
            safe_url=self.safe_url,
            logger=self.logger,
        )
        self._run: BackplaneRun | None = None  # while running
        self.running = False

    # ---------------------------------------------------------------- the handler's side

    def attach(self, hub: Hub) -> None:
        """Called by the handler that owns this backplane (once), with its hub."""
        core = self._core
        if core.hub is not None and core.hub is not hub:
            raise BackplaneError("a RedisBackplane serves one handler; make one per handler")
        core.hub = hub

    @property
    def connected(self) -> bool:
        """Redis answered the last command (False while it is unreachable)."""
        return self._core.up

    # the counters, as plain ints (see the class docstring)

    @property
    def published(self) -> int:
        return self._core.published

    @property
    def received(self) -> int:
        return self._core.received

    @property
    def lost(self) -> int:
        return self._core.lost

    @property
    def misses(self) -> int:
        return self._core.misses

    @property
    def reconnects(self) -> int:
        return self._core.reconnects

    @property
    def round_trips(self) -> int:
        return self._core.round_trips

    def publish_all(self, payload: bytes, opcode: int) -> None:
        """send_all for the other processes (queued; the publisher sends it)."""
        envelope = Envelope(Kind.ALL, self.node_id, opcode, "", payload)
        home = self._core.home
        self._core.publish(home, self.names.all(home.partition), envelope)

    def publish_topic(self, topic: str, payload: bytes, opcode: int) -> None:
        """publish for the other processes."""
        envelope = Envelope(Kind.TOPIC, self.node_id, opcode, topic, payload)
        core = self._core
        core.publish(core.topic_lane(topic), self.names.topic(topic), envelope)

    def store(self, topic: str, options: HistoryOptions, opcode: int, message: bytes) -> bool:
        """publish on a topic with history: the publish script numbers it in Redis, keeps it in
        the topic's stream and publishes it to every process, this one included (queued; the
        publisher sends it, pipelined with the other commands).  False if it was dropped
        (Redis lost, or the outbox full: counted in ``lost``)."""
        core = self._core
        return core.put(
            core.topic_lane(topic), STORE, topic, (options, opcode, message), len(message)
        )

    @property
    def history_reads(self) -> int:
        """Reads of topic histories sent to Redis (recoveries and repairs, coalesced)."""
        return self._core.history_reads

    async def read_history(
        self, topic: str, first: int, epoch: str, count: int, ttl: float
    ) -> Snapshot:
        """``topic``'s position and, if it is in ``epoch``, its kept publications from offset
        ``first`` (at most ``count``): one atomic read script (``_history_redis.py``).

        :raises BackplaneError: the backplane is not running.
        :raises trio.TooSlowError: Redis did not answer within ``command_timeout``.
        """
        client = self._client_of(self._core.topic_lane(topic))
        names = self.names
        self._core.history_reads += 1
        with trio.fail_after(self.command_timeout):
            reply = await client.eval(
                READ_SCRIPT,
                [names.history(topic), names.stream(topic)],
                read_args(first, epoch, count, ttl),
            )
        return decode_read(reply, ttl)

    async def wait_following(self, topic: str) -> None:
        """Wait until Redis delivers ``topic``'s publications here (the topic has a subscriber
        or is held, ``_topics.TopicMap``).

        :raises trio.TooSlowError: not within ``command_timeout`` (Redis is slow or lost).
        """
        with trio.fail_after(self.command_timeout):
            await self._core.wait_topic(topic)

    def subscribed(self, topic: str) -> bool:
        """Redis delivers ``topic`` to this process now: what other processes publish to it
        from here on arrives.  (A topic's first local subscriber makes this process subscribe
        in Redis, which takes a round trip: a message published elsewhere meanwhile does not
        reach it.)"""
        return self._core.subscribed_topic(topic)

    def knows(self, cid: str) -> bool:
        """Another process holds connection ``cid``, as far as this one knows now."""
        return self._core.knows(cid)

    def send_to(self, cid: str, payload: bytes, opcode: int) -> None:
        """send_one to a connection of another process (:raises UnknownConnectionError:)."""
        core = self._core
        node = core.node_of(cid)
        envelope = Envelope(Kind.ONE, self.node_id, opcode, cid, payload)
        core.publish(core.node_lane(node), self.names.node(node), envelope)

    def stop_remote(self, cid: str, code: int, reason: str) -> None:
        """stop_one of a connection of another process (:raises UnknownConnectionError:)."""
        core = self._core
        node = core.node_of(cid)
        envelope = Envelope(Kind.STOP, self.node_id, code, cid, reason.encode("utf-8"))
        core.publish(core.node_lane(node), self.names.node(node), envelope)

    def joined(self, cid: str) -> None:
        """A connection of this process registered: others learn it now (and from the set)."""
        self._core.joined(cid)

    def left(self, cid: str) -> None:
        """A connection of this process ended."""
        self._core.left(cid)

    def topic_added(self, topic: str) -> None:
        """The first local subscriber of ``topic``: receive it from Redis too."""
        self._core.topic_changed(True, topic)

    def topic_removed(self, topic: str) -> None:
        """The last local subscriber of ``topic`` left."""
        self._core.topic_changed(False, topic)

    async def cluster_connection_count(self) -> int:
        """Connections held by every live process, this one included (asks Redis: on a
        cluster, the shard of each partition)."""
        total = 0
        for lane in self._core.lanes:
            client = self._client_of(lane)
            nodes = await live_nodes(client, self.names, lane.partition)
            async with client.pipeline(transaction=False) as pipe:
                counts = [pipe.scard(self.names.connections(n)) for n in nodes]
            for count in counts:
                total += await count
        return total

    async def partition_spread(self) -> dict[str, int]:
        """How many partitions each master of the cluster serves now, read from the
        cluster's slot map (``{"host:port": count}``, ``"none"`` for the partitions no master
        serves; one Redis: ``{url: 1}``)."""
        if self._run is None:
            raise BackplaneError("the backplane is not running (serve() starts it)")
        counts: dict[str, int] = {}
        for master in await self._run.masters():
            if master is None:  # one Redis; on a cluster, a partition no master serves now
                name = self.safe_url if self.cluster is None else "none"
            else:
                name = f"{master[0]}:{master[1]}"
            counts[name] = counts.get(name, 0) + 1
        return counts

    def _client_of(self, lane: Lane) -> Any:
        if self._run is None:
            raise BackplaneError("the backplane is not running (serve() starts it)")
        try:
            return self._run.client_of(lane)
        except LookupError:
            raise BackplaneError("the backplane is not running (serve() starts it)") from None

    # ---------------------------------------------------------------- running

    async def check(self) -> None:
        """Fail now, with a clear error, if Redis does not answer (``serve()`` calls it
        before it starts anything): one Redis, or a cluster's startup nodes and the master of
        every partition.

        :raises BackplaneError: naming the URL (without its password) and the reason.
        """
        try:
            with trio.fail_after(self.connect_timeout):
                await self._clients.check(self.names.tags)
        except (Exception, trio.TooSlowError) as exc:
            # coredis runs in a task group
            leaf = first_error(exc) if isinstance(exc, BaseExceptionGroup) else exc
            reason = str(leaf) or type(leaf).__name__
            raise BackplaneError(f"cannot reach Redis at {self.safe_url}: {reason}") from None

    async def run(
        self,
        handler: Any = None,
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Connect to Redis and run until cancelled; started once Redis answered.

        ``handler``: the :class:`WebSocketHandler` it serves, if it was not given as its
        ``backplane=`` (``handler.use_backplane(self)`` is then called).

        :raises BackplaneError: Redis did not answer within ``connect_timeout``.
        """
        if handler is not None and handler.backplane is not self:
            handler.use_backplane(self)
        core = self._core
        if core.hub is None:
            raise BackplaneError("the backplane has no handler: pass it as backplane=")
        if self.running:
            raise BackplaneError("the backplane is running already")
        await self.check()
        startup: list[Address] = [None] if self.cluster is None else list(self.cluster.nodes)
        tls = self.cluster is not None and self.cluster.tls
        run = BackplaneRun(self, core, self._clients.new, startup, tls)
        self._run = run
        core.mark_up()
        self.running = True
        try:
            await run.run(task_status)
        finally:
            self.running = False
            self._run = None
            core.mark_down()
