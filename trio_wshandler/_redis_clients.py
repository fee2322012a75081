"""Where a backplane's Redis clients are made and first checked, and how its URL is shown.

One Redis: a ``coredis.Redis`` from the URL (``redis://``, ``rediss://``, ``unix://``).  A
Redis Cluster (``redis+cluster://host:port,...``): a plain ``coredis.Redis`` per master that a
lane talks to, with the URL's credentials (not ``coredis.RedisCluster``: a lane is pinned to
its partition's master, and finds the next one itself, ``_backplane_run.py``).  Every client
names itself ``<prefix>:<node id>`` (who is who in ``CLIENT LIST``), and waits at most
``command_timeout`` to connect or for an answer.
"""

from __future__ import annotations

import ssl
from collections.abc import Sequence
from typing import Any
from urllib.parse import SplitResult, parse_qsl, urlencode, urlsplit, urlunsplit

from ._backplane_run import Address, masters_by_partition
from ._backplane_wire import Names, text
from ._cluster_slots import ClusterAddress
from ._presence import redis_errors

__all__ = ["CLUSTER_SCHEMES", "ClientMaker", "live_nodes", "redact_url"]

#: the URL schemes of a Redis Cluster
CLUSTER_SCHEMES = ("redis+cluster://", "rediss+cluster://")


def redact_url(url: str) -> str:
    """``url`` with its password (``user:password@`` or ``?password=``) replaced by ``***``."""
    if url.startswith(CLUSTER_SCHEMES):
        scheme, _, rest = url.partition("://")
        userinfo, at, hosts = rest.rpartition("@")
        if at and ":" in userinfo:
            rest = f"{userinfo.partition(':')[0]}:***@{hosts}"
        return f"{scheme}://{rest}"
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


class ClientMaker:
    """Makes a backplane's clients (see the module's docstring)."""

    def __init__(
        self,
        url: str,
        cluster: ClusterAddress | None,
        ssl_context: ssl.SSLContext | None,
        client_name: str,
        timeout: float,
    ) -> None:
        self._url = url  # with its password: never logged
        self.cluster = cluster
        self.ssl_context = ssl_context
        self.client_name = client_name
        self.timeout = timeout

    def new(self, address: Address = None) -> Any:
        """A client (not yet entered) of the URL's Redis, or of a cluster node's ``address``."""
        import coredis

        extra: dict[str, Any] = {}
        if self.ssl_context is not None:
            extra["ssl_context"] = self.ssl_context
        common: dict[str, Any] = dict(
            decode_responses=False,
            client_name=self.client_name,
            stream_timeout=self.timeout,
            connect_timeout=self.timeout,
        )
        cluster = self.cluster
        if cluster is None:
            return coredis.Redis.from_url(
                self._url,
                **extra,
                **common,
                decode_components=True,  # a password with @ / : is given percent-encoded
            )
        assert address is not None
        if cluster.tls:
            extra.setdefault("ssl_context", ssl.create_default_context())
        host, port = address
        return coredis.Redis(
            host=host,
            port=port,
            username=cluster.username,
            password=cluster.password,
            **extra,
            **common,
        )

    async def check(self, tags: Sequence[str]) -> None:
        """Redis answers; on a cluster: a startup node gives the slot map, a master serves
        every partition's tag, and each of those masters answers.

        :raises Exception: what went wrong (the caller says it with the URL).
        """
        if self.cluster is None:
            async with self.new() as client:
                await client.ping()
            return
        problem: BaseException | None = None
        for address in self.cluster.nodes:
            try:
                async with self.new(address) as client:
                    shards = await client.cluster_shards()
            except redis_errors() as exc:
                problem = exc
                continue
            masters = masters_by_partition(shards, tags, self.cluster.tls)
            for partition, master in enumerate(masters):
                if master is None:
                    raise LookupError(f"no master serves partition {partition}'s slot")
            for master in set(masters):
                async with self.new(master) as client:
                    await client.ping()
            return
        raise LookupError(f"no startup node answered: {problem}")


async def live_nodes(client: Any, names: Names, partition: int) -> list[str]:
    """The nodes of ``partition`` whose presence has not expired."""
    from coredis.tokens import PureToken

    now = (await client.time()).timestamp()  # Redis's clock, as presence is scored by
    nodes = await client.zrange(names.nodes(partition), now, "+inf", sortby=PureToken.BYSCORE)
    return [text(node) for node in nodes]
