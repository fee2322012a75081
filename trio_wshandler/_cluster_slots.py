"""Where names meet Redis Cluster's slots: hash slots, the partitions' hash tags, and a
cluster's startup nodes.  Sans-I/O.

A Redis Cluster serves each key, and each sharded pub/sub channel, from the master that owns
its *slot*: CRC16 of the name (of the part between the first ``{`` and the next ``}``, its hash
tag, when there is one) modulo 16,384.  The backplane collapses its channels and keys into
``partitions`` groups (as centrifuge's Redis Cluster engine does): a topic's channel, history
hash and stream carry the hash tag of the topic's partition, so they share one slot (the
history's publish script touches one slot, and one ``SSUBSCRIBE`` subscribes to many topics
of a partition); a process's channels and presence keys carry the tag of its own partition.

The tags are chosen, not numbered: partition ``i``'s tag is the first of ``0``, ``1``, ``2``,
... whose slot lies in the ``i``-th of ``partitions`` equal ranges of the slot space.  A cluster
made by ``redis-cli --cluster create`` gives each master an equal range of slots, so the
partitions spread evenly over the masters (tags numbered ``0``..``N-1`` land where CRC16 puts
them: centrifuge 6.8.3 fixed default tags that left half of a cluster's nodes idle).  The
spread over a real cluster's masters is measured, not assumed: :func:`spread` counts it
(``RedisBackplane.partition_spread()``, the tests, the benchmark).
"""

from __future__ import annotations

import zlib
from collections import Counter
from collections.abc import Mapping, Sequence
from functools import lru_cache
from urllib.parse import unquote

import attrs

__all__ = [
    "SLOTS",
    "ClusterAddress",
    "key_slot",
    "parse_cluster_url",
    "partition_of",
    "partition_tags",
    "spread",
]

#: Hash slots in a Redis Cluster.
SLOTS = 16384


def _crc16_table() -> tuple[int, ...]:
    table = []
    for byte in range(256):
        crc = byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) if crc & 0x8000 else crc << 1
        table.append(crc & 0xFFFF)
    return tuple(table)


_TABLE = _crc16_table()


def _crc16(data: bytes) -> int:
    """CRC16-XMODEM (CCITT, polynomial 0x1021, initial 0), as Redis Cluster hashes keys."""
    crc = 0
    for byte in data:
        crc = ((crc << 8) & 0xFFFF) ^ _TABLE[((crc >> 8) ^ byte) & 0xFF]
    return crc


def key_slot(name: str | bytes) -> int:
    """The slot of a key or sharded channel, as ``CLUSTER KEYSLOT`` says: of its hash tag
    (between the first ``{`` and the next ``}``, if not empty), else of the whole name."""
    data = name.encode() if isinstance(name, str) else name
    start = data.find(b"{")
    if start >= 0:
        end = data.find(b"}", start + 1)
        if end > start + 1:
            data = data[start + 1 : end]
    return _crc16(data) % SLOTS


@lru_cache(maxsize=16)
def partition_tags(partitions: int) -> tuple[str, ...]:
    """The hash tag of each partition: partition ``i``'s is the first decimal number whose
    slot lies in ``[i * SLOTS // partitions, (i + 1) * SLOTS // partitions)``."""
    if not 1 <= partitions <= SLOTS:
        raise ValueError(f"partitions must be 1 to {SLOTS}, got {partitions}")
    tags: list[str | None] = [None] * partitions
    missing = partitions
    n = 0
    while missing:
        tag = str(n)
        i = key_slot(tag) * partitions // SLOTS
        if tags[i] is None:
            tags[i] = tag
            missing -= 1
        n += 1
    return tuple(t for t in tags if t is not None)


def partition_of(name: str, partitions: int) -> int:
    """The partition of a topic or a process id (CRC32: stable across processes)."""
    if partitions == 1:
        return 0
    return zlib.crc32(name.encode("utf-8", "surrogatepass")) % partitions


def spread(partitions: int, masters: Mapping[str, Sequence[tuple[int, int]]]) -> dict[str, int]:
    """How many partitions each master serves, given each master's slot ranges (inclusive,
    as ``CLUSTER SLOTS`` gives them)."""
    owners: Counter[str] = Counter({master: 0 for master in masters})
    for tag in partition_tags(partitions):
        slot = key_slot(tag)
        for master, ranges in masters.items():
            if any(first <= slot <= last for first, last in ranges):
                owners[master] += 1
                break
    return dict(owners)


@attrs.frozen
class ClusterAddress:
    """What ``redis+cluster://[user:password@]host:port[,host:port...]`` says (``rediss+``:
    TLS): the startup nodes and the credentials every node is reached with."""

    nodes: tuple[tuple[str, int], ...]
    username: str | None = None
    password: str | None = attrs.field(default=None, repr=False)
    tls: bool = False


def parse_cluster_url(url: str) -> ClusterAddress:
    """The startup nodes and credentials of a ``redis+cluster://`` URL (a user name and
    password percent-encoded, as in any URL).

    :raises ValueError: not such a URL, or a node without a valid port.
    """
    scheme, sep, rest = url.partition("://")
    if not sep or scheme not in ("redis+cluster", "rediss+cluster"):
        raise ValueError("a cluster URL starts redis+cluster:// or rediss+cluster://")
    rest = rest.split("/", 1)[0].split("?", 1)[0]
    userinfo, at, hosts = rest.rpartition("@")
    username = password = None
    if at:
        user, colon, secret = userinfo.partition(":")
        username = unquote(user) or None
        password = unquote(secret) if colon else None
    nodes = []
    for item in hosts.split(","):
        host, colon, port = item.strip().rpartition(":")
        if not colon or not port.isdigit() or not 0 < int(port) < 65536 or not host:
            raise ValueError("each node of a cluster URL is host:port")
        nodes.append((host.strip("[]"), int(port)))
    return ClusterAddress(tuple(nodes), username, password, scheme == "rediss+cluster")
