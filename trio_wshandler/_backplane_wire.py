"""What crosses Redis between processes: the envelope of a backplane message, and the channel
and key names.  Sans-I/O.

Every message published by a process starts with a one-byte kind and the 26-character id of
the process (its node id), so a process skips its own messages when they come back from Redis
(it has delivered them locally already).  Message payloads travel as the bytes of the
WebSocket message with their opcode (Text as UTF-8): each receiving process encodes, and
compresses, the frame once for its own clients (``_fanout.py``), exactly as for a local
``send_all``.
"""

from __future__ import annotations

import struct
from typing import Any

import attrs

from ._cluster_slots import partition_of
from .codec import is_sendable_close_code

__all__ = [
    "PUBLISH",
    "SADD",
    "SREM",
    "STORE",
    "Envelope",
    "Kind",
    "Names",
    "decode",
    "encode",
    "envelope_of",
    "history_parts",
    "refusal",
    "text",
]

NODE_ID_LENGTH = 26  # a ULID, as connection ids (``_ids.py``)

#: The commands a backplane's outbox holds for Redis (STORE: a publication on a topic with
#: history, ``_history_redis.py``).
PUBLISH, SADD, SREM, STORE = 0, 1, 2, 3


class Kind:
    """The kinds of backplane messages (one byte)."""

    ALL = 1  # send_all: opcode, payload
    TOPIC = 2  # publish: opcode, topic, payload
    ONE = 3  # send_one: opcode, cid, payload
    STOP = 4  # stop_one: code, cid, reason
    JOIN = 5  # a connection registered: cid
    LEAVE = 6  # a connection ended: cid
    HISTORY = 7  # publish on a topic with history: opcode, topic, "<offset> <epoch> " + message


@attrs.frozen
class Envelope:
    kind: int
    node: str
    opcode: int = 0  # ALL, TOPIC, ONE: 1 Text, 2 Binary; STOP: the close code
    target: str = ""  # TOPIC: the topic; ONE, STOP, JOIN, LEAVE: the connection id
    payload: bytes = b""  # ALL, TOPIC, ONE: the message; STOP: the reason (UTF-8)


_HEAD = struct.Struct("!B26sHH")  # kind, node, opcode or code, target length


def encode(envelope: Envelope) -> bytes:
    target = envelope.target.encode("utf-8")
    head = _HEAD.pack(envelope.kind, envelope.node.encode("ascii"), envelope.opcode, len(target))
    return head + target + envelope.payload


def decode(data: bytes) -> Envelope | None:
    """The envelope in ``data``, or None if it is not one of ours (or is damaged)."""
    if len(data) < _HEAD.size:
        return None
    kind, node, opcode, length = _HEAD.unpack_from(data)
    end = _HEAD.size + length
    if not Kind.ALL <= kind <= Kind.HISTORY or len(data) < end:
        return None
    try:
        return Envelope(
            kind,
            node.decode("ascii"),
            opcode,
            data[_HEAD.size : end].decode("utf-8"),
            data[end:],
        )
    except UnicodeDecodeError:
        return None


def history_parts(payload: bytes, opcode: int) -> tuple[int, str, str | bytes] | None:
    """The offset, epoch and published message (Text decoded: ``opcode`` 1) of a HISTORY
    envelope's payload (made by the publish script of ``_history_redis.py``), or None if it
    is damaged: our script keeps text as valid UTF-8."""
    offset, _, rest = payload.partition(b" ")
    epoch, sep, message = rest.partition(b" ")
    if not sep or not offset.isdigit() or not epoch:
        return None
    try:
        return int(offset), epoch.decode("ascii"), message.decode() if opcode == 1 else message
    except UnicodeDecodeError:
        return None


def envelope_of(data: bytes | str) -> Envelope | None:
    """The envelope of a pub/sub message's data, or None if it is not one of ours."""
    return decode(data.encode("latin-1") if isinstance(data, str) else data)


def refusal(envelope: Envelope) -> str | None:
    """Why a message from another process must not be acted on (a peer process with a bug, or
    someone else publishing on our channels), or None: only Text and Binary messages cross, and
    a STOP carries a code a Close may carry."""
    if envelope.kind == Kind.STOP:
        if not is_sendable_close_code(envelope.opcode):
            return f"STOP with invalid code {envelope.opcode}"
    elif envelope.kind not in (Kind.JOIN, Kind.LEAVE) and envelope.opcode not in (1, 2):
        return f"message with opcode {envelope.opcode}"
    return None


def text(value: Any) -> str:
    """A Redis reply (or a part of one) as text: the clients are made with
    ``decode_responses=False``."""
    return value.decode() if isinstance(value, bytes) else str(value)


@attrs.frozen
class Names:
    """The Redis channel and key names of one backplane (all under ``prefix``).

    With one Redis, ``tags`` is empty and there is one partition.  On a Redis Cluster every
    name carries the hash tag of its partition (``_cluster_slots.py``): a topic's names the
    tag of the topic's partition, a process's names the tag of the process's; ``send_all``
    and presence go to the channel of the sending process's partition, so each process
    subscribes to those channels of every partition."""

    prefix: str
    tags: tuple[str, ...] = ()

    @property
    def partitions(self) -> int:
        return len(self.tags) or 1

    def _at(self, partition: int) -> str:
        return f"{self.prefix}:{{{self.tags[partition]}}}" if self.tags else self.prefix

    def topic_partition(self, topic: str) -> int:
        return partition_of(topic, len(self.tags)) if self.tags else 0

    def node_partition(self, node: str) -> int:
        return partition_of(node, len(self.tags)) if self.tags else 0

    def all(self, partition: int) -> str:
        """Channel: send_all messages of the processes of ``partition``."""
        return f"{self._at(partition)}:all"

    def presence(self, partition: int) -> str:
        """Channel: connections registered and ended (JOIN, LEAVE) in the processes of
        ``partition``."""
        return f"{self._at(partition)}:presence"

    def nodes(self, partition: int) -> str:
        """Key: sorted set of the live processes of ``partition``, scored by the time their
        presence expires."""
        return f"{self._at(partition)}:nodes"

    def topic(self, topic: str) -> str:
        """Channel: messages published to ``topic``."""
        return f"{self._at(self.topic_partition(topic))}:topic:{topic}"

    def history(self, topic: str) -> str:
        """Key: hash of a topic's history position: ``o`` its last offset, ``e`` its epoch."""
        return f"{self._at(self.topic_partition(topic))}:history:{topic}"

    def stream(self, topic: str) -> str:
        """Key: stream of a topic's kept publications (entry id ``<offset>-0``)."""
        return f"{self._at(self.topic_partition(topic))}:stream:{topic}"

    def node(self, node: str) -> str:
        """Channel: messages for the connections of one process (send_one, stop_one)."""
        return f"{self._at(self.node_partition(node))}:node:{node}"

    def connections(self, node: str) -> str:
        """Key: set of the connection ids one process holds (expires with its presence)."""
        return f"{self._at(self.node_partition(node))}:conns:{node}"
