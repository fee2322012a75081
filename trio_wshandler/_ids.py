"""Connection ids: unique across this process and across restarts and hosts.

An id is 26 characters: 10 of milliseconds since the epoch and 16 of randomness, both in
Crockford base32 (the ULID layout), so ids are safe in URLs and logs, and two processes (later
issues route ``send_one`` between nodes by id) never produce the same one without needing any
coordination.

Within a process, ids are strictly increasing in creation order (monotonic, as ULID's spec
allows): an id made in the same millisecond as the one before it (or after the clock stepped
back) reuses that millisecond and adds one to the random part.  Across processes they sort by
creation time to the millisecond.
"""

from __future__ import annotations

import secrets
import time

_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


def _b32(value: int, width: int) -> str:
    out = []
    for _ in range(width):
        value, rem = divmod(value, 32)
        out.append(_ALPHABET[rem])
    return "".join(reversed(out))


_last = [0, 0]  # the millisecond and random part of the last id made


def new_connection_id() -> str:
    """A new ULID-style id (time-ordered, 80 random bits, increasing within the process)."""
    ms = time.time_ns() // 1_000_000
    if ms <= _last[0]:
        ms, rand = _last[0], _last[1] + 1
        if rand >> 80:  # 2**80 ids in one millisecond: borrow the next one
            ms, rand = ms + 1, secrets.randbits(79)
    else:
        rand = secrets.randbits(79)  # room to count up within the millisecond
    _last[0], _last[1] = ms, rand
    return _b32(ms, 10) + _b32(rand, 16)
