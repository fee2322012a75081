"""Connection ids: unique across this process and across restarts and hosts.

An id is 26 characters: 10 of milliseconds since the epoch and 16 of randomness, both in
Crockford base32 (the ULID layout), so ids sort by creation time, are safe in URLs and logs, and
two processes (later issues route ``send_one`` between nodes by id) never produce the same one
without needing any coordination.
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


def new_connection_id() -> str:
    """A new ULID-style id (time-ordered, 80 random bits)."""
    return _b32(time.time_ns() // 1_000_000, 10) + _b32(secrets.randbits(80), 16)
