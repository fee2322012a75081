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
"""

from __future__ import annotations

import logging
import ssl
from typing import TYPE_CHECKING, Any
from urllib.parse import SplitResult, parse_qsl, urlencode, urlsplit, urlunsplit

import trio

from ._backplane_core import BackplaneCore
from ._backplane_wire import STORE, Envelope, Kind, Names, text
from ._errors import WebSocketHandlerError
from ._history import HistoryOptions
from ._history_redis import READ_SCRIPT, Snapshot, decode_read, read_args
from ._ids import new_connection_id
from ._options import positive

if TYPE_CHECKING:
    from ._hub import Hub

__all__ = ["BackplaneError", "RedisBackplane", "redact_url"]


class BackplaneError(WebSocketHandlerError):
    """The backplane cannot work: Redis is unreachable at start (the message names the URL,
    without its password), or it is used wrongly (attached to two handlers)."""


def redact_url(url: str) -> str:
    """``url`` with its password (``user:password@`` or ``?password=``) replaced by ``***``."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return "(an invalid URL)"
    netloc, query = parts.netloc, parts.query
    if parts.password is not None:
        user = parts.username or ""
        host = parts.hostname or ""
        if ":" in host:
            host = f"[{host}]"
        netloc = f"{user}:***@{host}" + (f":{port}" if port else "")
    if query:
        pairs = [
            (k, "***" if k.lower() == "password" else v)
            for k, v in parse_qsl(query, keep_blank_values=True)
        ]
        query = urlencode(pairs, safe="*")
    return urlunsplit(SplitResult(parts.scheme, netloc, parts.path, query, parts.fragment))


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
        logger: logging.Logger | None = None,
    ) -> None:
        if not url.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError(f"url must be redis://, rediss:// or unix://, got {redact_url(url)}")
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
        self._url = url  # with its password: never logged (``safe_url`` is)
        self._ssl_context = ssl_context
        self.safe_url = redact_url(url)
        self.names = Names(prefix)
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
        self._core = BackplaneCore(
            names=self.names,
            node_id=self.node_id,
            max_pending=max_pending,
            max_pending_bytes=max_pending_bytes,
            safe_url=self.safe_url,
            logger=self.logger,
        )
        self._client: Any = None  # coredis.Redis while running
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
        self._core.publish(self.names.all, envelope)

    def publish_topic(self, topic: str, payload: bytes, opcode: int) -> None:
        """publish for the other processes."""
        envelope = Envelope(Kind.TOPIC, self.node_id, opcode, topic, payload)
        self._core.publish(self.names.topic(topic), envelope)

    def store(self, topic: str, options: HistoryOptions, opcode: int, message: bytes) -> bool:
        """publish on a topic with history: the publish script numbers it in Redis, keeps it in
        the topic's stream and publishes it to every process, this one included (queued; the
        publisher sends it, pipelined with the other commands).  False if it was dropped
        (Redis lost, or the outbox full: counted in ``lost``)."""
        return self._core.put(STORE, topic, (options, opcode, message), len(message))

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
        client = self._require_client()
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
            await self._core.wait_channel(self.names.topic(topic))

    def subscribed(self, topic: str) -> bool:
        """Redis delivers ``topic`` to this process now: what other processes publish to it
        from here on arrives.  (A topic's first local subscriber makes this process subscribe
        in Redis, which takes a round trip: a message published elsewhere meanwhile does not
        reach it.)"""
        return self._core.subscribed_channel(self.names.topic(topic))

    def knows(self, cid: str) -> bool:
        """Another process holds connection ``cid``, as far as this one knows now."""
        return self._core.knows(cid)

    def send_to(self, cid: str, payload: bytes, opcode: int) -> None:
        """send_one to a connection of another process (:raises UnknownConnectionError:)."""
        node = self._core.node_of(cid)
        envelope = Envelope(Kind.ONE, self.node_id, opcode, cid, payload)
        self._core.publish(self.names.node(node), envelope)

    def stop_remote(self, cid: str, code: int, reason: str) -> None:
        """stop_one of a connection of another process (:raises UnknownConnectionError:)."""
        node = self._core.node_of(cid)
        envelope = Envelope(Kind.STOP, self.node_id, code, cid, reason.encode("utf-8"))
        self._core.publish(self.names.node(node), envelope)

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
        """Connections held by every live process, this one included (asks Redis)."""
        client = self._require_client()
        nodes = await live_nodes(client, self.names)
        total = 0
        async with client.pipeline(transaction=False) as pipe:
            counts = [pipe.scard(self.names.connections(n)) for n in nodes]
        for count in counts:
            total += await count
        return total

    def _new_client(self) -> Any:
        import coredis

        extra: dict[str, Any] = {}
        if self._ssl_context is not None:
            extra["ssl_context"] = self._ssl_context
        return coredis.Redis.from_url(
            self._url,
            **extra,
            decode_responses=False,
            decode_components=True,  # a password with @ / : is given percent-encoded
            client_name=f"{self.names.prefix}:{self.node_id}",  # who is who in CLIENT LIST
            stream_timeout=self.command_timeout,
            connect_timeout=self.command_timeout,
        )

    def _require_client(self) -> Any:
        if self._client is None:
            raise BackplaneError("the backplane is not running (serve() starts it)")
        return self._client

    # ---------------------------------------------------------------- running

    async def check(self) -> None:
        """Fail now, with a clear error, if Redis does not answer (``serve()`` calls it
        before it starts anything).

        :raises BackplaneError: naming the URL (without its password) and the reason.
        """
        try:
            with trio.fail_after(self.connect_timeout):
                async with self._new_client() as client:
                    await client.ping()
        except (Exception, trio.TooSlowError) as exc:
            leaf: BaseException = exc
            while isinstance(leaf, BaseExceptionGroup):  # coredis runs in a task group
                leaf = leaf.exceptions[0]
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
        from ._backplane_tasks import BackplaneTasks

        if handler is not None and handler.backplane is not self:
            handler.use_backplane(self)
        core = self._core
        if core.hub is None:
            raise BackplaneError("the backplane has no handler: pass it as backplane=")
        if self.running:
            raise BackplaneError("the backplane is running already")
        await self.check()
        async with self._new_client() as client:
            self._client = client
            core.mark_up()
            self.running = True
            try:
                await BackplaneTasks(self, core, client).run(task_status)
            finally:
                self.running = False
                self._client = None
                core.mark_down()


async def live_nodes(client: Any, names: Names) -> list[str]:
    """The nodes whose presence has not expired."""
    from coredis.tokens import PureToken

    now = (await client.time()).timestamp()  # Redis's clock, as presence is scored by
    nodes = await client.zrange(names.nodes, now, "+inf", sortby=PureToken.BYSCORE)
    return [text(node) for node in nodes]
