"""Where a topic's history is kept with the Redis backplane: two Lua scripts and their replies.

Per topic, two keys (``_backplane_wire.Names``): a hash ``history:<topic>`` with the topic's
position (``o`` the last offset, ``e`` the epoch) and a stream ``stream:<topic>`` of the kept
publications (entry id ``<offset>-0``; fields ``d`` the message as published, ``k`` its opcode,
``t`` Redis's clock in ms).

* :data:`PUBLISH_SCRIPT`, one per publication, pipelined by the backplane's publisher: checks
  that the keys are what they should be (else it fails before writing anything, so no offset
  is taken for a publication that is not kept), makes
  the hash with a fresh epoch if it is missing (and drops a stream left from a lost history, so
  offsets start at 1 again), takes the next offset, appends to the stream (``MAXLEN`` = ``size``,
  exact), sets both keys' expiry, and ``PUBLISH``es the message with its position.  Atomic, so
  offsets are contiguous whichever process publishes, and every process (the publisher too)
  delivers in offset order what comes back on the topic's channel (``_history_feed.py``).
* :data:`READ_SCRIPT`: the position (making the hash, with a fresh epoch and the topic's
  ``ttl`` as expiry, if missing: a topic read before anything was published keeps that epoch
  for its first publications) and, when a
  gap in the same epoch is asked for and is at most ``count`` long, the stream's entries from
  its first offset, with Redis's clock, in one atomic step.

The hash lives ``max(ttl, meta_ttl)`` after the last publication; the stream ``ttl``.  When the
hash is lost (expired, evicted, a Redis restarted empty) the next publication or read draws a
new epoch: a position from before can never be mistaken for a current one.  A publication
older than ``ttl`` is left out of a recovery (``decode_read``), as in the in-memory ring.  The
in-memory ring's ``max_bytes`` bound does not apply to the stream (Redis memory is bounded by
``size`` times the largest publication).
"""

from __future__ import annotations

import hashlib
import math
from itertools import pairwise
from typing import Any

import attrs

from ._backplane_wire import text
from ._history import HistoryOptions, Position, new_epoch

__all__ = [
    "META_TTL",
    "PUBLISH_SCRIPT",
    "PUBLISH_SHA",
    "READ_SCRIPT",
    "SHARDED_PUBLISH_SCRIPT",
    "SHARDED_PUBLISH_SHA",
    "Entry",
    "Snapshot",
    "decode_read",
]

#: Seconds a topic's position outlives its last publication (or its ``ttl`` if longer): a
#: client that comes back within it with nothing missed recovers; after it, a new epoch.
META_TTL = 86_400

PUBLISH_SCRIPT = """
local meta, stream = KEYS[1], KEYS[2]
local kinds = {redis.call('TYPE', meta).ok, redis.call('TYPE', stream).ok}
if (kinds[1] ~= 'none' and kinds[1] ~= 'hash') or (kinds[2] ~= 'none' and kinds[2] ~= 'stream') then
  return redis.error_reply('WRONGTYPE a history key holds something else: ' .. meta)
end
local epoch = redis.call('HGET', meta, 'e')
if not epoch then
  epoch = ARGV[1]
  redis.call('DEL', stream)
  redis.call('HSET', meta, 'e', epoch, 'o', 0)
end
local offset = redis.call('HINCRBY', meta, 'o', 1)
local now = redis.call('TIME')
local ms = now[1] * 1000 + math.floor(now[2] / 1000)
redis.call('XADD', stream, 'MAXLEN', ARGV[2], string.format('%d-0', offset),
  'd', ARGV[7], 'k', ARGV[6], 't', string.format('%d', ms))
redis.call('PEXPIRE', stream, ARGV[3])
redis.call('EXPIRE', meta, ARGV[4])
redis.call('PUBLISH', KEYS[3], ARGV[5] .. string.format('%d', offset) .. ' ' .. epoch .. ' '
  .. ARGV[7])
return offset
"""

#: what ``EVALSHA`` names :data:`PUBLISH_SCRIPT` by
PUBLISH_SHA = hashlib.sha1(PUBLISH_SCRIPT.encode()).hexdigest()

#: :data:`PUBLISH_SCRIPT` for a Redis Cluster: the publication goes out on the topic's sharded
#: channel (``SPUBLISH``), which shares the slot of the topic's hash and stream (their hash tag)
SHARDED_PUBLISH_SCRIPT = PUBLISH_SCRIPT.replace("'PUBLISH', KEYS[3]", "'SPUBLISH', KEYS[3]")
SHARDED_PUBLISH_SHA = hashlib.sha1(SHARDED_PUBLISH_SCRIPT.encode()).hexdigest()

READ_SCRIPT = """
local meta, stream = KEYS[1], KEYS[2]
local epoch = redis.call('HGET', meta, 'e')
local offset = 0
if not epoch then
  epoch = ARGV[1]
  redis.call('DEL', stream)
  redis.call('HSET', meta, 'e', epoch, 'o', 0)
  redis.call('EXPIRE', meta, ARGV[2])
else
  offset = tonumber(redis.call('HGET', meta, 'o'))
end
local now = redis.call('TIME')
local entries = {}
local first = tonumber(ARGV[3])
if first > 0 and ARGV[4] == epoch and first <= offset and offset - first < tonumber(ARGV[5]) then
  entries = redis.call('XRANGE', stream, string.format('%d-0', first),
    string.format('%d-0', offset))
end
return {epoch, offset, now[1] * 1000 + math.floor(now[2] / 1000), entries}
"""


def publish_args(
    options: HistoryOptions, head: bytes, opcode: int, message: bytes
) -> list[bytes | int | str]:
    """ARGV of :data:`PUBLISH_SCRIPT` (``head``: the backplane envelope's head, with the
    topic; ``message``: as published, Text as UTF-8)."""
    ttl_ms = max(1, math.ceil(options.ttl * 1000))
    meta_ttl = max(META_TTL, math.ceil(options.ttl))
    return [new_epoch(), options.size, ttl_ms, meta_ttl, head, opcode, message]


def read_args(first: int, epoch: str, count: int, ttl: float) -> list[bytes | int | str]:
    """ARGV of :data:`READ_SCRIPT`: the entries from offset ``first`` (0: none) if the topic is
    in ``epoch`` and at most ``count`` of them are asked for.  A hash the read makes (nothing
    was published) lives the topic's ``ttl``: a client that asks for many names leaves keys
    that go within ``ttl``, not within a day."""
    return [new_epoch(), max(1, math.ceil(ttl)), first, epoch, max(count, 0)]


@attrs.frozen
class Entry:
    """One publication read from the stream."""

    offset: int
    opcode: int
    message: bytes
    time_ms: int

    @property
    def data(self) -> str | bytes:
        """The message as published (Text decoded; our script keeps it valid UTF-8)."""
        return self.message.decode("utf-8", "replace") if self.opcode == 1 else self.message


@attrs.frozen
class Snapshot:
    """What one read found: the topic's position, the entries from the first offset asked for
    (those still within ``ttl``, in offset order, none if a later one is missing), and Redis's
    clock."""

    position: Position
    entries: tuple[Entry, ...]
    now_ms: int

    @property
    def first_kept(self) -> int:
        """The first offset the read found kept (``position.offset + 1`` when none)."""
        return self.entries[0].offset if self.entries else self.position.offset + 1


def decode_read(reply: Any, ttl: float) -> Snapshot:
    """A :data:`READ_SCRIPT` reply as a :class:`Snapshot`: entries older than ``ttl`` are
    dropped from the front (gone, as in the in-memory ring); the rest must be consecutive
    offsets ending at the position, or none is kept (a hole means they are not all there)."""
    epoch, offset, now_ms, raw = reply
    position = Position(int(offset), text(epoch))
    now_ms = int(now_ms)
    cutoff = now_ms - ttl * 1000
    entries: list[Entry] = []
    for entry_id, fields in raw:
        values = dict(zip(fields[::2], fields[1::2], strict=True))
        values = {text(k): v for k, v in values.items()}
        entries.append(
            Entry(
                int(text(entry_id).partition("-")[0]),
                int(values["k"]),
                bytes(values["d"]),
                int(values["t"]),
            )
        )
    while entries and entries[0].time_ms < cutoff:
        del entries[0]
    consecutive = all(b.offset == a.offset + 1 for a, b in pairwise(entries))
    if not consecutive or (entries and entries[-1].offset != position.offset):
        entries = []
    return Snapshot(position, tuple(entries), now_ms)
